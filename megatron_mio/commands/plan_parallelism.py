"""Recommend how to spread MIO's training over a cluster: the fastest TP/PP/DP layout that fits.

    mio-plan-parallelism --model-preset yi-6b --gpus 128 --gpu-memory 80 --seq-length 2800

prints the recommended layout with its reason and its sbatch line, the one reason each
neighbouring layout loses (memory, pipeline bubble, TP across nodes, ...), and the fastest
layouts that fit, by predicted tokens/s per GPU.  --tp/--pp/--vp/--recompute evaluate one given
layout instead.  --calibrate METRICS.jsonl fits the model's constants to a short run first.

Memory: megatron_mio/planner/memory.py (checked against real allocations by the test suite).
Step time: megatron_mio/planner/step_time.py and docs/planner.md (every constant is a flag below).
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import asdict, replace

from megatron_mio.cli import UsageError, make_parser, quiet_libraries, run

PROG = "plan_parallelism"
DEFAULT_PACKS_PER_GPU = 16  # MIO's stage configs: global batch = the mixture's 16 packs x GPUs
RECOMPUTE_CHOICES = ("none", "selective", "full")
# Flag defaults of the step-time model, mirrored from planner.step_time.ClusterConstants (kept
# here so that --help imports nothing); tests/test_plan_parallelism.py asserts they agree.
CONSTANT_DEFAULTS = {"achieved_tflops": 400.0, "intra_node_gbps": 300.0, "inter_node_gbps": 40.0,
                     "tp_overlap": 0.0, "dp_overlap": 1.0, "step_overhead_ms": 0.0}


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(PROG, __doc__)
    g = parser.add_argument_group("model and batch")
    g.add_argument("--model-preset", default="yi-6b", help="yi-6b, small or tiny (megatron_mio/model/presets.py)")
    g.add_argument("--vocab-size", type=int, default=None,
                   help="before padding; default: the MIO vocabulary on Yi (76,292)")
    g.add_argument("--make-vocab-size-divisible-by", type=int, default=128)
    g.add_argument("--seq-length", type=int, default=2800)
    g.add_argument("--micro-batch-size", type=int, default=1)
    g.add_argument("--global-batch-size", type=int, default=None,
                   help=f"default: {DEFAULT_PACKS_PER_GPU} packs per GPU, as MIO's stage configs")
    g.add_argument("--documents-per-pack", type=float, default=1.0,
                   help="equal-length documents per pack for the attention FLOPs (1: one document "
                        "fills the pack, the most attention work); --calibrate measures it")
    g.add_argument("--precision", default="bf16", choices=("bf16", "fp32"))
    g.add_argument("--attention", default="flash", choices=("flash", "dense"),
                   help="flash: te/torch backends on GPU; dense: the local backend's s x s mask")

    g = parser.add_argument_group("cluster")
    g.add_argument("--gpus", type=int, required=True, help="total GPUs of the job")
    g.add_argument("--gpus-per-node", type=int, default=8)
    g.add_argument("--gpu-memory", type=float, default=80.0, help="GiB per GPU")
    g.add_argument("--overhead", type=float, default=4.0,
                   help="GiB reserved per GPU for the CUDA context, NCCL and fragmentation")
    g.add_argument("--sequence-parallel", action="store_true")
    g.add_argument("--no-distributed-optimizer", dest="distributed_optimizer", action="store_false",
                   help="plan for a plain optimizer (the stage configs use the distributed one)")

    g = parser.add_argument_group("step-time model (docs/planner.md; --calibrate fits them)")
    d = CONSTANT_DEFAULTS
    g.add_argument("--achieved-tflops", type=float, default=d["achieved_tflops"],
                   help="model TFLOP/s per GPU while computing (default %(default)s: ~40%% of an H100's bf16 peak)")
    g.add_argument("--intra-node-gbps", type=float, default=d["intra_node_gbps"],
                   help="all-reduce bus bandwidth inside a node, GB/s (default %(default)s: NVLink)")
    g.add_argument("--inter-node-gbps", type=float, default=d["inter_node_gbps"],
                   help="bandwidth per GPU across nodes, GB/s (default %(default)s: 400 Gb/s InfiniBand)")
    g.add_argument("--tp-overlap", type=float, default=d["tp_overlap"],
                   help="part of the TP all-reduces hidden behind compute, 0-1 (default %(default)s)")
    g.add_argument("--dp-overlap", type=float, default=d["dp_overlap"],
                   help="part of the DP gradient/parameter traffic --overlap-grad-reduce hides, "
                        "0-1, at most one micro-batch's compute (default %(default)s)")
    g.add_argument("--step-overhead-ms", type=float, default=d["step_overhead_ms"],
                   help="per step, not modelled: data wait, optimizer step (default %(default)s)")

    g = parser.add_argument_group("one layout (any of these: evaluate it instead of searching)")
    g.add_argument("--tp", "--tensor-model-parallel-size", dest="tp", type=int, default=None)
    g.add_argument("--pp", "--pipeline-model-parallel-size", dest="pp", type=int, default=None)
    g.add_argument("--vp", type=int, default=None, help="virtual pipeline stages per rank (interleaved 1F1B)")
    g.add_argument("--num-layers-per-virtual-pipeline-stage", type=int, default=None,
                   help="the trainer's way to say --vp: layers / (PP x this)")
    g.add_argument("--recompute", "--recompute-granularity", dest="recompute", default=None,
                   choices=RECOMPUTE_CHOICES)

    g = parser.add_argument_group("calibration")
    g.add_argument("--calibrate", metavar="METRICS.jsonl", default=None,
                   help="fit the step-time constants to a short run's --metrics-file first")
    g.add_argument("--calibrate-layout", default=None, metavar='"TP2 PP2 VP2 full"',
                   help="the layout that run used, for a metrics file older than the layout fields "
                        "(default: the records' layout, else TP1 PP1); an error where the records disagree")
    g.add_argument("--calibrate-gpus", type=int, default=None, metavar="N",
                   help="GPUs of that run, likewise (default: the records' world_size, else --gpus)")

    g = parser.add_argument_group("output")
    g.add_argument("--top", type=int, default=8, help="fitting layouts listed (default %(default)s)")
    g.add_argument("--all", action="store_true", help="also list the layouts that do not fit")
    g.add_argument("--json", action="store_true", help="machine-readable output")
    g.add_argument("--launch-script", default="examples/pretrain_stage1.sh",
                   help="the stage script of the printed sbatch line")
    return parser


# ------------------------------------------------------------------------------------ checks


def check_args(args: argparse.Namespace) -> None:
    """Every input mistake as one line naming the flag (UsageError: exit status 2)."""
    positive = {"--gpus": args.gpus, "--gpus-per-node": args.gpus_per_node, "--seq-length": args.seq_length,
                "--micro-batch-size": args.micro_batch_size, "--top": args.top,
                "--make-vocab-size-divisible-by": args.make_vocab_size_divisible_by,
                "--vocab-size": args.vocab_size, "--global-batch-size": args.global_batch_size,
                "--tp": args.tp, "--pp": args.pp, "--vp": args.vp, "--calibrate-gpus": args.calibrate_gpus,
                "--num-layers-per-virtual-pipeline-stage": args.num_layers_per_virtual_pipeline_stage,
                "--gpu-memory": args.gpu_memory, "--achieved-tflops": args.achieved_tflops,
                "--intra-node-gbps": args.intra_node_gbps, "--inter-node-gbps": args.inter_node_gbps}
    for flag, value in positive.items():
        if value is not None and value <= 0:
            raise UsageError(f"{flag} must be positive, not {value:g}")
    for flag, value in {"--tp-overlap": args.tp_overlap, "--dp-overlap": args.dp_overlap}.items():
        if not 0 <= value <= 1:
            raise UsageError(f"{flag} is a fraction between 0 and 1, not {value:g}")
    if args.overhead < 0 or args.step_overhead_ms < 0:
        raise UsageError("--overhead and --step-overhead-ms cannot be negative")
    if args.overhead >= args.gpu_memory:
        raise UsageError(f"--overhead {args.overhead:g} GiB leaves nothing of --gpu-memory {args.gpu_memory:g} GiB")
    if not 1 <= args.documents_per_pack <= args.seq_length:
        raise UsageError(f"--documents-per-pack must be between 1 and --seq-length, not {args.documents_per_pack:g}")
    if args.global_batch_size and args.global_batch_size % args.micro_batch_size:
        raise UsageError(f"--global-batch-size {args.global_batch_size} is not a multiple of "
                         f"--micro-batch-size {args.micro_batch_size}")
    if args.gpus > args.gpus_per_node and args.gpus % args.gpus_per_node:
        raise UsageError(f"--gpus {args.gpus} is not a whole number of nodes of --gpus-per-node {args.gpus_per_node}")
    if args.vp and args.num_layers_per_virtual_pipeline_stage:
        raise UsageError("give --vp or --num-layers-per-virtual-pipeline-stage, not both")


def parse_layout_words(text: str, flag: str) -> dict:
    """``"TP2 PP2 VP2 full"`` (any order, commas allowed) -> the Layout keyword arguments it says
    (``tp``, ``pp``, ``vpp``, ``dp``, ``recompute``); ``VP1`` and ``none`` say "not used": None."""
    found = {}
    for word in re.split(r"[\s,]+", text.strip()):
        match = re.fullmatch(r"(tp|pp|vpp|vp|dp)(\d+)", word, re.IGNORECASE)
        if match and int(match[2]) > 0:
            key = {"vp": "vpp"}.get(match[1].lower(), match[1].lower())
            found[key] = None if key == "vpp" and int(match[2]) == 1 else int(match[2])
        elif word.lower() in ("full", "selective", "none"):
            found["recompute"] = None if word.lower() == "none" else word.lower()
        elif word and word.lower() != "recompute":
            raise UsageError(f'{flag} {text!r}: cannot read {word!r}; write it like "TP2 PP2 VP2 full"')
    return found


# ------------------------------------------------------------------------------------ planning


def build_job(args: argparse.Namespace):
    from megatron_mio.model.presets import PRESETS
    from megatron_mio.planner.memory import PRECISIONS, Kernels
    from megatron_mio.planner.recommend import Job
    from megatron_mio.tokenizer.vocab import MIO_VOCAB_SIZE_FOR_YI

    if args.model_preset not in PRESETS:
        raise UsageError(f"--model-preset {args.model_preset!r}: choose from {', '.join(sorted(PRESETS))}")
    return Job(preset=PRESETS[args.model_preset], vocab_size=args.vocab_size or MIO_VOCAB_SIZE_FOR_YI,
               vocab_divisible_by=args.make_vocab_size_divisible_by, gpus=args.gpus,
               gpus_per_node=args.gpus_per_node, gpu_memory_gib=args.gpu_memory, overhead_gib=args.overhead,
               seq_length=args.seq_length, micro_batch=args.micro_batch_size,
               global_batch=args.global_batch_size or DEFAULT_PACKS_PER_GPU * args.gpus * args.micro_batch_size,
               documents_per_pack=args.documents_per_pack, precision=PRECISIONS[args.precision],
               kernels=Kernels(args.attention, fused_swiglu=True, fused_norm=True),
               sequence_parallel=args.sequence_parallel, distributed_optimizer=args.distributed_optimizer)


def constants_from(args: argparse.Namespace):
    from megatron_mio.planner.step_time import ClusterConstants

    return ClusterConstants(**{name: getattr(args, name) for name in CONSTANT_DEFAULTS})


def given_layout(args: argparse.Namespace, job):
    """The layout of --tp/--pp/--vp/--recompute, or None when none of them is given."""
    from megatron_mio.planner.memory import Layout

    if all(v is None for v in (args.tp, args.pp, args.vp, args.recompute, args.num_layers_per_virtual_pipeline_stage)):
        return None
    tp, pp = args.tp or 1, args.pp or 1
    if job.gpus % (tp * pp):
        raise UsageError(f"--tp {tp} x --pp {pp} does not divide --gpus {job.gpus}")
    vpp = args.vp
    if args.num_layers_per_virtual_pipeline_stage:
        per_rank = job.preset.num_layers // pp
        if per_rank % args.num_layers_per_virtual_pipeline_stage:
            raise UsageError(f"--num-layers-per-virtual-pipeline-stage {args.num_layers_per_virtual_pipeline_stage} "
                             f"does not divide the {per_rank} layers per pipeline rank")
        vpp = per_rank // args.num_layers_per_virtual_pipeline_stage
    if vpp and pp == 1:
        raise UsageError("--vp needs --pp > 1 (interleaving splits each pipeline rank's layers)")
    return Layout(tp, pp, job.gpus // (tp * pp), vpp=vpp if vpp and vpp > 1 else None,
                  sequence_parallel=job.sequence_parallel and tp > 1,
                  distributed_optimizer=job.distributed_optimizer,
                  recompute=None if args.recompute in (None, "none") else args.recompute)


def run_calibration(args: argparse.Namespace, job, constants):
    """The calibration, and where its run's layout came from (for the output)."""
    from megatron_mio.planner import calibration

    said = layout_flags(args)  # a mistake in the flags is named before the file is read
    try:
        metrics = calibration.read_metrics(args.calibrate)
        recorded = calibration.recorded_layout(metrics)
        layout = calibration_layout(said, args, job, metrics, recorded)
        run_ = calibration.measured_run(metrics.records, layout)
        return calibration.calibrate(job, run_, constants), layout_source(said, recorded)
    except calibration.MetricsFileError as error:
        raise UsageError(str(error)) from None


