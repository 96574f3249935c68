"""The trainer's arguments: the one place that defines every flag.

Flags are spelled as in Megatron-LM wherever Megatron-LM has the same setting
(``--tensor-model-parallel-size``, ``--lr-warmup-fraction``, ...), so launch scripts carry over.
Our own flags: ``--data-config``, ``--tokenizer-model``, ``--model-preset``,
``--attention-backend``, ``--use-cpu``, ``--metrics-file``, ``--finetune``, ``--mock-data``, ...

``--config FILE.yaml`` takes the same keys (``lr_warmup_fraction`` or ``lr-warmup-fraction``);
flags given on the command line override the file.  A key that is not a flag is an error naming
the file, the line and the key, so a typo in a stage config never silently falls back to a default
(``config_file.py`` reads it).  :func:`build_configs` is the one place the flags become the frozen
per-component configs of ``config.py``; nothing outside this module sees the argparse namespace.
"""

from __future__ import annotations

import argparse
import dataclasses
import os

from megatron_mio.checkpoint.retention import RetentionPolicy
from megatron_mio.model.fusions import FUSION_FLAGS
from megatron_mio.model.model_config import ParallelLayout, Precision, Recompute
from megatron_mio.model.presets import PRESETS, VOCAB_SIZE_DIVISIBLE_BY, ModelPreset, get_preset
from megatron_mio.training.config import (
    BatchConfig,
    CheckpointConfig,
    DataConfig,
    LoggingConfig,
    ModelConfig,
    OptimConfig,
    ParallelConfig,
    StopConfig,
    TrainingConfig,
)
from megatron_mio.training.config_file import ConfigFileError, config_defaults

# Every ModelPreset field has a flag of the same name that overrides the preset.
MODEL_OVERRIDES = tuple(field.name for field in dataclasses.fields(ModelPreset))


class ConfigError(ValueError):
    """A mistake in the run's inputs (flags, --config file, tokenizer, checkpoint) that the user
    fixes: ``python -m megatron_mio.pretrain`` prints it as one line on rank 0 and exits 2."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises ConfigError instead of printing usage and exiting on every rank."""

    def error(self, message):
        raise ConfigError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m megatron_mio.pretrain",
        description="Train MIO (Yi-6B + multimodal tokens) with megatron-core.",
        allow_abbrev=False,
    )
    parser.add_argument("--config", default=None, help="YAML file with the same keys as the flags; flags override it")
    for title, add_flags in _FLAG_GROUPS:
        add_flags(parser.add_argument_group(title))
    return parser


def _model_flags(g) -> None:
    g.add_argument("--model-preset", default="yi-6b", choices=sorted(PRESETS))
    g.add_argument("--num-layers", type=int, default=None)
    g.add_argument("--hidden-size", type=int, default=None)
    g.add_argument("--ffn-hidden-size", type=int, default=None)
    g.add_argument("--num-attention-heads", type=int, default=None)
    g.add_argument("--num-query-groups", type=int, default=None)
    g.add_argument("--group-query-attention", action="store_true", help="accepted for Megatron-LM compatibility; GQA follows --num-query-groups")
    g.add_argument("--norm-epsilon", type=float, default=None)
    g.add_argument("--rotary-base", type=float, default=None)
    g.add_argument("--max-position-embeddings", type=int, default=None)
    g.add_argument("--init-method-std", type=float, default=None)
    g.add_argument("--make-vocab-size-divisible-by", type=int, default=VOCAB_SIZE_DIVISIBLE_BY)
    g.add_argument("--vocab-size", type=int, default=None, help="vocabulary size when no --tokenizer-model is given (mock data)")
    # No argparse choices: the names are the records of megatron_mio/model/attention.py, which
    # imports megatron-core; they are checked in _model_config, so that --help stays instant.
    g.add_argument("--attention-backend", default=None, metavar="NAME",
                   help="a record of megatron_mio/model/attention.py BACKENDS (te, torch, local); "
                        "default: te when transformer-engine is installed, else torch")
    g.add_argument("--use-cpu-initialization", action="store_true", help="initialise weights on the CPU as unsplit master weights (same numbers for any TP)")


