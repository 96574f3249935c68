"""Data-parallel sampling with exact resume, and the one call that gives the trainer its batches.

The sample order is a pure function of (data, seed, weights, ``num_samples``) (see
``BlendedPackedDataset``), so a run's position in it is one integer: ``consumed_samples``, the
number of samples all data-parallel ranks together have taken.  Each step takes the next
``micro_batch_size * data_parallel_size`` samples and rank ``r`` reads the ``r``-th block of
``micro_batch_size`` of them (Megatron's layout), so after a restart with the checkpoint's
``consumed_samples`` every rank continues with exactly the sequences it would have read next,
whatever the data-parallel size was before.

Trainer entry point::

    mixture = read_mixture("examples/data/stage1.yaml")  # or data_path=["0.7", "/d/a", "0.3", "/d/b"]
    packing = PackingConfig(seq_length=2800, seed=1234, pad_id=tokenizer.pad_id,
                            modality_table=tokenizer.modality_table())
    loader = build_pretraining_dataloader(
        mixture, packing, num_samples=train_iters * global_batch_size, micro_batch_size=2,
        data_parallel_rank=dp_rank, data_parallel_size=dp_size, consumed_samples=consumed)
    for batch in loader: ...  # dict of tensors per megatron_mio/data/batch.py

``build_dataloader`` serves any dataset of batch-contract items in this order (``--mock-data``
uses it over synthetic packs).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import torch

from megatron_mio.data.mixture import Mixture, build_mixture_dataset
from megatron_mio.data.packed_dataset import PackingConfig, check_modality_table


class DataParallelBatchSampler:
    """Yields this rank's micro-batches of sample indices, starting after ``consumed_samples``."""

    def __init__(self, total_samples: int, consumed_samples: int, micro_batch_size: int,
                 data_parallel_rank: int, data_parallel_size: int):
        if micro_batch_size <= 0 or data_parallel_size <= 0:
            raise ValueError("micro_batch_size and data_parallel_size must be > 0")
        if not 0 <= data_parallel_rank < data_parallel_size:
            raise ValueError(f"data_parallel_rank {data_parallel_rank} not in [0, {data_parallel_size})")
        if not 0 <= consumed_samples <= total_samples:
            raise ValueError(f"consumed_samples {consumed_samples} not in [0, {total_samples}] "
                             "(the run asked for more samples than the dataset was built for?)")
        self.total_samples = total_samples
        self.consumed_samples = consumed_samples
        self.micro_batch_size = micro_batch_size
        self.rank = data_parallel_rank
        self.stride = micro_batch_size * data_parallel_size

    def __len__(self) -> int:
        return (self.total_samples - self.consumed_samples) // self.stride

    def __iter__(self) -> Iterator[list[int]]:
        first = self.consumed_samples + self.rank * self.micro_batch_size
        for step_start in range(first, self.consumed_samples + len(self) * self.stride, self.stride):
            yield list(range(step_start, step_start + self.micro_batch_size))


def build_dataloader(dataset, *, micro_batch_size: int, data_parallel_rank: int,
                     data_parallel_size: int, consumed_samples: int = 0, num_workers: int = 0,
                     pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """A DataLoader over ``dataset`` yielding this rank's micro-batches after ``consumed_samples``.

    Items are dicts of tensors with fixed shapes, so torch's default collation stacks them into
    the batch contract; workers do not change the order (the sampler fixes it).
    """
    sampler = DataParallelBatchSampler(len(dataset), consumed_samples, micro_batch_size,
                                       data_parallel_rank, data_parallel_size)
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, num_workers=num_workers, pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
    )


def load_modality_table(path: str | os.PathLike | None) -> np.ndarray | None:
    """A modality table saved with ``np.save`` (e.g. from ``MIOTokenizer.modality_table()``)."""
    if path is None:
        return None
    return check_modality_table(np.load(path), source=os.fspath(path))


def build_pretraining_dataloader(
    mixture: Mixture, packing: PackingConfig, *, num_samples: int, micro_batch_size: int,
    data_parallel_rank: int, data_parallel_size: int, consumed_samples: int = 0,
    num_workers: int = 0, pin_memory: bool = False,
) -> torch.utils.data.DataLoader:
    """From a checked mixture (``mixture.read_mixture``) to this rank's iterator of packed batches.

    Call it on every rank after torch.distributed is initialised: global rank 0 builds and caches
    the indices, the others wait on a barrier and memory-map them.
    """
    dataset = build_mixture_dataset(mixture, packing, num_samples)
    return build_dataloader(dataset, micro_batch_size=micro_batch_size,
                            data_parallel_rank=data_parallel_rank,
                            data_parallel_size=data_parallel_size,
                            consumed_samples=consumed_samples, num_workers=num_workers,
                            pin_memory=pin_memory)