def layout_flags(args: argparse.Namespace) -> dict:
    """What --calibrate-layout / --calibrate-gpus say, as record field -> (the flag, its value)."""
    from megatron_mio.planner import calibration as c

    said = {}
    if args.calibrate_layout is not None:
        fields = {"tp": c.TP, "pp": c.PP, "vpp": c.VPP, "dp": c.DP, "recompute": c.RECOMPUTE}
        for key, value in parse_layout_words(args.calibrate_layout, "--calibrate-layout").items():
            said[fields[key]] = (f"--calibrate-layout {args.calibrate_layout!r}", value)
    if args.calibrate_gpus is not None:
        said[c.WORLD] = (f"--calibrate-gpus {args.calibrate_gpus}", args.calibrate_gpus)
    return said


def calibration_layout(said: dict, args: argparse.Namespace, job, metrics, recorded: dict):
    """The calibration run's layout: the records' fields, completed (for a file older than them)
    by the flags (``said``, :func:`layout_flags`), which must agree with the records where both say."""
    from megatron_mio.planner import calibration as c
    from megatron_mio.planner.memory import Layout

    for field, (flag, value) in said.items():
        if field in recorded and recorded[field] != value:
            raise UsageError(f"{flag} disagrees with {metrics.path}: its records have {field} "
                             f"{shown(recorded[field])}, the flag says {shown(value)}; drop the flag "
                             "(the records carry the run's layout) or give the metrics file of that run")
    fields = {**{field: value for field, (_, value) in said.items()}, **recorded}
    tp, pp, dp = fields.get(c.TP, 1), fields.get(c.PP, 1), fields.get(c.DP)
    gpus = fields.get(c.WORLD) or (tp * pp * dp if dp else args.gpus)
    if dp is None and gpus % (tp * pp):
        raise UsageError(f"the calibration run's TP{tp} x PP{pp} does not divide its {gpus} GPUs "
                         "(set --calibrate-gpus to the run's GPU count)")
    if dp is not None and tp * pp * dp != gpus:
        raise UsageError(f"the calibration run's TP{tp} x PP{pp} x DP{dp} is not its {gpus} GPUs "
                         "(check --calibrate-layout and --calibrate-gpus)")
    return Layout(tp, pp, dp or gpus // (tp * pp), vpp=fields.get(c.VPP),
                  sequence_parallel=job.sequence_parallel and tp > 1,
                  distributed_optimizer=job.distributed_optimizer, recompute=fields.get(c.RECOMPUTE))


