"""Where the trainer's micro-batches come from: the packed dataset, or ``--mock-data``.

The trainer needs one iterator per model chunk (the interleaved pipeline schedule pulls from each
chunk's iterator), all yielding the same micro-batches in the same order, starting after
``consumed_samples`` so that a resumed run continues exactly where the saved one stopped.  Both
sources go through the one data-parallel sampler (``megatron_mio.data.sampler``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from megatron.core import parallel_state

from megatron_mio.data.sampler import build_dataloader
from megatron_mio.training.mock_data import MockPacks, mock_modality_table


@dataclass(frozen=True)
class Vocabulary:
    """What the data path needs of the tokenizer, read from it once per run."""

    size: int  # ids the model predicts (padding columns excluded)
    pad_id: int  # fills the tail of a pack
    modality_table: np.ndarray = field(compare=False, repr=False)  # id -> Modality of that token


def read_vocabulary(args) -> Vocabulary:
    """``--tokenizer-model``'s vocabulary, or (``--vocab-size``) the mock split of the id space."""
    if args.tokenizer_model:
        from megatron_mio.tokenizer import MIOTokenizer

        tokenizer = MIOTokenizer(args.tokenizer_model)
        return Vocabulary(int(tokenizer.vocab_size), int(tokenizer.pad_id), tokenizer.modality_table())
    return Vocabulary(int(args.vocab_size), 0, mock_modality_table(int(args.vocab_size)))


def _one_iterator(args, vocab: Vocabulary, consumed_samples: int, validation: bool):
    num_samples = (args.eval_iters if validation else args.train_iters) * args.global_batch_size
    placement = dict(micro_batch_size=args.micro_batch_size,
                     data_parallel_rank=parallel_state.get_data_parallel_rank(),
                     data_parallel_size=parallel_state.get_data_parallel_world_size(),
                     consumed_samples=consumed_samples)
    if args.mock_data:
        # In-process: a mock pack costs less than handing it over from a loader worker.
        packs = MockPacks(seed=args.seed + (1 if validation else 0), seq_length=args.seq_length,
                          vocab_size=vocab.size, num_samples=num_samples)
        return iter(build_dataloader(packs, **placement))
    from megatron_mio.training import real_data

    return iter(real_data.packed_loader(args, vocab.pad_id, vocab.modality_table, num_samples, validation,
                                        **placement))


def train_iterators(args, vocab: Vocabulary, consumed_samples: int, num_chunks: int) -> list:
    return [_one_iterator(args, vocab, consumed_samples, False) for _ in range(num_chunks)]


def valid_iterators(args, vocab: Vocabulary, num_chunks: int) -> list:
    """Validation batches: the same stream at every evaluation (mock data: another seed)."""
    return [_one_iterator(args, vocab, 0, True) for _ in range(num_chunks)]