def _parallelism_flags(g) -> None:
    g.add_argument("--tensor-model-parallel-size", type=int, default=1)
    g.add_argument("--pipeline-model-parallel-size", type=int, default=1)
    g.add_argument("--num-layers-per-virtual-pipeline-stage", type=int, default=None)
    g.add_argument("--sequence-parallel", action="store_true")
    g.add_argument("--use-distributed-optimizer", action="store_true")
    g.add_argument("--overlap-grad-reduce", action="store_true")
    g.add_argument("--overlap-param-gather", action="store_true")
    g.add_argument("--accumulate-allreduce-grads-in-fp32", action="store_true")
    g.add_argument("--distributed-timeout-minutes", type=int, default=30)


def _batch_and_schedule_flags(g) -> None:
    g.add_argument("--micro-batch-size", type=int, default=1)
    g.add_argument("--global-batch-size", type=int, default=None, help="default: micro batch x data-parallel size")
    g.add_argument("--seq-length", type=int, default=2800)
    g.add_argument("--train-iters", type=int, default=None)
    g.add_argument("--exit-interval", type=int, default=None, help="save and exit when the iteration is a multiple of this")
    g.add_argument("--exit-duration-in-mins", type=float, default=None, help="save and exit after this many minutes of training")
    g.add_argument("--exit-signal-handler", dest="exit_signal_handler", action="store_true", default=True,
                   help="on SIGTERM/SIGUSR1: finish the iteration, save, exit 0 (default on)")
    g.add_argument("--no-exit-signal-handler", dest="exit_signal_handler", action="store_false")
    g.add_argument("--max-skipped-iterations-in-a-row", type=int, default=10,
                   help="stop after this many consecutive iterations with a non-finite loss or gradient")


def _optimizer_and_learning_rate_flags(g) -> None:
    g.add_argument("--optimizer", default="adam", choices=["adam"], help="adam = AdamW (decoupled weight decay)")
    g.add_argument("--lr", type=float, default=3e-5)
    g.add_argument("--min-lr", type=float, default=0.0)
    g.add_argument("--lr-decay-style", default="cosine", choices=["constant", "linear", "cosine", "inverse-square-root"])
    g.add_argument("--lr-decay-iters", type=int, default=None, help="default: --train-iters")
    g.add_argument("--lr-warmup-fraction", type=float, default=None)
    g.add_argument("--lr-warmup-iters", type=int, default=0)
    g.add_argument("--lr-warmup-init", type=float, default=0.0)
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--start-weight-decay", type=float, default=None)
    g.add_argument("--end-weight-decay", type=float, default=None)
    g.add_argument("--weight-decay-incr-style", default="constant", choices=["constant", "linear", "cosine"])
    g.add_argument("--adam-beta1", type=float, default=0.9)
    g.add_argument("--adam-beta2", type=float, default=0.95)
    g.add_argument("--adam-eps", type=float, default=1e-8)
    g.add_argument("--clip-grad", type=float, default=1.0)
    g.add_argument("--override-opt_param-scheduler", dest="override_opt_param_scheduler", action="store_true",
                   help="take the schedule from the flags, not from the checkpoint")


def _precision_and_memory_flags(g) -> None:
    g.add_argument("--bf16", action="store_true")
    g.add_argument("--fp16", action="store_true")
    g.add_argument("--loss-scale", type=float, default=None, help="fp16 static loss scale; default dynamic")
    g.add_argument("--initial-loss-scale", type=float, default=2.0**32)
    g.add_argument("--min-loss-scale", type=float, default=1.0)
    g.add_argument("--recompute-granularity", default=None, choices=["full", "selective"])
    g.add_argument("--recompute-method", default=None, choices=["uniform", "block"])
    g.add_argument("--recompute-num-layers", type=int, default=None)
    for flag, field in FUSION_FLAGS.items():
        g.add_argument(f"--no-{flag}", action="store_true",
                       help=f"do not use {field} even where its kernel imports (megatron_mio.model.fusions)")


