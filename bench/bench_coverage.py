#!/usr/bin/env python
"""Coverage: how much of a corpus with long tails reaches the packs, split vs kept whole.

    python bench/bench_coverage.py [--pages 2000] [--interleaved 1000] [--seq-length 2800]

A MIO-like corpus, one dataset per type: web-like ``language`` pages and ``interleaved`` pages
(text, images, now and then a video or a speech clip) with log-normal lengths (a large share of
their tokens in pages over 2,800 tokens), caption pairs, video pairs, 5-15 s ASR speech pairs,
and 15 s TTS speech pairs (3,000+ tokens: cannot be split); then all of them in one dataset.  Each type is preprocessed twice in the same run: with ``--seq-length``
(pieces, what preprocessing does now) and with no limit (documents kept whole: the packer then
drops every document over the sequence length, as before splitting existed), and packed with
the C++ packer at the sequence length.  Reported per type: corpus tokens (everything the
templates produce), packed tokens / corpus tokens for both, and the packing efficiency (real
tokens / slots) of the split datasets.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile

from megatron_mio.data import synthetic
from megatron_mio.data.packed_dataset import PackedDataset, PackingConfig
from megatron_mio.data.preprocess import PreprocessConfig, preprocess
from megatron_mio.tokenizer import build_mio_tokenizer, train_sentencepiece

WHOLE = 1 << 30  # a --seq-length nothing exceeds: documents stay whole


def corpus(args) -> dict[str, list[dict]]:
    pages = synthetic.long_tail_samples(seed=1, n_pages=args.pages, n_interleaved=0,
                                        median_sentences=args.median_sentences)
    interleaved = synthetic.long_tail_samples(seed=2, n_pages=0, n_interleaved=args.interleaved,
                                              median_sentences=args.median_sentences)
    pairs = synthetic.pretraining_samples(3, n_language=0, n_image_pairs=args.pairs,
                                          n_video_pairs=0, n_speech_pairs=0, n_interleaved=0)
    speech = synthetic.pretraining_samples(4, n_language=0, n_image_pairs=0, n_video_pairs=0,
                                           n_speech_pairs=args.tts, n_interleaved=0,
                                           speech_seconds=(15.0, 15.0))
    tts = [{**s, "direction": "tts"} for s in speech if "timbre" in s["speech"]]
    asr = synthetic.pretraining_samples(5, n_language=0, n_image_pairs=0, n_video_pairs=0,
                                        n_speech_pairs=args.asr, n_interleaved=0,
                                        speech_seconds=(5.0, 15.0))
    asr = [{**s, "direction": "asr"} for s in asr]
    video = synthetic.pretraining_samples(6, n_language=0, n_image_pairs=0,
                                          n_video_pairs=args.video, n_speech_pairs=0,
                                          n_interleaved=0)
    return {"language": pages, "interleaved": interleaved, "image_text_pair": pairs,
            "video_text_pair": video, "speech_text_pair (5-15 s ASR)": asr,
            "speech_text_pair (15 s TTS)": tts}


def measure(name: str, samples: list[dict], tokenizer: str, workdir: str, seq_length: int,
            workers: int) -> dict:
    data = synthetic.write_jsonl(os.path.join(workdir, f"{_file_name(name)}.jsonl"), samples)
    row = {"type": name, "samples": len(samples)}
    for mode, limit in (("whole", WHOLE), ("split", seq_length)):
        prefix = os.path.join(workdir, f"{_file_name(name)}_{mode}")
        report = preprocess(PreprocessConfig(inputs=[data], output_prefix=prefix,
                                             tokenizer=tokenizer, stage="2", seq_length=limit,
                                             workers=workers, progress=False)).report.to_json()
        packed = PackedDataset(prefix, PackingConfig(seq_length, seed=1)).meta
        corpus_tokens = report["tokens"]["total"] + report["dropped"]["tokens"]
        row[mode] = {
            "corpus_tokens": corpus_tokens, "documents": report["documents_written"],
            "packed_tokens": packed["packed_tokens"], "packs": packed["n_packs"],
            "coverage": packed["packed_tokens"] / corpus_tokens,
            "efficiency": packed["packed_tokens"] / max(1, packed["n_packs"] * seq_length),
            "split_documents": report["split"]["documents"],
            "dropped_by_reason": report["dropped"]["by_reason"],
        }
    return row


def _file_name(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=2000)
    parser.add_argument("--interleaved", type=int, default=1000)
    parser.add_argument("--pairs", type=int, default=20000)
    parser.add_argument("--tts", type=int, default=400)
    parser.add_argument("--asr", type=int, default=4000)
    parser.add_argument("--video", type=int, default=1500)
    parser.add_argument("--median-sentences", type=float, default=50.0)
    parser.add_argument("--seq-length", type=int, default=2800)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--types", nargs="+", help="only these types (default: all)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        model = train_sentencepiece(synthetic.sample_text_lines(n=20000, seed=0),
                                    os.path.join(workdir, "base.model"), vocab_size=4000)
        tokenizer = os.path.join(workdir, "tokenizer")
        build_mio_tokenizer(model, tokenizer)
        by_type = {name: samples for name, samples in corpus(args).items()
                   if not args.types or name.split()[0] in args.types}
        rows = [measure(name, samples, tokenizer, workdir, args.seq_length, args.workers)
                for name, samples in by_type.items()]
        # Every type in one dataset, shuffled (as bench_packing's MIO-like corpus).
        mixed = [sample for samples in by_type.values() for sample in samples]
        random.Random(0).shuffle(mixed)
        rows.append(measure("all types in one dataset", mixed, tokenizer, workdir,
                            args.seq_length, args.workers))
    s = args.seq_length
    print(f"| type | samples | corpus tokens | share in documents > {s:,} | packed, kept whole "
          f"| packed, split | pieces | packing efficiency (split) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        whole, split = r["whole"], r["split"]
        long_share = 1 - whole["packed_tokens"] / whole["corpus_tokens"]
        print(f"| {r['type']} | {r['samples']:,} | {split['corpus_tokens']:,} | "
              f"{100 * long_share:.1f}% | {100 * whole['coverage']:.2f}% | "
              f"{100 * split['coverage']:.2f}% | {split['documents']:,} | "
              f"{100 * split['efficiency']:.2f}% |")
    whole = rows[-1]["whole"]
    print(f"all types in one dataset, kept whole: packing efficiency "
          f"{100 * whole['efficiency']:.2f}%")
    print(f"load average: {' '.join(f'{x:.1f}' for x in os.getloadavg())}, cpus: {os.cpu_count()}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
