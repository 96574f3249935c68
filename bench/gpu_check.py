"""The GPU path in one prepared run: what only a GPU can check, printed as one markdown table.

    python bench/gpu_check.py            # one H100/H200, megatron-core installed; about 5 minutes
    python bench/gpu_check.py --dry-run  # every section on the CPU at tiny shapes (the test suite runs it)

Sections (each row PASS/FAIL, the numbers beside it):

a. document attention kernels in bf16, forward + backward, against an fp32 per-document SDPA
   reference: torch's varlen flash attention, compiled FlexAttention, SDPA per document;
b. the ``torch`` backend against ``local`` (dense mask) on the same weights in bf16: loss, grads;
c. 4 trainer iterations in bf16 with the distributed optimizer, saved at 2, resumed: equal losses;
d. tokens/s, TFLOP/s and MFU (the trainer's own FLOP count) of an 8-layer Yi-6B-width model at
   seq 2800 against ``transformers`` LlamaForCausalLM (SDPA, padded) on the same documents
   (``bench/bench_train.py``);
e. the ``te`` backend against ``torch`` when transformer-engine imports.

A failing section is a FAIL row with its error; the others still run; the exit code is 1 then.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from megatron_mio.checkpoint.layout import write_tracker  # noqa: E402
from megatron_mio.tokenizer.vocab import MIO_VOCAB_SIZE_FOR_YI  # noqa: E402

BF16_RTOL = 3e-2  # bf16 has 8 mantissa bits: ~4e-3 per rounding, a few roundings deep


def shapes(dry_run: bool) -> SimpleNamespace:
    if dry_run:
        return SimpleNamespace(device="cpu", seq=128, docs=4, heads=4, groups=2, head_dim=16, layers=2,
                               width_preset="tiny", vocab=1024, bench_steps=3, bench_warmup=1, bench_layers=2,
                               bench_preset="tiny", bench_seq=128, train_preset="tiny", train_seq=64)
    return SimpleNamespace(device="cuda", seq=2800, docs=10, heads=32, groups=4, head_dim=128, layers=2,
                           width_preset="yi-6b", vocab=MIO_VOCAB_SIZE_FOR_YI, bench_steps=12, bench_warmup=3, bench_layers=8,
                           bench_preset="yi-6b", bench_seq=2800, train_preset="small", train_seq=2800)


def document_bounds(seq: int, docs: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    cuts = torch.randperm(seq - 1, generator=generator)[: docs - 1] + 1
    return torch.cat([torch.tensor([0]), cuts.sort().values, torch.tensor([seq])]).to(torch.int32)


def _timed(fn, device: str, repeats: int = 3) -> float:
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


def _relative(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want.float()).abs().max() / want.float().abs().max().clamp_min(1e-12))


# ---- a: kernels ------------------------------------------------------------------------------


def section_kernels(s) -> list[tuple]:
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
    kernels = {"SDPA per document": da.sdpa_per_document}
    installed = da._installed_varlen()
    if s.device == "cuda" and installed is not None:
        kernels["varlen flash (torch.nn.attention.varlen)"] = da.varlen_kernel(*installed)
    if s.device == "cuda" and da._has_flex_attention():
        kernels["FlexAttention (compiled, document block mask)"] = da.flex_document_attention
    rows = []
    for name, kernel in kernels.items():
        results = run(kernel, torch.bfloat16)
        error = max(_relative(g, w) for g, w in zip(results, reference))
        seconds = _timed(lambda: run(kernel, torch.bfloat16), s.device)
        rows.append(("a", f"{name}, bf16 fwd+bwd", "PASS" if error < BF16_RTOL else "FAIL",
                     f"max rel. error vs fp32 {error:.2e} (out, dq, dk, dv); {1000 * seconds:.2f} ms"))
    if s.device != "cuda":
        rows.append(("a", "varlen flash, FlexAttention", "n/a", "CUDA only (not run in a dry run)"))
    return rows


# ---- b, e: backends on the same weights -------------------------------------------------------


def _world(device: str) -> torch.device:
    from megatron.core import parallel_state, tensor_parallel

    from megatron_mio import platform

    plat = platform.setup(use_cpu=device == "cpu")
    platform.init_distributed(plat)
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(1, 1)
        tensor_parallel.model_parallel_cuda_manual_seed(1234)
    return plat.device


def _loss_and_grads(backend: str, s, state: dict | None, device):
    from megatron_mio.model import build_gpt_model, build_transformer_config, get_preset, padded_vocab_size
    from megatron_mio.model.attention import attention_kwargs
    from megatron_mio.model.fusions import plan_fusions
    from megatron_mio.model.model_config import BF16
    from megatron_mio.training.mock_data import mock_pack

    preset = get_preset(s.width_preset).with_overrides(num_layers=s.layers)
    refused = ("bias_activation_fusion", "bias_dropout_fusion") if device.type == "cpu" else ()
    config = build_transformer_config(preset, precision=BF16, fusions=plan_fusions(backend, device.type, refused))
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


def _compare_backends(section: str, first: str, second: str, s) -> list[tuple]:
    device = _world(s.device)
    torch.manual_seed(0)
    state, loss_a, grads_a = _loss_and_grads(first, s, None, device)
    _, loss_b, grads_b = _loss_and_grads(second, s, state, device)
    loss_error = abs(loss_a - loss_b) / abs(loss_b)
    grad_error = float((grads_a - grads_b).norm() / grads_b.norm())
    ok = loss_error < 1e-2 and grad_error < 5e-2
    return [(section, f"{first} vs {second} backend, bf16, same weights", "PASS" if ok else "FAIL",
             f"loss {loss_a:.5f} vs {loss_b:.5f} (rel. {loss_error:.1e}); grads rel. L2 {grad_error:.1e}")]


def section_backends(s) -> list[tuple]:
    return _compare_backends("b", "torch", "local", s)


def section_te(s) -> list[tuple]:
    from megatron_mio.model.attention import te_available

    if not te_available():
        return [("e", "te vs torch backend", "n/a", "transformer-engine does not import here")]
    return _compare_backends("e", "te", "torch", s)


# ---- c: bf16 + distributed optimizer, save, resume ----------------------------------------------


def _trainer(args: list, s, metrics_file: Path) -> dict:
    cmd = [sys.executable, "-m", "megatron_mio.pretrain", "--mock-data", "--model-preset", s.train_preset,
           "--vocab-size", str(s.vocab), "--seq-length", str(s.train_seq), "--micro-batch-size", "1",
           "--lr", "1e-3", "--lr-warmup-iters", "1", "--log-interval", "1", "--num-workers", "0",
           "--bf16", "--use-distributed-optimizer", "--metrics-file", str(metrics_file), *map(str, args)]
    if s.device == "cpu":
        cmd += ["--use-cpu", "--no-bias-swiglu-fusion", "--no-bias-dropout-fusion"]
    subprocess.run(cmd, check=True, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True)
    records = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    return {r["iteration"]: r["loss"] for r in records if "loss" in r}


def section_resume(s) -> list[tuple]:
    with tempfile.TemporaryDirectory() as tmp:
        save = Path(tmp) / "ckpt"
        straight = _trainer(["--train-iters", 4, "--save", save, "--save-interval", 2], s, Path(tmp) / "a.jsonl")
        write_tracker(save, 2)  # resume from iteration 2
        resumed = _trainer(["--train-iters", 4, "--load", save], s, Path(tmp) / "b.jsonl")
    same = all(resumed.get(i) == straight[i] for i in (3, 4))
    return [("c", "4 iterations bf16 + distributed optimizer, save at 2, resume", "PASS" if same else "FAIL",
             f"losses 3, 4: straight {straight[3]:.6f}, {straight[4]:.6f}; resumed "
             f"{resumed.get(3, float('nan')):.6f}, {resumed.get(4, float('nan')):.6f}")]


# ---- d: throughput ------------------------------------------------------------------------------


def section_throughput(s) -> list[tuple]:
    import bench_train
    from megatron_mio.training.metrics import peak_tflops

    args = SimpleNamespace(device=s.device, preset=s.bench_preset, num_layers=s.bench_layers, vocab_size=s.vocab,
                           seq_length=s.bench_seq, micro_batch_size=1, steps=s.bench_steps, warmup=s.bench_warmup,
                           attention_backend=None, seed=1234,
                           extra=["--no-bias-swiglu-fusion", "--no-bias-dropout-fusion"] if s.device == "cpu" else [])
    preset = bench_train.shapes(args)
    name = torch.cuda.get_device_name() if s.device == "cuda" else None
    peak = peak_tflops(name, "bf16") if name else None
    ours = bench_train.run_ours(args, preset)
    baseline = bench_train.run_transformers(args, preset)
    rows = []
    precision = "bf16" if s.device == "cuda" else "fp32"
    for label, result in ((f"ours (megatron-core, packed, {precision})", ours), ("transformers LlamaForCausalLM, SDPA, padded", baseline)):
        tflops = result["flops_per_second"] / 1e12
        mfu = f"{100 * tflops / peak:.1f}%" if peak else "n/a (no peak for this device)"
        rows.append(("d", f"{label}: {preset.num_layers} layers x {preset.hidden_size}, seq {s.bench_seq}",
                     "PASS", f"{result['tokens_per_second']:.0f} tokens/s, {tflops:.1f} TFLOP/s, MFU {mfu}"))
    ratio = ours["tokens_per_second"] / baseline["tokens_per_second"]
    rows.append(("d", "ours / transformers, useful tokens/s", "PASS", f"{ratio:.2f}x"))
    return rows


SECTIONS = {"a": section_kernels, "b": section_backends, "c": section_resume, "d": section_throughput, "e": section_te}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="every section on the CPU at tiny shapes")
    parser.add_argument("--sections", default="abcde", help="which sections to run (default: all)")
    args = parser.parse_args()
    if not args.dry_run and not torch.cuda.is_available():
        print("error: no CUDA device; use --dry-run to exercise the script on the CPU", file=sys.stderr)
        return 2
    s = shapes(args.dry_run)
    env = (f"torch {torch.__version__}, CUDA {torch.version.cuda}, "
           f"{torch.cuda.get_device_name() if s.device == 'cuda' else 'CPU (dry run)'}")
    print(f"gpu_check: {env}\n\n| section | check | result | detail |\n| --- | --- | --- | --- |", flush=True)
    failed = False
    for key in args.sections:
        began = time.time()
        try:
            rows = SECTIONS[key](s)
        except Exception as err:  # a broken section is a result, the others still run
            detail = f"{type(err).__name__}: {err}".replace("\n", " ")[:400]
            traceback.print_exc(file=sys.stderr)
            rows = [(key, SECTIONS[key].__name__, "FAIL", detail)]
        for section, check, result, detail in rows:
            failed |= result == "FAIL"
            print(f"| {section} | {check} | {result} | {detail} ({time.time() - began:.0f} s) |", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