def _data_flags(g) -> None:
    g.add_argument("--data-path", nargs="*", default=None, help="Megatron-style [weight] prefix [weight prefix ...]")
    g.add_argument("--data-config", default=None, help="stage mixture YAML (datasets and per-GPU ratios)")
    g.add_argument("--tokenizer-model", default=None, help="MIO tokenizer directory")
    g.add_argument("--mock-data", action="store_true", help="synthetic packed documents (no files needed)")
    g.add_argument("--valid-data-path", nargs="*", default=None, help="validation data, as --data-path")
    g.add_argument("--valid-data-config", default=None, help="validation mixture YAML, as --data-config")
    g.add_argument("--eval-interval", type=int, default=None, help="evaluate every N iterations")
    g.add_argument("--eval-iters", type=int, default=0, help="validation batches per evaluation")
    g.add_argument("--num-workers", type=int, default=2, help="DataLoader worker processes per rank")


def _checkpoints_flags(g) -> None:
    g.add_argument("--save", default=None)
    g.add_argument("--load", default=None, help="resume from (or, with --finetune, take the weights of) this checkpoint directory")
    g.add_argument("--ckpt-step", type=int, default=None,
                   help="load this iteration of --load instead of the latest (e.g. to skip a damaged checkpoint)")
    g.add_argument("--allow-missing-checkpoint", action="store_true",
                   help="start from scratch when --load holds no checkpoint yet (the launch scripts' resume); "
                        "without it a --load with no checkpoint is an error")
    g.add_argument("--save-interval", type=int, default=None)
    g.add_argument("--finetune", action="store_true", help="load model weights only: iteration 0, fresh optimizer and schedule")
    g.add_argument("--no-load-optim", action="store_true")
    g.add_argument("--no-load-rng", action="store_true")
    g.add_argument("--no-save-optim", action="store_true")
    g.add_argument("--no-save-rng", action="store_true")
    g.add_argument("--async-save", action="store_true", help="write checkpoints in a background process")
    g.add_argument("--keep-last-checkpoints", type=int, default=None, metavar="K",
                   help="keep only the latest K checkpoints of --save (older ones are deleted once a newer one "
                        "is complete; never the one resumed from); default: keep all")
    g.add_argument("--keep-checkpoints-every", type=int, default=None, metavar="N",
                   help="with --keep-last-checkpoints: also keep, for good, every checkpoint whose iteration is a multiple of N")
    g.add_argument("--ckpt-format", default="torch_dist", choices=["torch_dist"])
    g.add_argument("--dist-ckpt-optim-fully-reshardable", action="store_true",
                   help="save the distributed optimizer so that a resume may change TP/PP (gathers the "
                        "whole optimizer state of a model-parallel rank on one host); default: "
                        "dp_reshardable, each rank writes its own shard (resume may change DP only)")


def _logging_flags(g) -> None:
    g.add_argument("--log-interval", type=int, default=1)
    g.add_argument("--tensorboard-dir", default=None)
    g.add_argument("--metrics-file", default=None, help="append one JSON line per logged iteration")
    g.add_argument("--timing-log-level", type=int, default=1, choices=[0, 1, 2],
                   help="1: where the time goes in every logged line (data wait, forward-backward, exposed gradient "
                        "reduction, optimizer, checkpoint; peak memory; slowest/fastest rank), read with one device "
                        "synchronisation per logged line; 2: also the busiest pipeline stage's own forward and "
                        "backward compute (megatron-core's per-micro-batch timers), the rest of forward-backward "
                        "being pipeline bubble and transfers; 0: off")
    g.add_argument("--wandb-project", default=None, help="log to Weights & Biases under this project (needs wandb)")
    g.add_argument("--wandb-exp-name", default=None, help="the W&B run name")
    g.add_argument("--wandb-save-dir", default=None, help="where W&B writes its run directory (default: ./wandb)")


