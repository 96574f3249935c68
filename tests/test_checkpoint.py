"""Checkpoints: exact resume, TP/PP resharding, the latest marker, preemption, --finetune.

All runs are real ``python -m megatron_mio.pretrain`` processes (torchrun, gloo, CPU).
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from megatron_mio.checkpoint.layout import TRACKER, iteration_dir, read_tracker, write_tracker
from tests.distributed import REPO_ROOT, cpu_env
from tests.trainer_runs import (
    DP2, ITERS, TINY, from_init, layout_run, metrics, session_root, straight_dp2, train,
)

RESHARD_RTOL = 2e-5


@pytest.fixture(scope="session")
def runs_root(tmp_path_factory):
    return session_root(tmp_path_factory)


def read_checkpoint(directory) -> dict[str, torch.Tensor]:
    """Every tensor of a torch_dist checkpoint, read without a process group."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.format_utils import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    state: dict = {}
    _load_state_dict(state, storage_reader=FileSystemReader(str(directory)),
                     planner=_EmptyStateDictLoadPlanner(), no_dist=True)
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def copy_checkpoint(src_root: Path, iteration: int, dst_root: Path) -> Path:
    if dst_root.exists():
        shutil.rmtree(dst_root)
    dst_root.mkdir(parents=True)
    shutil.copytree(iteration_dir(src_root, iteration), iteration_dir(dst_root, iteration))
    write_tracker(dst_root, iteration)
    return dst_root


@pytest.mark.multiprocess
@pytest.mark.slow
def test_resume_3_plus_3_equals_6_straight(runs_root):
    """The resumed run saves with --async-save: its iteration 6, written in the background,
    holds the same tensors as the straight run's synchronous save, and the tracker names it."""
    straight = straight_dp2(runs_root)
    ckpt = Path(straight["dir"]) / "ckpt"
    assert read_tracker(ckpt) == 6 and os.path.isdir(iteration_dir(ckpt, 3))
    # Outside the run's own directory, which train() recreates empty.
    resumed_ckpt = copy_checkpoint(ckpt, 3, Path(runs_root) / "resumed_ckpt")
    resumed = train(runs_root, "resumed", 2, [*DP2, "--load", str(resumed_ckpt), "--save", str(resumed_ckpt),
                                              "--async-save"])
    assert sorted(resumed["losses"]) == [4, 5, 6]
    assert read_tracker(resumed_ckpt) == 6
    for it in (4, 5, 6):  # exact: same data, same RNG, same optimizer state
        assert resumed["losses"][it] == straight["losses"][it], it
    assert resumed["records"][0]["consumed_samples"] == straight["records"][3]["consumed_samples"]
    a = read_checkpoint(iteration_dir(ckpt, 6))
    b = read_checkpoint(iteration_dir(resumed_ckpt, 6))
    assert a.keys() == b.keys()
    assert any(k.startswith("optimizer.") for k in a) and "embedding.word_embeddings.weight" in a
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.multiprocess
@pytest.mark.slow
@pytest.mark.parametrize("source", ["tp2", "pp2", "vpp2"])
def test_reshard_to_tp1_pp1_next_loss_matches(runs_root, source):
    """Model and optimizer state saved at iteration 3 continue exactly at TP=PP=1.

    ``vpp2`` saves two model chunks per rank with the plain optimizer, whose state is keyed by
    the chunks' parameters (both chunks have a ``decoder.layers.0``: a flat model state dict
    lost one chunk's parameters and the save failed with "Param id ... does not match").
    """
    saved = layout_run(runs_root, source)
    ckpt = copy_checkpoint(Path(saved["dir"]) / "ckpt", 3, Path(runs_root) / f"{source}_to_1_ckpt")
    optimizer = ["--use-distributed-optimizer"] if source == "pp2" else []
    run = train(runs_root, f"{source}_to_1", 1, [*ITERS, "--load", str(ckpt), *optimizer])
    assert sorted(run["losses"]) == [4]
    assert math.isclose(run["losses"][4], saved["losses"][4], rel_tol=RESHARD_RTOL)
    # Every source layout keeps the initial checkpoint's TP=2 padding (512 rows, TP=1 alone: 384).
    assert "using the checkpoint's padded vocabulary of 512 rows (this layout alone would pad 300 to 384)" in run["stdout"]


@pytest.mark.parametrize(("tp", "saved", "expected"), [
    (1, None, 384),            # nothing saved: this layout's own padding
    (1, 512, 512),             # TP=2 checkpoint at TP=1: adopt, so the reshard is exact
    (2, 384, 384),             # TP=1 checkpoint at TP=2: 384 rows split over 2 ranks, adopt
    (4, 510, 512),             # 510 rows do not split over 4 ranks: own padding (and a warning at load)
    (1, 256, 384),             # fewer rows than the vocabulary: own padding
])
def test_padded_vocab_for_load(tp, saved, expected):
    from megatron_mio.model.vocab_padding import padded_vocab_for_load

    layout = None if saved is None else {"padded_vocab_size": saved}
    assert padded_vocab_for_load(300, 128, tp, layout) == expected


@pytest.mark.multiprocess
@pytest.mark.slow
def test_finetune_loads_weights_only(runs_root):
    """--finetune from iteration 6: iteration counter, schedule and samples start at 0."""
    straight = straight_dp2(runs_root)
    run = train(runs_root, "finetune", 1, ["--train-iters", "1", "--load", str(Path(straight["dir"]) / "ckpt"),
                                           "--finetune", "--lr-warmup-iters", "0"])
    record = run["records"][0]
    assert record["iteration"] == 1 and record["consumed_samples"] == 4
    assert record["learning_rate"] == pytest.approx(3e-3)  # fresh schedule at its peak
    # Trained weights, not a fresh model: the loss is well below the fresh model's first loss.
    assert record["loss"] < straight["losses"][1]


def test_tracker_is_written_atomically(tmp_path):
    write_tracker(tmp_path, 12)
    assert (tmp_path / TRACKER).read_text() == "12"
    assert read_tracker(tmp_path) == 12
    assert [p.name for p in tmp_path.iterdir()] == [TRACKER]  # no temporary left behind
    (tmp_path / TRACKER).write_text("twelve")
    with pytest.raises(ValueError, match="expected an iteration number"):
        read_tracker(tmp_path)


@pytest.mark.multiprocess
@pytest.mark.slow
def test_sigterm_saves_and_exits_cleanly(runs_root, tmp_path):
    """SIGTERM mid-run: the iteration finishes, a complete checkpoint is marked, exit code 0."""
    save = tmp_path / "ckpt"
    metrics_file = tmp_path / "m.jsonl"
    cmd = [sys.executable, "-m", "megatron_mio.pretrain", *TINY, "--train-iters", "100000",
           *from_init(runs_root), "--save", str(save), "--metrics-file", str(metrics_file)]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=cpu_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not (metrics_file.exists() and len(metrics_file.read_text().splitlines()) >= 2):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0][-5000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output[-5000:]
    last = metrics(metrics_file)[-1]["iteration"]
    assert read_tracker(save) == last and os.path.isdir(iteration_dir(save, last))
    assert "training stopped at iteration" in output and "signal" in output
