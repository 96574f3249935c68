"""Training throughput: our megatron-core trainer (packed documents) vs plain transformers.

Both train the same Llama/Yi-shaped model on documents of the same length distribution (the
``--mock-data`` documents: 8 .. seq/2 tokens) with AdamW, accumulating gradients over
``--micro-batches`` micro-batches per optimizer step as the stage configs do (16: 2,048 / 128
GPUs in stages I-II, 128 / 8 in stage III), so that the optimizer's share of a step is the
training run's:

- ours: ``python -m megatron_mio.pretrain`` (GPTModel, packed sequences with per-document
  attention, bf16 with the distributed optimizer on GPU), read from its ``--metrics-file``
  (per iteration: time, forward-backward and optimizer time, peak device memory);
- baseline: ``transformers.LlamaForCausalLM`` with SDPA attention on padded batches of whole
  documents (the usual fine-tuning setup without packing), same token budget per micro-batch,
  torch's fused AdamW.

Throughput is *useful* tokens per second (tokens that are not padding), over whole steps and
over the forward-backward part alone (the packing gain without the optimizers' difference).
MFU uses the same FLOP count for both (``megatron_mio.training.metrics``: 6 x matmul FLOPs per
token plus causal attention over each document) and the device's dense peak.

    python bench/bench_train.py --device cuda --num-layers 8          # one H100: Yi-6B width, 8 layers
    python bench/bench_train.py --device cpu                          # tiny shapes, exercises the script
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from child_process import child_env, run_child  # noqa: E402

from megatron_mio.model.presets import get_preset, padded_vocab_size  # noqa: E402
from megatron_mio.tokenizer.vocab import MIO_VOCAB_SIZE_FOR_YI  # noqa: E402
from megatron_mio.training.metrics import forward_flops_per_token, peak_tflops  # noqa: E402
from megatron_mio.training.mock_data import mock_pack  # noqa: E402

MICRO_BATCHES = 16  # per optimizer step, as the stage configs accumulate


def shapes(args):
    preset = get_preset(args.preset)
    return preset.with_overrides(num_layers=args.num_layers)


def _summary(step_s: list[float], forward_backward_s: list[float], optimizer_s: list[float], tokens: int,
             flops: float, max_memory: int | None, **extra) -> dict:
    """Per-step figures over the timed steps (``tokens``/``flops``: their sums)."""
    seconds = sum(step_s)
    return {
        "tokens_per_second": tokens / seconds, "flops_per_second": flops / seconds,
        "forward_backward_tokens_per_second": tokens / sum(forward_backward_s),
        "step_ms": [1000 * t for t in step_s], "median_step_ms": 1000 * statistics.median(step_s),
        "forward_backward_ms": 1000 * statistics.mean(forward_backward_s),
        "optimizer_ms": 1000 * statistics.mean(optimizer_s), "max_memory_allocated": max_memory, **extra,
    }


def run_ours(args, preset) -> dict:
    micro_batches = getattr(args, "micro_batches", MICRO_BATCHES)
    with tempfile.TemporaryDirectory() as tmp:
        metrics = Path(tmp) / "m.jsonl"
        cmd = [sys.executable, "-m", "megatron_mio.pretrain", "--mock-data", "--model-preset", args.preset,
               "--num-layers", preset.num_layers, "--vocab-size", args.vocab_size,
               "--seq-length", args.seq_length, "--micro-batch-size", args.micro_batch_size,
               "--global-batch-size", args.micro_batch_size * micro_batches, "--train-iters", args.steps,
               "--lr", "1e-5", "--log-interval", "1", "--num-workers", "0", "--use-distributed-optimizer",
               "--metrics-file", metrics, "--no-exit-signal-handler", *getattr(args, "extra", [])]
        if args.device == "cpu":
            cmd += ["--use-cpu"]
        else:
            cmd += ["--bf16"] + (["--attention-backend", args.attention_backend] if args.attention_backend else [])
        # TORCH_LOGS=recompiles: a kernel recompiled for every micro-batch shows in the stderr.
        proc = run_child(cmd, timeout_s=getattr(args, "timeout_s", 1800),
                         env=child_env({"TORCH_LOGS": "recompiles"}), stdout=subprocess.DEVNULL)
        records = [json.loads(line) for line in metrics.read_text().splitlines()]
    timed = [r for r in records if "loss" in r][args.warmup:]
    tokens = len(timed) * micro_batches * args.micro_batch_size * args.seq_length  # mock packs are full
    flops = sum(r["tflops_per_gpu"] * r["elapsed_ms_per_iteration"] / 1000.0 for r in timed) * 1e12
    return _summary([r["elapsed_ms_per_iteration"] / 1000 for r in timed],
                    [r["forward_backward_ms_per_iteration"] / 1000 for r in timed],
                    [r["optimizer_ms_per_iteration"] / 1000 for r in timed], tokens, flops,
                    records[-1].get("max_memory_allocated_bytes"),
                    recompiles=proc.stderr.count("Recompiling function"), micro_batches=micro_batches,
                    final_loss=timed[-1]["loss"])


def padded_batches(args, preset, count: int):
    """Whole documents (same lengths as the packs hold), padded per batch to the longest one."""
    docs = []
    index = 0
    while len(docs) < count * 64:
        pack = mock_pack(args.seed, index, args.seq_length, args.vocab_size)
        bounds = pack["position_ids"].eq(0).nonzero().flatten().tolist() + [args.seq_length]
        docs += [pack["tokens"][a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        index += 1
    budget = args.micro_batch_size * args.seq_length
    batches, current = [], []
    for doc in docs:
        if current and (len(current) + 1) * max(len(d) for d in current + [doc]) > budget:
            batches.append(current)
            current = []
        current.append(doc)
        if len(batches) == count:
            break
    out = []
    for group in batches:
        width = max(len(d) for d in group)
        ids = torch.zeros(len(group), width, dtype=torch.long)
        mask = torch.zeros(len(group), width, dtype=torch.long)
        for i, d in enumerate(group):
            ids[i, : len(d)] = d
            mask[i, : len(d)] = 1
        out.append((ids, mask, [len(d) for d in group]))
    return out


def run_transformers(args, preset) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    micro_batches = getattr(args, "micro_batches", MICRO_BATCHES)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    config = LlamaConfig(
        vocab_size=padded_vocab_size(args.vocab_size), hidden_size=preset.hidden_size,
        intermediate_size=preset.ffn_hidden_size, num_hidden_layers=preset.num_layers,
        num_attention_heads=preset.num_attention_heads, num_key_value_heads=preset.num_query_groups,
        rms_norm_eps=preset.norm_epsilon, max_position_embeddings=preset.max_position_embeddings,
        tie_word_embeddings=False, attn_implementation="sdpa",
    )
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model = LlamaForCausalLM(config).to(device=device, dtype=dtype)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=args.device == "cuda")
    batches = padded_batches(args, preset, args.steps * micro_batches)
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    useful = pairs = 0
    step_s, forward_backward_s, optimizer_s = [], [], []
    for step in range(args.steps):
        sync()
        began = time.perf_counter()
        step_useful = step_pairs = 0
        for ids, mask, lengths in batches[step * micro_batches:(step + 1) * micro_batches]:
            ids, mask = ids.to(device), mask.to(device)
            labels = ids.masked_fill(mask == 0, -100)
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss / micro_batches
            loss.backward()
            step_useful += sum(lengths)
            step_pairs += sum(n * (n + 1) // 2 for n in lengths)
        sync()
        gradients_done = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        if step >= args.warmup:
            step_s.append(time.perf_counter() - began)
            forward_backward_s.append(gradients_done - began)
            optimizer_s.append(step_s[-1] - forward_backward_s[-1])
            useful += step_useful
            pairs += step_pairs
    per_token = forward_flops_per_token(preset, padded_vocab_size(args.vocab_size))
    flops = 3.0 * (useful * per_token + 4.0 * preset.hidden_size * preset.num_layers * pairs)
    max_memory = torch.cuda.max_memory_allocated() if args.device == "cuda" else None
    return _summary(step_s, forward_backward_s, optimizer_s, useful, flops, max_memory,
                    micro_batches=micro_batches, final_loss=float(loss) * micro_batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--preset", default=None, help="default: yi-6b on cuda, tiny on cpu")
    parser.add_argument("--num-layers", type=int, default=None, help="default: 8 on cuda, the preset's on cpu")
    parser.add_argument("--vocab-size", type=int, default=MIO_VOCAB_SIZE_FOR_YI)
    parser.add_argument("--seq-length", type=int, default=2800)
    parser.add_argument("--micro-batch-size", type=int, default=1)
    parser.add_argument("--micro-batches", type=int, default=MICRO_BATCHES, help="per optimizer step (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--attention-backend", default=None)
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()
    if args.device == "cpu":
        args.preset = args.preset or "tiny"
        if args.vocab_size == MIO_VOCAB_SIZE_FOR_YI:
            args.vocab_size, args.seq_length = 1024, 512
    args.preset = args.preset or "yi-6b"
    args.num_layers = args.num_layers or (8 if args.device == "cuda" else get_preset(args.preset).num_layers)
    preset = shapes(args)
    name = torch.cuda.get_device_name() if args.device == "cuda" else None
    peak = peak_tflops(name, "bf16" if args.device == "cuda" else "fp32")
    results = {"ours (megatron-core, packed)": run_ours(args, preset),
               "transformers LlamaForCausalLM (SDPA, padded)": run_transformers(args, preset)}
    print(f"device: {name or 'cpu'} | model: {args.preset} x {preset.num_layers} layers, hidden {preset.hidden_size} | "
          f"seq {args.seq_length}, micro batch {args.micro_batch_size} x {args.micro_batches} per step, "
          f"vocab {args.vocab_size}, {args.steps - args.warmup} timed steps")
    base = results["transformers LlamaForCausalLM (SDPA, padded)"]
    for label, r in results.items():
        mfu = f"{100 * r['flops_per_second'] / 1e12 / peak:.1f}%" if peak else "n/a"
        print(f"  {label:48s} useful tokens/s {r['tokens_per_second']:10.0f} | TFLOP/s {r['flops_per_second'] / 1e12:8.3f} | "
              f"MFU {mfu} | step {r['median_step_ms']:.0f} ms: forward-backward {r['forward_backward_ms']:.0f} ms, "
              f"optimizer {r['optimizer_ms']:.0f} ms | x{r['tokens_per_second'] / base['tokens_per_second']:.2f} "
              f"(forward-backward x{r['forward_backward_tokens_per_second'] / base['forward_backward_tokens_per_second']:.2f}) "
              "vs transformers")

if __name__ == "__main__":
    main()