def _platform_flags(g) -> None:
    g.add_argument("--seed", type=int, default=1234)
    g.add_argument("--use-cpu", action="store_true", help="run on the CPU with gloo (tests, laptops)")


_FLAG_GROUPS = (
    ("model", _model_flags),
    ("parallelism", _parallelism_flags),
    ("batch and schedule", _batch_and_schedule_flags),
    ("optimizer and learning rate", _optimizer_and_learning_rate_flags),
    ("precision and memory", _precision_and_memory_flags),
    ("data", _data_flags),
    ("checkpoints", _checkpoints_flags),
    ("logging", _logging_flags),
    ("platform", _platform_flags),
)


def parse_flags(argv: list[str] | None = None) -> argparse.Namespace:
    """Flags over ``--config`` over defaults, as given (nothing derived)."""
    parser = build_parser()
    first, _ = parser.parse_known_args(argv)
    if first.config:
        if not os.path.exists(first.config):
            raise ConfigError(f"--config {first.config}: no such file")
        try:
            parser.set_defaults(**config_defaults(parser, first.config))
        except ConfigFileError as err:
            raise ConfigError(str(err)) from None
    return parser.parse_args(argv)


def parse_args(argv: list[str] | None = None, world_size: int | None = None) -> TrainingConfig:
    """The run's per-component configs from the command line (see :func:`build_configs`)."""
    if world_size is None:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
    return build_configs(parse_flags(argv), world_size)


def build_configs(args: argparse.Namespace, world_size: int) -> TrainingConfig:
    """The one translation of the flags into configs: checks combinations, derives sizes once."""
    _check_ranges(args)
    _check_sources(args)
    layout, batch = _parallel_layout(args, world_size, _model_preset(args))
    config = TrainingConfig(
        model=_model_config(args), parallel=_parallel_config(args, layout), precision=_precision(args),
        batch=batch, optim=_optim_config(args), checkpoint=_checkpoint_config(args), data=_data_config(args),
        logging=_logging_config(args),
        stop=StopConfig(args.train_iters, args.exit_interval, args.exit_duration_in_mins,
                        args.exit_signal_handler, args.max_skipped_iterations_in_a_row),
        seed=args.seed, use_cpu=args.use_cpu,
    )
    _check_paths(config.data, config.checkpoint)
    return config


def _model_preset(args: argparse.Namespace) -> ModelPreset:
    """--model-preset with every model flag that was given applied on top."""
    overrides = {field: getattr(args, field) for field in MODEL_OVERRIDES}
    return get_preset(args.model_preset).with_overrides(**overrides)


def _model_config(args: argparse.Namespace) -> ModelConfig:
    from megatron_mio.model.attention import BACKENDS, available_backends, default_backend

    if args.attention_backend is not None and args.attention_backend not in BACKENDS:
        raise ConfigError(f"--attention-backend {args.attention_backend}: no such backend "
                          f"(choose from {', '.join(BACKENDS)})")
    backend = args.attention_backend or default_backend()
    if backend not in available_backends():
        raise ConfigError(f"--attention-backend {backend} is not available here "
                          f"(available: {', '.join(available_backends())})")
    preset = _model_preset(args)
    if args.seq_length > preset.max_position_embeddings:
        raise ConfigError(
            f"--seq-length {args.seq_length} is longer than the model's --max-position-embeddings "
            f"{preset.max_position_embeddings} (preset {args.model_preset}): shorten --seq-length or raise "
            f"--max-position-embeddings"
        )
    refused = tuple(field for flag, field in FUSION_FLAGS.items() if getattr(args, "no_" + flag.replace("-", "_")))
    return ModelConfig(
        preset=preset, attention_backend=backend, make_vocab_size_divisible_by=args.make_vocab_size_divisible_by,
        refused_fusions=refused,
        recompute=Recompute(args.recompute_granularity, args.recompute_method, args.recompute_num_layers),
        use_cpu_initialization=args.use_cpu_initialization,
    )


