"""Train MIO: ``python -m megatron_mio.pretrain --config examples/configs/stage1.yaml [flags]``.

Launch one process per GPU with torchrun (or srun + torchrun); ``--use-cpu`` runs on the CPU with
gloo.  Every flag is described by ``--help`` (``megatron_mio/training/arguments.py``).
"""

import os
import sys
import time

from megatron_mio import platform


def main(argv=None) -> int:
    platform.quiet_import_warnings()
    from megatron_mio.checkpoint.discovery import CheckpointError
    from megatron_mio.training.arguments import ConfigError
    from megatron_mio.training.checkpointing import CheckpointWriteError
    from megatron_mio.training.trainer import pretrain

    try:
        pretrain(argv)
    except (ConfigError, CheckpointError) as err:
        report_mistake(err)
        return 2
    except CheckpointWriteError as err:
        report_mistake(err)
        return 1
    return 0


# How long the other ranks leave rank 0 to report a mistake that every rank found.
RANK0_GRACE_SECONDS = 20.0


def report_mistake(err: Exception) -> None:
    """One line, no traceback, from rank 0 only.

    Every rank finds the same mistake (arguments and files are checked before the ranks meet).
    The other ranks wait before exiting: one that exits first makes torchrun stop rank 0 before it
    prints.  Rank 0's exit ends the job; a rank still alive after the grace time speaks for itself.
    """
    rank = int(os.environ.get("RANK", "0"))
    if rank != 0:
        time.sleep(RANK0_GRACE_SECONDS)
    print(f"error: {err}" if rank == 0 else f"error (rank {rank}): {err}", file=sys.stderr, flush=True)


# The guard matters: async checkpoint writers re-import this module in a child process.
if __name__ == "__main__":
    sys.exit(main())
