"""Synthetic packed batches (``--mock-data``), like Megatron-LM's mock datasets.

Every pack is a pure function of ``(seed, global sample index)`` and ``MockPacks`` serves them
through the same data-parallel sampler as real data, so a resumed run sees exactly the samples it
would have seen without stopping, on any data-parallel layout.  The documents are
learnable (each is an arithmetic progression of ids inside one modality's id range), so a tiny
model's loss falls within a few steps.  Batches follow ``megatron_mio.data.batch``.
"""

from __future__ import annotations

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


class MockPacks(torch.utils.data.Dataset):
    """``num_samples`` mock packs, sample ``i`` = ``mock_pack(seed, i, ...)``: the dataset that
    ``--mock-data`` serves through the real data-parallel sampler (``data/sampler.py``)."""

    def __init__(self, *, seed: int, seq_length: int, vocab_size: int, num_samples: int):
        self.seed, self.seq_length, self.vocab_size = seed, seq_length, vocab_size
        self.num_samples = num_samples

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return mock_pack(self.seed, index, self.seq_length, self.vocab_size)
