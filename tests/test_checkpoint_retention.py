"""Checkpoint retention: the latest K (and every N-th) kept; deletion only after the tracker moved,
renamed out of the way first, so a deletion killed half way never leaves a checkpoint-looking
directory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from megatron_mio.checkpoint.layout import iteration_dir, read_tracker, saved_iterations, write_tracker
from megatron_mio.checkpoint.retention import DELETING_PREFIX, RetentionPolicy, apply_retention
from tests.trainer_runs import train


@pytest.mark.parametrize("policy,on_disk,newest,protected,doomed", [
    (RetentionPolicy(None), [1, 2, 3, 4], 4, (), []),                       # no flag: keep everything
    (RetentionPolicy(2), [1, 2, 3, 4], 4, (), [1, 2]),                      # keep 3 and 4
    (RetentionPolicy(1), [1, 2, 3, 4], 4, (), [1, 2, 3]),
    (RetentionPolicy(2, keep_every=2), [1, 2, 3, 4, 5, 6], 6, (), [1, 3]),  # 2, 4 kept for good
    (RetentionPolicy(1), [1, 2, 3], 3, (1,), [2]),                          # never the one resumed from
    (RetentionPolicy(1), [1, 2, 3, 7], 3, (), [1, 2]),                      # never a newer one (being written)
])
def test_policy(policy, on_disk, newest, protected, doomed):
    assert policy.doomed(on_disk, newest, frozenset(protected)) == doomed


def fake_checkpoint(root: Path, iteration: int, files: int = 3) -> Path:
    directory = iteration_dir(root, iteration)
    directory.mkdir(parents=True)
    for index in range(files):
        (directory / f"__{index}_0.distcp").write_bytes(b"x" * 16)
    return directory


def test_nothing_is_deleted_before_the_tracker_points_to_the_new_checkpoint(tmp_path):
    for iteration in (1, 2, 3):
        fake_checkpoint(tmp_path, iteration)
    write_tracker(tmp_path, 2)  # iteration 3 is still being written
    assert apply_retention(tmp_path, RetentionPolicy(1)) == [1]
    assert saved_iterations(tmp_path) == [2, 3]


KILLED_DELETION = """
import sys
from megatron_mio.checkpoint.retention import RetentionPolicy, apply_retention
apply_retention(sys.argv[1], RetentionPolicy(1))
"""


def _partly_removed(directory: Path) -> bool:
    try:
        return len(os.listdir(directory)) < 20000
    except FileNotFoundError:
        return False


def test_sigkill_during_deletion_leaves_no_partial_checkpoint(tmp_path):
    """Killed while removing a large checkpoint: what remains is either whole or renamed away."""
    big = fake_checkpoint(tmp_path, 1, files=20000)
    fake_checkpoint(tmp_path, 2)
    write_tracker(tmp_path, 2)
    doomed = big.with_name(DELETING_PREFIX + big.name)
    proc = subprocess.Popen([sys.executable, "-c", KILLED_DELETION, str(tmp_path)],
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    deadline = time.time() + 60
    while not _partly_removed(doomed) and time.time() < deadline:
        time.sleep(0.001)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 0 < len(os.listdir(doomed)) < 20000  # killed half way through the removal
    assert not big.exists() and saved_iterations(tmp_path) == [2] and read_tracker(tmp_path) == 2
    apply_retention(tmp_path, RetentionPolicy(1))  # the next pass finishes the job
    assert not doomed.exists() and saved_iterations(tmp_path) == [2]


@pytest.mark.slow
@pytest.mark.multiprocess
def test_training_keeps_the_latest_and_every_nth(tmp_path):
    save = tmp_path / "ckpt"
    run = train(tmp_path, "retention", 1, ["--train-iters", "5", "--save", save, "--save-interval", "1",
                                           "--keep-last-checkpoints", "2", "--keep-checkpoints-every", "2"])
    assert sorted(run["losses"]) == [1, 2, 3, 4, 5], run["stdout"][-3000:]
    assert saved_iterations(save) == [2, 4, 5] and read_tracker(save) == 5
    # A resume into the same directory never deletes the checkpoint it started from.
    resumed = train(tmp_path, "retention_resumed", 1, ["--train-iters", "7", "--load", save, "--save", save,
                                                       "--save-interval", "1", "--keep-last-checkpoints", "1"])
    assert sorted(resumed["losses"]) == [6, 7], resumed["stdout"][-3000:]
    assert saved_iterations(save) == [5, 7] and read_tracker(save) == 7
