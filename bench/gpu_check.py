"""The GPU path in one prepared run: what only a GPU can check, printed as one markdown table.

    python bench/gpu_check.py --sections ab    # one H100/H200; then --sections cde (docs/gpu.md)
    python bench/gpu_check.py --dry-run        # every section on the CPU at tiny shapes (the test suite runs it)

Sections (each row PASS/FAIL/n/a by its stated criterion, the numbers beside it):

0. versions (torch, CUDA, driver, GPU, megatron-core, triton, transformers) and where megatron-core
   and ``megatron_mio._C`` were imported from, in a child with the environment every section gets;
a. document attention kernels, forward + backward, against an fp32 per-document SDPA reference:
   the kernel the trainer chooses (with the varlen grouped-K/V probe's answer), torch's varlen
   flash attention, compiled FlexAttention in bf16 and fp32, SDPA per document;
b. the ``torch`` backend against ``local`` (dense mask) on the same weights in bf16: loss, grads;
   a one-rank all-reduce over the device's process group (NCCL on a GPU);
c. 4 trainer iterations in bf16 with the distributed optimizer, evaluation every 2 and full
   recompute (the micro-batch's cached block mask under both), saved at 2, resumed: equal losses;
d. an 8-layer Yi-6B-width model at seq 2800, 16 micro-batches per step, against ``transformers``
   LlamaForCausalLM (SDPA, padded) on the same documents (``bench/bench_train.py``): tokens/s,
   MFU, forward-backward and optimizer time, iteration-time stability and recompiles, peak
   memory against ``megatron_mio/planner/memory.py``'s prediction;
e. the ``te`` backend against ``torch`` when transformer-engine imports.

Every section runs in its own child process with the caller's environment (``PYTHONPATH``
kept, the repository put first) and a time limit: a failing or hung section is a FAIL row with
the tail of its stderr, the others still run, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from child_process import ChildFailed, child_env, run_child  # noqa: E402

BF16_RTOL = 3e-2  # bf16 has 8 mantissa bits: ~4e-3 per rounding, a few roundings deep
FP32_RTOL = 2e-3  # fp32 kernels may use TF32 matmuls (10 mantissa bits)
ROW_PREFIX = "gpu_check-row "

# Seconds per section on one H100/H200 (twice what it should take); --time-limit changes one.
TIME_LIMITS = {"0": 40, "a": 150, "b": 120, "c": 150, "d": 180, "e": 90}
TOTAL_LIMIT = 340  # one call of the runbook stays under 6 minutes, start-up included

# Section d's criteria (GPU): see judge_throughput.
MFU_FLOOR = 0.30  # Megatron-Core reports 47% for 7B dense on H100; below 30% something is wrong
OPTIMIZER_SHARE_CEILING = 0.15  # of a step of 16 micro-batches
STEP_TIME_SPREAD = 1.5  # slowest timed step over the median: a recompile or a sync shows
MEMORY_PLAN_TOLERANCE = 0.15  # peak allocated vs the planner's estimate


class Row(NamedTuple):
    section: str
    check: str
    result: str  # PASS, FAIL or n/a
    detail: str


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def shapes(dry_run: bool) -> SimpleNamespace:
    from megatron_mio.tokenizer.vocab import MIO_VOCAB_SIZE_FOR_YI

    if dry_run:
        return SimpleNamespace(device="cpu", seq=128, docs=4, heads=4, groups=2, head_dim=16, layers=2,
                               width_preset="tiny", vocab=1024, bench_steps=3, bench_warmup=1, bench_layers=2,
                               bench_preset="tiny", bench_seq=128, micro_batches=8, train_preset="tiny",
                               train_seq=64, child_timeout_s=600, all_reduce_mib=1)
    return SimpleNamespace(device="cuda", seq=2800, docs=10, heads=32, groups=4, head_dim=128, layers=2,
                           width_preset="yi-6b", vocab=MIO_VOCAB_SIZE_FOR_YI, bench_steps=10, bench_warmup=3,
                           bench_layers=8, bench_preset="yi-6b", bench_seq=2800, micro_batches=16,
                           train_preset="small", train_seq=2800, child_timeout_s=140, all_reduce_mib=256)


def document_bounds(seq: int, docs: int, seed: int = 0):
    import torch

    generator = torch.Generator().manual_seed(seed)
    cuts = torch.randperm(seq - 1, generator=generator)[: docs - 1] + 1
    return torch.cat([torch.tensor([0]), cuts.sort().values, torch.tensor([seq])]).to(torch.int32)


def _timed(fn, device: str, repeats: int = 3) -> float:
    import torch

    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        began = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - began)
    return sorted(times)[len(times) // 2]


def _relative(got, want) -> float:
    return float((got.float() - want.float()).abs().max() / want.float().abs().max().clamp_min(1e-12))


# ---- 0: versions ------------------------------------------------------------------------------


def _version(distribution: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "absent"


def _driver_version() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
        return out.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "n/a (no nvidia-smi)"


def section_versions(s) -> list[Row]:
    import torch

    gpu = "CPU (dry run)"
    if s.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        gpu = f"{props.name}, {props.total_memory / 2**30:.0f} GiB, sm{props.major}{props.minor}"
    versions = (f"torch {torch.__version__}, CUDA {torch.version.cuda}, driver {_driver_version()}, {gpu}, "
                f"Python {sys.version.split()[0]}, megatron-core {_version('megatron-core')}, "
                f"triton {_version('triton')}, transformers {_version('transformers')}")
    rows = [Row("0", "versions", "n/a", versions)]
    for module in ("megatron.core", "megatron_mio._C"):
        try:
            imported = __import__(module, fromlist=["_"])
            rows.append(Row("0", f"{module} imports in a section's environment", "PASS", f"from {imported.__file__}"))
        except ImportError as err:
            rows.append(Row("0", f"{module} imports in a section's environment", "FAIL",
                            f"{type(err).__name__}: {err}; install the wheelhouse and export PYTHONPATH (docs/gpu.md)"))
    return rows


# ---- a: kernels ------------------------------------------------------------------------------


def kernel_name(kernel) -> str:
    return getattr(kernel, "__qualname__", type(kernel).__name__)


def section_kernels(s) -> list[Row]:
    import torch

    from megatron_mio.model import document_attention as da

    torch.manual_seed(0)
    cu = document_bounds(s.seq, s.docs).to(s.device)
    q, k, v = (torch.randn(s.seq, h, s.head_dim, device=s.device) for h in (s.heads, s.groups, s.groups))
    grad_out = torch.randn(s.seq, s.heads, s.head_dim, device=s.device)
    scale = 1 / math.sqrt(s.head_dim)

    def run(kernel, dtype):
        leaves = [t.detach().to(dtype).clone().requires_grad_() for t in (q, k, v)]
        out = kernel(*leaves, cu, s.seq, scale)
        out.backward(grad_out.to(dtype))
        return [out.detach()] + [t.grad for t in leaves]

    reference = run(da.sdpa_per_document, torch.float32)
    trainer_kernel = da.document_attention_kernel(q.bfloat16(), k.bfloat16())
    kernels = [("SDPA per document", da.sdpa_per_document, torch.bfloat16)]
    rows = []
    if s.device == "cuda":
        varlen = da.installed_varlen("cuda")
        probe = "no varlen_attn in this torch" if varlen is None else (
            f"varlen takes grouped K/V (probe): {'yes' if varlen.grouped_kv else 'no'}")
        rows.append(Row("a", f"the trainer's kernel, bf16, {s.heads} heads / {s.groups} K/V groups",
                        verdict(trainer_kernel is not da.sdpa_per_document), f"{kernel_name(trainer_kernel)}; {probe}"))
        if varlen is not None:
            kernels.append(("varlen flash", da.varlen_kernel(varlen), torch.bfloat16))
            if varlen.grouped_kv and s.groups != s.heads:  # the fallback, for the price of the copies
                copying = dataclasses.replace(varlen, grouped_kv=False)
                kernels.append(("varlen flash", da.varlen_kernel(copying), torch.bfloat16))
        if da.has_flex_attention():
            kernels.append(("FlexAttention (compiled, document block mask)", da.flex_document_attention, torch.bfloat16))
            kernels.append(("FlexAttention (compiled, document block mask)", da.flex_document_attention, torch.float32))
    for name, kernel, dtype in kernels:
        results = run(kernel, dtype)
        error = max(_relative(g, w) for g, w in zip(results, reference))
        seconds = _timed(lambda: run(kernel, dtype), s.device)
        tolerance = FP32_RTOL if dtype == torch.float32 else BF16_RTOL
        mine = " (the trainer's)" if kernel_name(kernel) == kernel_name(trainer_kernel) and dtype == torch.bfloat16 else ""
        label = f"{name} [{kernel_name(kernel)}]" if name.startswith("varlen") else name
        rows.append(Row("a", f"{label}, {str(dtype).removeprefix('torch.')} fwd+bwd{mine}", verdict(error < tolerance),
                        f"max rel. error vs fp32 {error:.2e} (out, dq, dk, dv; limit {tolerance:.0e}); "
                        f"{1000 * seconds:.2f} ms"))
    if s.device != "cuda":
        rows.append(Row("a", "varlen flash, FlexAttention, the varlen probe", "n/a", "CUDA only (not run in a dry run)"))
    return rows


# ---- b, e: backends on the same weights -------------------------------------------------------


def _world(device: str):
    from megatron.core import parallel_state, tensor_parallel

    from megatron_mio import platform

    plat = platform.setup(use_cpu=device == "cpu")
    platform.init_distributed(plat)
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(1, 1)
        tensor_parallel.model_parallel_cuda_manual_seed(1234)
    return plat.device


def _loss_and_grads(backend: str, s, state: dict | None, device):
    import torch

    from megatron_mio.model import build_gpt_model, build_transformer_config, get_preset, padded_vocab_size
    from megatron_mio.model.attention import attention_kwargs
    from megatron_mio.model.fusions import plan_fusions
    from megatron_mio.training.mock_data import mock_pack

    preset = get_preset(s.width_preset).with_overrides(num_layers=s.layers)
    refused = ("bias_activation_fusion", "bias_dropout_fusion") if device.type == "cpu" else ()
    config = build_transformer_config(preset, bf16=True, fusions=plan_fusions(backend, device.type, refused))
    config.calculate_per_token_loss = True
    vocab = padded_vocab_size(s.vocab)
    model = build_gpt_model(config, preset, vocab, attention_backend=backend).to(device)
    if state is not None:
        model.load_state_dict(state)
    pack = mock_pack(1234, 0, s.seq, s.vocab)
    batch = {key: value.unsqueeze(0) for key, value in pack.items()}
    inputs = attention_kwargs(batch["cu_seqlens"], s.seq, backend, device)
    losses = model(batch["tokens"].to(device), batch["position_ids"].to(device), labels=batch["labels"].to(device),
                   **inputs)
    mask = batch["loss_mask"].to(device)
    loss = (losses.float() * mask).sum() / mask.sum()
    loss.backward()
    grads = torch.cat([p.grad.float().flatten() for p in model.parameters()])
    return model.state_dict(), float(loss), grads


def _compare_backends(section: str, first: str, second: str, s) -> list[Row]:
    import torch

    device = _world(s.device)
    torch.manual_seed(0)
    state, loss_a, grads_a = _loss_and_grads(first, s, None, device)
    _, loss_b, grads_b = _loss_and_grads(second, s, state, device)
    loss_error = abs(loss_a - loss_b) / abs(loss_b)
    grad_error = float((grads_a - grads_b).norm() / grads_b.norm())
    return [Row(section, f"{first} vs {second} backend, bf16, same weights", verdict(loss_error < 1e-2 and grad_error < 5e-2),
                f"loss {loss_a:.5f} vs {loss_b:.5f} (rel. {loss_error:.1e}); grads rel. L2 {grad_error:.1e}")]


def _all_reduce(s) -> Row:
    """A one-rank all-reduce over the process group the trainer uses (NCCL on a GPU)."""
    import torch

    device = _world(s.device)
    tensor = torch.full((s.all_reduce_mib * 2**18,), 1.5, device=device)
    torch.distributed.all_reduce(tensor)  # the first call sets up the communicator
    seconds = _timed(lambda: torch.distributed.all_reduce(tensor), s.device)
    world = torch.distributed.get_world_size()
    expected = 1.5 * world ** 4  # four sums over the group so far
    ok = bool(torch.all(tensor == expected))
    return Row("b", f"all-reduce, {torch.distributed.get_backend()}, {world} rank", verdict(ok),
               f"{s.all_reduce_mib} MiB fp32, {1000 * seconds:.2f} ms; result {'correct' if ok else 'WRONG'}")


def section_backends(s) -> list[Row]:
    return [*_compare_backends("b", "torch", "local", s), _all_reduce(s)]


def section_te(s) -> list[Row]:
    from megatron_mio.model.attention import te_available

    if not te_available():
        return [Row("e", "te vs torch backend", "n/a", "transformer-engine does not import here")]
    return _compare_backends("e", "te", "torch", s)


# ---- c: bf16 + distributed optimizer, eval, recompute, save, resume -----------------------------


def _trainer(args: list, s, metrics_file: Path) -> dict:
    cmd = [sys.executable, "-m", "megatron_mio.pretrain", "--mock-data", "--model-preset", s.train_preset,
           "--vocab-size", s.vocab, "--seq-length", s.train_seq, "--micro-batch-size", "1",
           "--lr", "1e-3", "--lr-warmup-iters", "1", "--log-interval", "1", "--num-workers", "0",
           "--bf16", "--use-distributed-optimizer", "--eval-interval", "2", "--eval-iters", "1",
           "--recompute-granularity", "full", "--recompute-method", "uniform", "--recompute-num-layers", "1",
           "--metrics-file", metrics_file, *args]
    if s.device == "cpu":
        cmd += ["--use-cpu", "--no-bias-swiglu-fusion", "--no-bias-dropout-fusion"]
    # In the section's process group: a limit that kills the section takes the trainer with it.
    run_child(cmd, timeout_s=s.child_timeout_s, own_group=False, stdout=subprocess.DEVNULL)
    return [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]


def _by_iteration(records: list[dict], key: str) -> dict:
    return {r["iteration"]: r[key] for r in records if key in r}


def section_resume(s) -> list[Row]:
    with tempfile.TemporaryDirectory() as tmp:
        from megatron_mio.checkpoint.layout import write_tracker

        save = Path(tmp) / "ckpt"
        straight = _trainer(["--train-iters", 4, "--save", save, "--save-interval", 2], s, Path(tmp) / "a.jsonl")
        write_tracker(save, 2)  # resume from iteration 2
        resumed = _trainer(["--train-iters", 4, "--load", save], s, Path(tmp) / "b.jsonl")
    losses = [_by_iteration(r, "loss") for r in (straight, resumed)]
    valid = [_by_iteration(r, "valid_loss") for r in (straight, resumed)]
    same_losses = all(losses[1].get(i) == losses[0][i] for i in (3, 4))
    same = same_losses and valid[0].get(4) is not None and valid[1].get(4) == valid[0][4]
    nan = float("nan")
    return [Row("c", "4 iterations bf16 + distributed optimizer, eval every 2, full recompute; save at 2, resume",
                verdict(same),
                f"losses 3, 4: straight {losses[0][3]:.6f}, {losses[0][4]:.6f}; resumed {losses[1].get(3, nan):.6f}, "
                f"{losses[1].get(4, nan):.6f}; validation at 4: {valid[0].get(4, nan):.6f} vs {valid[1].get(4, nan):.6f}")]


# ---- d: throughput ------------------------------------------------------------------------------


def planned_peak_bytes(s) -> int:
    """What the planner predicts for section d's shape on one GPU (bf16, distributed optimizer)."""
    from megatron_mio.model.presets import get_preset, padded_vocab_size
    from megatron_mio.planner import memory as memory_plan

    preset = get_preset(s.bench_preset).with_overrides(num_layers=s.bench_layers)
    layout = memory_plan.Layout(tp=1, pp=1, dp=1, distributed_optimizer=True)
    return memory_plan.estimate(preset, padded_vocab_size(s.vocab), layout, seq_length=s.bench_seq, micro_batch=1,
                                num_microbatches=s.micro_batches, precision=memory_plan.BF16,
                                kernels=memory_plan.GPU_KERNELS).total


