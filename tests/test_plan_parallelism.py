"""The parallelism planner (megatron_mio/planner, the plan_parallelism command).

Memory: checked against what a tiny megatron-core GPTModel really holds on CPU ranks
(tests/workers/plan_measure.py): parameters, DDP weight and gradient storage, optimizer state
after one step, and the bytes autograd saves for backward in one forward pass.
Step time: its compute term against the trainer's own FLOP count, its bubble term against the
1F1B formula, the ranking, the reasons and the launch line for MIO's stage shapes, and
--calibrate against a real trainer run's metrics file.  (Measured pipeline timings are a
benchmark: bench/bench_plan_bubble.py.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict, replace

import pytest

from megatron_mio.commands import plan_parallelism
from megatron_mio.model import flops
from megatron_mio.model.presets import get_preset, padded_vocab_size
from megatron_mio.planner import calibration
from megatron_mio.planner import memory as mp
from megatron_mio.planner.recommend import Job
from megatron_mio.planner.step_time import (
    ClusterConstants,
    Workload,
    bubble_fraction,
    predict,
)
from tests import trainer_runs
from tests.distributed import REPO_ROOT, cpu_env, read_rank_results, run_torchrun

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
    kw = {"seq_length": 2800, "micro_batch": 1}
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


# ------------------------------------------------------------------------------ step-time model

YI = get_preset("yi-6b")


def _work(**overrides) -> Workload:
    base = {"preset": YI, "padded_vocab": padded_vocab_size(76_292, 128, 1), "seq_length": 2800,
            "micro_batch": 1, "global_batch": 128}
    return Workload(**{**base, **overrides})


def _compute_flops(work: Workload, layout: mp.Layout) -> float:
    """The FLOPs the model's compute term stands for, for the whole step and all stages."""
    constants = ClusterConstants()
    return predict(work, layout, constants).compute * constants.achieved_tflops * 1e12


def test_compute_term_is_the_trainers_flop_count_and_scales_with_length_and_documents():
    import torch

    from megatron_mio.training.metrics import attention_pairs

    # The trainer counts pairs from a batch's cu_seqlens; the planner's equal documents agree.
    cu_seqlens = torch.tensor([[0, 700, 1400, 2100, 2800, -1]], dtype=torch.int32)
    assert attention_pairs(cu_seqlens) == flops.packed_attention_pairs(2800, 4)
    layout = mp.Layout(1, 1, 8)
    for seq, documents in ((2800, 1), (2800, 4), (1400, 1), (700, 7)):
        work = _work(seq_length=seq, documents_per_pack=documents)
        m = work.microbatches(layout)
        pairs = m * flops.packed_attention_pairs(seq, documents)
        # One replica's m micro-batches, at TP=1 and PP=1: exactly what the trainer would log.
        assert _compute_flops(work, layout) == pytest.approx(
            flops.training_flops(YI, work.padded_vocab, m * seq, pairs), rel=1e-12)
    # Attention grows with the square of the document length: one 2800-token document costs more
    # than four of 700, and halving the sequence more than halves the work.
    one, four = (_compute_flops(_work(documents_per_pack=d), layout) for d in (1, 4))
    assert four < one
    half = _compute_flops(_work(seq_length=1400, global_batch=256), layout)
    assert half < one and half / one > 0.9  # at 2800 tokens matmuls dominate attention


def test_split_stages_add_up_to_the_whole_model():
    # PP splits the layers and the last stage alone carries the output layer; TP halves both.
    work = _work()
    rate = ClusterConstants().achieved_tflops * 1e12
    per_microbatch = _compute_flops(work, mp.Layout(1, 1, 8)) / 16  # 16 micro-batches at DP=8
    logits = 3 * flops.logits_forward_flops_per_token(YI, work.padded_vocab) * 2800
    pp4 = predict(work, mp.Layout(1, 4, 2), ClusterConstants())
    assert pp4.compute / pp4.microbatches * rate == pytest.approx((per_microbatch - logits) / 4 + logits, rel=1e-12)
    tp2 = predict(work, mp.Layout(2, 1, 4), ClusterConstants())
    assert tp2.compute / tp2.microbatches * rate == pytest.approx(per_microbatch / 2, rel=1e-12)


