"""Loader throughput: packed 2,800-token sequences per second per process.

    .venv/bin/python bench/bench_loader.py [--documents 60000] [--seconds 10]

Writes a MIO-like corpus (lengths from bench_packing's mix, random ids, all-ones loss masks) as
two megatron IndexedDataset prefixes, builds the stage-style mixture 12:4 over them, then reads
micro-batches through ``build_pretraining_dataloader`` (what the trainer calls): in the process
itself (0 workers) and with 1 and 2 worker processes.  Baseline in the same units: one H100
training the 7B model consumes about 3-4 sequences of 2,800 tokens per second.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_packing import mio_like_lengths  # noqa: E402
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder  # noqa: E402

from megatron_mio.data.mixture import parse_data_path  # noqa: E402
from megatron_mio.data.packed_dataset import PackingConfig  # noqa: E402
from megatron_mio.data.sampler import build_pretraining_dataloader  # noqa: E402

H100_SEQUENCES_PER_SECOND = 4.0  # upper end of ~3-4 for Yi-6B/MIO-7B at 2,800 tokens


def write_prefix(prefix: str, lengths: np.ndarray, seed: int) -> None:
    rng = np.random.default_rng(seed)
    tokens = IndexedDatasetBuilder(prefix + ".bin", dtype=np.int32)
    masks = IndexedDatasetBuilder(prefix + ".loss_mask.bin", dtype=np.uint8)
    for n in lengths.tolist():
        tokens.add_item(torch.from_numpy(rng.integers(0, 76_000, n, dtype=np.int32)))
        tokens.end_document()
        masks.add_item(torch.ones(n, dtype=torch.uint8))
        masks.end_document()
    tokens.finalize(prefix + ".idx")
    masks.finalize(prefix + ".loss_mask.idx")


def throughput(loader, seconds: float) -> tuple[float, int]:
    it = iter(loader)
    next(it)  # exclude start-up (worker spawn, first mmap)
    count, start = 0, time.perf_counter()
    for batch in it:
        count += batch["tokens"].shape[0]
        if time.perf_counter() - start > seconds:
            break
    return count / (time.perf_counter() - start), count


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--documents", type=int, default=60_000)
    parser.add_argument("--seq-length", type=int, default=2800)
    parser.add_argument("--micro-batch", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        lengths = mio_like_lengths(args.documents, seed=5)
        short = lengths < 200
        write_prefix(f"{root}/pairs", lengths[short], 1)
        write_prefix(f"{root}/long", lengths[~short], 2)
        start = time.perf_counter()
        mixture = parse_data_path(["12", f"{root}/pairs", "4", f"{root}/long"])
        packing = PackingConfig(args.seq_length, seed=0)
        common = dict(num_samples=100_000, micro_batch_size=args.micro_batch,
                      data_parallel_rank=0, data_parallel_size=1)
        build_pretraining_dataloader(mixture, packing, **common)
        build_seconds = time.perf_counter() - start
        print(f"corpus: {args.documents:,} documents, {int(lengths.sum()):,} tokens; index build "
              f"(validate + pack + blend, cold cache) {build_seconds:.2f} s")
        print("| loader | packed sequences/s | vs one H100 (4 seq/s) |")
        print("| --- | --- | --- |")
        for workers in (0, 1, 2):
            rate, _ = throughput(build_pretraining_dataloader(mixture, packing, **common, num_workers=workers),
                                 args.seconds)
            print(f"| {workers} worker(s), micro batch {args.micro_batch} | {rate:,.0f} | "
                  f"{rate / H100_SEQUENCES_PER_SECOND:,.0f}x |")


if __name__ == "__main__":
    main()