def judge_throughput(ours: dict, baseline: dict, *, peak_tflops: float | None, planned_bytes: int | None,
                     on_gpu: bool, shape: str) -> list[Row]:
    """Section d's rows, each with its criterion; speed and memory criteria need the GPU."""
    rows = []
    tflops = ours["flops_per_second"] / 1e12
    mfu = tflops / peak_tflops if peak_tflops else None
    numbers = (f"{ours['tokens_per_second']:.0f} tokens/s, {tflops:.1f} TFLOP/s, "
               f"MFU {'n/a' if mfu is None else f'{100 * mfu:.1f}%'}")
    rows.append(Row("d", f"ours (megatron-core, packed): {shape}; criterion MFU >= {MFU_FLOOR:.0%}",
                    verdict(mfu >= MFU_FLOOR) if on_gpu and mfu is not None else "n/a", numbers))
    base_tflops = baseline["flops_per_second"] / 1e12
    base_mfu = f"{100 * base_tflops / peak_tflops:.1f}%" if peak_tflops else "n/a"
    rows.append(Row("d", "transformers LlamaForCausalLM, SDPA, padded, fused AdamW; criterion: finite loss",
                    verdict(math.isfinite(baseline["final_loss"])),
                    f"{baseline['tokens_per_second']:.0f} tokens/s, {base_tflops:.1f} TFLOP/s, MFU {base_mfu}"))
    for label, result in (("ours", ours), ("transformers", baseline)):
        share = result["optimizer_ms"] / (result["optimizer_ms"] + result["forward_backward_ms"])
        rows.append(Row("d", f"{label}: step of {result['micro_batches']} micro-batches; criterion optimizer <= "
                             f"{OPTIMIZER_SHARE_CEILING:.0%} of it", verdict(share <= OPTIMIZER_SHARE_CEILING),
                        f"forward-backward {result['forward_backward_ms']:.1f} ms, optimizer "
                        f"{result['optimizer_ms']:.1f} ms ({share:.1%})"))
    ratio = ours["tokens_per_second"] / baseline["tokens_per_second"]
    fb_ratio = ours["forward_backward_tokens_per_second"] / baseline["forward_backward_tokens_per_second"]
    rows.append(Row("d", "ours / transformers, useful tokens/s; criterion >= 1 on the GPU (packing beats padding)",
                    verdict(min(ratio, fb_ratio) >= 1.0) if on_gpu else "n/a",
                    f"whole steps {ratio:.2f}x; forward-backward only {fb_ratio:.2f}x"))
    spread = max(ours["step_ms"]) / ours["median_step_ms"]
    steady = ours["recompiles"] < len(ours["step_ms"]) and (spread <= STEP_TIME_SPREAD or not on_gpu)
    rows.append(Row("d", f"ours: iteration time stable; criterion slowest <= {STEP_TIME_SPREAD}x median (GPU), "
                         "fewer recompiles than iterations", verdict(steady),
                    f"steps {', '.join(f'{t:.0f}' for t in ours['step_ms'])} ms; slowest {spread:.2f}x median; "
                    f"{ours['recompiles']} recompiles (TORCH_LOGS=recompiles)"))
    measured = ours["max_memory_allocated"]
    if measured and planned_bytes:
        error = measured / planned_bytes - 1
        rows.append(Row("d", f"ours: max_memory_allocated vs memory_plan; criterion within "
                             f"{MEMORY_PLAN_TOLERANCE:.0%}", verdict(abs(error) <= MEMORY_PLAN_TOLERANCE),
                        f"{measured / 2**30:.2f} GiB measured, {planned_bytes / 2**30:.2f} GiB planned ({error:+.1%})"))
    else:
        rows.append(Row("d", "ours: max_memory_allocated vs memory_plan", "n/a", "the CPU has no allocator statistics"))
    return rows


