"""The memory planner (megatron_mio.training.memory_plan, tools/plan_parallelism.py).

The estimate is checked against what a tiny megatron-core GPTModel really holds on CPU ranks
(tests/workers/plan_measure.py): parameters, DDP weight and gradient storage, optimizer state
after one step, and the bytes autograd saves for backward in one forward pass.
"""

from __future__ import annotations

import importlib.util
import json

import pytest

from megatron_mio.model.presets import get_preset, padded_vocab_size
from megatron_mio.training import memory_plan as mp
from tests.distributed import REPO_ROOT, read_rank_results, run_torchrun

SEQ, MICRO_BATCH, VOCAB = 64, 2, 1000
# TPxPP:precision:distributed-optimizer:attention backend:recompute, on 2 ranks.
SPECS = (
    "2x1:fp32:0:local:none",  # TP=2
    "1x2:fp32:0:local:none",  # PP=2: each stage
    "1x1:bf16:1:local:none",  # DP=2, bf16 with the distributed optimizer
    "1x1:bf16:0:local:selective",  # DP=2, bf16, plain optimizer, selective recompute
    "2x1:fp32:0:local:full",  # TP=2, full recompute
)
# State is counted exactly (up to DDP's bucket padding); saved activations within 2%.
STATE_TOLERANCE = 0.01
ACTIVATION_TOLERANCE = 0.02


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    out = tmp_path_factory.mktemp("plan")
    run_torchrun(REPO_ROOT / "tests/workers/plan_measure.py", 2,
                 [out, "tiny", VOCAB, SEQ, MICRO_BATCH, *SPECS], timeout=300)
    return read_rank_results(out, 2)


def _layout(spec: str, dp: int) -> tuple[mp.Layout, mp.Precision]:
    shape, precision, dist_opt, _backend, recompute = spec.split(":")
    tp, pp = (int(x) for x in shape.split("x"))
    layout = mp.Layout(tp, pp, dp, distributed_optimizer=dist_opt == "1",
                       recompute=None if recompute == "none" else recompute)
    return layout, mp.PRECISIONS[precision]


@pytest.mark.multiprocess
@pytest.mark.parametrize("spec", SPECS)
def test_estimate_matches_what_megatron_core_allocates(measured, spec):
    preset = get_preset("tiny")
    for rank, results in enumerate(measured):
        real = results[spec]
        layout, precision = _layout(spec, real["dp"])
        stage = 0 if real["first_stage"] else layout.pp - 1
        vocab = padded_vocab_size(VOCAB, 128, layout.tp)
        assert vocab == real["padded_vocab"]
        params = mp.stage_parameters(preset, vocab, layout.tp, layout.pp, stage)
        assert params == real["parameters"], (spec, rank)
        weights, grads, optimizer = mp.state_bytes(params, layout.dp, precision,
                                                   layout.distributed_optimizer)
        for name, estimate in (("weights", weights), ("grads", grads), ("optimizer", optimizer)):
            assert estimate == pytest.approx(real[name], rel=STATE_TOLERANCE), (spec, rank, name)
        activations = mp.microbatch_activation_bytes(
            preset, vocab, layout, stage, seq_length=SEQ, micro_batch=MICRO_BATCH,
            precision=precision, kernels=mp.CPU_LOCAL_KERNELS)
        assert activations == pytest.approx(real["activations"], rel=ACTIVATION_TOLERANCE), (spec, rank)


def test_yi_6b_parameter_count():
    # Yi-6B-Base has 6,061,035,520 parameters with its 64,000-token vocabulary.
    assert mp.total_parameters(get_preset("yi-6b"), 64_000) == 6_061_035_520


def test_estimate_responds_to_each_knob():
    preset = get_preset("yi-6b")
    vocab = padded_vocab_size(76_292, 128, 1)
    base = mp.Layout(1, 1, 8, distributed_optimizer=False)
    kw = dict(seq_length=2800, micro_batch=1)
    plain = mp.estimate(preset, vocab, base, **kw)
    # 18 bytes per parameter without the distributed optimizer; 6 + 12/DP with it.
    assert plain.weights + plain.grads + plain.optimizer == 18 * plain.parameters
    dist = mp.estimate(preset, vocab, mp.Layout(1, 1, 8), **kw)
    assert dist.optimizer == pytest.approx(12 * dist.parameters / 8, abs=1)
    full = mp.estimate(preset, vocab, mp.Layout(1, 1, 8, recompute="full"), **kw)
    assert full.activations < plain.activations / 5
    tp2 = mp.estimate(preset, padded_vocab_size(76_292, 128, 2), mp.Layout(2, 1, 4), **kw)
    assert tp2.weights < dist.weights * 0.51 and tp2.activations < dist.activations
    # The 1F1B first stage holds PP micro-batches of L/PP layers.
    pp4 = mp.estimate(preset, vocab, mp.Layout(1, 4, 2), num_microbatches=8, **kw)
    assert pp4.stage == 0 and pp4.breakdown["microbatches_in_flight"] == 4
    dense = mp.estimate(preset, vocab, base, kernels=mp.Kernels("dense"), **kw)
    assert dense.activations > plain.activations  # the s x s softmax


def _plan_cli(capsys, *args) -> tuple[int, str]:
    """Run tools/plan_parallelism.py's main in this process (its imports are already loaded)."""
    spec = importlib.util.spec_from_file_location("plan_parallelism", REPO_ROOT / "tools/plan_parallelism.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    capsys.readouterr()
    code = tool.main(list(args))
    return code, capsys.readouterr().out


def test_cli_lists_fitting_layouts_for_yi_6b(capsys):
    code, out = _plan_cli(capsys, "--model-preset", "yi-6b", "--gpus", "8", "--gpu-memory", "80",
                          "--seq-length", "2800", "--micro-batch-size", "1", "--json", "--all")
    assert code == 0
    rows = json.loads(out)
    by_key = {(r["tp"], r["pp"], r["dp"], r["recompute"], r["distributed_optimizer"]): r for r in rows}
    assert all(r["tp"] * r["pp"] * r["dp"] == 8 for r in rows)
    one = by_key[(1, 1, 8, None, True)]
    assert one["fits"] and one["total_gib"] < 80 - 4
    assert [g["global_batch"] for g in one["global_batches"]][:3] == [8, 16, 32]
    for r in rows:
        assert r["fits"] == (r["total_gib"] + 4 <= 80)
    # On 24 GiB cards, Yi-6B fits only when the model is split.
    code, out = _plan_cli(capsys, "--model-preset", "yi-6b", "--gpus", "8", "--gpu-memory", "24", "--json")
    fitting = json.loads(out)
    assert code == 0 and fitting and all(r["tp"] * r["pp"] > 1 for r in fitting)
    # A text table for people.
    code, out = _plan_cli(capsys, "--model-preset", "yi-6b", "--gpus", "16", "--gpu-memory", "80")
    assert code == 0 and "TP1 PP1 DP16" in out


def test_cli_reports_when_nothing_fits(capsys):
    code, out = _plan_cli(capsys, "--model-preset", "yi-6b", "--gpus", "1", "--gpu-memory", "8")
    assert code == 1 and "no layout fits" in out
