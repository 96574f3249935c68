"""List the TP/PP/DP (and recompute) layouts that fit a model on a cluster, with memory per GPU.

    python tools/plan_parallelism.py --model-preset yi-6b --gpus 128 --gpu-memory 80 \\
        --seq-length 2800 --micro-batch-size 1

The estimate (weights, gradients, optimizer states with and without the distributed optimizer,
activations) is megatron_mio.training.memory_plan; tests/test_plan_parallelism.py checks it
against what a real megatron-core GPTModel allocates.
"""

from __future__ import annotations

import argparse
import json
import sys


from megatron_mio import platform  # noqa: E402

platform.quiet_import_warnings()  # before megatron-core is imported

from megatron_mio.model.presets import PRESETS, get_preset  # noqa: E402
from megatron_mio.tokenizer.vocab import MIO_VOCAB_SIZE_FOR_YI  # noqa: E402
from megatron_mio.training import memory_plan as mp  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-preset", default="yi-6b", choices=sorted(PRESETS))
    parser.add_argument("--gpus", type=int, required=True, help="total GPUs of the job")
    parser.add_argument("--gpu-memory", type=float, default=80.0, help="GiB per GPU")
    parser.add_argument("--seq-length", type=int, default=2800)
    parser.add_argument("--micro-batch-size", type=int, default=1)
    parser.add_argument("--vocab-size", type=int, default=MIO_VOCAB_SIZE_FOR_YI, help="before padding for TP")
    parser.add_argument("--precision", default="bf16", choices=sorted(mp.PRECISIONS))
    parser.add_argument("--attention", default="flash", choices=["flash", "dense"],
                        help="flash: te/torch backends on GPU; dense: the local backend's s x s mask")
    parser.add_argument("--gpus-per-node", type=int, default=8, help="TP stays inside a node")
    parser.add_argument("--sequence-parallel", action="store_true")
    parser.add_argument("--overhead", type=float, default=4.0,
                        help="GiB reserved for the CUDA context, NCCL and fragmentation")
    parser.add_argument("--global-batch-size", type=int, default=None,
                        help="only layouts that can reach this global batch")
    parser.add_argument("--all", action="store_true", help="also list layouts that do not fit")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    if args.gpus < 1 or args.micro_batch_size < 1 or args.seq_length < 1:
        parser.error("--gpus, --micro-batch-size and --seq-length must be positive")
    return args


def gib(n: int) -> float:
    return n / mp.GIB


def row_dict(row: mp.PlanRow) -> dict:
    est = row.estimate
    return {
        "layout": est.layout.describe(), "tp": est.layout.tp, "pp": est.layout.pp,
        "dp": est.layout.dp, "recompute": est.layout.recompute,
        "distributed_optimizer": est.layout.distributed_optimizer,
        "stage": est.stage, "parameters": est.parameters,
        "weights_gib": gib(est.weights), "grads_gib": gib(est.grads),
        "optimizer_gib": gib(est.optimizer), "activations_gib": gib(est.activations),
        "transient_gib": gib(est.transient), "total_gib": gib(est.total), "fits": row.fits,
        "global_batches": [{"global_batch": g, "micro_batches": m, "bubble": b}
                           for g, m, b in row.global_batches],
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    preset = get_preset(args.model_preset)
    kernels = mp.Kernels(args.attention, fused_swiglu=True, fused_norm=True)
    rows = mp.plan(preset, args.vocab_size, gpus=args.gpus, gpu_memory_gib=args.gpu_memory,
                   seq_length=args.seq_length, micro_batch=args.micro_batch_size,
                   precision=mp.PRECISIONS[args.precision], kernels=kernels,
                   overhead_gib=args.overhead, gpus_per_node=args.gpus_per_node,
                   sequence_parallel=args.sequence_parallel)
    if args.global_batch_size:
        rows = [r for r in rows
                if args.global_batch_size % (args.micro_batch_size * r.estimate.layout.dp) == 0]
    shown = rows if args.all else [r for r in rows if r.fits]
    if args.json:
        print(json.dumps([row_dict(r) for r in shown], indent=1))
        return 0 if any(r.fits for r in rows) else 1
    total = mp.total_parameters(preset, args.vocab_size)
    print(f"{args.model_preset}: {total / 1e9:.2f}B parameters (vocab {args.vocab_size}), "
          f"{args.gpus} GPUs x {args.gpu_memory:g} GiB, seq {args.seq_length}, "
          f"micro-batch {args.micro_batch_size}, {args.precision}, {args.attention} attention, "
          f"{args.overhead:g} GiB reserved")
    header = (f"{'layout':<14}{'recompute':<11}{'dist-opt':<9}{'weights':>8}{'grads':>8}"
              f"{'optim':>8}{'activ':>8}{'transient':>10}{'total':>8}  fits  global batch (micro-batches, bubble)")
    print(header)
    for row in shown:
        est = row.estimate
        lay = est.layout
        batches = ", ".join(
            f"{g} ({m}{f', {b:.0%}' if lay.pp > 1 else ''})" for g, m, b in row.global_batches[:4]
            if not args.global_batch_size or g == args.global_batch_size
        ) if not args.global_batch_size else (
            f"{args.global_batch_size} ({args.global_batch_size // (args.micro_batch_size * lay.dp)})")
        print(f"{lay.describe():<14}{lay.recompute or '-':<11}{'yes' if lay.distributed_optimizer else 'no':<9}"
              f"{gib(est.weights):8.1f}{gib(est.grads):8.1f}{gib(est.optimizer):8.1f}"
              f"{gib(est.activations):8.1f}{gib(est.transient):10.1f}{gib(est.total):8.1f}  "
              f"{'yes ' if row.fits else 'no  '}  {batches}")
    if not any(r.fits for r in rows):
        print("no layout fits: add GPUs, shorten the sequence or lower the micro-batch size")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
