"""Questions the launch scripts ask about a save directory, answered by the layout's owner.

    python -m megatron_mio.checkpoint latest DIR

prints the latest complete iteration saved in DIR, or nothing when DIR holds no checkpoint
(exit 0); exit 3 with the reason on stderr when DIR's tracker cannot be read.
"""

from __future__ import annotations

import argparse
import sys

from megatron_mio.checkpoint.layout import read_tracker

DAMAGED = 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m megatron_mio.checkpoint", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    latest = commands.add_parser("latest", help="the latest complete iteration in a save directory")
    latest.add_argument("directory")
    args = parser.parse_args(argv)
    try:
        iteration = read_tracker(args.directory)
    except (ValueError, OSError) as err:
        print(f"megatron_mio.checkpoint: {err}", file=sys.stderr)
        return DAMAGED
    if iteration is not None:
        print(iteration)
    return 0


if __name__ == "__main__":
    sys.exit(main())