def test_bubble_is_pp_minus_one_over_m_plus_pp_minus_one_and_shrinks_with_interleaving():
    constants = ClusterConstants(inter_node_gbps=1e9, intra_node_gbps=1e9)  # compute only
    for m in (2, 4, 8):
        step = predict(_work(global_batch=m, preset=get_preset("small"), padded_vocab=384, seq_length=256),
                       mp.Layout(1, 2, 1), constants)
        assert step.microbatches == m
        pipeline = step.compute + step.bubble
        assert step.bubble / pipeline == pytest.approx((2 - 1) / (m + 2 - 1))
        assert bubble_fraction(2, m) == pytest.approx(1 / (m + 1))
    plain = predict(_work(global_batch=8), mp.Layout(1, 4, 1), constants)
    interleaved = predict(_work(global_batch=8), mp.Layout(1, 4, 1, vpp=2), constants)
    assert interleaved.bubble == pytest.approx(plain.bubble / 2)
    assert bubble_fraction(4, 8, vp=2) == pytest.approx(3 / (2 * 8 + 3))


def test_each_communication_term_responds_to_its_constant():
    work = _work(global_batch=2048)
    layout = mp.Layout(2, 1, 64)
    base = predict(work, layout, ClusterConstants())
    assert base.tp_comm > 0 and base.dp_comm > 0
    assert predict(work, layout, ClusterConstants(intra_node_gbps=150)).tp_comm == pytest.approx(2 * base.tp_comm)
    # DP over 16 nodes uses the inter-node bandwidth; overlap hides part of it, never more than
    # one micro-batch's compute.
    slow = predict(work, layout, ClusterConstants(inter_node_gbps=20))
    assert slow.dp_comm == pytest.approx(2 * base.dp_comm)
    assert predict(work, layout, ClusterConstants(dp_overlap=0)).dp_hidden == 0
    assert base.dp_hidden <= base.compute / base.microbatches
    # Full recompute: one more forward (1/3 of the training FLOPs) and two more all-reduces per layer.
    full = predict(work, replace(layout, recompute="full"), ClusterConstants())
    assert full.recompute == pytest.approx(base.compute / 3 * (1 - _logits_share(work, 2)), rel=1e-9)
    assert full.tp_comm == pytest.approx(base.tp_comm * 6 / 4)
    # TP across nodes: its all-reduces move to the inter-node bandwidth.
    across = predict(replace(work, gpus_per_node=1), layout, ClusterConstants())
    assert across.tp_crosses_node and across.tp_comm == pytest.approx(base.tp_comm * 300 / 40)


def _logits_share(work: Workload, tp: int) -> float:
    per_token = flops.forward_flops_per_token(YI, work.padded_vocab)
    attention = YI.num_layers * flops.attention_forward_flops_per_layer(
        YI, flops.packed_attention_pairs(work.seq_length, 1)) / work.seq_length
    return flops.logits_forward_flops_per_token(YI, work.padded_vocab) / (per_token + attention)


def test_cli_constant_defaults_are_the_models():
    assert plan_parallelism.CONSTANT_DEFAULTS == asdict(ClusterConstants())


# ------------------------------------------------------------------------------ the command


