"""Where a checkpoint's files are: Megatron-LM's directory layout, named in this one place.

::

    {save}/iter_0000300/                      one torch_dist checkpoint (megatron-core dist_checkpointing)
    {save}/iter_0000300/metadata.json         dist_checkpointing's config: what makes it a checkpoint
    {save}/latest_checkpointed_iteration.txt  "300": the latest *complete* iteration, written
                                              (fsync'd temporary file, renamed) only after every
                                              rank has finished writing iter_0000300

The common (non-sharded) state of every checkpoint, the trainer's and the converter's alike
(``common_state``): ``iteration``, ``consumed_samples``, ``checkpoint_version`` and, under
``args``, the model description (``megatron_mio.checkpoint.description``).  The sharded state:
``model`` (``model0``, ``model1``, ... with a virtual pipeline), ``optimizer``,
``opt_param_scheduler`` and ``rng_state`` (the trainer's; a converted checkpoint holds the model only).

Plain files and the standard library only: ``python -m megatron_mio.checkpoint`` answers the launch
scripts at job start without importing torch.
"""

from __future__ import annotations

import os
from pathlib import Path

from megatron_mio.atomic import write_text

TRACKER = "latest_checkpointed_iteration.txt"
ITERATION_PREFIX = "iter_"
# megatron-core's dist_checkpointing.core.CONFIG_FNAME, present in every torch_dist checkpoint.
CHECKPOINT_CONFIG = "metadata.json"
CHECKPOINT_VERSION = 3.0  # Megatron-LM's version of this layout (3.0: distributed checkpoints)

# Keys of a checkpoint's state.
ITERATION_KEY = "iteration"
CONSUMED_SAMPLES_KEY = "consumed_samples"
VERSION_KEY = "checkpoint_version"
# The model description; Megatron-LM keeps the run's settings under this key too, and every
# checkpoint this package has written records its model there.
DESCRIPTION_KEY = "args"
OPTIMIZER_KEY = "optimizer"
SCHEDULER_KEY = "opt_param_scheduler"
RNG_KEY = "rng_state"
TRAIN_STATE_KEY = "train_state"  # the trainer's counters beyond iteration and consumed samples


def iteration_dir(root: str | os.PathLike, iteration: int) -> Path:
    return Path(root) / f"{ITERATION_PREFIX}{iteration:07d}"


def model_keys(num_chunks: int) -> list[str]:
    """The state keys of the model: one per virtual-pipeline chunk."""
    return ["model"] if num_chunks == 1 else [f"model{i}" for i in range(num_chunks)]


def common_state(iteration: int, consumed_samples: int, description: dict, counters: dict | None = None) -> dict:
    """The non-sharded entries every checkpoint carries (``counters``: the trainer's, if it saves)."""
    state = {ITERATION_KEY: iteration, CONSUMED_SAMPLES_KEY: consumed_samples,
             VERSION_KEY: CHECKPOINT_VERSION, DESCRIPTION_KEY: description}
    if counters is not None:
        state[TRAIN_STATE_KEY] = counters
    return state


def read_tracker(root: str | os.PathLike) -> int | None:
    """The latest complete iteration under ``root``, or None when there is none."""
    path = Path(root) / TRACKER
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8").strip()
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"{path}, line 1: expected an iteration number, found {text!r}")
    return int(text)


def write_tracker(root: str | os.PathLike, iteration: int) -> None:
    """Mark ``iteration`` complete: atomically, and on disk before the rename (other jobs trust it)."""
    write_text(Path(root) / TRACKER, str(iteration), durable=True)


def saved_iterations(root: str | os.PathLike) -> list[int]:
    """The iterations with an ``iter_*`` directory under ``root``, in order (complete or not)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        number = path.name.removeprefix(ITERATION_PREFIX)
        if path.name.startswith(ITERATION_PREFIX) and number.isdigit() and path.is_dir():
            found.append(int(number))
    return sorted(found)


def is_checkpoint(directory: str | os.PathLike) -> bool:
    return (Path(directory) / CHECKPOINT_CONFIG).is_file()


def resolve_checkpoint(load: str | os.PathLike, iteration: int | None = None) -> Path:
    """``--load`` (a save directory, or one ``iter_*`` directory) -> the checkpoint directory:
    ``iteration``'s, else the latest complete one."""
    load = Path(load)
    if is_checkpoint(load):
        return load
    if iteration is None:
        iteration = read_tracker(load)
        if iteration is None:
            raise FileNotFoundError(f"{load}: no {TRACKER} and no {CHECKPOINT_CONFIG}; not a checkpoint")
    directory = iteration_dir(load, iteration)
    if not is_checkpoint(directory):
        raise FileNotFoundError(f"{directory}: no torch_dist checkpoint ({CHECKPOINT_CONFIG} missing)")
    return directory