def section_throughput(s) -> list[Row]:
    import torch

    import bench_train
    from megatron_mio.training.metrics import peak_tflops

    args = SimpleNamespace(device=s.device, preset=s.bench_preset, num_layers=s.bench_layers, vocab_size=s.vocab,
                           seq_length=s.bench_seq, micro_batch_size=1, micro_batches=s.micro_batches,
                           steps=s.bench_steps, warmup=s.bench_warmup, attention_backend=None, seed=1234,
                           timeout_s=s.child_timeout_s,
                           extra=["--no-bias-swiglu-fusion", "--no-bias-dropout-fusion"] if s.device == "cpu" else [])
    preset = bench_train.shapes(args)
    ours = bench_train.run_ours(args, preset)
    baseline = bench_train.run_transformers(args, preset)
    on_gpu = s.device == "cuda"
    return judge_throughput(ours, baseline, peak_tflops=peak_tflops(torch.cuda.get_device_name(), "bf16") if on_gpu else None,
                            planned_bytes=planned_peak_bytes(s) if on_gpu else None, on_gpu=on_gpu,
                            shape=f"{preset.num_layers} layers x {preset.hidden_size}, seq {s.bench_seq}")


SECTIONS = {"0": section_versions, "a": section_kernels, "b": section_backends, "c": section_resume,
            "d": section_throughput, "e": section_te}


