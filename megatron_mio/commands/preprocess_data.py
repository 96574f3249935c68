"""MIO JSONL samples -> megatron-core indexed datasets with loss masks (docs/data_format.md).

    mio-preprocess --input A.jsonl [B.jsonl ...] --output-prefix DIR/NAME --tokenizer DIR \\
        --stage {1,2,3,sft} [--workers N] [--seed S] [--seq-length 2800] [--append-eod] \\
        [--on-error fail|skip] [--num-shards N --shard-index I]

Writes NAME.bin/.idx, NAME.loss_mask.bin/.idx, NAME.modality_counts.npy and NAME.report.json in
DIR, all at once when complete (nothing on an error or Ctrl-C); one run per prefix at a time.
Inside a Slurm array --num-shards/--shard-index default to the array's task count and task
index, and shard I of N is written to NAME-0000I-of-0000N (examples/preprocess.sh).
Progress (samples, tokens/s, ETA) goes to stderr: a bar on a terminal, a line every
--progress-interval seconds in a log.
"""

from __future__ import annotations

import argparse
import os
import sys

from megatron_mio import cli

PROG = "preprocess_data"


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = cli.make_parser(PROG, __doc__)
    parser.add_argument("--input", nargs="+", required=True, help="JSONL files, in order")
    parser.add_argument("--output-prefix", required=True,
                        help="DIR/NAME: writes NAME.bin/.idx, NAME.loss_mask.bin/.idx, "
                             "NAME.modality_counts.npy and NAME.report.json in DIR")
    parser.add_argument("--tokenizer", required=True, help="MIO tokenizer directory")
    parser.add_argument("--stage", required=True, choices=["1", "2", "3", "sft"])
    parser.add_argument("--workers", type=_positive(int), default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seq-length", type=_positive(int), default=2800,
                        help="longer samples are split (pages, interleaved pages, chats) or, "
                             "when they cannot be (pairs), dropped and reported")
    parser.add_argument("--append-eod", action="store_true",
                        help="an eos after each language document, so a base model learns where "
                             "pages end")
    parser.add_argument("--on-error", choices=["fail", "skip"], default="fail")
    parser.add_argument("--max-speech-seconds", type=_positive(float), default=15.0,
                        help="samples with longer speech are filtered out (the paper uses 15 s)")
    parser.add_argument("--num-shards", type=int,
                        help="split the input into this many parts (default: "
                             "SLURM_ARRAY_TASK_COUNT, else 1)")
    parser.add_argument("--shard-index", type=int,
                        help="which part to write, from 0 (default: SLURM_ARRAY_TASK_ID - "
                             "SLURM_ARRAY_TASK_MIN, else 0)")
    parser.add_argument("--progress-interval", type=_positive(float), default=30.0,
                        help="seconds between progress lines when stderr is not a terminal")
    return parser


def check_paths(args) -> None:
    """Every path mistake, before the tokenizer or megatron-core is loaded."""
    prefix = args.output_prefix
    if prefix.endswith(("/", os.sep)) or os.path.isdir(prefix):
        raise cli.UsageError(f"--output-prefix {prefix} is a directory: give a prefix inside it "
                             f"(e.g. {os.path.join(prefix, 'data')}), the files are named after it")
    cli.check_writable(prefix, "--output-prefix")
    for path in args.input:
        if os.path.isdir(path):
            raise cli.UsageError(f"--input {path} is a directory: pass its JSONL files "
                                 f"(e.g. {os.path.join(path, '*.jsonl')})")
        if not os.path.isfile(path):
            raise cli.UsageError(f"--input {path}: no such file")
    if not os.path.isdir(args.tokenizer):
        raise cli.UsageError(f"--tokenizer {args.tokenizer}: no such directory (build one with "
                             "mio-build-tokenizer)")
    for path in args.input:
        if os.path.getsize(path) == 0:
            print(f"{PROG}: warning: --input {path} is empty", file=sys.stderr)


def _preprocess(args) -> int:
    num_shards, shard_index = cli.resolve_shard(args.num_shards, args.shard_index)
    check_paths(args)
    from megatron_mio.data.prefix_lock import PrefixBusyError
    from megatron_mio.data.preprocess import (
        EmptyInputError,
        PreprocessConfig,
        PreprocessError,
        preprocess,
    )

    config = PreprocessConfig(
        inputs=args.input, output_prefix=args.output_prefix, tokenizer=args.tokenizer,
        stage=args.stage, workers=args.workers, seed=args.seed, seq_length=args.seq_length,
        append_eod=args.append_eod, on_error=args.on_error,
        max_speech_seconds=args.max_speech_seconds, num_shards=num_shards,
        shard_index=shard_index, progress=True, progress_interval=args.progress_interval)
    try:
        config.check()
    except (ValueError, OSError) as error:
        raise cli.UsageError(str(error)) from None
    try:
        result = preprocess(config)
    except (PreprocessError, PrefixBusyError, EmptyInputError, OSError) as error:
        raise cli.UsageError(str(error)) from None
    _print_summary(result)
    return 0


def _print_summary(result) -> None:
    report, body = result.report, result.report.body
    tokens = body.tokens.by_modality
    print(f"{body.documents_written} documents, {body.tokens.total} tokens (text "
          f"{tokens['text']}, image {tokens['image']}, speech {tokens['speech']}); split "
          f"{body.split.documents} into {body.split.pieces} pieces; skipped "
          f"{body.skipped.count}, filtered {body.filtered.count}; coverage "
          f"{100 * report.coverage:.2f}%; {result.seconds:.1f} s -> "
          f"{report.output_prefix}.report.json")
    for line in report.warnings():
        print(f"{PROG}: warning: {line}", file=sys.stderr)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    cli.quiet_libraries(args.verbose)
    return cli.run(PROG, lambda: _preprocess(args))


if __name__ == "__main__":
    sys.exit(main())
