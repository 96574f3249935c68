"""What every command line of megatron_mio shares.

- ``make_parser``: an ``argparse`` parser with ``--version`` and ``-v/--verbose`` whose mistakes
  are one ``prog: error: ...`` line (exit status 2), not a usage block;
- ``TOKENIZER_FLAGS``, ``TP_FLAGS``, ``PP_FLAGS``, ``PRESET_FLAGS``: the tools' short flags with the
  trainer's long names as aliases, so one spelling works in every command;
- ``positive_int``, ``non_negative_int``, ``byte_size``: argument types whose error names the rule;
- ``run``: calls a command's body and turns a user's mistake (``UsageError``, or any exception
  type the command names) into one ``prog: error: ...`` line with exit status 2, and Ctrl-C into
  one line with status 130, never a traceback;
- ``quiet_libraries``: unless ``--verbose``, hides the lines that are not ours (Python warnings,
  torch's "No CUDA runtime is found", megatron-core's fallback notices);
- ``check_writable``: an output location is checked before any heavy work starts.

This module imports nothing heavy (no torch, megatron or transformers): a command parses its
arguments first and imports those afterwards, so ``--help`` and argument errors are instant.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

EXIT_INPUT_ERROR = 2  # argparse's own status for a bad flag: one status for every input error
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """A mistake in the user's input: flags, paths, files. Printed as one line, exit status 2."""


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    try:
        return package_version("megatron_mio")
    except PackageNotFoundError:  # a source tree on PYTHONPATH, not installed
        return "0+unknown"


