"""Which checkpoints a run keeps: the latest K, plus (optionally) every N-th iteration for good.

Deletion runs only after a new checkpoint is complete and the tracker points to it, and never
touches that one, the one the run resumed from, or any newer directory (one being written).
A checkpoint is first renamed out of the way (``.deleting.iter_…``, which no reader takes for a
checkpoint: ``saved_iterations`` lists ``iter_*`` only), then removed; a deletion killed half way
leaves only such a directory, which the next pass removes.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from megatron_mio.checkpoint.layout import iteration_dir, read_tracker, saved_iterations

log = logging.getLogger(__name__)

DELETING_PREFIX = ".deleting."


@dataclass(frozen=True)
class RetentionPolicy:
    keep_latest: int | None = None  # None: keep every checkpoint
    keep_every: int | None = None  # iterations that are multiples of this are never deleted

    def doomed(self, iterations: list[int], newest: int, protected: frozenset[int] = frozenset()) -> list[int]:
        """The iterations to delete once ``newest`` is complete (``iterations``: those on disk)."""
        if self.keep_latest is None:
            return []
        older = sorted(i for i in iterations if i < newest)
        kept_recent = set(older[len(older) - (self.keep_latest - 1):]) if self.keep_latest > 1 else set()
        return [i for i in older
                if i not in kept_recent and i not in protected and not (self.keep_every and i % self.keep_every == 0)]


def apply_retention(root: str | os.PathLike, policy: RetentionPolicy, protected: frozenset[int] = frozenset()) -> list[int]:
    """Delete what ``policy`` lets go below the tracker's iteration; returns the iterations deleted.

    Call it on one rank, after the tracker was written.
    """
    remove_interrupted_deletions(root)
    newest = read_tracker(root)
    if newest is None:
        return []
    doomed = policy.doomed(saved_iterations(root), newest, protected)
    for iteration in doomed:
        delete_checkpoint(root, iteration)
    if doomed:
        log.info("checkpoint retention: deleted iterations %s of %s", ", ".join(map(str, doomed)), root)
    return doomed


def delete_checkpoint(root: str | os.PathLike, iteration: int) -> None:
    """Rename ``iteration``'s directory out of the way (atomic), then remove it."""
    directory = iteration_dir(root, iteration)
    doomed = directory.with_name(DELETING_PREFIX + directory.name)
    os.replace(directory, doomed)
    shutil.rmtree(doomed)


def remove_interrupted_deletions(root: str | os.PathLike) -> None:
    root = Path(root)
    if root.is_dir():
        for path in root.iterdir():
            if path.name.startswith(DELETING_PREFIX):
                shutil.rmtree(path, ignore_errors=True)
