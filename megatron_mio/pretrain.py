"""Train MIO: ``python -m megatron_mio.pretrain --config examples/configs/stage1.yaml [flags]``.

Launch one process per GPU with torchrun (or srun + torchrun); ``--use-cpu`` runs on the CPU with
gloo.  Every flag is described by ``--help`` (``megatron_mio/training/arguments.py``).
"""

import os
import sys

from megatron_mio.training.arguments import ConfigError


def main(argv=None) -> int:
    from megatron_mio.training.trainer import pretrain

    try:
        pretrain(argv)
    except ConfigError as err:
        # Every rank finds the same mistake (arguments and files are checked before the ranks
        # meet), so one rank says it: one line, no traceback.
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    return 0


# The guard matters: async checkpoint writers re-import this module in a child process.
if __name__ == "__main__":
    sys.exit(main())
