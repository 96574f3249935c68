#!/usr/bin/env python
"""The planner's pipeline-bubble term against measured 1F1B steps (PP=2 on 2 CPU ranks, gloo).

    OMP_NUM_THREADS=1 python bench/bench_plan_bubble.py [--preset small] [--seq-length 256] [--vp 2]

Builds one MIO model split over two pipeline stages with megatron-core (as the trainer does) and
times megatron-core's forward-backward schedule for m = 2, 4 and 8 micro-batches per step,
interleaving the m values across repeats so that all three see the same machine load, and
keeps each m's fastest repeat.  Each step is timed as the trainer's ``--timing-log-level 2``
times it: the whole schedule, and each rank's own forward and backward compute through
megatron-core's per-micro-batch timers (``megatron_mio.training.timers``); the busiest rank's
compute ``C(m)`` is the step without its bubble.

The planner (``megatron_mio.planner.step_time``) says a step takes its stage compute plus a
bubble of ``(PP-1)/VP`` micro-batches' compute: ``T(m) = C(m) / (1 - bubble_fraction)``.  The
check compares, within the same run, that prediction with each measured step and the predicted
ratios T(m)/T(2) with the measured ones; passes when both are within ``--tolerance``.

It also prints what the planner predicts with one constant compute time per micro-batch (its
``predict``) and the measured compute per micro-batch against m=2's: on this CPU two ranks that
compute at once slow each other (shared caches and memory bandwidth; they overlap more as m
grows, and a fill or drain runs one rank alone), which no GPU cluster shares, so the bubble is
checked against the compute measured in the same step.  With ``--vp 2`` the interleaved schedule
is measured as well (two virtual stages per rank).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

MICROBATCHES = (2, 4, 8)
PP = 2


def worker(out_dir: str, preset_name: str, seq: int, vocab: int, repeats: int, vp: int | None, nice: int) -> None:
    """One rank: build the stage(s), time the schedule, rank 0 writes each m's fastest step."""
    if nice:
        os.nice(nice)  # negative: needs root or CAP_SYS_NICE
    import torch
    from megatron.core import parallel_state, tensor_parallel
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from megatron_mio import platform
    from megatron_mio.model.attention import attention_kwargs
    from megatron_mio.model.gpt import build_gpt_model, build_transformer_config
    from megatron_mio.model.model_config import ParallelLayout
    from megatron_mio.model.presets import get_preset
    from megatron_mio.training.timers import IntervalTimers

    platform.init_distributed(platform.setup(True))
    parallel_state.initialize_model_parallel(pipeline_model_parallel_size=PP,
                                             virtual_pipeline_model_parallel_size=vp)
    tensor_parallel.model_parallel_cuda_manual_seed(1234)
    preset = get_preset(preset_name)
    config = build_transformer_config(preset, ParallelLayout(pipeline_model_parallel_size=PP,
                                                             virtual_pipeline_model_parallel_size=vp))
    chunks = []
    for index in range(vp or 1):
        vp_stage = index if vp else None
        chunks.append(build_gpt_model(
            config, preset, vocab, attention_backend="local",
            pre_process=parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage),
            post_process=parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage),
            vp_stage=vp_stage))
    tokens = torch.randint(0, vocab, (1, seq))
    quarter = seq // 4  # four documents per pack
    cu_seqlens = torch.tensor([[0, quarter, 2 * quarter, 3 * quarter, seq]], dtype=torch.int32)
    position_ids = torch.arange(quarter).repeat(4).unsqueeze(0)
    inputs = {"position_ids": position_ids, **attention_kwargs(cu_seqlens, seq, "local")}

    def forward_step(data_iterator, model):
        next(data_iterator)
        vp_stage = getattr(model, "vp_stage", None)
        first = parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage)
        last = parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage)
        output = model(input_ids=tokens if first else None, labels=tokens if last else None, **inputs)
        return output, lambda out: (out.float().mean(), {})

    schedule = get_forward_backward_func()
    timers = IntervalTimers(torch.device("cpu"), level=2)  # the trainer's --timing-log-level 2
    world = torch.distributed.get_world_size()

    def step(m: int) -> list[list[float]]:
        """[forward-backward ms, stage compute ms] of every rank for one step of m micro-batches."""
        for chunk in chunks:
            chunk.zero_grad(set_to_none=True)
        iterators = [iter(range(m)) for _ in chunks] if vp else iter(range(m))
        torch.distributed.barrier()
        timers.take()
        with timers.region("forward_backward"), timers.stage_compute(config):
            schedule(forward_step_func=forward_step, data_iterator=iterators, model=chunks if vp else chunks[0],
                     num_microbatches=m, seq_length=seq, micro_batch_size=1, forward_only=False)
        split = timers.take()
        mine = torch.tensor([split["forward_backward"], split["stage_compute"]], dtype=torch.float64)
        every = [torch.zeros_like(mine) for _ in range(world)]
        torch.distributed.all_gather(every, mine)
        return [rank.tolist() for rank in every]

    step(MICROBATCHES[0])  # warm-up: allocator, first p2p
    steps = {m: [] for m in MICROBATCHES}
    for repeat in range(repeats):
        order = MICROBATCHES if repeat % 2 == 0 else tuple(reversed(MICROBATCHES))
        for m in order:
            ranks = step(m)
            steps[m].append({"step_ms": max(r[0] for r in ranks), "compute_ms": max(r[1] for r in ranks)})
    if torch.distributed.get_rank() == 0:
        with open(os.path.join(out_dir, f"times_vp{vp or 1}.json"), "w") as handle:
            json.dump({str(m): min(s, key=lambda one: one["step_ms"]) for m, s in steps.items()}, handle)
    torch.distributed.destroy_process_group()


