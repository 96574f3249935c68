"""What every command line of megatron_mio shares.

- ``make_parser``: an ``argparse`` parser with ``--version`` and ``-v/--verbose``;
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


def make_parser(prog: str, doc: str | None, **kwargs) -> argparse.ArgumentParser:
    """The parser of command ``prog``; ``doc`` (the command's module docstring) is its help text."""
    kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
    parser = argparse.ArgumentParser(prog=prog, description=doc, **kwargs)
    parser.add_argument("--version", action="version", version=f"%(prog)s (megatron_mio) {version()}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also show the libraries' warnings and log lines")
    return parser


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


def check_writable(path: str | os.PathLike, flag: str) -> Path:
    """``path`` (a file or directory to create) can be written: its nearest existing ancestor is a
    writable directory. Raises ``UsageError`` naming ``flag`` otherwise."""
    path = Path(path)
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        if existing == path:
            directory = path.parent
        else:
            raise UsageError(f"{flag} {path}: {existing} is a file, not a directory")
    else:
        directory = existing
    if not os.access(directory, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: {directory} is not writable (choose another location)")
    return path


def run(prog: str, body: Callable[[], int | None],
        input_errors: tuple[type[BaseException], ...] = ()) -> int:
    """Run a command's ``body``; its input mistakes become one line and exit status 2.

    ``input_errors`` are the exception types that, for this command, can only mean bad input
    (a data-file error, a config error); anything else is a bug and keeps its traceback.
    """
    try:
        return int(body() or 0)
    except (UsageError, *input_errors) as error:
        print(f"{prog}: error: {error}", file=sys.stderr, flush=True)
        return EXIT_INPUT_ERROR
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
