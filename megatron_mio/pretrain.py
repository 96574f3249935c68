"""Train MIO: ``python -m megatron_mio.pretrain --config examples/configs/stage1.yaml [flags]``.

Launch one process per GPU with torchrun (or srun + torchrun); ``--use-cpu`` runs on the CPU with
gloo.  Every flag is described by ``--help`` (``megatron_mio/training/arguments.py``).
"""

import sys

from megatron_mio import platform


def main(argv=None) -> int:
    platform.quiet_import_warnings()
    from megatron_mio.training.arguments import ConfigError
    from megatron_mio.training.trainer import pretrain

    try:
        pretrain(argv)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


# The guard matters: async checkpoint writers re-import this module in a child process.
if __name__ == "__main__":
    sys.exit(main())
