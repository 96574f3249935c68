#!/usr/bin/env python
"""Calibrate the planner on one real run, then predict the step time of other layouts (CPU).

    python bench/bench_plan_calibration.py [--train-iters 8] [--intra-node-gbps 300]

Runs the real trainer (``python -m megatron_mio.pretrain``, mock data, 2 CPU ranks over gloo) for
TP1 PP1 DP2, TP2 PP1 DP1 and TP1 PP2 DP1 with the same model, sequence and global batch, each
with ``--metrics-file`` and ``--timing-log-level 2``.  The planner is calibrated on the first run only
(megatron_mio.planner.calibration, as ``--calibrate``), then predicts each run's step time; the
table gives measured and predicted times and, for each layout, the ratio to the calibration
run's step (measured vs predicted), all from the same invocation.  The TP bandwidth is not fitted
by a calibration (one run cannot separate it from compute): on gloo it is far below the NVLink
default, so pass ``--intra-node-gbps`` to see its effect.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LAYOUTS = ("TP1 PP1", "TP2 PP1", "TP1 PP2")


def trainer_flags(args, layout: str, metrics: Path) -> list[str]:
    tp, pp = (int(word[2:]) for word in layout.split())
    return ["--use-cpu", "--mock-data", "--model-preset", args.preset, "--vocab-size", str(args.vocab_size),
            "--seq-length", str(args.seq_length), "--micro-batch-size", "1",
            "--global-batch-size", str(args.global_batch_size), "--train-iters", str(args.train_iters),
            "--log-interval", "1", "--lr", "1e-4", "--use-distributed-optimizer", "--timing-log-level", "2",
            "--no-bias-swiglu-fusion", "--no-bias-dropout-fusion",
            "--tensor-model-parallel-size", str(tp), "--pipeline-model-parallel-size", str(pp),
            "--metrics-file", str(metrics)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--vocab-size", type=int, default=300)
    parser.add_argument("--seq-length", type=int, default=256)
    parser.add_argument("--global-batch-size", type=int, default=8)
    parser.add_argument("--train-iters", type=int, default=8)
    parser.add_argument("--intra-node-gbps", type=float, default=None,
                        help="TP/DP bandwidth between the 2 CPU ranks (default: the planner's)")
    args = parser.parse_args()

    from megatron_mio.model.presets import get_preset
    from megatron_mio.planner import calibration
    from megatron_mio.planner.memory import FP32, Layout
    from megatron_mio.planner.recommend import Job
    from megatron_mio.planner.step_time import ClusterConstants, predict
    from tests.distributed import run_torchrun

    constants = ClusterConstants()
    if args.intra_node_gbps:
        constants = replace(constants, intra_node_gbps=args.intra_node_gbps)
    job = Job(get_preset(args.preset), args.vocab_size, 128, gpus=2, gpus_per_node=2, gpu_memory_gib=64,
              overhead_gib=0, seq_length=args.seq_length, micro_batch=1, global_batch=args.global_batch_size,
              documents_per_pack=1.0, precision=FP32)
    runs = {}
    began = time.time()
    with tempfile.TemporaryDirectory() as out:
        for layout in LAYOUTS:
            metrics = Path(out) / f"{layout.replace(' ', '_')}.jsonl"
            run_torchrun("megatron_mio.pretrain", 2, trainer_flags(args, layout, metrics), module=True, timeout=1200)
            tp, pp = (int(word[2:]) for word in layout.split())
            runs[layout] = calibration.measured_run(calibration.read_records(metrics), Layout(tp, pp, 2 // (tp * pp)))
    fitted = calibration.calibrate(job, runs[LAYOUTS[0]], constants)
    job = replace(job, documents_per_pack=fitted.documents_per_pack)
    print(f"{args.preset}, seq {args.seq_length}, global batch {args.global_batch_size}, 2 CPU ranks, "
          f"{args.train_iters} iterations per run ({time.time() - began:.0f} s); calibrated on {LAYOUTS[0]}: "
          f"{fitted.constants.achieved_tflops * 1000:.2f} GFLOP/s achieved, "
          f"{fitted.documents_per_pack:.2f} documents per pack, TP/DP bandwidth {constants.intra_node_gbps:g} GB/s")
    print("| layout | measured step (ms) | predicted, calibrated (ms) | predicted, defaults (ms) "
          "| measured / calibration run | predicted / calibration run |")
    print("| --- | --- | --- | --- | --- | --- |")
    base_measured = runs[LAYOUTS[0]].step_ms
    base_predicted = predict(job.workload(1), runs[LAYOUTS[0]].layout, fitted.constants).total * 1000
    for layout in LAYOUTS:
        run = runs[layout]
        work = job.workload(run.layout.tp)
        calibrated = predict(work, run.layout, fitted.constants).total * 1000
        default = predict(replace(work, documents_per_pack=1.0), run.layout, constants).total * 1000
        print(f"| {run.layout.describe()} | {run.step_ms:.1f} | {calibrated:.1f} | {default:.3f} | "
              f"{run.step_ms / base_measured:.3f} | {calibrated / base_predicted:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
