"""The trainer end to end: real ``python -m megatron_mio.pretrain`` runs on torchrun/gloo ranks.

Parallel layouts (TP=2, PP=2, interleaved PP=2 x VP=2, DP=2) are checked against TP=PP=DP=1
from the *same* initial weights (an iteration-0 checkpoint loaded with --finetune), the same packs
and the same schedule.  Tolerance: 2e-5
relative on the per-token loss for the first 4 iterations (fp32; only the order of reductions
differs between layouts; measured differences are around 1e-7).
"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from tests.distributed import REPO_ROOT, cpu_env
from tests.trainer_runs import (
    LAYOUTS, TINY, from_init, layout_run, metrics, reference, session_root, straight_dp2, train,
)

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]

PARITY_RTOL = 2e-5
# What each layout's records say about it (tensor, pipeline, virtual pipeline, data parallel),
# under Megatron-LM's argument names: the planner's --calibrate reads them.
RECORDED_LAYOUTS = {"tp2": (2, 1, None, 1), "pp2": (1, 2, None, 1), "vpp2": (1, 2, 2, 1), "dp2": (1, 1, None, 2)}
LAYOUT_FIELDS = ("tensor_model_parallel_size", "pipeline_model_parallel_size", "virtual_pipeline_model_parallel_size",
                 "data_parallel_size")


def assert_recorded_layout(run, name):
    for record in run["records"]:
        assert tuple(record[field] for field in LAYOUT_FIELDS) == RECORDED_LAYOUTS[name], record
        assert record["world_size"] == 2 and record["recompute_granularity"] is None


@pytest.fixture(scope="session")
def runs_root(tmp_path_factory):
    return session_root(tmp_path_factory)


def assert_same_losses(run, ref, iterations):
    for it in iterations:
        got, want = run["losses"][it], ref["losses"][it]
        assert math.isclose(got, want, rel_tol=PARITY_RTOL), f"iteration {it}: {got} vs TP=1 {want}"


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_model_parallel_layouts_match_tp1(runs_root, name):
    ref = reference(runs_root)
    run = layout_run(runs_root, name)
    assert sorted(run["losses"]) == [1, 2, 3, 4]
    assert_same_losses(run, ref, [1, 2, 3, 4])
    assert_recorded_layout(run, name)
    # The losses move, so agreeing on them is not agreeing on a constant.
    assert ref["losses"][4] < ref["losses"][1]


def test_data_parallel_with_distributed_optimizer_matches_tp1(runs_root):
    ref = reference(runs_root)
    run = straight_dp2(runs_root)
    assert_same_losses(run, ref, [1, 2, 3, 4])
    assert_recorded_layout(run, "dp2")
    # Both ranks' halves of the global batch count: consumed samples advance by the global batch.
    assert [r["consumed_samples"] for r in run["records"]][:2] == [4, 8]


def test_iteration_line_and_metrics_fields(runs_root):
    ref = reference(runs_root)
    record = ref["records"][-1]
    for key in ("iteration", "consumed_samples", "elapsed_ms_per_iteration", "learning_rate", "loss",
                "loss_text", "loss_image", "loss_speech", "grad_norm", "skipped_iterations",
                "tokens_per_second", "tflops_per_gpu", "mfu"):
        assert key in record
    assert record["mfu"] is None  # no peak for a CPU
    assert record["tokens_per_second"] > 0 and record["tflops_per_gpu"] > 0
    # Every modality of the mock packs is present and its tokens add up to the total.
    assert all(record[f"tokens_{m}"] > 0 for m in ("text", "image", "speech"))
    line = next(l for l in ref["stdout"].splitlines() if " iteration        4/" in l)
    for text in ("consumed samples:", "elapsed time per iteration (ms):", "learning rate:", "lm loss:",
                 "loss text/image/speech:", "grad norm:", "number of skipped iterations:", "tokens/s:",
                 "TFLOP/s/GPU:", "MFU: n/a"):
        assert text in line


def _write_corpus(tokenizer, prefix_dir):
    """Tiny indexed datasets of each data type, token ids from the real MIO tokenizer."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
    from megatron_mio.data.synthetic import sample_text_lines

    rng = np.random.default_rng(0)
    lines = sample_text_lines(n=400, seed=1)
    docs = {"language": [], "image_text": [], "speech_text": []}
    for i, line in enumerate(lines):
        text = tokenizer.encode_text(line)
        if i % 3 == 0:
            docs["language"].append([tokenizer.bos_id, *text, tokenizer.eos_id])
        elif i % 3 == 1:
            # A few distinct "images" (32 SEED codes each), so the pairs are learnable.
            image = tokenizer.image_ids(rng.integers(0, 8, size=32) * 1000 % 8192)
            docs["image_text"].append([tokenizer.bos_id, *image, *text, tokenizer.eos_id])
        else:
            speech = tokenizer.speech_ids(np.repeat(rng.integers(0, 16, size=10), 3))
            docs["speech_text"].append([tokenizer.bos_id, *speech, *text, tokenizer.eos_id])
    prefixes = []
    for name, items in docs.items():
        prefix = str(prefix_dir / name)
        for suffix, dtype, make in (("", np.int32, lambda d: d), (".loss_mask", np.uint8, lambda d: np.ones(len(d)))):
            builder = IndexedDatasetBuilder(prefix + suffix + ".bin", dtype=dtype)
            for d in items:
                builder.add_document(np.asarray(make(d), dtype=dtype), [len(d)])
            builder.finalize(prefix + suffix + ".idx")
        prefixes.append(prefix)
    return prefixes


