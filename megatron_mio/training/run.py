"""What a run is, decided once before anything is built: :class:`RunDescription`.

The configs (``arguments.build_configs``) say what the user asked for; this adds what follows
from the tokenizer and the checkpoint (the vocabulary and its padding) and gathers what every
component that builds or measures the model needs.  It holds the run's own layout, batch and
precision objects (no copies under other names).  It is frozen: nobody writes back.
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron_mio.checkpoint.discovery import ResumePoint
from megatron_mio.model.model_config import ParallelLayout, Precision, Recompute
from megatron_mio.model.presets import ModelPreset
from megatron_mio.model.vocab_padding import padded_vocab_for_load
from megatron_mio.training.arguments import ConfigError
from megatron_mio.training.config import BatchConfig, DataConfig, TrainingConfig


@dataclass(frozen=True)
class RunDescription:
    preset: ModelPreset
    vocab_size: int  # the tokenizer's (or --vocab-size): the loss and the logits cover these ids
    padded_vocab_size: int  # rows of the embedding and output layer (the checkpoint's on a resume)
    layout: ParallelLayout
    batch: BatchConfig
    precision: Precision
    recompute: Recompute


def check_vocabulary(resume: ResumePoint | None, vocab_size: int, data: DataConfig) -> None:
    """Refuse a checkpoint trained on another vocabulary (its rows would mean other tokens)."""
    saved = (resume.layout or {}).get("vocab_size") if resume else None
    if saved is None or saved == vocab_size:
        return
    source = f"--tokenizer-model {data.tokenizer_model}" if data.tokenizer_model else "--vocab-size"
    raise ConfigError(f"{resume.directory} was trained with a vocabulary of {saved} ids, {source} has {vocab_size}: "
                      f"use the tokenizer the checkpoint was trained with")


def describe_run(config: TrainingConfig, vocab_size: int, resume: ResumePoint | None) -> RunDescription:
    layout = config.parallel.layout
    return RunDescription(
        preset=config.model.preset,
        vocab_size=vocab_size,
        padded_vocab_size=padded_vocab_for_load(
            vocab_size, config.model.make_vocab_size_divisible_by, layout.tensor_model_parallel_size,
            resume.layout if resume else None,
        ),
        layout=layout,
        batch=config.batch,
        precision=config.precision,
        recompute=config.model.recompute,
    )