def _parallel_layout(args: argparse.Namespace, world_size: int, preset: ModelPreset) -> tuple[ParallelLayout, BatchConfig]:
    """Data-parallel size, micro-batches per iteration and virtual stages from the world size."""
    tp, pp = args.tensor_model_parallel_size, args.pipeline_model_parallel_size
    if world_size % (tp * pp):
        raise ConfigError(f"world size {world_size} is not divisible by tensor x pipeline parallel {tp} x {pp}")
    data_parallel = world_size // (tp * pp)
    per_step = args.micro_batch_size * data_parallel
    global_batch = args.global_batch_size if args.global_batch_size is not None else per_step
    if global_batch % per_step:
        raise ConfigError(
            f"--global-batch-size {global_batch} is not a multiple of micro batch x "
            f"data-parallel size = {args.micro_batch_size} x {data_parallel}"
        )
    num_microbatches = global_batch // per_step
    virtual = _virtual_stages(args, preset, num_microbatches)
    layout = ParallelLayout(tp, pp, virtual, data_parallel, args.sequence_parallel)
    return layout, BatchConfig(args.micro_batch_size, global_batch, num_microbatches, args.seq_length)


def _virtual_stages(args: argparse.Namespace, preset: ModelPreset, num_microbatches: int) -> int | None:
    per_virtual = args.num_layers_per_virtual_pipeline_stage
    if per_virtual is None:
        return None
    pp = args.pipeline_model_parallel_size
    per_stage = preset.num_layers // pp
    if pp < 2 or preset.num_layers % pp or per_stage % per_virtual:
        raise ConfigError(
            f"--num-layers-per-virtual-pipeline-stage {per_virtual} needs --pipeline-model-parallel-size >= 2 "
            f"and divide the {per_stage} layers per stage"
        )
    if num_microbatches % pp:
        raise ConfigError(
            f"the interleaved schedule needs the number of micro-batches ({num_microbatches}) "
            f"to be a multiple of --pipeline-model-parallel-size {pp}"
        )
    return per_stage // per_virtual


def _parallel_config(args: argparse.Namespace, layout: ParallelLayout) -> ParallelConfig:
    return ParallelConfig(layout, args.use_distributed_optimizer, args.overlap_grad_reduce,
                          args.overlap_param_gather, args.distributed_timeout_minutes)


def _precision(args: argparse.Namespace) -> Precision:
    if args.bf16 and args.fp16:
        raise ConfigError("--bf16 and --fp16 are exclusive")
    name = "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"
    # Megatron-LM's rule: bf16 gradients lose too much when summed over micro-batches and
    # data-parallel ranks in bf16 (stage I sums 16 micro-batches over 128 ranks).
    grad_reduce_in_fp32 = args.accumulate_allreduce_grads_in_fp32 or args.bf16
    return Precision(name, grad_reduce_in_fp32, args.loss_scale, args.initial_loss_scale, args.min_loss_scale)


def _optim_config(args: argparse.Namespace) -> OptimConfig:
    decay_iters = args.lr_decay_iters if args.lr_decay_iters is not None else args.train_iters
    if args.lr_warmup_fraction is not None:
        warmup_steps = int(args.lr_warmup_fraction * decay_iters)
    else:
        warmup_steps = args.lr_warmup_iters
    _check_schedule_flags(args, decay_iters, warmup_steps)
    weight_decay = args.weight_decay
    return OptimConfig(
        lr=args.lr, min_lr=args.min_lr, weight_decay=weight_decay, adam_beta1=args.adam_beta1,
        adam_beta2=args.adam_beta2, adam_eps=args.adam_eps, clip_grad=args.clip_grad,
        lr_warmup_init=args.lr_warmup_init, lr_warmup_steps=warmup_steps, lr_decay_iters=decay_iters,
        lr_decay_style=args.lr_decay_style,
        start_weight_decay=weight_decay if args.start_weight_decay is None else args.start_weight_decay,
        end_weight_decay=weight_decay if args.end_weight_decay is None else args.end_weight_decay,
        weight_decay_incr_style=args.weight_decay_incr_style, weight_decay_incr_iters=max(args.train_iters, 1),
        override_opt_param_scheduler=args.override_opt_param_scheduler,
    )


