"""Where the trainer's micro-batches come from: the packed dataset, or ``--mock-data``.

The trainer needs one iterator per model chunk (the interleaved pipeline schedule pulls from each
chunk's iterator), all yielding the same micro-batches in the same order, starting after
``consumed_samples`` so that a resumed run continues exactly where the saved one stopped.  Both
sources go through the one data-parallel sampler (``megatron_mio.data.sampler``).
"""

from __future__ import annotations

import numpy as np
from megatron.core import parallel_state

from megatron_mio.data.sampler import build_dataloader
from megatron_mio.training.mock_data import MockPacks, mock_modality_table


def modality_table(args, vocab_size: int) -> np.ndarray:
    """Per-token modality lookup: from the tokenizer, or the mock split of the id space."""
    if args.tokenizer_model:
        from megatron_mio.tokenizer import MIOTokenizer

        return MIOTokenizer(args.tokenizer_model).modality_table()
    return mock_modality_table(vocab_size)


def tokenizer_vocab_size(args) -> int:
    if args.tokenizer_model:
        from megatron_mio.tokenizer import MIOTokenizer

        return int(MIOTokenizer(args.tokenizer_model).vocab_size)
    return int(args.vocab_size)


def _one_iterator(args, vocab_size: int, table, consumed_samples: int, validation: bool):
    num_samples = (args.eval_iters if validation else args.train_iters) * args.global_batch_size
    placement = dict(micro_batch_size=args.micro_batch_size,
                     data_parallel_rank=parallel_state.get_data_parallel_rank(),
                     data_parallel_size=parallel_state.get_data_parallel_world_size(),
                     consumed_samples=consumed_samples)
    if args.mock_data:
        # In-process: a mock pack costs less than handing it over from a loader worker.
        packs = MockPacks(seed=args.seed + (1 if validation else 0), seq_length=args.seq_length,
                          vocab_size=vocab_size, num_samples=num_samples)
        return iter(build_dataloader(packs, **placement))
    from megatron_mio.training import real_data

    return iter(real_data.packed_loader(args, table, num_samples, validation, **placement))


def train_iterators(args, vocab_size: int, table, consumed_samples: int, num_chunks: int) -> list:
    return [_one_iterator(args, vocab_size, table, consumed_samples, False) for _ in range(num_chunks)]


def valid_iterators(args, vocab_size: int, table, num_chunks: int) -> list:
    """Validation batches: the same stream at every evaluation (mock data: another seed)."""
    return [_one_iterator(args, vocab_size, table, 0, True) for _ in range(num_chunks)]