def _plan(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    code = plan_parallelism.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


STAGE_I = ("--model-preset", "yi-6b", "--gpus", 128, "--gpu-memory", 80, "--seq-length", 2800,
           "--micro-batch-size", 1)
STAGE_III = ("--model-preset", "yi-6b", "--gpus", 8, "--gpu-memory", 80, "--seq-length", 2800,
             "--micro-batch-size", 1, "--launch-script", "examples/pretrain_stage3.sh")


@pytest.mark.parametrize("shape,nodes,script", [(STAGE_I, 16, "pretrain_stage1.sh"), (STAGE_III, 1, "pretrain_stage3.sh")])
def test_recommends_a_layout_with_reasons_and_a_launch_line(capsys, shape, nodes, script):
    code, out, _ = _plan(capsys, *shape)
    assert code == 0
    lines = out.splitlines()
    recommended = next(l for l in lines if l.startswith("recommended: "))
    assert "fastest predicted layout that fits" in recommended and "tokens/s/GPU" in recommended
    launch = lines[lines.index(recommended) + 1].strip()
    assert launch.startswith("TP=") and f"sbatch --nodes={nodes} --gpus-per-node=8 examples/{script}" in launch
    neighbours = lines[lines.index("its neighbours:") + 1:]
    assert any("slower:" in l for l in neighbours)

    code, out, _ = _plan(capsys, *shape, "--json", "--top", 5)
    plan = json.loads(out)
    layouts = plan["layouts"]
    assert len(layouts) == 5 and layouts[0] == plan["recommended"]
    speeds = [l["tokens_per_second_per_gpu"] for l in layouts]
    assert speeds == sorted(speeds, reverse=True)
    assert all(l["fits"] and l["memory_gib"]["total"] + 4 <= 80 for l in layouts)
    best = plan["recommended"]
    assert f"TP={best['tp']} PP={best['pp']}" in plan["launch"]
    assert all(n["reason"] for n in plan["neighbours"])


def test_small_gpus_reject_neighbours_for_memory(capsys):
    code, out, _ = _plan(capsys, "--gpus", 8, "--gpu-memory", 24, "--json")
    plan = json.loads(out)
    assert code == 0 and plan["recommended"]["tp"] * plan["recommended"]["pp"] > 1
    assert any(n["reason"].startswith("memory: needs") for n in plan["neighbours"])
    code, out, _ = _plan(capsys, "--gpus", 1, "--gpu-memory", 8)
    assert code == 1 and "no layout fits in memory" in out


def test_evaluates_one_layout_under_the_trainers_flag_names(capsys):
    short = json.loads(_plan(capsys, *STAGE_III, "--tp", 2, "--pp", 2, "--vp", 4, "--recompute", "full", "--json")[1])
    long = json.loads(_plan(capsys, *STAGE_III, "--tensor-model-parallel-size", 2, "--pipeline-model-parallel-size", 2,
                            "--num-layers-per-virtual-pipeline-stage", 4, "--recompute-granularity", "full",
                            "--json")[1])
    assert short == long
    assert short["evaluated"]["layout"] == "TP2 PP2 DP2 VPP4 recompute=full"
    assert "--num-layers-per-virtual-pipeline-stage 4 --recompute-granularity full" in short["launch"]
    # TP across nodes is judged, with that reason.
    code, out, _ = _plan(capsys, "--gpus", 4, "--gpus-per-node", 2, "--tp", 4)
    assert code == 0 and "TP4 crosses a node" in out


@pytest.mark.parametrize("args,flag", [
    (("--gpus", 8, "--gpus-per-node", 0), "--gpus-per-node"),
    (("--gpus", 8, "--gpu-memory", -5), "--gpu-memory"),
    (("--gpus", 8, "--vocab-size", 0), "--vocab-size"),
    (("--gpus", 8, "--overhead", 80), "--overhead"),
    (("--gpus", 8, "--dp-overlap", 2), "--dp-overlap"),
    (("--gpus", 8, "--tp", 3), "--tp 3"),
    (("--gpus", 6, "--tp", 3), "--tp 3"),
    (("--gpus", 12), "--gpus-per-node 8"),
    (("--gpus", 8, "--vp", 2), "--vp"),
    (("--gpus", 8, "--documents-per-pack", 0.5), "--documents-per-pack"),
    (("--gpus", 8, "--model-preset", "yi-7b"), "--model-preset"),
    (("--gpus", 8, "--calibrate", "/nonexistent/metrics.jsonl"), "--calibrate"),
    (("--gpus", 8, "--calibrate", __file__), "test_plan_parallelism.py:1"),
    (("--gpus", 8, "--calibrate-layout", "TP2 PPx", "--calibrate", __file__), "--calibrate-layout"),
])
def test_input_errors_are_one_line_with_status_2(capsys, args, flag):
    code, out, err = _plan(capsys, *args)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("plan_parallelism: error: ") and flag in err


def test_help_and_a_whole_plan_import_no_torch():
    script = ("import sys\nfrom megatron_mio.commands.plan_parallelism import main\n"
              "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
              "assert main(['--gpus', '128', '--json']) == 0\n"
              "print(sorted(m for m in ('torch', 'megatron', 'transformers') if m in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, env=cpu_env(), capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("[]") and "usage: plan_parallelism" in proc.stdout
    assert proc.stderr == ""
    version = subprocess.run([sys.executable, "-m", "megatron_mio.commands.plan_parallelism", "--version"],
                             cwd=REPO_ROOT, env=cpu_env(), capture_output=True, text=True, timeout=60, check=False)
    assert version.returncode == 0 and "megatron_mio" in version.stdout


# ------------------------------------------------------------------------------ calibration


def _write_records(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_calibration_recovers_the_constants_a_run_was_made_of(tmp_path):
    """Records whose time split the model itself produced with known constants: the fit finds
    those constants again from the flags' defaults (file reading, median, each fitted term)."""
    truth = ClusterConstants(achieved_tflops=250, inter_node_gbps=12, dp_overlap=0.5, step_overhead_ms=80)
    job = Job(YI, 76_292, 128, gpus=16, gpus_per_node=8, gpu_memory_gib=80, overhead_gib=4, seq_length=2800,
              micro_batch=1, global_batch=256, documents_per_pack=3.0, precision=mp.BF16)
    layout = mp.Layout(1, 1, 16)
    step = predict(job.workload(1), layout, truth)
    tokens_per_second = step.tokens_per_step / step.total
    record = {"iteration": 0, "elapsed_ms_per_iteration": step.total * 1000, "global_batch_size": 256,
              "tokens_per_second": tokens_per_second, "tflops_per_gpu": step.model_tflops_per_gpu(),
              calibration.TIME_SPLIT_FIELDS["data_wait"]: 30.0, calibration.TIME_SPLIT_FIELDS["optimizer"]: 50.0,
              # the trainer's forward-backward includes the exposed gradient reduction and the fetches
              calibration.TIME_SPLIT_FIELDS["forward_backward"]:
                  (step.compute + step.tp_comm + step.dp_exposed) * 1000 + 30.0,
              calibration.TIME_SPLIT_FIELDS["grad_reduce"]: step.dp_exposed * 1000}
    warmup = {**record, "elapsed_ms_per_iteration": 99_999.0}
    path = _write_records(tmp_path / "metrics.jsonl", [warmup, record, {"iteration": 1, "valid_loss": 2.0}, record])
    run = calibration.measured_run(calibration.read_records(path), layout)
    assert run.records == 2 and run.step_ms == pytest.approx(step.total * 1000)
    fitted = calibration.calibrate(replace(job, documents_per_pack=1.0), run, ClusterConstants())
    assert fitted.documents_per_pack == pytest.approx(3.0, rel=1e-6)
    assert fitted.constants.achieved_tflops == pytest.approx(250, rel=1e-6)
    assert fitted.constants.inter_node_gbps == pytest.approx(12, rel=1e-6)
    assert fitted.constants.step_overhead_ms == pytest.approx(80)
    assert fitted.after.total == pytest.approx(step.total, rel=1e-6)


STAGE_I_RUN = mp.Layout(2, 2, 4, vpp=2, recompute="full")  # a 16-GPU short run before stage I
RUN_FIELDS = {calibration.TP: 2, calibration.PP: 2, calibration.VPP: 2, calibration.DP: 4, calibration.WORLD: 16,
              calibration.RECOMPUTE: "full"}


def _run_records(layout: mp.Layout, fields: dict, count: int = 3) -> list[dict]:
    """Records of a yi-6b run of ``layout`` as the model predicts it, carrying ``fields``."""
    job = Job(YI, 76_292, 128, gpus=layout.gpus, gpus_per_node=8, gpu_memory_gib=80, overhead_gib=4,
              seq_length=2800, micro_batch=1, global_batch=16 * layout.gpus, documents_per_pack=1.0,
              precision=mp.BF16)
    step = predict(job.workload(layout.tp), layout, ClusterConstants(achieved_tflops=300))
    record = {"elapsed_ms_per_iteration": step.total * 1000, "global_batch_size": job.global_batch,
              "tokens_per_second": step.tokens_per_step / step.total, "tflops_per_gpu": step.model_tflops_per_gpu(),
              **fields}
    return [{"iteration": i, **record} for i in range(1, count + 1)]


def test_calibration_reads_the_layout_from_the_records(tmp_path, capsys):
    """The records say how the run was laid out; a file written before they did gets it from
    --calibrate-layout / --calibrate-gpus, to the same calibration."""
    plan_flags = ("--gpus", 128, "--json", "--calibrate")
    new = _write_records(tmp_path / "new.jsonl", _run_records(STAGE_I_RUN, RUN_FIELDS))
    code, out, _ = _plan(capsys, *plan_flags, new)
    from_records = json.loads(out)["calibration"]
    assert code == 0 and from_records["run_layout"] == "TP2 PP2 DP4 VPP2 recompute=full"
    assert from_records["run_layout_from"] == "records"
    assert from_records["constants"]["achieved_tflops"] == pytest.approx(300, rel=1e-6)
    old = _write_records(tmp_path / "old.jsonl", _run_records(STAGE_I_RUN, {}))
    code, out, _ = _plan(capsys, *plan_flags, old, "--calibrate-layout", "TP2 PP2 VP2 full", "--calibrate-gpus", 16)
    assert code == 0 and json.loads(out)["calibration"] == {**from_records, "run_layout_from": "flags"}
    code, out, _ = _plan(capsys, "--gpus", 128, "--calibrate", old)  # neither: TP1 PP1 over the plan's GPUs, and says so
    assert code == 0 and "TP1 PP1 DP128 run (layout assumed TP1 PP1 on --gpus" in out
    # Flags that agree with the records are accepted.
    code, out, _ = _plan(capsys, *plan_flags, new, "--calibrate-layout", "TP2 PP2 VP2 DP4 full", "--calibrate-gpus", 16)
    assert code == 0 and json.loads(out)["calibration"] == from_records


@pytest.mark.parametrize("flags,field,recorded,said", [
    (("--calibrate-layout", "TP1 PP2 VP2 full"), "tensor_model_parallel_size", "2", "1"),
    (("--calibrate-layout", "TP2 PP2 VP1 full"), "virtual_pipeline_model_parallel_size", "2", "none"),
    (("--calibrate-layout", "TP2 PP2 VP2 selective"), "recompute_granularity", "full", "selective"),
    (("--calibrate-gpus", 8), "world_size", "16", "8"),
])
def test_layout_flags_that_disagree_with_the_records_are_one_line(tmp_path, capsys, flags, field, recorded, said):
    path = _write_records(tmp_path / "metrics.jsonl", _run_records(STAGE_I_RUN, RUN_FIELDS))
    code, out, err = _plan(capsys, "--gpus", 128, "--calibrate", path, *flags)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert str(path) in err and f"{field} {recorded}, the flag says {said}" in err


def test_records_of_two_layouts_are_one_line_naming_their_lines(tmp_path, capsys):
    """A run resumed with another layout appends to the same metrics file."""
    before = _run_records(STAGE_I_RUN, RUN_FIELDS, count=2)
    after = _run_records(mp.Layout(1, 1, 16), {**RUN_FIELDS, calibration.TP: 1, calibration.PP: 1, calibration.VPP: None,
                                               calibration.DP: 16, calibration.RECOMPUTE: None})
    path = _write_records(tmp_path / "metrics.jsonl", [*before, {"iteration": 2, "valid_loss": 2.0}, *after])
    code, out, err = _plan(capsys, "--gpus", 128, "--calibrate", path)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert (f"{path}: records of 2 layouts (lines 1-2: TP2 PP2 VP2 DP4, 16 GPUs, recompute full; "
            "lines 4-6: TP1 PP1 DP16, 16 GPUs, recompute none)") in err


def test_calibration_takes_the_flop_rate_from_the_stage_compute_not_the_bubble(tmp_path):
    """A PP=4 run whose pipeline waited longer than the model's bubble (transfers, stragglers): with
    the stage's own compute in the records (``--timing-log-level 2``) the fit finds the true
    FLOP rate; from forward-backward alone (level 1) the waits are folded into a lower one."""
    truth = ClusterConstants(achieved_tflops=250)
    job = Job(YI, 76_292, 128, gpus=4, gpus_per_node=8, gpu_memory_gib=80, overhead_gib=4, seq_length=2800,
              micro_batch=1, global_batch=16, documents_per_pack=1.0, precision=mp.BF16)
    layout = mp.Layout(1, 4, 1)
    step = predict(job.workload(1), layout, truth)
    waited = 1.3 * step.bubble  # the pipeline idled 30% longer than the model's fill and drain
    forward_backward = step.compute + step.tp_comm + waited + 0.02  # with 20 ms of fetches
    record = {"iteration": 1, "elapsed_ms_per_iteration": (forward_backward + 0.05) * 1000, "global_batch_size": 16,
              "tokens_per_second": step.tokens_per_step / (forward_backward + 0.05),
              "tflops_per_gpu": step.model_flops_per_step / (forward_backward + 0.05) / 4 / 1e12,
              calibration.TIME_SPLIT_FIELDS["data_wait"]: 20.0, calibration.TIME_SPLIT_FIELDS["optimizer"]: 30.0,
              calibration.TIME_SPLIT_FIELDS["forward_backward"]: forward_backward * 1000,
              calibration.TIME_SPLIT_FIELDS["grad_reduce"]: 0.0,
              # megatron-core's forward timer holds the micro-batch fetch (data_wait)
              calibration.TIME_SPLIT_FIELDS["stage_compute"]: (step.compute + step.tp_comm) * 1000 + 20.0}
    level_1 = {k: v for k, v in record.items() if k != calibration.TIME_SPLIT_FIELDS["stage_compute"]}
    fits = {}
    for name, r in (("level 2", record), ("level 1", level_1)):
        path = _write_records(tmp_path / f"{name}.jsonl", [r])
        run = calibration.measured_run(calibration.read_records(path), layout)
        fits[name] = calibration.calibrate(job, run, ClusterConstants()).constants.achieved_tflops
    assert fits["level 2"] == pytest.approx(250, rel=1e-6)
    assert fits["level 1"] < 0.97 * 250


@pytest.mark.multiprocess
def test_calibrate_moves_the_prediction_to_a_real_runs_step_time(tmp_path, capsys):
    """A real 1-rank CPU trainer run: the defaults (an H100 cluster) predict a step thousands of
    times faster than the CPU; calibrated on the run's metrics file, the prediction for the same
    layout lands on the measured step time, and the plan for it changes accordingly.  The layout
    comes from the records, whatever the plan's --gpus."""
    flags = ["--use-cpu", "--mock-data", "--model-preset", "small", "--vocab-size", "300", "--seq-length", "128",
             "--micro-batch-size", "1", "--global-batch-size", "4", "--train-iters", "6", "--log-interval", "1",
             "--lr", "1e-4", "--no-bias-swiglu-fusion", "--no-bias-dropout-fusion"]
    run = trainer_runs.train(tmp_path, "calibration", 1, [], base=flags)
    metrics = run["dir"] / "metrics.jsonl"
    shape = ("--model-preset", "small", "--vocab-size", 300, "--seq-length", 128, "--micro-batch-size", 1,
             "--global-batch-size", 4, "--gpus", 1, "--precision", "fp32", "--json")
    plain = json.loads(_plan(capsys, *shape, "--tp", 1)[1])
    code, out, _ = _plan(capsys, *shape, "--calibrate", metrics)
    plan = json.loads(out)
    cal = plan["calibration"]
    measured = cal["measured_step_ms"]
    assert code == 0 and cal["records"] == 5
    assert abs(cal["predicted_step_ms_before"] - measured) > 0.9 * measured  # the defaults are far off
    assert cal["predicted_step_ms_after"] == pytest.approx(measured, rel=0.01)
    assert cal["constants"]["achieved_tflops"] < 1.0  # a shared CPU core, not an H100
    assert cal["documents_per_pack"] > 1  # mock packs hold several documents
    assert plan["recommended"]["step_seconds"] == pytest.approx(measured / 1000, rel=0.01)
    assert plain["evaluated"]["step_seconds"] < plan["recommended"]["step_seconds"] / 100
    records = [r for r in trainer_runs.metrics(metrics) if "loss" in r]
    assert all({key: r[key] for key in calibration.LAYOUT_FIELDS} == {
        calibration.TP: 1, calibration.PP: 1, calibration.VPP: None, calibration.DP: 1, calibration.WORLD: 1,
        calibration.RECOMPUTE: None} for r in records)
    wider = json.loads(_plan(capsys, *shape[:-1], "--gpus", 2, "--json", "--calibrate", metrics)[1])
    assert wider["calibration"]["run_layout"] == "TP1 PP1 DP1"  # not DP2 from --gpus
    code, out, err = _plan(capsys, *shape, "--calibrate", metrics, "--calibrate-layout", "TP2")
    assert code == 2 and f"{metrics}: its records have tensor_model_parallel_size 1, the flag says 2" in err
