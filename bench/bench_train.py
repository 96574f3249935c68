"""Training throughput: our megatron-core trainer (packed documents) vs plain transformers.

Both train the same Llama/Yi-shaped model on documents of the same length distribution (the
``--mock-data`` documents: 8 .. seq/2 tokens) with AdamW:

- ours: ``python -m megatron_mio.pretrain`` (GPTModel, packed sequences with per-document
  attention, bf16 on GPU), throughput read from its ``--metrics-file``;
- baseline: ``transformers.LlamaForCausalLM`` with SDPA attention on padded batches of whole
  documents (the usual fine-tuning setup without packing), same token budget per step.

Throughput is *useful* tokens per second (tokens that are not padding).  MFU uses the same FLOP
count for both (``megatron_mio.training.metrics``: 6 x matmul FLOPs per token plus causal
attention over each document) and the device's dense peak.

    python bench/bench_train.py --device cuda --num-layers 8          # one H100: Yi-6B width, 8 layers
    python bench/bench_train.py --device cpu                          # tiny shapes, exercises the script
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from megatron_mio.model.presets import get_preset, padded_vocab_size  # noqa: E402
from megatron_mio.tokenizer.vocab import MIO_VOCAB_SIZE_FOR_YI  # noqa: E402
from megatron_mio.training.metrics import forward_flops_per_token, peak_tflops  # noqa: E402
from megatron_mio.training.mock_data import mock_pack  # noqa: E402


def shapes(args):
    preset = get_preset(args.preset)
    return preset.with_overrides(num_layers=args.num_layers)


def run_ours(args, preset) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        metrics = Path(tmp) / "m.jsonl"
        cmd = [sys.executable, "-m", "megatron_mio.pretrain", "--mock-data", "--model-preset", args.preset,
               "--num-layers", str(preset.num_layers), "--vocab-size", str(args.vocab_size),
               "--seq-length", str(args.seq_length), "--micro-batch-size", str(args.micro_batch_size),
               "--global-batch-size", str(args.micro_batch_size), "--train-iters", str(args.steps),
               "--lr", "1e-5", "--log-interval", "1", "--metrics-file", str(metrics), "--no-exit-signal-handler"]
        cmd += list(getattr(args, "extra", []))
        if args.device == "cpu":
            cmd += ["--use-cpu"]
        else:
            cmd += ["--bf16", "--attention-backend", args.attention_backend] if args.attention_backend else ["--bf16"]
        env = dict(os.environ, PYTHONPATH=str(REPO))
        subprocess.run(cmd, check=True, cwd=REPO, env=env, stdout=subprocess.DEVNULL)
        records = [json.loads(line) for line in metrics.read_text().splitlines()]
    timed = records[args.warmup:]
    seconds = sum(r["elapsed_ms_per_iteration"] for r in timed) / 1000.0
    tokens = len(timed) * args.micro_batch_size * args.seq_length  # mock packs are full
    flops = sum(r["tflops_per_gpu"] * r["elapsed_ms_per_iteration"] / 1000.0 for r in timed) * 1e12
    return {"tokens_per_second": tokens / seconds, "flops_per_second": flops / seconds}


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

    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    config = LlamaConfig(
        vocab_size=padded_vocab_size(args.vocab_size), hidden_size=preset.hidden_size,
        intermediate_size=preset.ffn_hidden_size, num_hidden_layers=preset.num_layers,
        num_attention_heads=preset.num_attention_heads, num_key_value_heads=preset.num_query_groups,
        rms_norm_eps=preset.norm_epsilon, max_position_embeddings=preset.max_position_embeddings,
        tie_word_embeddings=False, attn_implementation="sdpa",
    )
    model = LlamaForCausalLM(config).to(device=device, dtype=dtype)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=args.device == "cuda")
    batches = padded_batches(args, preset, args.steps)
    useful = pairs = 0
    seconds = 0.0
    for step, (ids, mask, lengths) in enumerate(batches):
        ids, mask = ids.to(device), mask.to(device)
        if args.device == "cuda":
            torch.cuda.synchronize()
        began = time.time()
        labels = ids.masked_fill(mask == 0, -100)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if args.device == "cuda":
            torch.cuda.synchronize()
        if step >= args.warmup:
            seconds += time.time() - began
            useful += sum(lengths)
            pairs += sum(n * (n + 1) // 2 for n in lengths)
    per_token = forward_flops_per_token(preset, padded_vocab_size(args.vocab_size))
    flops = 3.0 * (useful * per_token + 4.0 * preset.hidden_size * preset.num_layers * pairs)
    return {"tokens_per_second": useful / seconds, "flops_per_second": flops / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--preset", default=None, help="default: yi-6b on cuda, tiny on cpu")
    parser.add_argument("--num-layers", type=int, default=None, help="default: 8 on cuda, the preset's on cpu")
    parser.add_argument("--vocab-size", type=int, default=MIO_VOCAB_SIZE_FOR_YI)
    parser.add_argument("--seq-length", type=int, default=2800)
    parser.add_argument("--micro-batch-size", type=int, default=1)
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
          f"seq {args.seq_length}, micro batch {args.micro_batch_size}, vocab {args.vocab_size}, {args.steps - args.warmup} timed steps")
    base = results["transformers LlamaForCausalLM (SDPA, padded)"]["tokens_per_second"]
    for label, r in results.items():
        mfu = f"{100 * r['flops_per_second'] / 1e12 / peak:.1f}%" if peak else "n/a"
        print(f"  {label:48s} useful tokens/s {r['tokens_per_second']:10.0f} | TFLOP/s {r['flops_per_second'] / 1e12:8.3f} | "
              f"MFU {mfu} | x{r['tokens_per_second'] / base:.2f} vs transformers")


if __name__ == "__main__":
    main()
