"""Long runs, operated: start-up checks that fail in seconds, a full disk during a save, the
timers in the iteration line and the metrics record, Weights & Biases (offline)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from megatron_mio.checkpoint.layout import iteration_dir, read_tracker, saved_iterations
from megatron_mio.training.checkpointing import resume_point
from megatron_mio.training.config import CheckpointConfig
from tests.distributed import REPO_ROOT, cpu_env, run_torchrun
from tests.trainer_runs import TINY, train

ONE_RANK = [*TINY, "--global-batch-size", "2"]


def pretrain_in_process(argv, capsys) -> tuple[int, str]:
    """``python -m megatron_mio.pretrain`` in this process: start-up checks run before any process group."""
    from megatron_mio.pretrain import main

    began = time.time()
    status = main([str(a) for a in argv])
    assert time.time() - began < 60  # refused before any model was built
    return status, capsys.readouterr().err


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error")]


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory) -> Path:
    """One iteration of the tiny mock-data model (300 ids) saved."""
    root = tmp_path_factory.mktemp("saved")
    train(root, "saved", 1, ["--train-iters", "1", "--save", root / "ckpt"], base=ONE_RANK)
    return root / "ckpt"


def test_unwritable_save_is_refused_at_start(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    status, err = pretrain_in_process([*ONE_RANK, "--train-iters", "2", "--save", blocker / "ckpt"], capsys)
    assert status == 2 and error_lines(err) == [f"error: --save {blocker / 'ckpt'}: cannot write there "
                                                f"(Not a directory); choose a directory this job can write"]


@pytest.mark.slow
@pytest.mark.multiprocess
def test_resume_with_another_vocabulary_is_refused_naming_both_sizes(saved_run, capsys):
    argv = [a if a != "300" else "512" for a in ONE_RANK]  # --vocab-size 512
    status, err = pretrain_in_process([*argv, "--train-iters", "2", "--load", saved_run], capsys)
    assert status == 2, err
    assert error_lines(err) == [f"error: {iteration_dir(saved_run, 1)} was trained with a vocabulary of 300 ids, "
                                f"--vocab-size has 512: use the tokenizer the checkpoint was trained with"]


@pytest.mark.slow
@pytest.mark.parametrize("data_flags,match", [
    (["--data-path", "/no/such/prefix"], r"^error: --data-path: .*/no/such/prefix"),
    (["--data-config", "MIX"], r"^error: --data-config .*mix\.yaml: .*mix\.yaml:3: types\.text\.prefixs: unknown field"),
])
def test_data_mistakes_are_one_line_before_any_model(tmp_path, capsys, mio_tokenizer_dir, data_flags, match):
    import re

    mixture = tmp_path / "mix.yaml"
    mixture.write_text("types:\n  text:\n    prefixs: [a]\n    weight: 1\n")
    flags = [str(mixture) if f == "MIX" else f for f in data_flags]
    base = [a for a in ONE_RANK if a not in ("--mock-data", "--vocab-size", "300")]
    status, err = pretrain_in_process([*base, "--train-iters", "2", "--tokenizer-model", mio_tokenizer_dir, *flags],
                                      capsys)
    assert status == 2 and len(error_lines(err)) == 1 and re.search(match, error_lines(err)[0]), err


def test_train_iters_zero_without_a_schedule_is_one_line(capsys):
    argv = [a for a in ONE_RANK if a not in ("--lr-decay-iters", "10")]
    status, err = pretrain_in_process([*argv, "--train-iters", "0"], capsys)
    assert status == 2 and error_lines(err)[0].startswith("error: --train-iters 0 trains nothing")


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.skipif(os.geteuid() != 0, reason="mounting the small filesystem that fills up needs root")
def test_disk_full_during_a_save_keeps_the_last_checkpoint(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3M", "tmpfs", str(disk)], check=True)
    try:
        save = disk / "ckpt"  # one tiny checkpoint (about 1.8 MiB) fits, a second does not
        proc = run_torchrun("megatron_mio.pretrain", 1, [*ONE_RANK, "--train-iters", "4", "--save", save,
                                                         "--save-interval", "2"], module=True, check=False)
        assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
        errors = error_lines(proc.stderr)
        assert len(errors) == 1 and errors[0].startswith(f"error: could not save iteration 4 to {iteration_dir(save, 4)}")
        assert "a checkpoint of this run needs about" in errors[0] and "the last complete checkpoint is iteration 2" in errors[0]
        assert read_tracker(save) == 2 and saved_iterations(save) == [2]  # the partial one is gone
        checkpoint = CheckpointConfig(save=None, load=str(save), ckpt_step=None, allow_missing_checkpoint=False,
                                      save_interval=None, finetune=False, load_optim=True, load_rng=True,
                                      save_optim=True, save_rng=True, async_save=False, fully_reshardable=False)
        assert resume_point(checkpoint).iteration == 2  # whole: every file as long as its index says
        restarted = train(tmp_path, "restarted", 1, ["--train-iters", "3", "--load", save,
                                                     "--save", tmp_path / "elsewhere"], base=ONE_RANK)
        assert sorted(restarted["losses"]) == [3]
    finally:
        subprocess.run(["umount", str(disk)], check=True)


TIMER_FIELDS = ("time_data_wait_ms", "time_forward_backward_ms", "time_grad_reduce_exposed_ms", "time_optimizer_ms",
                "time_checkpoint_ms", "peak_memory_mb", "iteration_ms_slowest_rank", "iteration_ms_fastest_rank")


@pytest.mark.slow
@pytest.mark.multiprocess
def test_timers_in_the_line_and_the_record(tmp_path):
    # PP=2 at level 2: the stage's own compute comes from megatron-core's per-micro-batch timers;
    # the evaluation at iteration 2 runs the same schedule forward-only and must not count.
    run = train(tmp_path, "timers", 2, ["--train-iters", "4", "--save", tmp_path / "ckpt", "--save-interval", "2",
                                        "--log-interval", "2", "--pipeline-model-parallel-size", "2",
                                        "--timing-log-level", "2", "--eval-interval", "2", "--eval-iters", "3"])
    records = {r["iteration"]: r for r in run["records"] if "loss" in r}
    for record in records.values():
        assert all(record[field] >= 0 for field in TIMER_FIELDS), record
        assert record["time_forward_backward_ms"] > 0 and record["peak_memory_mb"] > 0
        assert record["iteration_ms_slowest_rank"] >= record["iteration_ms_fastest_rank"] > 0
        assert record["time_forward_backward_ms"] <= record["iteration_ms_slowest_rank"]
        # 4 micro-batches on 2 stages: a stage idles in the fill and drain, so compute < forward-backward.
        assert 0 < record["time_stage_compute_ms"] < record["time_forward_backward_ms"], record
    assert records[2]["time_checkpoint_ms"] == 0 and records[4]["time_checkpoint_ms"] > 0  # iteration 2's save
    assert "time per iteration (ms) data/fwd-bwd/grad-reduce/optimizer/checkpoint:" in run["stdout"]
    assert "iteration (ms) slowest/fastest rank:" in run["stdout"]
    assert "stage compute (ms):" in run["stdout"]
    off = train(tmp_path, "timers_off", 1, ["--train-iters", "1", "--timing-log-level", "0"], base=ONE_RANK)
    assert not any(field in off["records"][0] for field in TIMER_FIELDS)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_wandb_offline_run_holds_the_logged_scalars(tmp_path):
    save_dir = tmp_path / "wandb_out"
    proc = run_torchrun("megatron_mio.pretrain", 2,
                        [*TINY, "--train-iters", "3", "--metrics-file", tmp_path / "m.jsonl", "--wandb-project", "mio-test",
                         "--wandb-exp-name", "tiny", "--wandb-save-dir", save_dir],
                        module=True, env={"WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    runs = sorted((save_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, proc.stdout[-3000:]  # the logging rank only
    inspect = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", str(runs[0]), "--json"],
                             cwd=tmp_path, env=cpu_env({"WANDB_MODE": "offline"}), capture_output=True, text=True,
                             timeout=300, check=True)
    history = [json.loads(line)["history"]["item"] for line in inspect.stdout.splitlines()
               if line.startswith("{") and json.loads(line).get("type") == "history"]
    logged = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [h["_step"] for h in history] == [1, 2, 3]
    for item, record in zip(history, logged):
        assert item["loss"] == pytest.approx(record["loss"]) and item["learning_rate"] == pytest.approx(record["learning_rate"])


def test_wandb_flags_without_the_package_are_one_line():
    """With wandb hidden (``sys.modules['wandb'] = None`` makes it unimportable), the flag is refused at start."""
    code = ("import sys; sys.modules['wandb'] = None; "
            "from megatron_mio.pretrain import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", code, *ONE_RANK, "--train-iters", "1", "--wandb-project", "p"],
                          cwd=REPO_ROOT, env=cpu_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and error_lines(proc.stderr) == [
        "error: --wandb-project needs the wandb package, which is not installed: pip install wandb"], proc.stderr
