"""Outputs appear whole or not at all: write under a temporary sibling name, rename when complete.

The one place that knows how: every file or directory the package writes for a user (datasets,
index caches, tokenizers, checkpoints' tracker, Hugging Face exports, reports) goes through here,
so a crash, a full disk or Ctrl-C leaves the previous output (or nothing), never half of one.
A rename within one directory is atomic on POSIX file systems, Lustre and GPFS included.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _as_if_created(path: Path, mode: int) -> None:
    """mkstemp/mkdtemp create private (0600/0700) entries: give the result the permissions a
    plain ``open``/``mkdir`` would have, so other users of a shared cluster can read it."""
    os.chmod(path, mode & ~_umask())


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, *, suffix: str = "", durable: bool = False) -> Iterator[Path]:
    """A temporary sibling of ``path`` to write; it becomes ``path`` when the block succeeds.

    ``suffix`` keeps an extension on the temporary name for writers that choose the format from
    it (matplotlib).  ``durable`` flushes the data to disk before the rename, for a file that
    other processes trust as a commit point (the checkpoint tracker).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    _as_if_created(tmp, 0o666)
    try:
        yield tmp
        if durable:
            _fsync(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str, *, durable: bool = False) -> None:
    with atomic_file(path, durable=durable) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(path: str | os.PathLike, data: bytes, *, durable: bool = False) -> None:
    with atomic_file(path, durable=durable) as tmp:
        tmp.write_bytes(data)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """A temporary sibling directory that replaces ``path`` when the block succeeds.

    With ``overwrite=False`` an existing ``path`` is refused before anything is written.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass --force to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    _as_if_created(staging, 0o777)
    try:
        yield staging
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        os.replace(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
