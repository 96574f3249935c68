"""The GPU configuration, built and run on the CPU wherever the CPU can build it.

The trainer decides fusions from what imports (``megatron_mio.model.fusions``), not from the
device, so a ``--use-cpu`` run with ``--bf16 --use-distributed-optimizer`` and no refused fusion
builds exactly what a GPU without transformer-engine/apex builds: megatron's compiled SwiGLU and
bias-dropout-add, no persistent LayerNorm, no apex softmax, bf16 weights with fp32 gradient
reduction, the distributed optimizer saved dp_reshardable.  What only a GPU runs (flash/varlen,
FlexAttention compiled for CUDA, TE, NCCL) is in ``bench/gpu_check.py``, whose dry run is here.
"""

from __future__ import annotations

import math
import subprocess
import sys
import time

import pytest
import torch

from megatron_mio.checkpoint.layout import iteration_dir, write_tracker
from tests.distributed import REPO_ROOT, cpu_env, run_torchrun
from tests.trainer_runs import metrics

GPU_LIKE = [
    "--use-cpu", "--mock-data", "--model-preset", "tiny", "--vocab-size", "300", "--seq-length", "64",
    "--micro-batch-size", "1", "--global-batch-size", "4", "--lr", "3e-3", "--lr-warmup-iters", "1",
    "--lr-decay-iters", "10", "--min-lr", "3e-4", "--log-interval", "1", "--num-workers", "0",
    "--bf16", "--use-distributed-optimizer",
]


def _train(tmp_path, name, extra, nproc=2):
    out = tmp_path / name
    out.mkdir()
    proc = run_torchrun("megatron_mio.pretrain", nproc, [*GPU_LIKE, *extra, "--metrics-file", out / "m.jsonl"],
                        module=True, timeout=600)
    return proc.stdout + proc.stderr, {r["iteration"]: r["loss"] for r in metrics(out / "m.jsonl") if "loss" in r}


@pytest.mark.multiprocess
@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "local"])
def test_gpu_configuration_trains_and_resumes_on_cpu(tmp_path, backend):
    """bf16 + distributed optimizer + every fusion that imports, DP=2; resume is exact."""
    save = tmp_path / "ckpt"
    common = ["--attention-backend", backend]
    log, straight = _train(tmp_path, "straight", [*common, "--train-iters", "4", "--save", save, "--save-interval", "2"])
    assert "fusions: bias_activation_fusion, bias_dropout_fusion;" in log
    assert "gradients reduced in fp32" in log
    assert sorted(straight) == [1, 2, 3, 4] and all(math.isfinite(v) for v in straight.values())
    assert straight[4] < straight[1]
    write_tracker(save, 2)  # resume from iteration 2
    _, resumed = _train(tmp_path, "resumed", [*common, "--train-iters", "4", "--load", save])
    # Iteration 4 is the first update made by the loaded optimizer (step count, moments).
    assert resumed == {3: straight[3], 4: straight[4]}


@pytest.mark.multiprocess
@pytest.mark.slow
def test_dp_reshardable_optimizer_refuses_another_tp_with_the_way_out(tmp_path):
    """The default (cheap) optimizer format reloads at its TP/PP only, and says how to move."""
    from megatron.core import dist_checkpointing

    base = [*GPU_LIKE[:-2], "--use-distributed-optimizer", "--no-bias-swiglu-fusion", "--no-bias-dropout-fusion"]
    save = tmp_path / "tp2"
    run_torchrun("megatron_mio.pretrain", 2, [*base, "--tensor-model-parallel-size", "2", "--train-iters", "1",
                                              "--save", save], module=True, timeout=600)
    assert dist_checkpointing.load_content_metadata(str(iteration_dir(save, 1))) == {
        "distrib_optim_sharding_type": "dp_reshardable"}
    with pytest.raises(AssertionError) as failed:
        run_torchrun("megatron_mio.pretrain", 1, [*base, "--train-iters", "2", "--load", save], module=True, timeout=600)
    message = str(failed.value)
    assert "saved dp_reshardable at tensor_model_parallel_size=2" in message
    assert "--dist-ckpt-optim-fully-reshardable" in message and "--no-load-optim" in message


