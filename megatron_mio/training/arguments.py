"""The trainer's arguments: the one place that defines every flag.

Flags are spelled as in Megatron-LM wherever Megatron-LM has the same setting
(``--tensor-model-parallel-size``, ``--lr-warmup-fraction``, ...), so launch scripts carry over.
Our own flags: ``--data-config``, ``--tokenizer-model``, ``--model-preset``,
``--attention-backend``, ``--use-cpu``, ``--metrics-file``, ``--finetune``, ``--mock-data``, ...

``--config FILE.yaml`` takes the same keys (``lr_warmup_fraction`` or ``lr-warmup-fraction``);
flags given on the command line override the file.  A key that is not a flag is an error naming
the file, the line and the key, so a typo in a stage config never silently falls back to a default.
"""

from __future__ import annotations

import argparse
import dataclasses
import os

import yaml

from megatron_mio.model.attention import BACKENDS, available_backends, default_backend
from megatron_mio.model.fusions import FUSION_FLAGS
from megatron_mio.model.presets import PRESETS, VOCAB_SIZE_DIVISIBLE_BY, ModelPreset, get_preset

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

    g = parser.add_argument_group("model")
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
    g.add_argument("--attention-backend", default=None, choices=list(BACKENDS), help="default: megatron_mio.model.attention.default_backend()")
    g.add_argument("--use-cpu-initialization", action="store_true", help="initialise weights on the CPU as unsplit master weights (same numbers for any TP)")

    g = parser.add_argument_group("parallelism")
    g.add_argument("--tensor-model-parallel-size", type=int, default=1)
    g.add_argument("--pipeline-model-parallel-size", type=int, default=1)
    g.add_argument("--num-layers-per-virtual-pipeline-stage", type=int, default=None)
    g.add_argument("--sequence-parallel", action="store_true")
    g.add_argument("--use-distributed-optimizer", action="store_true")
    g.add_argument("--overlap-grad-reduce", action="store_true")
    g.add_argument("--overlap-param-gather", action="store_true")
    g.add_argument("--accumulate-allreduce-grads-in-fp32", action="store_true")
    g.add_argument("--distributed-timeout-minutes", type=int, default=30)

    g = parser.add_argument_group("batch and schedule")
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

    g = parser.add_argument_group("optimizer and learning rate")
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

    g = parser.add_argument_group("precision and memory")
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

    g = parser.add_argument_group("data")
    g.add_argument("--data-path", nargs="*", default=None, help="Megatron-style [weight] prefix [weight prefix ...]")
    g.add_argument("--data-config", default=None, help="stage mixture YAML (datasets and per-GPU ratios)")
    g.add_argument("--tokenizer-model", default=None, help="MIO tokenizer directory")
    g.add_argument("--mock-data", action="store_true", help="synthetic packed documents (no files needed)")
    g.add_argument("--valid-data-path", nargs="*", default=None, help="validation data, as --data-path")
    g.add_argument("--valid-data-config", default=None, help="validation mixture YAML, as --data-config")
    g.add_argument("--eval-interval", type=int, default=None, help="evaluate every N iterations")
    g.add_argument("--eval-iters", type=int, default=0, help="validation batches per evaluation")
    g.add_argument("--num-workers", type=int, default=2, help="DataLoader worker processes per rank")

    g = parser.add_argument_group("checkpoints")
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
    g.add_argument("--ckpt-format", default="torch_dist", choices=["torch_dist"])
    g.add_argument("--dist-ckpt-optim-fully-reshardable", action="store_true",
                   help="save the distributed optimizer so that a resume may change TP/PP (gathers the "
                        "whole optimizer state of a model-parallel rank on one host); default: "
                        "dp_reshardable, each rank writes its own shard (resume may change DP only)")

    g = parser.add_argument_group("logging")
    g.add_argument("--log-interval", type=int, default=1)
    g.add_argument("--tensorboard-dir", default=None)
    g.add_argument("--metrics-file", default=None, help="append one JSON line per logged iteration")

    g = parser.add_argument_group("platform")
    g.add_argument("--seed", type=int, default=1234)
    g.add_argument("--use-cpu", action="store_true", help="run on the CPU with gloo (tests, laptops)")
    return parser