def predicted_seconds(preset_name: str, seq: int, vocab: int, m: int, vp: int | None) -> float:
    from megatron_mio.model.presets import get_preset
    from megatron_mio.planner.memory import Layout
    from megatron_mio.planner.step_time import ClusterConstants, Workload, predict

    work = Workload(get_preset(preset_name), vocab, seq, micro_batch=1, global_batch=m, documents_per_pack=4,
                    activation_bytes=4, weight_bytes=4, grad_bytes=4)
    return predict(work, Layout(1, PP, 1, vpp=vp), ClusterConstants()).total


def report(measured: dict[int, dict], args, vp: int | None) -> bool:
    """The table for one schedule; True when every prediction is within the tolerance."""
    from megatron_mio.planner.step_time import bubble_fraction

    base = MICROBATCHES[0]
    step = {m: measured[m]["step_ms"] for m in MICROBATCHES}
    compute = {m: measured[m]["compute_ms"] for m in MICROBATCHES}
    predicted = {m: compute[m] / (1 - bubble_fraction(PP, m, vp or 1)) for m in MICROBATCHES}
    constant = {m: predicted_seconds(args.preset, args.seq_length, args.vocab_size, m, vp) for m in MICROBATCHES}
    print("| m | step (ms) | stage compute (ms) | predicted step (ms) | predicted / measured "
          "| measured ratio | predicted ratio | constant-compute ratio | compute per micro-batch vs m=2 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    ok = True
    for m in MICROBATCHES:
        ratio_measured, ratio_predicted = step[m] / step[base], predicted[m] / predicted[base]
        within_step = abs(predicted[m] / step[m] - 1) <= args.tolerance
        within_ratio = abs(ratio_predicted / ratio_measured - 1) <= args.tolerance
        ok &= within_step and within_ratio
        print(f"| {m} | {step[m]:.1f} | {compute[m]:.1f} | {predicted[m]:.1f} | {predicted[m] / step[m]:.3f}"
              f"{'' if within_step else ' (outside)'} | {ratio_measured:.3f} | {ratio_predicted:.3f}"
              f"{'' if within_ratio else ' (outside)'} | {constant[m] / constant[base]:.3f} | "
              f"{compute[m] / m / (compute[base] / base):.3f} |")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--seq-length", type=int, default=256)
    parser.add_argument("--vocab-size", type=int, default=512, help="padded; small keeps the stages even")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--vp", type=int, default=None, help="also measure the interleaved schedule")
    parser.add_argument("--tolerance", type=float, default=0.10, help="relative, on each ratio")
    parser.add_argument("--nice", type=int, default=0,
                        help="scheduling priority change for the two ranks; on a shared machine -10 "
                             "keeps them running at once, which a pipeline needs (negative: root only)")
    parser.add_argument("--worker", nargs=2, metavar=("OUT_DIR", "VP"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        vp = int(args.worker[1]) or None
        worker(args.worker[0], args.preset, args.seq_length, args.vocab_size, args.repeats, vp, args.nice)
        return 0

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.distributed import run_torchrun

    ok = True
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    for vp in (None, args.vp) if args.vp else (None,):
        with tempfile.TemporaryDirectory() as out:
            began = time.time()
            run_torchrun(Path(__file__).resolve(), 2,
                         ["--preset", args.preset, "--seq-length", args.seq_length, "--vocab-size", args.vocab_size,
                          "--repeats", args.repeats, "--nice", args.nice, "--worker", out, vp or 0], timeout=1800)
            measured = {int(k): v for k, v in json.loads(Path(out, f"times_vp{vp or 1}.json").read_text()).items()}
        print(f"PP={PP}{f' VP={vp}' if vp else ''}, {args.preset}, seq {args.seq_length}, "
              f"{args.repeats} repeats ({time.time() - began:.0f} s); ratios to m={MICROBATCHES[0]}:")
        ok &= report(measured, args, vp)
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    print(f"{'PASS' if ok else 'FAIL'}: every predicted step and ratio within {args.tolerance:.0%} of the measured one")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