# Where the calibration run's layout came from (--json's run_layout_from) and how the line says it.
LAYOUT_SOURCES = {"records": "layout from its records",
                  "flags": "layout from --calibrate-layout/--calibrate-gpus: the records carry none",
                  "default": "layout assumed TP1 PP1 on --gpus: the records carry none, give --calibrate-layout"}


def layout_source(said: dict, recorded: dict) -> str:
    return "records" if recorded else "flags" if said else "default"


def shown(value) -> str:
    return "none" if value is None else str(value)


# ------------------------------------------------------------------------------------ output


def name_of(layout) -> str:
    return layout.describe() + (f" recompute={layout.recompute}" if layout.recompute else "")


def evaluation_dict(e) -> dict:
    from megatron_mio.planner.memory import GIB

    out = {"layout": name_of(e.layout), "tp": e.layout.tp, "pp": e.layout.pp, "dp": e.layout.dp,
           "vp": e.layout.vpp, "recompute": e.layout.recompute, "sequence_parallel": e.layout.sequence_parallel,
           "distributed_optimizer": e.layout.distributed_optimizer, "fits": e.fits, "problem": e.problem}
    if e.memory:
        m = e.memory
        out["memory_gib"] = {"weights": m.weights / GIB, "grads": m.grads / GIB, "optimizer": m.optimizer / GIB,
                             "activations": m.activations / GIB, "transient": m.transient / GIB,
                             "total": m.total / GIB}
    if e.step:
        s = e.step
        out.update(microbatches=s.microbatches, step_seconds=s.total, bubble_fraction=s.bubble_fraction,
                   tokens_per_second_per_gpu=s.tokens_per_second_per_gpu(),
                   model_tflops_per_gpu=s.model_tflops_per_gpu(),
                   step_terms_seconds={**s.terms(), "dp_hidden": s.dp_hidden})
    return out