# ---- the parent: one child per section ----------------------------------------------------------


def run_section(key: str, command: list[str], limit_s: float, env: dict | None = None) -> list[Row]:
    """The rows a section's child printed; a FAIL row with its stderr tail if it failed or hung."""
    try:
        proc = run_child(command, timeout_s=limit_s, env=env)
        return _rows(proc.stdout) or [Row(key, f"section {key}", "FAIL", "the child printed no rows")]
    except ChildFailed as failure:
        rows = _rows(failure.stdout)
        if any(row.result == "FAIL" for row in rows) and "no result within" not in str(failure):
            return rows  # the section reported its own error
        return [*rows, Row(key, f"section {key}", "FAIL", str(failure))]


def _rows(stdout: str) -> list[Row]:
    return [Row(*json.loads(line[len(ROW_PREFIX):])) for line in stdout.splitlines() if line.startswith(ROW_PREFIX)]


def child_main(key: str, dry_run: bool) -> int:
    """Inside a section's child: print its rows; an exception is a FAIL row (traceback on stderr)."""
    status = 0
    try:
        rows = SECTIONS[key](shapes(dry_run))
    except Exception as err:  # a broken section is a result
        traceback.print_exc(file=sys.stderr)
        rows, status = [Row(key, SECTIONS[key].__name__, "FAIL", f"{type(err).__name__}: {err}"[:1500])], 1
    for row in rows:
        print(ROW_PREFIX + json.dumps(list(row)), flush=True)
    return status


