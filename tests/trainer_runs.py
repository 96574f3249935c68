"""Shared tiny trainer runs for tests/test_training.py and tests/test_checkpoint.py.

Each run is a real ``python -m megatron_mio.pretrain`` under torchrun (gloo, CPU) that reports
through ``--metrics-file``.  Runs are cached per pytest session (several tests read one run), so
the suite pays for each launch once.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.distributed import run_torchrun

# A tiny GQA model (4 layers so PP=2 with two virtual stages of one layer fits), mock packs.
# 300 ids pad to 384 rows at TP=1 but 512 at TP=2 (multiples of 128 x TP): the initial weights
# are saved at TP=2, so every TP=1 run loads a checkpoint padded for another layout.
TINY = [
    "--use-cpu", "--mock-data", "--model-preset", "tiny", "--num-layers", "4",
    "--vocab-size", "300", "--seq-length", "64", "--micro-batch-size", "1",
    "--global-batch-size", "4", "--lr", "3e-3", "--lr-warmup-iters", "1",
    "--lr-decay-iters", "10", "--min-lr", "3e-4", "--weight-decay", "0.01", "--log-interval", "1",
    # torch.compile's fusions cost seconds per process, more than a tiny run (tested elsewhere).
    "--no-bias-swiglu-fusion", "--no-bias-dropout-fusion",
]

_CACHE: dict[str, dict] = {}


def metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def train(root: Path, name: str, nproc: int, extra: list[str], *, base=TINY) -> dict:
    """Run once per session; returns {"dir", "save", "records", "losses", "stdout"}."""
    key = f"{root}/{name}"  # one name = one command line (asserted below)
    command = [str(a) for a in (*base, *extra)]
    if key in _CACHE:
        assert _CACHE[key]["command"] == command, f"run {name!r} reused with different flags"
        return _CACHE[key]
    run_dir = Path(root) / name
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    metrics_file = run_dir / "metrics.jsonl"
    proc = run_torchrun("megatron_mio.pretrain", nproc, [*base, *extra, "--metrics-file", metrics_file],
                        module=True, timeout=600)
    records = metrics(metrics_file) if metrics_file.exists() else []
    result = {
        "dir": run_dir,
        "records": records,
        "losses": {r["iteration"]: r["loss"] for r in records if "loss" in r},
        "stdout": proc.stdout,
        "command": command,
    }
    _CACHE[key] = result
    return result


def initial_checkpoint(root: Path) -> Path:
    """Iteration-0 weights of the tiny model at TP=2: every layout starts from them (--finetune).

    Saved at TP=2, so the vocabulary is padded to 512 rows where TP=1 alone would pad to 384: the
    TP=1 runs must adopt the checkpoint's padding to match the other layouts exactly.

    Initialised 10x wider than the preset (std 0.2): at std 0.02 the logits are almost uniform,
    every loss sits near log(vocab), and even activations paired with the wrong micro-batch move
    the loss by only ~1e-4 relative.  Wide weights make such a mismatch a visible one.
    """
    save = Path(root) / "init" / "ckpt"
    train(root, "init", 2, ["--train-iters", "0", "--init-method-std", "0.2", "--tensor-model-parallel-size", "2",
                            "--save", save])
    return save


def from_init(root: Path) -> list[str]:
    return ["--load", str(initial_checkpoint(root)), "--finetune"]


def session_root(tmp_path_factory) -> Path:
    """One directory per pytest session shared by both test modules (so runs are shared too)."""
    root = Path(tmp_path_factory.getbasetemp()) / "trainer_runs"
    root.mkdir(exist_ok=True)
    return root


ITERS = ["--train-iters", "4"]

# Parallel layouts on 2 ranks, each trained 4 iterations from the same initial weights.
LAYOUTS = {
    "tp2": ["--tensor-model-parallel-size", "2", "--save-interval", "3"],
    # Saved fully reshardable: tests/test_checkpoint.py resumes it at PP=1.
    "pp2": ["--pipeline-model-parallel-size", "2", "--use-distributed-optimizer", "--dist-ckpt-optim-fully-reshardable",
            "--save-interval", "3"],
    # Interleaved: 2 ranks x 2 virtual stages of one layer (rank 0: layers 1, 3; rank 1: 2, 4),
    # with the plain (non-distributed) optimizer, so both optimizers' checkpoints are exercised.
    "vpp2": ["--pipeline-model-parallel-size", "2", "--num-layers-per-virtual-pipeline-stage", "1",
             "--save-interval", "3"],
}


def reference(root: Path) -> dict:
    """TP=PP=DP=1 from the initial weights."""
    return train(root, "tp1", 1, [*ITERS, *from_init(root)])


def layout_run(root: Path, name: str) -> dict:
    return train(root, name, 2, [*ITERS, *from_init(root), *LAYOUTS[name],
                                 "--save", str(Path(root) / name / "ckpt")])


DP2 = ["--use-distributed-optimizer", "--train-iters", "6", "--save-interval", "3"]


def straight_dp2(root: Path) -> dict:
    """6 iterations straight, DP=2 with the distributed optimizer, saving at 3 and 6."""
    return train(root, "dp2", 2, [*DP2, *from_init(root), "--save", str(Path(root) / "dp2" / "ckpt")])