def calibration_dict(cal, source: str) -> dict:
    return {"run_layout": name_of(cal.run.layout), "run_layout_from": source, "records": cal.run.records,
            "measured_step_ms": cal.run.step_ms, "time_split_ms": cal.run.split_ms,
            "documents_per_pack": cal.documents_per_pack,
            "predicted_step_ms_before": cal.before.total * 1000, "predicted_step_ms_after": cal.after.total * 1000,
            "constants": asdict(cal.constants)}


def table(evaluations, job) -> list[str]:
    from megatron_mio.planner.memory import GIB

    titles = (f"{'layout':<34}{'micro-batches':>14}{'memory GiB':>11}{'bubble':>7}{'step s':>8}"
              f"{'tokens/s/GPU':>13}{'TFLOP/s/GPU':>12}")
    lines = [titles]
    for e in evaluations:
        if e.step is None:
            lines.append(f"{name_of(e.layout):<34}  {e.problem}")
            continue
        s = e.step
        lines.append(f"{name_of(e.layout):<34}{s.microbatches:>14}{e.memory.total / GIB:>11.1f}"
                     f"{s.bubble_fraction:>7.0%}{s.total:>8.3g}{s.tokens_per_second_per_gpu():>13,.0f}"
                     f"{s.model_tflops_per_gpu():>12.3g}" + ("" if e.fits else "  does not fit"))
    return lines


