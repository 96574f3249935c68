"""Train MIO: ``python -m megatron_mio.pretrain --config examples/configs/stage1.yaml [flags]``.

Launch one process per GPU with torchrun (or srun + torchrun); ``--use-cpu`` runs on the CPU with
gloo.  Every flag is described by ``--help`` (``megatron_mio/training/arguments.py``); besides
those, ``--version`` and ``-v/--verbose`` (the libraries' own log lines and warnings, hidden
otherwise).
"""

import sys

from megatron_mio import cli

PROG = "python -m megatron_mio.pretrain"


def split_common_flags(argv: list[str]):
    """(``--version`` / ``-v`` parsed, the trainer's flags): the trainer's parser has neither."""
    common = cli.make_parser(PROG, None, add_help=False)  # --help stays the trainer's
    return common.parse_known_args(argv)


def main(argv=None) -> int:
    common, trainer_argv = split_common_flags(sys.argv[1:] if argv is None else list(argv))
    cli.quiet_libraries(common.verbose)  # before torch and megatron-core are imported
    from megatron_mio.checkpoint.discovery import CheckpointError
    from megatron_mio.training.arguments import ConfigError, parse_args

    try:
        config = parse_args(trainer_argv)  # --help and flag mistakes end here, before torch is imported
        from megatron_mio.training.checkpointing import CheckpointWriteError
        from megatron_mio.training.trainer import train
    except ConfigError as err:
        cli.report_input_error(err)  # one line, rank 0 only
        return cli.EXIT_INPUT_ERROR
    try:
        train(config)
    except (ConfigError, CheckpointError) as err:
        cli.report_input_error(err)  # one line, rank 0 only
        return cli.EXIT_INPUT_ERROR
    except CheckpointWriteError as err:  # not the user's input: the disk (full, gone) failed
        cli.report_input_error(err)
        return 1
    return 0


# The guard matters: async checkpoint writers re-import this module in a child process.
if __name__ == "__main__":
    sys.exit(main())
