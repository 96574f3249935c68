"""Which checkpoint a run resumes from, and whether its files are whole.

Reads only files (no process group, no model), so every rank reaches the same verdict and a bad
``--load`` fails in seconds, naming the directory, the iteration and the file.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from megatron_mio.checkpoint.description import ModelDescription, read_description
from megatron_mio.checkpoint.layout import TRACKER, iteration_dir, read_tracker, saved_iterations

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """``--load`` names no usable checkpoint (missing, incomplete or damaged)."""


@dataclass(frozen=True)
class ResumePoint:
    """The checkpoint a run starts from, found and checked before anything is built."""

    iteration: int
    directory: str
    common: dict  # the non-sharded state: iteration, consumed samples, schedule, the description

    @property
    def layout(self) -> ModelDescription | None:
        """The model description the checkpoint records (with the layout that saved it)."""
        return read_description(self.common)


def find_checkpoint(root: str | None, step: int | None = None, *, allow_missing: bool = False,
                    finetune: bool = False) -> ResumePoint | None:
    """``root``'s checkpoint (``step``, else the latest complete one), or None when ``allow_missing``
    lets a run start without one (never for ``finetune``, which needs weights)."""
    if not root:
        return None
    if step is not None:
        iteration = step
        if not iteration_dir(root, iteration).is_dir():
            raise CheckpointError(f"--ckpt-step {iteration}: {iteration_dir(root, iteration)} does not exist "
                                  f"(iterations saved in {root}: {_listing(root)})")
    else:
        try:
            iteration = read_tracker(root)
        except ValueError as err:
            raise CheckpointError(f"--load {root}: {err}; pass --ckpt-step N to choose an iteration "
                                  f"({_listing(root)})") from None
        if iteration is None:
            if finetune or not allow_missing:
                purpose = "to take the weights from (--finetune)" if finetune else "to resume from"
                hint = "" if finetune else "; pass --allow-missing-checkpoint to start from scratch when there is none yet"
                raise CheckpointError(f"--load {root}: no checkpoint {purpose} ({TRACKER} is missing; "
                                      f"iterations saved: {_listing(root)}){hint}")
            log.warning("no checkpoint in %s (%s missing): starting from scratch (--allow-missing-checkpoint)",
                        root, TRACKER)
            return None
    return ResumePoint(iteration, str(iteration_dir(root, iteration)), read_checked_common_state(root, iteration))


def read_checked_common_state(root: str, iteration: int) -> dict:
    """The common state of ``root``'s iteration, after checking every file is whole."""
    from megatron.core import dist_checkpointing

    check_checkpoint_files(root, iteration)
    try:
        return dist_checkpointing.load_common_state_dict(str(iteration_dir(root, iteration)))
    except Exception as err:  # noqa: BLE001 - any failure to read it means the same to the user
        raise CheckpointError(_damaged(root, iteration, f"its common state cannot be read ({type(err).__name__}: {err})")) from None


def check_checkpoint_files(root: str, iteration: int) -> None:
    """Every file of ``root``'s iteration is present and as long as its index says."""
    try:
        read_checked_metadata(str(iteration_dir(root, iteration)))
    except DamagedFilesError as err:
        raise CheckpointError(_damaged(root, iteration, str(err))) from None


class DamagedFilesError(ValueError):
    """A torch_dist checkpoint's index cannot be read, or a file it points into is missing or short."""


def read_checked_metadata(directory: str | os.PathLike):
    """The index (``.metadata``) of the torch_dist checkpoint in ``directory``, after checking that
    every ``.distcp`` file it points into is present and long enough: a truncated file fails
    here, named, instead of deep inside a read."""
    from torch.distributed.checkpoint import FileSystemReader

    directory = str(directory)
    try:
        metadata = FileSystemReader(directory).read_metadata()
    except Exception as err:  # noqa: BLE001 - missing, truncated or not a pickle
        raise DamagedFilesError(f"its index {os.path.join(directory, '.metadata')} cannot be read "
                                f"({type(err).__name__}: {err})") from None
    needed: dict[str, int] = {}
    for item in metadata.storage_data.values():
        needed[item.relative_path] = max(needed.get(item.relative_path, 0), item.offset + item.length)
    for name, length in sorted(needed.items()):
        path = os.path.join(directory, name)
        size = os.path.getsize(path) if os.path.isfile(path) else None
        if size is None or size < length:
            found = "is missing" if size is None else f"has {size} bytes"
            raise DamagedFilesError(f"{path} {found}, its index needs {length}")
    return metadata


def _listing(root: str) -> str:
    iterations = saved_iterations(root)
    return ", ".join(str(i) for i in iterations) if iterations else "none"


def _damaged(root: str, iteration: int, what: str) -> str:
    earlier = [i for i in saved_iterations(root) if i < iteration]
    fallback = (f"resume from an earlier one with --ckpt-step {earlier[-1]} (saved: {', '.join(map(str, earlier))})"
                if earlier else f"there is no earlier checkpoint in {root}: restore the file or start without --load")
    return f"checkpoint iteration {iteration} in {root} is damaged: {what}; {fallback}"