def parameters_text(count: int) -> str:
    return f"{count / 1e9:.2f}B" if count >= 1e9 else f"{count / 1e6:.2f}M"


def header(args, job, constants) -> list[str]:
    from megatron_mio.planner.memory import total_parameters

    nodes = -(-job.gpus // job.gpus_per_node)
    documents = f"{job.documents_per_pack:.3g} document{'s' if job.documents_per_pack != 1 else ''} per pack"
    shape = (f"{args.model_preset}: {parameters_text(total_parameters(job.preset, job.vocab_size))} parameters "
             f"(vocab {job.vocab_size:,}), {job.gpus} GPUs ({nodes} node{'s' if nodes > 1 else ''} x "
             f"{min(job.gpus, job.gpus_per_node)}) x {job.gpu_memory_gib:g} GiB ({job.overhead_gib:g} reserved), "
             f"seq {job.seq_length}, micro-batch {job.micro_batch}, global batch {job.global_batch}, "
             f"{args.precision}, {args.attention} attention, {documents}")
    model = (f"step-time model: {constants.achieved_tflops:.4g} TFLOP/s/GPU achieved, "
             f"{constants.intra_node_gbps:.4g} GB/s in a node, {constants.inter_node_gbps:.4g} GB/s across nodes, "
             f"TP overlap {constants.tp_overlap:.0%}, DP overlap {constants.dp_overlap:.0%}, "
             f"{constants.step_overhead_ms:.4g} ms overhead per step")
    return [shape, model]


def calibration_lines(cal, source: str) -> list[str]:
    split = ", ".join(f"{k} {v:.1f} ms" for k, v in cal.run.split_ms.items()) or "no time split in the records"
    line = (f"calibrated on {cal.run.records} records of a {name_of(cal.run.layout)} run ({LAYOUT_SOURCES[source]}; "
            f"{split}): "
            f"measured {cal.run.step_ms:.1f} ms per step, predicted {cal.before.total * 1000:.1f} ms "
            f"before and {cal.after.total * 1000:.1f} ms after; the data makes "
            f"{cal.documents_per_pack:.2f} documents per pack")
    return [line]


def report_one(args, job, constants, layout) -> int:
    from megatron_mio.planner import recommend

    judged = recommend.evaluate(job, layout, constants)
    fitting, _ = recommend.rank(job, constants)
    best = fitting[0] if fitting else None
    if args.json:
        print(json.dumps({"evaluated": evaluation_dict(judged),
                          "recommended": evaluation_dict(best) if best else None,
                          "launch": recommend.launch_command(layout, job, args.launch_script)}, indent=1))
        return 0 if judged.fits else 1
    print("\n".join(table([judged], job)))
    if judged.step:
        share = {k: v / judged.step.total for k, v in judged.step.terms().items() if v}
        print("step: " + ", ".join(f"{k} {v:.0%}" for k, v in share.items()))
    if not judged.fits:
        print(f"{name_of(layout)} cannot run: {judged.problem}")
    elif best and best.layout != layout:
        print(f"against the recommended {name_of(best.layout)}: {recommend.loss_reason(judged, best)}")
    else:
        print(f"{name_of(layout)} is the recommended layout")
    if judged.fits:
        print(recommend.launch_command(layout, job, args.launch_script))
    return 0 if judged.fits else 1


def report_plan(args, job, constants, calibration_info) -> int:
    from megatron_mio.planner import recommend
    from megatron_mio.planner.memory import GIB

    fitting, rejected = recommend.rank(job, constants)
    if args.json:
        best = fitting[0] if fitting else None
        out = {"recommended": evaluation_dict(best) if best else None,
               "reason": recommend.recommendation_reason(best, job) if best else None,
               "launch": recommend.launch_command(best.layout, job, args.launch_script) if best else None,
               "neighbours": neighbour_reasons(job, constants, best) if best else [],
               "layouts": [evaluation_dict(e) for e in fitting[:args.top]],
               "rejected": [evaluation_dict(e) for e in rejected] if args.all else [],
               "constants": asdict(constants), "calibration": calibration_info}
        print(json.dumps(out, indent=1))
        return 0 if best else 1
    if not fitting:
        measured = [e for e in rejected if e.memory]
        if measured:
            least = min(measured, key=lambda e: e.memory.total)
            print(f"no layout fits in memory: the smallest, {name_of(least.layout)}, needs "
                  f"{least.memory.total / GIB:.1f} GiB of the {job.gpu_memory_gib - job.overhead_gib:g} GiB "
                  "left after the reserve")
        else:
            print(f"no layout splits this model and batch: {rejected[0].problem if rejected else 'no candidates'}")
        print("add GPUs or memory per GPU, shorten --seq-length or lower --micro-batch-size")
        return 1
    best = fitting[0]
    print(f"recommended: {name_of(best.layout)}: {recommend.recommendation_reason(best, job)}")
    print(f"  {recommend.launch_command(best.layout, job, args.launch_script)}")
    print("its neighbours:")
    for item in neighbour_reasons(job, constants, best):
        print(f"  {item['layout']:<34}{item['reason']}")
    shown = fitting[:args.top] + (rejected if args.all else [])
    print(f"fastest {min(args.top, len(fitting))} of the {len(fitting)} layouts that fit:")
    print("\n".join(table(shown, job)))
    return 0


def neighbour_reasons(job, constants, best) -> list[dict]:
    from megatron_mio.planner import recommend

    recomputes = (None, "selective", "full") if job.kernels.attention == "dense" else (None, "full")
    items = []
    for layout in recommend.neighbours(best.layout, job.gpus, recomputes):
        judged = recommend.evaluate(job, layout, constants)
        items.append({"layout": name_of(layout), "reason": recommend.loss_reason(judged, best)})
    return items


def plan(args: argparse.Namespace) -> int:
    check_args(args)
    job = build_job(args)
    constants = constants_from(args)
    calibration_info = None
    if args.calibrate:
        cal, source = run_calibration(args, job, constants)
        constants = cal.constants
        job = replace(job, documents_per_pack=cal.documents_per_pack)
        calibration_info = calibration_dict(cal, source)
        if not args.json:
            print("\n".join(calibration_lines(cal, source)))
    layout = given_layout(args, job)
    if layout is not None:
        from megatron_mio.planner.recommend import layout_problem

        problem = layout_problem(job, layout)
        if problem:
            raise UsageError(f"--tp {layout.tp} --pp {layout.pp}{f' --vp {layout.vpp}' if layout.vpp else ''}: {problem}")
    if not args.json:
        print("\n".join(header(args, job, constants)))
    if layout is not None:
        return report_one(args, job, constants, layout)
    return report_plan(args, job, constants, calibration_info)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_libraries(args.verbose)
    return run(PROG, lambda: plan(args))


if __name__ == "__main__":
    raise SystemExit(main())
