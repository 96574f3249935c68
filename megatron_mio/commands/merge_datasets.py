"""Merge preprocessed shards into one dataset prefix, in order (byte-identical to one run).

    mio-merge-datasets --input '/data/laion_coco/pairs-*' --output-prefix /data/laion_coco/pairs

Inputs are prefixes or glob patterns (each expanded in sorted order, as in mixture YAML files).
The shards' reports are summed into the output's report; their settings must agree.
"""

from __future__ import annotations

import argparse
import os
import sys

from megatron_mio import cli

PROG = "merge_datasets"


def build_parser() -> argparse.ArgumentParser:
    parser = cli.make_parser(PROG, __doc__)
    parser.add_argument("--input", nargs="+", required=True, help="dataset prefixes or globs")
    parser.add_argument("--output-prefix", required=True, help="DIR/NAME of the merged dataset")
    return parser


def _check_output(prefix: str) -> None:
    if prefix.endswith(("/", os.sep)) or os.path.isdir(prefix):
        raise cli.UsageError(f"--output-prefix {prefix} is a directory: give a prefix inside it "
                             f"(e.g. {os.path.join(prefix, 'merged')})")
    cli.check_writable(prefix, "--output-prefix")


def _merge(args) -> int:
    _check_output(args.output_prefix)
    from megatron_mio.data.mixture import expand_prefix
    from megatron_mio.data.prefix_lock import PrefixBusyError
    from megatron_mio.data.preprocess import merge_preprocessed
    from megatron_mio.data.validate import DataFileError, validate_packed_source

    prefixes = []
    try:
        for pattern in args.input:
            matches = expand_prefix(pattern)
            if not matches:
                raise cli.UsageError(f"--input {pattern!r} matches no dataset (no {pattern}.idx)")
            prefixes += matches
        if args.output_prefix in prefixes:
            raise cli.UsageError(f"--output-prefix {args.output_prefix} is also an input")
        for prefix in prefixes:
            validate_packed_source(prefix)
        report = merge_preprocessed(prefixes, args.output_prefix)
    except (DataFileError, PrefixBusyError, OSError, ValueError) as error:
        raise cli.UsageError(str(error)) from None
    print(f"{len(prefixes)} datasets -> {args.output_prefix}: {report.body.documents_written} "
          f"documents, {report.body.tokens.total} tokens")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    cli.quiet_libraries(args.verbose)
    return cli.run(PROG, lambda: _merge(args))


if __name__ == "__main__":
    sys.exit(main())
