#!/usr/bin/env python
"""How close the memory planner's estimate is to what megatron-core really allocates (CPU).

    python bench/bench_plan_accuracy.py [--seq-length 256] [--micro-batch-size 2]

Runs tests/workers/plan_measure.py on 2 torchrun ranks (tiny preset, gloo) for several layouts
and prints, per rank, estimate / measured for weights, gradients, optimizer states and the
activations autograd saves in one forward pass (megatron_mio.planner.memory with the CPU
kernels: dense attention, unfused SwiGLU and RMSNorm).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megatron_mio.model.presets import get_preset, padded_vocab_size  # noqa: E402
from megatron_mio.planner import memory as mp  # noqa: E402
from tests.distributed import REPO_ROOT, read_rank_results, run_torchrun  # noqa: E402

SPECS = ("2x1:fp32:0:local:none", "1x2:fp32:0:local:none", "1x1:bf16:1:local:none",
         "2x1:bf16:0:local:none", "1x1:bf16:0:local:selective", "2x1:fp32:0:local:full")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--vocab-size", type=int, default=4000)
    parser.add_argument("--seq-length", type=int, default=256)
    parser.add_argument("--micro-batch-size", type=int, default=2)
    args = parser.parse_args()
    preset = get_preset(args.preset)
    with tempfile.TemporaryDirectory() as out:
        run_torchrun(REPO_ROOT / "tests/workers/plan_measure.py", 2,
                     [out, args.preset, args.vocab_size, args.seq_length, args.micro_batch_size, *SPECS],
                     timeout=900)
        results = read_rank_results(out, 2)
    print(f"{args.preset} preset, vocab {args.vocab_size}, seq {args.seq_length}, "
          f"micro-batch {args.micro_batch_size}; estimate / measured")
    print("| layout | rank | weights | grads | optimizer | activations (measured MiB) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for spec in SPECS:
        for rank, per_rank in enumerate(results):
            real = per_rank[spec]
            shape, precision, dist_opt, _, recompute = spec.split(":")
            tp, pp = (int(x) for x in shape.split("x"))
            layout = mp.Layout(tp, pp, real["dp"], distributed_optimizer=dist_opt == "1",
                               recompute=None if recompute == "none" else recompute)
            stage = 0 if real["first_stage"] else pp - 1
            vocab = padded_vocab_size(args.vocab_size, tensor_parallel_size=tp)
            prec = mp.PRECISIONS[precision]
            params = mp.stage_parameters(preset, vocab, tp, pp, stage)
            state = mp.state_bytes(params, layout.dp, prec, layout.distributed_optimizer)
            act = mp.microbatch_activation_bytes(preset, vocab, layout, stage,
                                                 seq_length=args.seq_length,
                                                 micro_batch=args.micro_batch_size,
                                                 precision=prec, kernels=mp.CPU_LOCAL_KERNELS)
            ratios = [e / real[k] for e, k in zip((*state, act), ("weights", "grads", "optimizer", "activations"))]
            name = f"TP{tp} PP{pp} DP{layout.dp} {precision} dist-opt={dist_opt} recompute={recompute}"
            print(f"| {name} | {rank} | " + " | ".join(f"{r:.4f}" for r in ratios[:3])
                  + f" | {ratios[3]:.4f} ({real['activations'] / 2**20:.1f}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