class _VersionAction(argparse.Action):
    """``--version``; the installed version is looked up only when asked for (importlib.metadata
    scans every installed distribution: too slow for each start)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS,
                 help="show the megatron_mio version and exit"):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog} (megatron_mio) {version()}")  # stdout, as argparse's own version action
        parser.exit()


class _OneLineErrors(argparse.ArgumentParser):
    """argparse whose mistakes are one ``prog: error: ...`` line; ``--help`` shows the usage."""

    def error(self, message: str):
        self.exit(EXIT_INPUT_ERROR, f"{self.prog}: error: {message} (see --help)\n")


def make_parser(prog: str, doc: str | None, **kwargs) -> argparse.ArgumentParser:
    """The parser of command ``prog``; ``doc`` (the command's module docstring) is its help text."""
    kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
    kwargs.setdefault("allow_abbrev", False)  # a prefix of one flag must not silently become another
    parser = _OneLineErrors(prog=prog, description=doc, **kwargs)
    parser.add_argument("--version", action=_VersionAction)
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also show the libraries' warnings and log lines")
    return parser


# The tools' short flags, then the trainer's name for the same setting (training/arguments.py):
# ``parser.add_argument(*cli.TP_FLAGS, dest="tp", ...)``.
TOKENIZER_FLAGS = ("--tokenizer", "--tokenizer-model")
TP_FLAGS = ("--tp", "--tensor-model-parallel-size")
PP_FLAGS = ("--pp", "--pipeline-model-parallel-size")
PRESET_FLAGS = ("--preset", "--model-preset")


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def positive_int(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


_SIZE_UNITS = {"kib": 2**10, "mib": 2**20, "gib": 2**30, "kb": 10**3, "mb": 10**6, "gb": 10**9, "b": 1}


def byte_size(text: str) -> int:
    """'2GB', '500MB', '1GiB' or a byte count -> bytes."""
    lowered = text.strip().lower()
    number, factor = lowered, 1
    for suffix, unit in _SIZE_UNITS.items():
        if lowered.endswith(suffix):
            number, factor = lowered[: -len(suffix)], unit
            break
    try:
        size = int(float(number) * factor)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size: give bytes or a number with "
                                         "KB/MB/GB/KiB/MiB/GiB, e.g. 2GB") from None
    if size < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a size must be positive")
    return size


# Library loggers whose INFO/WARNING lines are not the user's business unless --verbose.
_LIBRARY_LOGGERS = ("torch.utils.cpp_extension", "megatron", "megatron.core", "transformers",
                    "torch.distributed", "py.warnings")


def quiet_libraries(verbose: bool = False) -> None:
    """Hide every line that is not ours, unless ``verbose``. Call before importing libraries."""
    if verbose:
        return
    warnings.simplefilter("ignore")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")  # child processes (torchrun, workers) too
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    for name in _LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def check_writable(path: str | os.PathLike, flag: str, *, directory: bool = False,
                   replaced: bool = False, force: bool | None = None) -> Path:
    """``path`` (a file, or with ``directory`` a directory) can be written: its nearest existing
    ancestor is a writable directory; an existing directory must be writable itself, or with
    ``replaced`` (a new one renamed over it) its parent.  With ``force`` given (the tool's
    ``--force``), an existing ``path`` is refused unless it is true.  Raises ``UsageError`` naming
    ``flag`` otherwise.  Called before any heavy work, so a bad output costs nothing."""
    path = Path(path)
    if force is False and path.exists():
        raise UsageError(f"{flag} {path}: already exists; pass --force to replace it")
    if path.exists():
        if directory and not path.is_dir():
            raise UsageError(f"{flag} {path}: is a file, not a directory")
        if not directory and path.is_dir():
            raise UsageError(f"{flag} {path}: is a directory; give a file name")
        parent = path if path.is_dir() and not replaced else path.parent
    else:
        parent = path.parent
        while not parent.exists() and parent.parent != parent:
            parent = parent.parent
        if not parent.is_dir():
            raise UsageError(f"{flag} {path}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: {parent} is not writable (choose another location)")
    return path


# How long the other ranks of a torchrun job leave rank 0 to report a mistake that every rank found.
RANK0_GRACE_SECONDS = 20.0


def report_input_error(error: BaseException, prog: str | None = None) -> None:
    """One line, no traceback: ``prog: error: ...`` (``error: ...`` without ``prog``).

    Under torchrun every rank finds the same mistake (inputs are checked before the ranks meet),
    so only rank 0 speaks: the others wait first, since one that exits early makes torchrun stop
    rank 0 before it prints.  Rank 0's exit ends the job; a rank still alive after the grace time
    speaks for itself.
    """
    rank = int(os.environ.get("RANK", "0") or 0)
    if rank != 0:
        time.sleep(RANK0_GRACE_SECONDS)
    head = f"{prog}: error" if prog else "error"
    if rank != 0:
        head += f" (rank {rank})"
    # str(KeyError("x")) is "'x'": print the message itself.
    message = error.args[0] if isinstance(error, KeyError) and error.args else error
    print(f"{head}: {message}", file=sys.stderr, flush=True)


def _slurm_int(name: str, default: str | None = None) -> int:
    text = os.environ.get(name, default)
    try:
        return int(text)
    except (TypeError, ValueError):
        raise UsageError(f"{name}={text!r} is not an integer: run inside a Slurm array job, or pass "
                         "--num-shards and --shard-index") from None


def resolve_shard(num_shards: int | None, shard_index: int | None) -> tuple[int, int]:
    """(``--num-shards``, ``--shard-index``): each flag as given, else its Slurm array variable
    (``SLURM_ARRAY_TASK_COUNT``; ``SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN``), else 1 and 0."""
    in_array = bool(os.environ.get("SLURM_ARRAY_TASK_ID"))
    if num_shards is None:
        num_shards = _slurm_int("SLURM_ARRAY_TASK_COUNT") if in_array else 1
    if shard_index is None:
        # One shard has one index: the array's variables are not needed (nor checked).
        in_array = in_array and num_shards != 1
        shard_index = _slurm_int("SLURM_ARRAY_TASK_ID") - _slurm_int("SLURM_ARRAY_TASK_MIN", "0") if in_array else 0
    return num_shards, shard_index


def run(prog: str, body: Callable[[], int | None],
        input_errors: tuple[type[BaseException], ...] = ()) -> int:
    """Run a command's ``body``; its input mistakes become one line and exit status 2.

    ``input_errors`` are the exception types that, for this command, can only mean bad input
    (a data-file error, a config error); anything else is a bug and keeps its traceback.
    """
    try:
        return int(body() or 0)
    except (UsageError, *input_errors) as error:
        report_input_error(error, prog)
        return EXIT_INPUT_ERROR
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
