"""Packing efficiency, speed and memory of the C++ packer, against baselines in the same run.

    .venv/bin/python bench/bench_packing.py [--seq-length 2800] [--big 100000000] [--ref 20000]

1. Efficiency on a MIO-like mix of document lengths (seeded): our best-fit-decreasing in shuffled
   windows of 1k / 10k / 100k documents, versus one document per sequence with padding, greedy
   packing in corpus order (next-fit) and Megatron's concatenate-and-cut (full sequences, but
   documents cut across sequence boundaries).  Every packing is checked: no pack over
   seq_length, every packable document exactly once.
2. Speed and peak memory of the C++ packer on ``--big`` documents (a child process per run, so
   the peak RSS is the packer's own), and the plain-Python reference of the same algorithm on
   ``--ref`` documents: the per-document time ratio.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megatron_mio.data.packing import pack_documents, reference_pack_documents  # noqa: E402

# Per 100 documents: (share, sampler of lengths).  Image = 32 codes + <image></image>, speech =
# 50 content codes/s (+ 3 timbre codebooks when speech is generated), plus template text.
MIX = [
    ("image-text pair", 0.60, lambda r, n: 34 + r.integers(15, 60, n)),
    ("language page", 0.12, lambda r, n: np.minimum(r.lognormal(5.6, 0.7, n).astype(np.int64) + 20, 4000)),
    ("interleaved page", 0.06, lambda r, n: 34 * r.integers(1, 8, n) + r.integers(100, 900, n)),
    ("video-text pair", 0.04, lambda r, n: 34 * r.integers(4, 9, n) + r.integers(15, 80, n)),
    ("ASR 5-15 s", 0.09, lambda r, n: 50 * r.uniform(5, 15, n).astype(np.int64) + r.integers(15, 80, n)),
    ("TTS 5-15 s", 0.09, lambda r, n: 200 * r.uniform(5, 15, n).astype(np.int64) + r.integers(15, 80, n)),
]


def mio_like_lengths(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    kinds = rng.choice(len(MIX), size=n, p=[share for _, share, _ in MIX])
    lengths = np.empty(n, dtype=np.int32)
    for k, (_, _, sample) in enumerate(MIX):
        where = np.flatnonzero(kinds == k)
        lengths[where] = sample(rng, where.size)
    return lengths


def check(index, lengths, s):
    packable = np.flatnonzero((lengths > 0) & (lengths <= s))
    assert np.array_equal(np.sort(index.doc_ids), packable), "a document is missing or repeated"
    per_pack = np.add.reduceat(lengths[index.doc_ids].astype(np.int64), index.pack_offsets[:-1])
    assert per_pack.max() <= s, "a pack exceeds seq_length"


def efficiency_table(lengths: np.ndarray, s: int) -> list[dict]:
    fits = lengths[lengths <= s].astype(np.int64)
    shuffled = fits[np.random.default_rng(1).permutation(len(fits))]
    rows = [dict(method="one document per sequence (padding)", efficiency=fits.sum() / (len(fits) * s),
                 sequences=len(fits), cut=0.0)]
    # Greedy next-fit in corpus order: close the pack when the next document does not fit.
    packs, used = 1, 0
    for n in shuffled.tolist():
        if used + n > s:
            packs, used = packs + 1, 0
        used += n
    rows.append(dict(method="greedy next-fit in corpus order", efficiency=fits.sum() / (packs * s),
                     sequences=packs, cut=0.0))
    # Megatron's GPTDataset: concatenate everything, cut every s tokens (+1 for the label).
    ends = np.cumsum(lengths.astype(np.int64))
    starts = ends - lengths
    cut = np.mean((starts // s) != ((ends - 1) // s))
    rows.append(dict(method="concatenate-and-cut (Megatron GPTDataset)", efficiency=1.0,
                     sequences=int(ends[-1] // s), cut=float(cut)))
    for window in (1_000, 10_000, 100_000):
        start = time.perf_counter()
        index = pack_documents(lengths, s, seed=0, window=window)
        seconds = time.perf_counter() - start
        check(index, lengths, s)
        rows.append(dict(method=f"ours: best-fit-decreasing, window {window:,}",
                         efficiency=fits.sum() / (index.n_packs * s), sequences=index.n_packs,
                         cut=0.0, seconds=seconds))
    return rows


def child_pack(n: int, s: int, window: int) -> dict:
    """In a fresh process: generate lengths, then pack; RSS before and peak after."""
    import psutil

    # Generated in chunks so that generation's temporaries stay far below the packer's peak.
    lengths = np.empty(n, dtype=np.int32)
    chunk = 1_000_000
    for i, start in enumerate(range(0, n, chunk)):
        lengths[start : start + chunk] = mio_like_lengths(min(chunk, n - start), seed=100 + i)
    base = psutil.Process().memory_info().rss
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 < base + 64 * 2**20
    start, cpu_start = time.perf_counter(), time.process_time()
    index = pack_documents(lengths, s, seed=0, window=window)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return dict(documents=n, packs=index.n_packs, seconds=seconds, cpu_seconds=cpu_seconds, rss_before=base, rss_peak=peak,
                bytes_per_document=(peak - base) / n,
                output_bytes_per_document=(index.pack_offsets.nbytes + index.doc_ids.nbytes) / n)


def run_child(n: int, s: int, window: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", str(n), "--seq-length", str(s),
                          "--window", str(window)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seq-length", type=int, default=2800)
    parser.add_argument("--mix-documents", type=int, default=1_000_000)
    parser.add_argument("--big", type=int, default=100_000_000)
    parser.add_argument("--ref", type=int, default=20_000)
    parser.add_argument("--window", type=int, default=10_000)
    parser.add_argument("--child", type=int)
    args = parser.parse_args()
    s = args.seq_length
    if args.child:
        print(json.dumps(child_pack(args.child, s, args.window)))
        return

    lengths = mio_like_lengths(args.mix_documents)
    print(f"## efficiency: {args.mix_documents:,} MIO-like documents at seq_length {s} "
          f"(mean {lengths.mean():.0f} tokens; {int((lengths > s).sum()):,} longer than {s}, dropped)")
    print("| method | slots filled with real tokens | sequences | documents cut |")
    print("| --- | --- | --- | --- |")
    for row in efficiency_table(lengths, s):
        print(f"| {row['method']} | {100 * row['efficiency']:.2f}% | {row['sequences']:,} | "
              f"{100 * row['cut']:.2f}% |")

    big = run_child(args.big, s, args.window)
    ref_lengths = mio_like_lengths(args.ref, seed=3)
    start = time.perf_counter()
    cpp = pack_documents(ref_lengths, s, seed=0, window=args.window)
    cpp_small = time.perf_counter() - start
    start = time.perf_counter()
    ref = reference_pack_documents(ref_lengths, s, seed=0, window=args.window)
    python_small = time.perf_counter() - start
    assert np.array_equal(cpp.doc_ids, ref.doc_ids) and np.array_equal(cpp.pack_offsets, ref.pack_offsets)
    per_doc_cpp = big["seconds"] / big["documents"]
    per_doc_py = python_small / args.ref
    print(f"\n## speed and memory (window {args.window:,})")
    print("| packer | documents | wall time (CPU time) | per document | peak RSS added |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| C++ | {big['documents']:,} | {big['seconds']:.1f} s ({big['cpu_seconds']:.1f} s) | "
          f"{1e9 * per_doc_cpp:.0f} ns | "
          f"{big['bytes_per_document']:.2f} B/doc (output arrays {big['output_bytes_per_document']:.2f} B/doc; "
          f"lengths input 4 B/doc not counted) |")
    print(f"| C++ | {args.ref:,} | {cpp_small * 1e3:.1f} ms | {1e9 * cpp_small / args.ref:.0f} ns | |")
    print(f"| Python reference | {args.ref:,} | {python_small:.1f} s | {1e9 * per_doc_py:.0f} ns | |")
    print(f"\nC++ is {per_doc_py / per_doc_cpp:,.0f}x faster per document than the Python reference "
          f"(C++ at {args.big:,} vs Python at {args.ref:,} documents; same output checked at {args.ref:,})")


if __name__ == "__main__":
    main()