def _check_schedule_flags(args: argparse.Namespace, decay_iters: int, warmup_steps: int) -> None:
    """What OptimizerParamScheduler would refuse with a bare AssertionError, as one line."""
    if decay_iters < 1:
        if args.train_iters == 0:
            raise ConfigError("--train-iters 0 trains nothing (with --save it writes the initial weights): give "
                              "--lr-decay-iters for the schedule that checkpoint records, or --train-iters N > 0")
        raise ConfigError(f"--lr-decay-iters {decay_iters} is invalid: it must be at least 1")
    if warmup_steps >= decay_iters:
        raise ConfigError(f"the warmup ({warmup_steps} iterations from --lr-warmup-iters / --lr-warmup-fraction) "
                          f"must be shorter than the decay ({decay_iters} iterations, --lr-decay-iters or --train-iters)")
    if args.lr_warmup_init > args.lr:
        raise ConfigError(f"--lr-warmup-init {args.lr_warmup_init} is above --lr {args.lr}")
    start = args.weight_decay if args.start_weight_decay is None else args.start_weight_decay
    end = args.weight_decay if args.end_weight_decay is None else args.end_weight_decay
    if end < start or (args.weight_decay_incr_style == "constant" and start != end):
        raise ConfigError(f"--start-weight-decay {start} / --end-weight-decay {end}: the end must not be below the "
                          f"start, and differ from it only with --weight-decay-incr-style linear or cosine")


def _checkpoint_config(args: argparse.Namespace) -> CheckpointConfig:
    if args.finetune and not args.load:
        raise ConfigError("--finetune needs --load (the checkpoint to take the weights from)")
    if args.ckpt_step is not None and not args.load:
        raise ConfigError("--ckpt-step needs --load (the directory that holds that iteration)")
    if args.keep_checkpoints_every is not None and args.keep_last_checkpoints is None:
        raise ConfigError("--keep-checkpoints-every needs --keep-last-checkpoints (without it every checkpoint is kept)")
    return CheckpointConfig(
        save=args.save, load=args.load, ckpt_step=args.ckpt_step, allow_missing_checkpoint=args.allow_missing_checkpoint,
        save_interval=args.save_interval, finetune=args.finetune, load_optim=not args.no_load_optim,
        load_rng=not args.no_load_rng, save_optim=not args.no_save_optim, save_rng=not args.no_save_rng,
        async_save=args.async_save, fully_reshardable=args.dist_ckpt_optim_fully_reshardable,
        retention=RetentionPolicy(args.keep_last_checkpoints, args.keep_checkpoints_every),
    )


def _logging_config(args: argparse.Namespace) -> LoggingConfig:
    if (args.wandb_exp_name or args.wandb_save_dir) and not args.wandb_project:
        raise ConfigError("--wandb-exp-name / --wandb-save-dir need --wandb-project (the W&B project to log to)")
    return LoggingConfig(args.log_interval, args.tensorboard_dir, args.metrics_file,
                         timing_log_level=args.timing_log_level,
                         wandb_project=args.wandb_project, wandb_exp_name=args.wandb_exp_name,
                         wandb_save_dir=args.wandb_save_dir)


def _data_config(args: argparse.Namespace) -> DataConfig:
    def paths(value):
        return tuple(value) if value else None

    return DataConfig(
        data_path=paths(args.data_path), data_config=args.data_config, mock_data=args.mock_data,
        tokenizer_model=args.tokenizer_model, vocab_size=args.vocab_size,
        valid_data_path=paths(args.valid_data_path), valid_data_config=args.valid_data_config,
        eval_interval=args.eval_interval, eval_iters=args.eval_iters, num_workers=args.num_workers, seed=args.seed,
    )


