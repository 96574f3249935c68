#!/usr/bin/env python
"""Speech tokenizing throughput: seconds of audio encoded per second (and decoded per second), a
SpeechTokenizer of the published base configuration with random weights (the same arithmetic as
the released checkpoint), on real speech spoken by espeak-ng, at batch size 1 and --batch-size.

    OMP_NUM_THREADS=2 python bench/bench_speech_codec.py [--clips 8] [--batch-size 8] [--device cpu]

Batched encoding pads each batch to its longest clip (clips of similar length, as
tools/tokenize_speech.py groups them); the encoder's bidirectional LSTM sees the padding, so the
script also reports the share of content codes equal to encoding each clip alone.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from megatron_mio.codec.audio import SAMPLE_RATE, read_audio
from megatron_mio.codec.speech import BASE_CONFIG, SpeechCodec

SENTENCES = [
    "Speech tokenizers turn sound into a short sequence of discrete codes.",
    "The content codebook carries what is said, the timbre codebooks how it sounds.",
    "Fifty frames per second of audio, four codes per frame in MIO's layout.",
    "A cluster job writes one shard per array task and skips the finished ones.",
]


def spoken_clips(directory: Path, count: int) -> list[np.ndarray]:
    clips = []
    for i in range(count):
        path = directory / f"{i}.wav"
        text = SENTENCES[i % len(SENTENCES)] * (1 + i % 2)  # 3-10 s, two lengths per sentence
        subprocess.run(["espeak-ng", "-s", str(150 + 10 * i), "-w", str(path), text], check=True)
        clips.append(read_audio(path))
    return clips


def timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        clips = spoken_clips(Path(tmp), args.clips)
    codec = SpeechCodec.from_config(BASE_CONFIG, device=args.device)
    codec.initialize_codebooks(clips[0], seed=0)
    audio = sum(c.size for c in clips) / SAMPLE_RATE
    codec.encode(clips[:1])  # warm-up
    alone, t_alone = timed(lambda: [codec.encode([c])[0] for c in clips])
    order = sorted(range(len(clips)), key=lambda i: clips[i].size)
    batched = {}

    def encode_batched():
        for start in range(0, len(order), args.batch_size):
            rows = order[start: start + args.batch_size]
            for i, codes in zip(rows, codec.encode([clips[i] for i in rows])):
                batched[i] = codes

    _, t_batched = timed(encode_batched)
    same = np.mean(np.concatenate([alone[i].content == batched[i].content
                                   for i in range(len(clips))]))
    _, t_decode = timed(lambda: [codec.decode(c.content, c.timbre) for c in alone])
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"{codec.describe()}, torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs, "
          f"load average {load} (other processes share the CPUs)")
    print(f"{len(clips)} clips, {audio:.1f} s of audio "
          f"({min(c.size for c in clips) / SAMPLE_RATE:.1f}-"
          f"{max(c.size for c in clips) / SAMPLE_RATE:.1f} s each)")
    print(f"encode, batch 1:  {t_alone:.2f} s, {audio / t_alone:.2f} s of audio per s")
    print(f"encode, batch {args.batch_size}:  {t_batched:.2f} s, {audio / t_batched:.2f} s of audio "
          f"per s ({t_alone / t_batched:.2f}x batch 1); content codes equal to batch 1: "
          f"{100 * same:.1f}%")
    print(f"decode (4 layers), batch 1: {t_decode:.2f} s, {audio / t_decode:.2f} s of audio per s")


if __name__ == "__main__":
    main()
