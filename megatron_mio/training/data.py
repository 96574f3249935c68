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
from megatron_mio.training.config import BatchConfig, DataConfig
from megatron_mio.training.mock_data import MockPacks, mock_modality_table


@dataclass(frozen=True)
class Vocabulary:
    """What the data path needs of the tokenizer, read from it once per run."""

    size: int  # ids the model predicts (padding columns excluded)
    pad_id: int  # fills the tail of a pack
    modality_table: np.ndarray = field(compare=False, repr=False)  # id -> Modality of that token


def read_vocabulary(data: DataConfig) -> Vocabulary:
    """``--tokenizer-model``'s vocabulary, or (``--vocab-size``) the mock split of the id space."""
    if data.tokenizer_model:
        from megatron_mio.tokenizer import MIOTokenizer

        tokenizer = MIOTokenizer(data.tokenizer_model)
        return Vocabulary(int(tokenizer.vocab_size), int(tokenizer.pad_id), tokenizer.modality_table())
    return Vocabulary(int(data.vocab_size), 0, mock_modality_table(int(data.vocab_size)))


@dataclass(frozen=True)
class BatchSource:
    """One stream of micro-batches: training or validation, ``num_samples`` packs in all."""

    data: DataConfig
    batch: BatchConfig
    vocab: Vocabulary
    num_samples: int
    validation: bool

    def iterators(self, consumed_samples: int, num_chunks: int) -> list:
        """One iterator per model chunk, all yielding the same micro-batches after ``consumed_samples``."""
        return [iter(self.loader(consumed_samples)) for _ in range(num_chunks)]

    def loader(self, consumed_samples: int):
        placement = dict(micro_batch_size=self.batch.micro_batch_size,
                         data_parallel_rank=parallel_state.get_data_parallel_rank(),
                         data_parallel_size=parallel_state.get_data_parallel_world_size(),
                         consumed_samples=consumed_samples)
        if self.data.mock_data:
            # In-process: a mock pack costs less than handing it over from a loader worker.
            packs = MockPacks(seed=self.data.seed + (1 if self.validation else 0), seq_length=self.batch.seq_length,
                              vocab_size=self.vocab.size, num_samples=self.num_samples)
            return build_dataloader(packs, **placement)
        from megatron_mio.training import real_data

        return real_data.packed_loader(self.data, self.batch.seq_length, self.vocab.pad_id, self.vocab.modality_table,
                                       self.num_samples, self.validation, **placement)


def train_source(data: DataConfig, batch: BatchConfig, vocab: Vocabulary, train_iters: int) -> BatchSource:
    return BatchSource(data, batch, vocab, train_iters * batch.global_batch_size, validation=False)


def valid_source(data: DataConfig, batch: BatchConfig, vocab: Vocabulary) -> BatchSource:
    """Validation batches: the same stream at every evaluation (mock data: another seed)."""
    return BatchSource(data, batch, vocab, data.eval_iters * batch.global_batch_size, validation=True)


class ValidationBatches:
    """The validation loaders, built at the first evaluation and reused by every later one: each
    evaluation is a fresh pass over the same batches, and loader workers persist between them."""

    def __init__(self, source: BatchSource, num_chunks: int):
        self.source, self.num_chunks = source, num_chunks
        self.loaders: list | None = None

    def new_pass(self) -> list:
        """One iterator per model chunk, from the first validation batch."""
        if self.loaders is None:
            self.loaders = [self.source.loader(0) for _ in range(self.num_chunks)]
        return [iter(loader) for loader in self.loaders]
