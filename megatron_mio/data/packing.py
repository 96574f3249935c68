"""Masked packing and mixture blending: Python front of the C++ index builders.

``pack_documents`` turns document lengths into packs of at most ``seq_length`` tokens; no document
is ever split.  The algorithm (implemented in ``csrc/packing.cpp``, mirrored here in plain Python
as ``reference_pack_documents`` so tests can compare the two):

1. drop documents longer than ``seq_length`` (counted, and their tokens) and empty ones;
2. shuffle the others, seeded (splitmix64, the same in C++ and Python): each document draws one
   of ``2^b`` buckets (about 16k documents each), then each bucket is Fisher-Yates shuffled
   (Rao-Sandelius: as uniform as one Fisher-Yates, but cache-friendly at 100M documents);
3. cut the shuffled sequence into windows of ``window`` documents; inside each window sort by
   length, longest first (stable), and put each document into the open pack with the smallest
   free space that still holds it (ties: the pack opened first), opening a new pack if none does;
   a pack that reached ``max_documents_per_pack`` (0 = no limit) takes no more documents;
4. emit the window's packs in the order they were opened, documents in insertion order.

Windows keep packs random across the corpus (a pack mixes documents from anywhere) while
best-fit-decreasing keeps waste tiny: on a MIO-like mix, windows of 10,000 documents fill > 99.5%
of the slots (see ``bench/bench_packing.py``).

``blend_indices`` interleaves samples of several datasets.  With weights ``w`` normalised to sum
to 1, dataset ``d``'s ``j``-th sample is *due* at position ``t`` (1-based) once ``w[d] * t > j - 1``
and *late* after ``w[d] * t >= j``; among the due datasets the one with the earliest deadline
``j / w[d]`` is taken (ties: the lowest index).  Earliest-deadline-first is optimal for such unit
jobs and a schedule with deviation below one exists (Tijdeman's chairman-assignment theorem),
so every prefix of length ``t`` holds within one sample of ``w[d] * t`` from every dataset.
(The largest-deficit rule of Megatron's blending helper can drift past one with skewed weights.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from megatron_mio import _C

DEFAULT_WINDOW = 10_000
MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class PackIndex:
    """Packs as compressed arrays: pack ``p`` is ``doc_ids[pack_offsets[p]:pack_offsets[p + 1]]``."""

    pack_offsets: np.ndarray  # int64 [n_packs + 1]
    doc_ids: np.ndarray  # int32 [n_documents_kept]
    n_too_long: int  # documents longer than seq_length, dropped
    too_long_tokens: int
    n_empty: int  # zero-length documents, dropped

    @property
    def n_packs(self) -> int:
        return len(self.pack_offsets) - 1

    def pack(self, p: int) -> np.ndarray:
        return self.doc_ids[self.pack_offsets[p] : self.pack_offsets[p + 1]]

    def documents_per_pack(self) -> np.ndarray:
        return np.diff(self.pack_offsets)


def pack_documents(
    lengths: np.ndarray,
    seq_length: int,
    *,
    seed: int,
    window: int = DEFAULT_WINDOW,
    max_documents_per_pack: int = 0,
) -> PackIndex:
    """Pack documents of the given lengths (C++; see the module docstring for the algorithm)."""
    lengths = np.ascontiguousarray(lengths)
    if lengths.ndim != 1:
        raise ValueError(f"lengths must be 1-D, got shape {lengths.shape}")
    if lengths.size and (lengths.min() < 0 or lengths.max() > np.iinfo(np.int32).max):
        raise ValueError("document lengths must lie in [0, 2^31)")
    out = _C.pack_documents(
        lengths.astype(np.int32, copy=False), int(seq_length), int(window), int(seed) & MASK64,
        int(max_documents_per_pack),
    )
    return PackIndex(
        pack_offsets=out["pack_offsets"], doc_ids=out["doc_ids"], n_too_long=out["n_too_long"],
        too_long_tokens=out["too_long_tokens"], n_empty=out["n_empty"],
    )


def blend_indices(weights, num_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """(dataset_index int16 [num_samples], dataset_sample_index int64 [num_samples]) (C++).

    User-facing weights are checked where they enter (``mixture.py``: file, line and field); the
    C++ refuses an empty list or a weight that is not finite and > 0 (``ValueError``)."""
    return _C.blend_indices(np.asarray(weights, dtype=np.float64), int(num_samples))


# ----------------------------------------------------------------------------------------------
# Plain-Python references of the same algorithms: slow, obviously correct, used by the tests.


def splitmix64(state: int) -> tuple[int, int]:
    """One step of splitmix64: (new state, output)."""
    state = (state + 0x9E3779B97F4A7C15) & MASK64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return state, z ^ (z >> 31)


SHUFFLE_STREAM = 0xD1B54A32D192ED03
SHUFFLE_BUCKET_SIZE = 16384


def shuffle_bucket_bits(n: int) -> int:
    bits = 0
    while (SHUFFLE_BUCKET_SIZE << bits) < n:
        bits += 1
    return bits


def reference_shuffle(items: list[int], seed: int) -> list[int]:
    """Rao-Sandelius shuffle: a random bucket per item, then Fisher-Yates inside each bucket."""
    bits = shuffle_bucket_bits(len(items))
    buckets: list[list[int]] = [[] for _ in range(1 << bits)]
    state = seed & MASK64
    for item in items:
        state, r = splitmix64(state)
        buckets[r >> (64 - bits) if bits else 0].append(item)
    state = (seed & MASK64) ^ SHUFFLE_STREAM
    order = []
    for bucket in buckets:
        for i in range(len(bucket) - 1, 0, -1):
            state, r = splitmix64(state)
            j = r % (i + 1)
            bucket[i], bucket[j] = bucket[j], bucket[i]
        order.extend(bucket)
    return order


def reference_pack_documents(
    lengths, seq_length: int, *, seed: int, window: int = DEFAULT_WINDOW,
    max_documents_per_pack: int = 0,
) -> PackIndex:
    lengths = [int(x) for x in lengths]
    packable, n_too_long, too_long_tokens, n_empty = [], 0, 0, 0
    for doc, length in enumerate(lengths):
        if length == 0:
            n_empty += 1
        elif length > seq_length:
            n_too_long += 1
            too_long_tokens += length
        else:
            packable.append(doc)
    kept = reference_shuffle(packable, seed)
    offsets, doc_ids = [0], []
    for start in range(0, len(kept), window):
        docs = sorted(kept[start : start + window], key=lambda d: -lengths[d])  # stable
        packs: list[list[int]] = []
        free: list[int] = []
        for doc in docs:
            fits = [
                p for p in range(len(packs))
                if free[p] >= lengths[doc]
                and (max_documents_per_pack == 0 or len(packs[p]) < max_documents_per_pack)
            ]
            if fits:
                best = min(fits, key=lambda p: (free[p], p))
            else:
                best = len(packs)
                packs.append([])
                free.append(seq_length)
            packs[best].append(doc)
            free[best] -= lengths[doc]
        for pack in packs:
            doc_ids.extend(pack)
            offsets.append(len(doc_ids))
    return PackIndex(
        pack_offsets=np.array(offsets, dtype=np.int64), doc_ids=np.array(doc_ids, dtype=np.int32),
        n_too_long=n_too_long, too_long_tokens=too_long_tokens, n_empty=n_empty,
    )


def reference_blend_indices(weights, num_samples: int) -> tuple[np.ndarray, np.ndarray]:
    weights = [float(w) for w in weights]
    total = 0.0
    for w in weights:
        total += w
    weights = [w / total for w in weights]
    taken = [0] * len(weights)
    dataset, sample = [], []
    for i in range(num_samples):
        t = float(i + 1)
        due = [d for d in range(len(weights)) if weights[d] * t > float(taken[d])]
        best = min(due, key=lambda d: ((float(taken[d]) + 1.0) / weights[d], d))
        dataset.append(best)
        sample.append(taken[best])
        taken[best] += 1
    return np.array(dataset, dtype=np.int16), np.array(sample, dtype=np.int64)