def _format(row: Row, seconds: float) -> str:
    detail = " ".join(row.detail.split()).replace("|", "/")
    return f"| {row.section} | {row.check} | {row.result} | {detail} ({seconds:.0f} s) |"


def _time_limit(text: str) -> tuple[str, float]:
    key, _, seconds = text.partition("=")
    if key not in SECTIONS or not seconds.replace(".", "", 1).isdigit():
        raise argparse.ArgumentTypeError(f"expected SECTION=SECONDS with SECTION one of {''.join(SECTIONS)}; got {text!r}")
    return key, float(seconds)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="every section on the CPU at tiny shapes")
    parser.add_argument("--sections", default="abcde", help="which of a-e to run after the versions (default: all)")
    parser.add_argument("--time-limit", type=_time_limit, action="append", default=[], metavar="SECTION=SECONDS",
                        help=f"a section's limit (defaults {TIME_LIMITS}; a dry run gets 10x)")
    parser.add_argument("--total-limit", type=float, default=None,
                        help=f"seconds for the whole call (default {TOTAL_LIMIT}; none in a dry run)")
    parser.add_argument("--in-child", choices=list(SECTIONS), help=argparse.SUPPRESS)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.in_child:
        return child_main(args.in_child, args.dry_run)
    unknown = sorted(set(args.sections) - set(SECTIONS) - {"0"})
    if unknown:
        print(f"error: --sections {args.sections!r}: unknown section(s) {''.join(unknown)}; choose from abcde",
              file=sys.stderr)
        return 2
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("error: no CUDA device; use --dry-run to exercise the script on the CPU", file=sys.stderr)
        return 2
    limits = {key: seconds * (10 if args.dry_run else 1) for key, seconds in TIME_LIMITS.items()}
    limits.update(args.time_limit)
    total = args.total_limit or (None if args.dry_run else TOTAL_LIMIT)
    began = time.time()
    print(f"gpu_check: sections 0{args.sections.replace('0', '')}{' (dry run)' if args.dry_run else ''}\n\n"
          "| section | check | result | detail |\n| --- | --- | --- | --- |", flush=True)
    failed = False
    for key in "0" + args.sections.replace("0", ""):
        left = None if total is None else total - (time.time() - began)
        limit = limits[key] if left is None else min(limits[key], left)
        section_began = time.time()
        if left is not None and left < 5:
            rows = [Row(key, f"section {key}", "FAIL", f"not run: the call's --total-limit of {total:.0f} s is spent")]
        else:
            command = [sys.executable, str(Path(__file__).resolve()), "--in-child", key] + (["--dry-run"] if args.dry_run else [])
            rows = run_section(key, command, limit, child_env())
        for row in rows:
            failed |= row.result == "FAIL"
            print(_format(row, time.time() - section_began), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
