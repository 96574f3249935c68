"""Questions the launch scripts ask about a save directory, answered by the layout's owner.

    python -m megatron_mio.checkpoint latest DIR

prints the latest complete iteration saved in DIR, or nothing when DIR holds no checkpoint
(exit 0); exit 3 with the reason on stderr when DIR's tracker cannot be read or names an
iteration whose checkpoint is not there.
"""

from __future__ import annotations

import sys

from megatron_mio import cli
from megatron_mio.checkpoint.layout import iteration_dir, is_checkpoint, read_tracker, saved_iterations

PROG = "python -m megatron_mio.checkpoint"
DAMAGED = 3


def latest_complete_iteration(directory: str) -> int | None:
    """The tracker's iteration, checked against the disk; ValueError when it cannot be trusted."""
    iteration = read_tracker(directory)
    if iteration is not None and not is_checkpoint(iteration_dir(directory, iteration)):
        saved = ", ".join(map(str, saved_iterations(directory))) or "none"
        raise ValueError(f"{directory}: the tracker names iteration {iteration}, but "
                         f"{iteration_dir(directory, iteration)} holds no complete checkpoint "
                         f"(iterations saved: {saved})")
    return iteration


def main(argv: list[str] | None = None) -> int:
    parser = cli.make_parser(PROG, __doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    latest = commands.add_parser("latest", help="the latest complete iteration in a save directory")
    latest.add_argument("directory")
    args = parser.parse_args(argv)
    try:
        iteration = latest_complete_iteration(args.directory)
    except (ValueError, OSError) as err:
        print(f"megatron_mio.checkpoint: {err}", file=sys.stderr)
        return DAMAGED
    if iteration is not None:
        print(iteration)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
