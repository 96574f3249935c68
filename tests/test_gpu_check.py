"""bench/gpu_check.py's own behaviour on the CPU: children keep the caller's environment, a hung or
failing section is a FAIL row that says why, and section d's rows are judged by their criteria.

The sections themselves run in ``tests/test_gpu_path.py::test_gpu_check_dry_run``.
"""

from __future__ import annotations

import json
import os
import sys
import time

import pytest

from tests.distributed import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "bench"))

import child_process  # noqa: E402
import gpu_check  # noqa: E402


def _printing_row(code: str) -> list[str]:
    """A child that runs ``code`` (which defines ``detail``) and prints one gpu_check row."""
    row = f"print({gpu_check.ROW_PREFIX!r} + json.dumps(['t', 'child', 'PASS', detail]), flush=True)"
    return [sys.executable, "-c", f"import json\n{code}\n{row}"]


def test_a_child_sees_the_pythonpath_the_caller_set(tmp_path, monkeypatch):
    """Packages installed with ``pip install --target DIR`` are found through PYTHONPATH=DIR: a
    section's child must keep that entry (and still find the repository first)."""
    site = tmp_path / "target"
    site.mkdir()
    (site / "installed_with_target.py").write_text("WHERE = __file__\n")
    monkeypatch.setenv("PYTHONPATH", str(site))
    monkeypatch.chdir(tmp_path)  # not the repository: it must come from PYTHONPATH
    code = ("import installed_with_target, megatron_mio, sys\n"
            "detail = installed_with_target.WHERE + ' ' + megatron_mio.__file__")
    rows = gpu_check.run_section("t", _printing_row(code), limit_s=60, env=child_process.child_env())
    assert [row.result for row in rows] == ["PASS"], rows
    target_file, package_file = rows[0].detail.split()
    assert target_file == str(site / "installed_with_target.py")
    assert package_file == str(REPO_ROOT / "megatron_mio" / "__init__.py")


def test_child_env_puts_the_repository_first_and_keeps_the_rest():
    env = child_process.child_env({"TORCH_LOGS": "recompiles"},
                                  environ={"PYTHONPATH": os.pathsep.join(["/opt/wheels", str(REPO_ROOT), "/x"]),
                                           "HOME": "/home/me"})
    assert env["PYTHONPATH"].split(os.pathsep) == [str(REPO_ROOT), "/opt/wheels", "/x"]
    assert env["HOME"] == "/home/me" and env["TORCH_LOGS"] == "recompiles"


def test_a_hanging_section_is_a_fail_row_within_its_limit():
    """What it printed before it hung is kept; the FAIL row names the limit; its children die too."""
    code = ("import subprocess, sys, time\n"
            "grandchild = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
            "print(grandchild.pid, file=sys.stderr, flush=True)\n"
            f"print({gpu_check.ROW_PREFIX!r} + json.dumps(['t', 'before the hang', 'PASS', '']), flush=True)\n"
            "time.sleep(600)\ndetail = ''")
    began = time.time()
    rows = gpu_check.run_section("t", _printing_row(code), limit_s=4, env=child_process.child_env())
    assert time.time() - began < 20
    assert [(row.check, row.result) for row in rows] == [("before the hang", "PASS"), ("section t", "FAIL")]
    assert "no result within 4 s" in rows[1].detail
    grandchild = int(rows[1].detail.split("stderr tail:")[1].strip().split()[0])
    assert _gone(grandchild), "the section's own child outlived it"  # killed with its process group


def _gone(pid: int, wait_s: float = 5.0) -> bool:
    """No such process, or a zombie waiting for a reaper (killed; this machine's init may not reap)."""
    deadline = time.time() + wait_s
    while time.time() < deadline:
        try:
            state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":
            return True
        time.sleep(0.1)
    return False


def test_a_failing_child_puts_its_stderr_tail_in_the_fail_row():
    code = ("import sys\nprint('loading the model', file=sys.stderr)\n"
            "print('torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 GiB', file=sys.stderr)\n"
            "sys.exit(3)\ndetail = ''")
    rows = gpu_check.run_section("t", _printing_row(code), limit_s=60, env=child_process.child_env())
    assert [row.result for row in rows] == ["FAIL"]
    assert "exit status 3" in rows[0].detail
    assert "CUDA out of memory. Tried to allocate 20.00 GiB" in rows[0].detail


def test_a_failing_trainer_says_why_in_its_section():
    """Section c/d start the trainer: its error line, not 'non-zero exit status', reaches the row."""
    with pytest.raises(child_process.ChildFailed) as failed:
        child_process.run_child([sys.executable, "-m", "megatron_mio.pretrain", "--mock-data",
                                 "--no-such-flag"], timeout_s=300)
    assert "exit status 2" in str(failed.value) and "--no-such-flag" in str(failed.value)