@pytest.mark.multiprocess
@pytest.mark.slow
def test_fully_reshardable_flag_reshards_tp2_to_tp1(tmp_path):
    base = [*GPU_LIKE[:-2], "--use-distributed-optimizer", "--no-bias-swiglu-fusion", "--no-bias-dropout-fusion"]
    save = tmp_path / "tp2"
    run_torchrun("megatron_mio.pretrain", 2, [*base, "--tensor-model-parallel-size", "2", "--train-iters", "1",
                                              "--save", save, "--dist-ckpt-optim-fully-reshardable"],
                 module=True, timeout=600)
    from megatron.core import dist_checkpointing

    assert dist_checkpointing.load_content_metadata(str(iteration_dir(save, 1))) == {
        "distrib_optim_sharding_type": "fully_reshardable"}
    proc = run_torchrun("megatron_mio.pretrain", 1, [*base, "--train-iters", "2", "--load", save],
                        module=True, timeout=600)
    assert "resumed from" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_a_failed_start_exits_promptly_with_its_message(tmp_path):
    """An exception after the checkpointer has started its helper process must not hang at exit."""
    base = [sys.executable, "-m", "megatron_mio.pretrain", *GPU_LIKE[:-2], "--no-bias-swiglu-fusion",
            "--no-bias-dropout-fusion", "--save", str(tmp_path / "ckpt")]
    subprocess.run([*base, "--train-iters", "1"], cwd=REPO_ROOT, env=cpu_env(), check=True,
                   capture_output=True, timeout=300)
    # Another model shape fails in the checkpoint load, after the checkpointer has started its
    # manager process (a failure there hung for 600 s and more).
    began = time.time()
    proc = subprocess.run([*base, "--train-iters", "2", "--load", str(tmp_path / "ckpt"), "--ffn-hidden-size", "128"],
                          cwd=REPO_ROOT, env=cpu_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert time.time() - began < 90, "the failed start did not exit promptly"
    assert "ffn_hidden_size 176 (this run 128)" in proc.stderr
    assert "Traceback" not in proc.stderr


# ---- fusions ------------------------------------------------------------------------------------


def test_fusions_follow_what_imports():
    from megatron_mio.model.fusions import available_fusions, plan_fusions

    here = available_fusions("local", "cpu")
    assert here.bias_activation_fusion and here.bias_dropout_fusion  # inductor builds CPU kernels
    # apex and transformer-engine are not installed here: their kernels are never asked for.
    assert not here.masked_softmax_fusion and not here.apply_rope_fusion and not here.gradient_accumulation_fusion
    assert available_fusions("torch", "cpu").masked_softmax_fusion is False
    refused = plan_fusions("local", "cpu", ("bias_activation_fusion",))
    assert not refused.bias_activation_fusion and refused.bias_dropout_fusion
    assert here.config_fields()["persist_layer_norm"] is False
    with pytest.raises(ValueError, match="unknown fusions"):
        plan_fusions("local", "cpu", ("flash",))


def test_the_fusion_gates_matter(megatron_cpu_world):
    """What the gates prevent: megatron's torch norm refuses persist_layer_norm, and the local
    softmax asks apex for its kernel in bf16 (both crashed the GPU path at start-up)."""
    from megatron.core.transformer import TransformerConfig

    from megatron_mio.model import build_gpt_model, build_transformer_config, get_preset

    preset = get_preset("tiny")
    config = build_transformer_config(preset, bf16=True)
    config.persist_layer_norm = True
    with pytest.raises(AssertionError, match="persist_layer_norm"):
        build_gpt_model(config, preset, 384, attention_backend="torch")
    config = build_transformer_config(preset, bf16=True)
    config.masked_softmax_fusion = True
    model = build_gpt_model(config, preset, 384, attention_backend="local").bfloat16()
    tokens = torch.zeros(1, 64, dtype=torch.long)
    cu = torch.tensor([[0, 32, 64]], dtype=torch.int32)
    from megatron_mio.model.attention import attention_kwargs

    with pytest.raises(ModuleNotFoundError, match="scaled_masked_softmax_cuda"):
        model(tokens, torch.arange(64)[None], **attention_kwargs(cu, 64, "local"))
    assert isinstance(config, TransformerConfig)


# ---- varlen signatures ---------------------------------------------------------------------------


def _reference(q, k, v, cu, scale):
    from megatron_mio.model.document_attention import sdpa_per_document

    return sdpa_per_document(q.float(), k.float(), v.float(), cu, int(cu[-1]), scale)


def _dense(q, k, v, cu_q, scale, causal):
    """What every varlen does, for the stand-ins: causal attention inside each document."""
    assert causal
    from megatron_mio.model.document_attention import sdpa_per_document

    if k.size(1) != q.size(1):
        raise RuntimeError("Expect query and key/value to have the same number of heads")
    return sdpa_per_document(q, k, v, cu_q, int(cu_q[-1]), scale)


def varlen_2_9(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None):
    return _dense(query, key, value, cu_seq_q, 1 / math.sqrt(query.size(-1)), is_causal)


def varlen_2_10(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                window_size=(-1, -1)):
    return _dense(query, key, value, cu_seq_q, scale, tuple(window_size) == (-1, 0))


def varlen_2_12(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                window_size=(-1, -1), enable_gqa=False):
    if enable_gqa:
        key = key.repeat_interleave(query.size(1) // key.size(1), dim=1)
        value = value.repeat_interleave(query.size(1) // value.size(1), dim=1)
    return _dense(query, key, value, cu_seq_q, scale, tuple(window_size) == (-1, 0))


def varlen_2_11_grouped(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                        window_size=(-1, -1)):
    """2.10/2.11's signature over a kernel that takes K/V heads dividing the query heads (flash)."""
    key = key.repeat_interleave(query.size(1) // key.size(1), dim=1)
    value = value.repeat_interleave(query.size(1) // value.size(1), dim=1)
    return _dense(query, key, value, cu_seq_q, scale, tuple(window_size) == (-1, 0))


def varlen_2_11_wrong_groups(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                             window_size=(-1, -1)):
    """Takes grouped K/V without complaint but pairs the heads wrongly (tiled, not interleaved)."""
    key = key.repeat(1, query.size(1) // key.size(1), 1)
    value = value.repeat(1, query.size(1) // value.size(1), 1)
    return _dense(query, key, value, cu_seq_q, scale, tuple(window_size) == (-1, 0))


STAND_INS = {"2.9": varlen_2_9, "2.10": varlen_2_10, "2.11-grouped": varlen_2_11_grouped, "2.12": varlen_2_12}


def _varlen(varlen):
    from megatron_mio.model.document_attention import Varlen, VarlenSignature, probe_grouped_kv

    signature = VarlenSignature.of(varlen)
    return Varlen(varlen, signature, probe_grouped_kv(varlen, signature, "cpu"))


@pytest.mark.parametrize("varlen", list(STAND_INS.values()), ids=list(STAND_INS))
@pytest.mark.parametrize("scale", [None, 0.05])
def test_varlen_call_matches_each_torch_signature(varlen, scale):
    from megatron_mio.model.document_attention import varlen_kernel

    torch.manual_seed(0)
    q, k, v = torch.randn(20, 4, 8), torch.randn(20, 2, 8), torch.randn(20, 2, 8)
    cu = torch.tensor([0, 7, 15, 20], dtype=torch.int32)
    scale = scale or 1 / math.sqrt(8)
    out = varlen_kernel(_varlen(varlen))(q, k, v, cu, 20, scale)
    torch.testing.assert_close(out, _reference(q, k, v, cu, scale), rtol=1e-5, atol=1e-6)


def test_the_grouped_kv_probe_asks_the_kernel_not_the_version():
    """Accepting grouped K/V is found by a call: refused (2.9, 2.10 without flash's native GQA),
    accepted natively (a 2.11 build whose flash takes them), through enable_gqa (2.12), and an
    accepting kernel that pairs heads wrongly is a no."""
    probed = {name: _varlen(varlen).grouped_kv for name, varlen in STAND_INS.items()}
    assert probed == {"2.9": False, "2.10": False, "2.11-grouped": True, "2.12": True}
    assert _varlen(varlen_2_11_wrong_groups).grouped_kv is False


def test_kernel_choice():
    """The decision table: flash (varlen) on CUDA in bf16/fp16, for GQA whenever the probe passed;
    else FlexAttention; SDPA per document on the CPU."""
    from megatron_mio.model.document_attention import choose_kernel, flex_document_attention, sdpa_per_document

    def chosen(device, dtype, grouped, stand_in, has_flex):
        kernel = choose_kernel(device, dtype, grouped, _varlen(stand_in) if stand_in else None, has_flex)
        return {flex_document_attention: "flex", sdpa_per_document: "sdpa"}.get(kernel, kernel.__qualname__)

    bf16, fp32 = torch.bfloat16, torch.float32
    grouped_varlen, copying_varlen = "varlen_kernel(grouped K/V)", "varlen_kernel(K/V copied per head)"
    table = [
        # device, dtype, GQA, varlen stand-in, FlexAttention, chosen
        ("cpu", bf16, True, varlen_2_12, True, "sdpa"),
        ("cuda", fp32, True, varlen_2_12, True, "flex"),
        ("cuda", fp32, True, None, False, "sdpa"),
        ("cuda", bf16, True, varlen_2_12, True, grouped_varlen),
        ("cuda", bf16, True, varlen_2_11_grouped, True, grouped_varlen),  # the probe passed: no version check
        ("cuda", bf16, True, varlen_2_10, True, "flex"),  # refuses grouped K/V: no copies per head
        ("cuda", bf16, True, varlen_2_11_wrong_groups, True, "flex"),
        ("cuda", bf16, False, varlen_2_10, True, copying_varlen),  # (nothing to copy without GQA)
        ("cuda", bf16, True, varlen_2_10, False, copying_varlen),  # the only flash-capable kernel
        ("cuda", bf16, True, None, True, "flex"),
    ]
    for device, dtype, grouped, stand_in, has_flex, want in table:
        assert chosen(device, dtype, grouped, stand_in, has_flex) == want, (device, dtype, grouped, stand_in, has_flex)


# ---- optimizer state with a fused (non-torch) Adam -------------------------------------------------


class FusedAdamStandIn(torch.optim.Optimizer):
    """The contract of transformer-engine's FusedAdam that matters here: ``step`` lives in the
    param groups, and ``state_dict`` refuses a state entry it has no dtype for (TE's
    ``name_to_dtype_map``), raising ``KeyError: 'step'`` when torch-AdamW fixes add one."""

    STATE = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, adam_w_mode=True,
                 capturable=False):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, step=0))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            group["step"] += 1
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(p), torch.zeros_like(p)
                state["exp_avg"].mul_(beta1).add_(p.grad, alpha=1 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.addcdiv_(state["exp_avg"], state["exp_avg_sq"].sqrt().add_(group["eps"]), value=-group["lr"])

    def state_dict(self):
        for state in self.state.values():
            for key in state:
                if key not in self.STATE:
                    raise KeyError(key)
        return super().state_dict()


def test_torch_adam_fixes_leave_a_fused_adam_alone(megatron_cpu_world, monkeypatch):
    """With TE/apex megatron wraps their FusedAdam: our step-state patches must not touch it."""
    import megatron.core.optimizer as mcore_optimizer
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.optimizer import distrib_optimizer

    from megatron_mio.model import build_gpt_model, build_transformer_config, get_preset
    from megatron_mio.training.arguments import parse_args
    from megatron_mio.training.optimizer import build_optimizer, initialize_empty_state

    monkeypatch.setattr(mcore_optimizer, "USING_PYTORCH_OPTIMIZER", False)
    monkeypatch.setattr(mcore_optimizer, "Adam", FusedAdamStandIn)
    monkeypatch.setattr(distrib_optimizer, "HAVE_APEX_OR_TE", True)
    monkeypatch.setattr(distrib_optimizer, "USING_TE_OPTIMIZER", True)
    preset = get_preset("tiny")
    config = build_transformer_config(preset)
    model = build_gpt_model(config, preset, 384, attention_backend="torch")
    ddp = DistributedDataParallel(config, DistributedDataParallelConfig(use_distributed_optimizer=True), model)
    args = parse_args(["--mock-data", "--vocab-size", "300", "--train-iters", "1", "--use-distributed-optimizer"],
                      world_size=1)
    optimizer = build_optimizer(args, [ddp])
    inner = optimizer.optimizer
    assert isinstance(inner, FusedAdamStandIn)
    initialize_empty_state(optimizer)  # before a load: nothing to add for a fused Adam
    assert all("step" not in state for state in inner.state.values())
    for p in ddp.parameters():
        p.main_grad.normal_()
    optimizer.step()
    state = optimizer.state_dict()  # TE's state_dict raised KeyError('step') with the old fixes
    assert state["optimizer"]["param_groups"][0]["step"] == 1
    assert all(set(s) == {"exp_avg", "exp_avg_sq"} for s in inner.state.values())


# ---- host-side boundaries, devices, launch environment ---------------------------------------------


def test_document_boundaries_are_read_on_the_host():
    from megatron_mio.model.attention import attention_kwargs

    cu = torch.tensor([[0, 10, 64, -1]], dtype=torch.int32)
    params = attention_kwargs(cu, 64, "torch", device=torch.device("meta"))["packed_seq_params"]
    assert params.cu_seqlens_q.device.type == "meta"  # built on the host, only then copied
    assert attention_kwargs(cu, 64, "torch")["packed_seq_params"].cu_seqlens_q.tolist() == [0, 10, 64]
    for backend in ("torch", "local"):
        with pytest.raises(ValueError, match="host copy"):
            attention_kwargs(cu.to("meta"), 64, backend)


def test_local_rank_maps_onto_the_visible_devices():
    from megatron_mio.platform import local_device_index

    assert local_device_index({"LOCAL_RANK": "5"}, device_count=8) == 5
    assert local_device_index({"LOCAL_RANK": "5"}, device_count=1) == 0  # one visible GPU per task
    assert local_device_index({}, device_count=4) == 0


def test_bare_srun_of_several_tasks_is_refused():
    from megatron_mio.platform import check_rendezvous

    with pytest.raises(RuntimeError, match="Slurm started 8 tasks"):
        check_rendezvous({"SLURM_STEP_NUM_TASKS": "8", "SLURM_PROCID": "3"})
    check_rendezvous({"SLURM_STEP_NUM_TASKS": "8", "RANK": "3"})  # torchrun under srun: fine
    check_rendezvous({"SLURM_STEP_NUM_TASKS": "1"})


def test_bf16_reduces_gradients_in_fp32():
    from megatron_mio.training.arguments import parse_args

    args = parse_args(["--mock-data", "--vocab-size", "300", "--train-iters", "1", "--bf16"], world_size=1)
    assert args.accumulate_allreduce_grads_in_fp32
    args = parse_args(["--mock-data", "--vocab-size", "300", "--train-iters", "1"], world_size=1)
    assert not args.accumulate_allreduce_grads_in_fp32


def test_device_rng_state_from_another_device_is_not_loaded(megatron_cpu_world, caplog):
    from megatron_mio.training import checkpointing

    torch.manual_seed(3)
    state = checkpointing._rng_state()
    assert state["device_type"] == "cpu"
    expected = torch.rand(3)
    torch.manual_seed(4)
    gpu_state = {**state, "device_type": "cuda", "device": torch.zeros(16, dtype=torch.uint8), "tracker": None}
    checkpointing._set_rng_state(gpu_state)  # torch.cuda.set_rng_state would reject these bytes
    assert torch.equal(torch.rand(3), expected)  # the host streams are restored all the same
    assert "re-seeded, not restored" in caplog.text


@pytest.mark.slow
def test_gpu_check_dry_run():
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "bench/gpu_check.py"), "--dry-run"], cwd=REPO_ROOT,
                          env=cpu_env({"MIO_USE_CPU": "0"}), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    table = [line for line in proc.stdout.splitlines() if line.startswith("|")]
    sections = {line.split("|")[1].strip() for line in table[2:]}
    assert {"a", "b", "c", "d"} <= sections, proc.stdout
    assert all("FAIL" not in line for line in table), proc.stdout


@pytest.fixture(scope="module")
def megatron_cpu_world():
    from megatron_mio import platform

    platform.init_distributed(platform.setup(use_cpu=True))
    from megatron.core import parallel_state, tensor_parallel

    parallel_state.initialize_model_parallel(1, 1)
    tensor_parallel.model_parallel_cuda_manual_seed(1234)
    yield
    parallel_state.destroy_model_parallel()
    torch.distributed.destroy_process_group()

