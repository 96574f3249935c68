"""The trainer's settings, one frozen config per component.

``arguments.build_configs`` is the one function that turns the Megatron-LM-style flags into
these; every component takes only its own config (the model builder a :class:`ModelConfig`, the
optimizer an :class:`OptimConfig`, the checkpointer a :class:`CheckpointConfig`, ...), and nothing
outside ``arguments.py`` sees the argparse namespace.  Derived values (data-parallel size,
micro-batches per iteration, warmup steps) are fields here, computed once.
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron_mio.checkpoint.retention import RetentionPolicy
from megatron_mio.model.model_config import ParallelLayout, Precision, Recompute
from megatron_mio.model.presets import ModelPreset


@dataclass(frozen=True)
class ModelConfig:
    preset: ModelPreset  # --model-preset with the shape flags applied
    attention_backend: str
    make_vocab_size_divisible_by: int
    refused_fusions: tuple[str, ...]  # TransformerConfig fields the --no-*-fusion flags turn off
    recompute: Recompute
    use_cpu_initialization: bool


@dataclass(frozen=True)
class ParallelConfig:
    layout: ParallelLayout
    use_distributed_optimizer: bool
    overlap_grad_reduce: bool
    overlap_param_gather: bool
    timeout_minutes: int  # every process group gives up on a lost peer after this


@dataclass(frozen=True)
class BatchConfig:
    micro_batch_size: int
    global_batch_size: int
    num_microbatches: int  # per iteration and data-parallel rank
    seq_length: int


@dataclass(frozen=True)
class OptimConfig:
    """AdamW and its learning-rate / weight-decay schedule (Megatron-LM semantics)."""

    lr: float
    min_lr: float
    weight_decay: float
    adam_beta1: float
    adam_beta2: float
    adam_eps: float
    clip_grad: float
    lr_warmup_init: float
    lr_warmup_steps: int
    lr_decay_iters: int
    lr_decay_style: str
    start_weight_decay: float
    end_weight_decay: float
    weight_decay_incr_style: str
    weight_decay_incr_iters: int
    override_opt_param_scheduler: bool  # the schedule comes from the flags, not the checkpoint


@dataclass(frozen=True)
class CheckpointConfig:
    save: str | None
    load: str | None
    ckpt_step: int | None
    allow_missing_checkpoint: bool
    save_interval: int | None
    finetune: bool  # --load's weights only: iteration 0, fresh optimizer and schedule
    load_optim: bool
    load_rng: bool
    save_optim: bool
    save_rng: bool
    async_save: bool
    fully_reshardable: bool  # --dist-ckpt-optim-fully-reshardable
    retention: RetentionPolicy = RetentionPolicy()  # --keep-last-checkpoints, --keep-checkpoints-every


@dataclass(frozen=True)
class DataConfig:
    data_path: tuple[str, ...] | None
    data_config: str | None
    mock_data: bool
    tokenizer_model: str | None
    vocab_size: int | None  # without a tokenizer (mock data)
    valid_data_path: tuple[str, ...] | None
    valid_data_config: str | None
    eval_interval: int | None
    eval_iters: int
    num_workers: int
    seed: int

    @property
    def evaluates(self) -> bool:
        return bool(self.eval_interval and self.eval_iters)


@dataclass(frozen=True)
class LoggingConfig:
    log_interval: int
    tensorboard_dir: str | None
    metrics_file: str | None
    timing_log_level: int = 1  # 0 off, 1 the time split, 2 also each stage's compute
    wandb_project: str | None = None
    wandb_exp_name: str | None = None
    wandb_save_dir: str | None = None


@dataclass(frozen=True)
class StopConfig:
    train_iters: int
    exit_interval: int | None
    exit_duration_in_mins: float | None
    exit_signal_handler: bool
    max_skipped_iterations_in_a_row: int


@dataclass(frozen=True)
class TrainingConfig:
    """Everything a run was asked to do, by component."""

    model: ModelConfig
    parallel: ParallelConfig
    precision: Precision
    batch: BatchConfig
    optim: OptimConfig
    checkpoint: CheckpointConfig
    data: DataConfig
    logging: LoggingConfig
    stop: StopConfig
    seed: int
    use_cpu: bool
