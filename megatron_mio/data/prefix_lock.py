"""One writer per dataset prefix at a time.

Two runs writing one prefix would each build their temporaries and rename them into place,
both reporting success, and the files left are whichever rename came last (possibly a mix of
both runs' files).  The writer of ``P`` holds an exclusive ``flock`` on ``.P.lock`` beside it;
a second one is refused at once with ``PrefixBusyError``.  The lock file is removed on release
(while still locked, and a new holder checks that the file it locked is still the one at the
path, so a removal can never let two holders in).  A killed holder's lock is released by the
kernel; its stale file is locked again by the next run.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator


class PrefixBusyError(RuntimeError):
    """Another process is writing the same prefix."""


def lock_path(prefix: str) -> str:
    directory, name = os.path.split(os.path.abspath(prefix))
    return os.path.join(directory, f".{name}.lock")


def _holder(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            pid = f.read().strip()
    except OSError:
        pid = ""
    return f"process {pid}" if pid else "another process"


@contextlib.contextmanager
def prefix_lock(prefix: str, flag: str = "--output-prefix") -> Iterator[None]:
    """Hold the lock on ``prefix`` for the block; ``PrefixBusyError`` if another process does."""
    path = lock_path(prefix)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise PrefixBusyError(
                f"{flag} {prefix} is being written by {_holder(path)} (lock {path}): wait for "
                "it to finish or choose another prefix") from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:  # the previous holder removed it after we opened it
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
        os.close(fd)