def _check_sources(args: argparse.Namespace) -> None:
    if args.train_iters is None:
        raise ConfigError("--train-iters is required (in the flags or the --config file)")
    sources = [bool(args.data_path), bool(args.data_config), bool(args.mock_data)]
    if sum(sources) != 1:
        raise ConfigError("give exactly one data source: --data-path, --data-config or --mock-data")
    if args.eval_interval and args.eval_iters and not args.mock_data and not (args.valid_data_path or args.valid_data_config):
        raise ConfigError("--eval-interval with --eval-iters needs --valid-data-path or --valid-data-config")
    if args.tokenizer_model is None and args.vocab_size is None:
        raise ConfigError("give --tokenizer-model (the MIO tokenizer directory) or --vocab-size")


# The smallest value each flag accepts.
_MINIMUM = {
    "lr": 0.0, "min_lr": 0.0, "lr_warmup_init": 0.0, "weight_decay": 0.0, "start_weight_decay": 0.0,
    "end_weight_decay": 0.0, "adam_eps": 0.0, "clip_grad": 0.0, "lr_warmup_iters": 0, "train_iters": 0,
    "micro_batch_size": 1, "seq_length": 1, "log_interval": 1, "make_vocab_size_divisible_by": 1,
    "tensor_model_parallel_size": 1, "pipeline_model_parallel_size": 1, "keep_last_checkpoints": 1,
    "keep_checkpoints_every": 1,
}


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _check_ranges(args: argparse.Namespace) -> None:
    """Values that would fail deep inside torch or megatron-core, after the model is built."""
    for dest, low in _MINIMUM.items():
        value = getattr(args, dest)
        if value is not None and value < low:
            raise ConfigError(f"{_flag(dest)} {value} is invalid: it must be at least {low}")
    if args.min_lr > args.lr:
        raise ConfigError(f"--min-lr {args.min_lr} is above --lr {args.lr}: the schedule decays from --lr to --min-lr")
    for dest in ("adam_beta1", "adam_beta2"):
        if not 0.0 <= getattr(args, dest) < 1.0:
            raise ConfigError(f"{_flag(dest)} {getattr(args, dest)} is invalid: it must be in [0, 1)")


def _check_paths(data: DataConfig, checkpoint: CheckpointConfig) -> None:
    """Inputs that must exist, checked before any process group or model exists."""
    if data.tokenizer_model:
        _check_tokenizer(data.tokenizer_model)
    load = checkpoint.load
    if load and not os.path.isdir(load) and not (checkpoint.allow_missing_checkpoint and not checkpoint.finetune):
        what = "the checkpoint to take the weights from for --finetune" if checkpoint.finetune else "a checkpoint directory"
        hint = "" if checkpoint.finetune else "; pass --allow-missing-checkpoint to start from scratch when it does not exist yet"
        raise ConfigError(f"--load {load}: no such directory (expected {what}){hint}")


def _check_tokenizer(path: str) -> None:
    from megatron_mio.tokenizer import MIOTokenizer
    from megatron_mio.tokenizer.build import TOKENIZER_JSON

    build = "build one with: python tools/build_tokenizer.py --base <Yi tokenizer.model or dir> --output DIR"
    if not os.path.isdir(path):
        raise ConfigError(f"--tokenizer-model {path}: no such directory ({build})")
    if not os.path.isfile(os.path.join(path, TOKENIZER_JSON)):
        raise ConfigError(f"--tokenizer-model {path} has no {TOKENIZER_JSON}, so it is not a MIO tokenizer "
                          f"directory (a base SentencePiece model needs the MIO tokens added: {build})")
    try:
        MIOTokenizer(path)
    except Exception as err:  # noqa: BLE001 - tokenizers raises a bare Exception for a bad tokenizer.json
        raise ConfigError(f"--tokenizer-model {path} is not a usable MIO tokenizer: {err} ({build})") from None