def _yaml_entries(path: str) -> list[tuple[str, object, int]]:
    """(key, value, line) for each top-level entry of a YAML mapping."""
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    try:
        root = yaml.compose(text)
        values = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if root is None:
        return []
    if not isinstance(root, yaml.MappingNode) or not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of argument names to values")
    return [(str(key.value), values[key.value] if key.value in values else None, key.start_mark.line + 1)
            for key, _ in root.value]


def _convert(action: argparse.Action, value, where: str):
    """A YAML value as the flag's type (YAML reads 3e-5 as a string, so convert explicitly)."""
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value if isinstance(action, argparse._StoreTrueAction) else not value
    if value is None:
        return None
    if action.nargs in ("*", "+"):
        items = value if isinstance(value, list) else str(value).split()
        return [_convert_scalar(action, item, where) for item in items]
    return _convert_scalar(action, value, where)


def _convert_scalar(action: argparse.Action, value, where: str):
    if isinstance(value, (dict, list)):
        raise ConfigError(f"{where}: expected a single value, got {value!r}")
    if isinstance(value, bool) and action.type in (int, float):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if action.type is not None:
        try:
            value = action.type(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: {value!r} is not a valid {action.type.__name__}") from None
    else:
        value = str(value)
    if action.choices is not None and value not in action.choices:
        raise ConfigError(f"{where}: {value!r} is not one of {list(action.choices)}")
    return value


def config_defaults(parser: argparse.ArgumentParser, path: str) -> dict:
    """Parser defaults taken from a YAML file, with every key checked against the flags."""
    by_dest: dict[str, argparse.Action] = {}
    for action in parser._actions:
        for option in action.option_strings:
            if option.startswith("--"):
                by_dest[option[2:].replace("-", "_")] = action
    defaults = {}
    for key, value, line in _yaml_entries(path):
        where = f"{path}:{line}: key {key!r}"
        action = by_dest.get(key.replace("-", "_"))
        if action is None or key.replace("-", "_") == "config":
            raise ConfigError(f"{path}:{line}: unknown key {key!r} (not a trainer argument)")
        defaults[action.dest] = _convert(action, value, where)
    return defaults


def parse_args(argv: list[str] | None = None, world_size: int | None = None) -> argparse.Namespace:
    """Flags over ``--config`` over defaults, then the derived sizes (see :func:`finalize`)."""
    parser = build_parser()
    first, _ = parser.parse_known_args(argv)
    if first.config:
        if not os.path.exists(first.config):
            raise ConfigError(f"--config {first.config}: no such file")
        parser.set_defaults(**config_defaults(parser, first.config))
    args = parser.parse_args(argv)
    if world_size is None:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
    return finalize(args, world_size)


def refused_fusions(args: argparse.Namespace) -> tuple[str, ...]:
    """The fusions the ``--no-*-fusion`` flags turn off."""
    return tuple(field for flag, field in FUSION_FLAGS.items() if getattr(args, "no_" + flag.replace("-", "_")))


def model_preset(args: argparse.Namespace) -> ModelPreset:
    """--model-preset with every model flag that was given applied on top."""
    overrides = {field: getattr(args, field) for field in MODEL_OVERRIDES}
    return get_preset(args.model_preset).with_overrides(**overrides)


def finalize(args: argparse.Namespace, world_size: int) -> argparse.Namespace:
    """Check combinations and derive sizes (data-parallel size, micro-batches, warmup)."""
    args.world_size = world_size
    _check_ranges(args)
    if args.attention_backend is None:
        args.attention_backend = default_backend()
    if args.attention_backend not in available_backends():
        raise ConfigError(f"--attention-backend {args.attention_backend} is not available here "
                          f"(available: {', '.join(available_backends())})")
    model_parallel = args.tensor_model_parallel_size * args.pipeline_model_parallel_size
    if world_size % model_parallel:
        raise ConfigError(
            f"world size {world_size} is not divisible by tensor x pipeline parallel "
            f"{args.tensor_model_parallel_size} x {args.pipeline_model_parallel_size}"
        )
    args.data_parallel_size = world_size // model_parallel
    per_step = args.micro_batch_size * args.data_parallel_size
    if args.global_batch_size is None:
        args.global_batch_size = per_step
    if args.global_batch_size % per_step:
        raise ConfigError(
            f"--global-batch-size {args.global_batch_size} is not a multiple of micro batch x "
            f"data-parallel size = {args.micro_batch_size} x {args.data_parallel_size}"
        )
    args.num_microbatches = args.global_batch_size // per_step
    if args.train_iters is None:
        raise ConfigError("--train-iters is required (in the flags or the --config file)")
    if args.bf16 and args.fp16:
        raise ConfigError("--bf16 and --fp16 are exclusive")
    if args.bf16:
        # Megatron-LM's rule: bf16 gradients lose too much when summed over micro-batches and
        # data-parallel ranks in bf16 (stage I sums 16 micro-batches over 128 ranks).
        args.accumulate_allreduce_grads_in_fp32 = True
    preset = model_preset(args)
    args.virtual_pipeline_model_parallel_size = None
    if args.num_layers_per_virtual_pipeline_stage is not None:
        pp = args.pipeline_model_parallel_size
        per_stage = preset.num_layers // pp
        if pp < 2 or preset.num_layers % pp or per_stage % args.num_layers_per_virtual_pipeline_stage:
            raise ConfigError(
                f"--num-layers-per-virtual-pipeline-stage {args.num_layers_per_virtual_pipeline_stage} "
                f"needs --pipeline-model-parallel-size >= 2 and divide the {per_stage} layers per stage"
            )
        args.virtual_pipeline_model_parallel_size = per_stage // args.num_layers_per_virtual_pipeline_stage
        if args.num_microbatches % pp:
            raise ConfigError(
                f"the interleaved schedule needs the number of micro-batches ({args.num_microbatches}) "
                f"to be a multiple of --pipeline-model-parallel-size {pp}"
            )
    if args.lr_decay_iters is None:
        args.lr_decay_iters = args.train_iters
    if args.lr_warmup_fraction is not None:
        args.lr_warmup_steps = int(args.lr_warmup_fraction * args.lr_decay_iters)
    else:
        args.lr_warmup_steps = args.lr_warmup_iters
    if args.start_weight_decay is None:
        args.start_weight_decay = args.weight_decay
    if args.end_weight_decay is None:
        args.end_weight_decay = args.weight_decay
    if args.finetune and not args.load:
        raise ConfigError("--finetune needs --load (the checkpoint to take the weights from)")
    sources = [bool(args.data_path), bool(args.data_config), bool(args.mock_data)]
    if sum(sources) != 1:
        raise ConfigError("give exactly one data source: --data-path, --data-config or --mock-data")
    if args.eval_interval and args.eval_iters and not args.mock_data and not (args.valid_data_path or args.valid_data_config):
        raise ConfigError("--eval-interval with --eval-iters needs --valid-data-path or --valid-data-config")
    if args.tokenizer_model is None and args.vocab_size is None:
        raise ConfigError("give --tokenizer-model (the MIO tokenizer directory) or --vocab-size")
    if args.seq_length > preset.max_position_embeddings:
        raise ConfigError(
            f"--seq-length {args.seq_length} is longer than the model's --max-position-embeddings "
            f"{preset.max_position_embeddings} (preset {args.model_preset}): shorten --seq-length or raise "
            f"--max-position-embeddings"
        )
    _check_paths(args)
    return args


# The smallest value each flag accepts.
_MINIMUM = {
    "lr": 0.0, "min_lr": 0.0, "lr_warmup_init": 0.0, "weight_decay": 0.0, "start_weight_decay": 0.0,
    "end_weight_decay": 0.0, "adam_eps": 0.0, "clip_grad": 0.0, "lr_warmup_iters": 0, "train_iters": 0,
    "micro_batch_size": 1, "seq_length": 1, "log_interval": 1, "make_vocab_size_divisible_by": 1,
    "tensor_model_parallel_size": 1, "pipeline_model_parallel_size": 1,
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


def _check_paths(args: argparse.Namespace) -> None:
    """Inputs that must exist, checked before any process group or model exists."""
    if args.tokenizer_model:
        _check_tokenizer(args.tokenizer_model)
    if args.load and not os.path.isdir(args.load) and not (args.allow_missing_checkpoint and not args.finetune):
        what = "the checkpoint to take the weights from for --finetune" if args.finetune else "a checkpoint directory"
        hint = "" if args.finetune else "; pass --allow-missing-checkpoint to start from scratch when it does not exist yet"
        raise ConfigError(f"--load {args.load}: no such directory (expected {what}){hint}")
    if args.ckpt_step is not None and not args.load:
        raise ConfigError("--ckpt-step needs --load (the directory that holds that iteration)")


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