def test_loss_decreases_on_real_packed_data_of_every_type(runs_root, mio_tokenizer, mio_tokenizer_dir):
    data_dir = runs_root / "corpus"
    data_dir.mkdir(exist_ok=True)
    prefixes = _write_corpus(mio_tokenizer, data_dir)
    data_path = ["1", prefixes[0], "1", prefixes[1], "1", prefixes[2]]
    run = train(runs_root, "real_data", 1, [
        "--use-cpu", "--model-preset", "tiny", "--tokenizer-model", mio_tokenizer_dir,
        "--data-path", *data_path, "--seq-length", "256", "--micro-batch-size", "2",
        "--global-batch-size", "4", "--train-iters", "24", "--lr", "1e-2", "--lr-warmup-iters", "2",
        "--log-interval", "4", "--num-workers", "0",
    ], base=[])
    records = run["records"]
    first, last = records[0], records[-1]
    assert last["loss"] < first["loss"] - 1.0, (first["loss"], last["loss"])
    for modality in ("text", "image", "speech"):
        assert first[f"tokens_{modality}"] > 0
        assert last[f"loss_{modality}"] < first[f"loss_{modality}"], modality


def test_non_finite_loss_is_skipped_counted_and_stops_after_limit(runs_root, tmp_path):
    """NaN losses at iterations 2 and 4: skipped, counted, weights untouched; 3 in a row stop."""
    script = REPO_ROOT / "tests" / "workers" / "train_nonfinite.py"
    common = [*TINY, "--train-iters", "5", "--global-batch-size", "2", "--attention-backend", "local",
              *from_init(runs_root)]

    def run(bad, metrics_file, limit):
        return subprocess.run(
            [sys.executable, str(script), bad, "2", "--", *common, "--metrics-file", str(metrics_file),
             "--max-skipped-iterations-in-a-row", str(limit)],
            cwd=REPO_ROOT, env=cpu_env(), capture_output=True, text=True, timeout=600,
        )

    proc = run("2,4", tmp_path / "skip.jsonl", 2)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    records = {r["iteration"]: r for r in metrics(tmp_path / "skip.jsonl")}
    assert records[2]["skipped_iterations"] == 1 and records[4]["skipped_iterations"] == 1
    assert records[5]["total_skipped_iterations"] == 2
    assert math.isnan(records[2]["grad_norm"]) and math.isfinite(records[3]["loss"])
    # A skipped step leaves weights and schedule alone: iteration 3 trains from iteration 1's state.
    assert records[3]["learning_rate"] == records[2]["learning_rate"]
    assert all(math.isfinite(records[i]["loss"]) for i in (1, 3, 5))

    proc = run("2,3,4", tmp_path / "stop.jsonl", 3)
    assert proc.returncode == 3, proc.stdout[-5000:] + proc.stderr[-5000:]
    assert "3 iterations in a row had a non-finite loss or gradient" in proc.stdout
    assert "--max-skipped-iterations-in-a-row 3" in proc.stdout


@pytest.mark.slow
@pytest.mark.multiprocess
def test_skipped_iterations_count_survives_a_resume(runs_root, tmp_path):
    """TrainState is what a checkpoint restores: the skipped total continues after a resume."""
    script = REPO_ROOT / "tests" / "workers" / "train_nonfinite.py"
    save = tmp_path / "ckpt"
    common = [*TINY, "--global-batch-size", "2", "--attention-backend", "local", "--save", str(save)]

    def run(bad, iters, metrics_file, extra):
        proc = subprocess.run(
            [sys.executable, str(script), bad, "2", "--", *common, "--train-iters", str(iters),
             "--metrics-file", str(metrics_file), *extra],
            cwd=REPO_ROOT, env=cpu_env(), capture_output=True, text=True, timeout=600,
        )
        assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
        return {r["iteration"]: r for r in metrics(metrics_file)}

    run("2", 3, tmp_path / "first.jsonl", [])
    resumed = run("", 4, tmp_path / "resumed.jsonl", ["--load", str(save)])
    assert resumed[4]["skipped_iterations"] == 0 and resumed[4]["total_skipped_iterations"] == 1
