"""Synthetic packed batches (``--mock-data``), like Megatron-LM's mock datasets.

Every pack is a pure function of ``(seed, global sample index)``, so a resumed run sees exactly
the samples it would have seen without stopping, on any data-parallel layout.  The documents are
learnable (each is an arithmetic progression of ids inside one modality's id range), so a tiny
model's loss falls within a few steps.  Batches follow ``megatron_mio.data.batch``.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from megatron_mio.tokenizer.vocab import Modality

MIN_DOCUMENT = 8


def mock_modality_table(vocab_size: int) -> np.ndarray:
    """Ids split in thirds: text, image, speech (the real table comes from the tokenizer)."""
    table = np.zeros(vocab_size, dtype=np.uint8)
    table[vocab_size // 3: 2 * vocab_size // 3] = Modality.IMAGE
    table[2 * vocab_size // 3:] = Modality.SPEECH
    return table


def max_documents(seq_length: int) -> int:
    return seq_length // MIN_DOCUMENT + 1


def mock_pack(seed: int, index: int, seq_length: int, vocab_size: int) -> dict[str, torch.Tensor]:
    """One packed sample: documents of random lengths, each from one modality's id range."""
    rng = np.random.default_rng([seed, index])
    third = vocab_size // 3
    tokens = np.zeros(seq_length, dtype=np.int64)
    labels = np.zeros(seq_length, dtype=np.int64)
    loss_mask = np.zeros(seq_length, dtype=np.float32)
    positions = np.zeros(seq_length, dtype=np.int64)
    bounds = [0]
    start = 0
    while start < seq_length:
        length = int(min(seq_length - start, rng.integers(MIN_DOCUMENT, max(MIN_DOCUMENT + 1, seq_length // 2))))
        kind = int(rng.integers(0, 3))
        stride = int(rng.integers(1, 4))
        first = int(rng.integers(0, third))
        doc = kind * third + (first + stride * np.arange(length)) % third
        tokens[start:start + length] = doc
        labels[start:start + length - 1] = doc[1:]
        loss_mask[start:start + length - 1] = 1.0
        positions[start:start + length] = np.arange(length)
        start += length
        bounds.append(start)
    cu = np.full(max_documents(seq_length) + 1, -1, dtype=np.int32)
    cu[: len(bounds)] = bounds
    table = mock_modality_table(vocab_size)
    return {
        "tokens": torch.from_numpy(tokens),
        "labels": torch.from_numpy(labels),
        "loss_mask": torch.from_numpy(loss_mask),
        "position_ids": torch.from_numpy(positions),
        "cu_seqlens": torch.from_numpy(cu),
        "modality": torch.from_numpy(table[labels]),
    }


def mock_batches(
    *, seed: int, seq_length: int, vocab_size: int, micro_batch_size: int,
    data_parallel_rank: int, data_parallel_size: int, consumed_samples: int,
) -> Iterator[dict[str, torch.Tensor]]:
    """Micro-batches for one data-parallel rank, Megatron's sample order.

    A step of ``micro_batch_size x data_parallel_size`` consecutive samples is split across the
    data-parallel ranks, rank ``r`` taking the ``r``-th slice (as Megatron-LM's pretraining sampler).
    """
    step = micro_batch_size * data_parallel_size
    position = consumed_samples
    while True:
        first = position + data_parallel_rank * micro_batch_size
        packs = [mock_pack(seed, first + j, seq_length, vocab_size) for j in range(micro_batch_size)]
        yield {key: torch.stack([p[key] for p in packs]) for key in packs[0]}
        position += step