@pytest.mark.slow
def test_a_section_over_its_limit_fails_and_the_next_still_runs(capsys):
    """End to end through the check's own command line: section 0 gets 2 s, e still runs."""
    status = gpu_check.main(["--dry-run", "--sections", "e", "--time-limit", "0=2"])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "---" not in line]
    rows = {line.split("|")[1].strip(): line for line in lines[1:]}
    assert status == 1
    assert "| FAIL |" in rows["0"] and "no result within 2 s" in rows["0"]
    assert "| n/a |" in rows["e"] and "transformer-engine does not import here" in rows["e"]


def test_unknown_sections_are_refused(capsys):
    assert gpu_check.main(["--dry-run", "--sections", "ax"]) == 2
    assert "unknown section(s) x" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        gpu_check.build_parser().parse_args(["--time-limit", "z=3"])


# ---- section d's criteria ----------------------------------------------------------------------


def _result(tokens_per_second=10_000.0, step_ms=(1000.0, 1010.0, 990.0), optimizer_ms=40.0, recompiles=0,
            memory=40 * 2**30, loss=7.0, micro_batches=16):
    forward_backward_ms = sum(step_ms) / len(step_ms) - optimizer_ms
    return {"tokens_per_second": tokens_per_second, "flops_per_second": tokens_per_second * 4.5e10,
            "forward_backward_tokens_per_second": tokens_per_second * 1.04, "step_ms": list(step_ms),
            "median_step_ms": sorted(step_ms)[len(step_ms) // 2], "forward_backward_ms": forward_backward_ms,
            "optimizer_ms": optimizer_ms, "max_memory_allocated": memory, "recompiles": recompiles,
            "micro_batches": micro_batches, "final_loss": loss}


def _judge(ours, baseline=None, planned=40 * 2**30, on_gpu=True):
    rows = gpu_check.judge_throughput(ours, baseline or _result(tokens_per_second=5_000.0, memory=None),
                                      peak_tflops=989.0, planned_bytes=planned, on_gpu=on_gpu, shape="8 layers")
    return {row.check.split(";")[0]: row.result for row in rows}


def test_every_section_d_row_has_a_criterion():
    good = _judge(_result())
    assert set(good.values()) == {"PASS"}, good
    assert len(good) == 7
    assert _judge(_result(tokens_per_second=4_000.0))["ours (megatron-core, packed): 8 layers"] == "FAIL"  # MFU 18%
    assert _judge(_result(optimizer_ms=300.0))["ours: step of 16 micro-batches"] == "FAIL"
    assert _judge(_result(tokens_per_second=6_000.0), _result(tokens_per_second=7_000.0))[
        "ours / transformers, useful tokens/s"] == "FAIL"
    assert _judge(_result(recompiles=3))["ours: iteration time stable"] == "FAIL"  # one per iteration
    assert _judge(_result(step_ms=(1000.0, 1000.0, 1700.0)))["ours: iteration time stable"] == "FAIL"
    assert _judge(_result(memory=52 * 2**30))["ours: max_memory_allocated vs memory_plan"] == "FAIL"
    assert _judge(_result(), _result(loss=float("nan")))[
        "transformers LlamaForCausalLM, SDPA, padded, fused AdamW"] == "FAIL"


def test_speed_and_memory_criteria_wait_for_a_gpu():
    on_cpu = _judge(_result(tokens_per_second=10.0, step_ms=(10.0, 30.0, 10.0), memory=None), planned=None,
                    on_gpu=False)
    assert on_cpu["ours (megatron-core, packed): 8 layers"] == "n/a"
    assert on_cpu["ours / transformers, useful tokens/s"] == "n/a"
    assert on_cpu["ours: max_memory_allocated vs memory_plan"] == "n/a"
    assert on_cpu["ours: iteration time stable"] == "PASS"  # recompiles still count on the CPU


def test_the_memory_prediction_covers_the_training_state():
    """Section d compares the GPU's peak with this number: weights, gradients and Adam state of
    the 8-layer Yi-6B-width model are 18 bytes per parameter before any activation."""
    from megatron_mio.model.presets import get_preset, padded_vocab_size
    from megatron_mio.planner.memory import total_parameters

    s = gpu_check.shapes(dry_run=False)
    parameters = total_parameters(get_preset("yi-6b").with_overrides(num_layers=8), padded_vocab_size(s.vocab))
    planned = gpu_check.planned_peak_bytes(s)
    assert 18 * parameters < planned < 18 * parameters + 20 * 2**30
    assert json.dumps(planned)  # a plain int for the table
