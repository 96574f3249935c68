"""Merge preprocessed shards into one dataset prefix, in order (byte-identical to one run).

    python tools/merge_datasets.py --input '/data/laion_coco/pairs-*' --output-prefix /data/laion_coco/pairs

Inputs are prefixes or glob patterns (each expanded in sorted order, as in mixture YAML files).
The shards' reports are summed into the output's report; their settings must agree.
"""

import argparse
import sys


from megatron_mio.data.mixture import expand_prefix  # noqa: E402
from megatron_mio.data.preprocess import merge_preprocessed  # noqa: E402
from megatron_mio.data.validate import DataFileError, validate_packed_source  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", nargs="+", required=True, help="dataset prefixes or globs")
    parser.add_argument("--output-prefix", required=True)
    args = parser.parse_args(argv)
    prefixes = []
    try:
        for pattern in args.input:
            matches = expand_prefix(pattern)
            if not matches:
                raise ValueError(f"--input {pattern!r} matches no dataset (no {pattern}.idx)")
            prefixes += matches
        if args.output_prefix in prefixes:
            raise ValueError(f"--output-prefix {args.output_prefix} is also an input")
        for prefix in prefixes:
            validate_packed_source(prefix)
        report = merge_preprocessed(prefixes, args.output_prefix)
    except (DataFileError, OSError, ValueError) as error:
        print(f"merge_datasets: error: {error}", file=sys.stderr)
        return 1
    print(f"{len(prefixes)} datasets -> {args.output_prefix}: {report['documents_written']} "
          f"documents, {report['tokens']['total']} tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
