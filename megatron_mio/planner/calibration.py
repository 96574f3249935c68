"""Fit the step-time model's constants to a short run's ``--metrics-file`` (``--calibrate``).

From the trainer's records (one JSON line per logged iteration; the first is dropped as warm-up
when there are more, and of the rest the median iteration taken), which also say how the run was laid out
(``LAYOUT_FIELDS``; files written before they did need the layout from the command line):

* **documents per pack**: the trainer logs ``tflops_per_gpu`` from its document-causal FLOP count
  and ``tokens_per_second``; their ratio is the model FLOPs per token the data really costs, and
  the attention part of it the query-key pairs per pack, i.e. the equal-length documents per pack
  that make as many pairs.
* **achieved TFLOP/s**: the value at which the model reproduces the busiest pipeline stage's own
  forward and backward time (``--timing-log-level 2``: no bubble, no waits on neighbours, so a
  PP > 1 run's bubble is predicted, not folded into the FLOP rate), else the forward-backward
  time (level 1), else the whole step time.
* **data-parallel bandwidth** (inter- or intra-node, wherever the run's DP group lay): from the
  exposed gradient-reduction time, when the records carry it and the run had DP > 1.
* **step overhead**: the step outside the schedule's modelled work (optimizer, logging, the
  micro-batch fetches), record by record, so that the fitted terms add up to the measured step;
  with no time split, nothing.

The tensor-parallel bandwidth is not separable from compute in one run and keeps its flag value.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

from megatron_mio.model import flops
from megatron_mio.planner.memory import Layout
from megatron_mio.planner.recommend import Job
from megatron_mio.planner.step_time import (
    ClusterConstants,
    StepTime,
    dp_comm_seconds,
    dp_gbps,
    predict,
)

# The trainer's time split of a step (``--timing-log-level``, megatron_mio/training/timers.py):
# milliseconds per iteration, max over ranks, as --metrics-file names them.  Each is optional: a
# calibration uses the ones present.  The trainer's forward-backward includes the exposed
# gradient reduction (megatron-core finalises the gradients inside the schedule); measured_run
# takes it out, so that "forward_backward" here is compute and TP communication only.
TIME_SPLIT_FIELDS = {
    "data_wait": "time_data_wait_ms",
    "forward_backward": "time_forward_backward_ms",
    "grad_reduce": "time_grad_reduce_exposed_ms",
    "optimizer": "time_optimizer_ms",
    "stage_compute": "time_stage_compute_ms",  # --timing-log-level 2
}
REQUIRED_FIELDS = ("elapsed_ms_per_iteration", "tokens_per_second", "tflops_per_gpu", "global_batch_size")
# The run's layout in each record, under Megatron-LM's argument names (the trainer's
# MetricsLogger.layout_fields, megatron_mio/training/metrics.py; the planner does not import the
# trainer).  The sizes are positive integers; the virtual pipeline size and the recompute
# granularity are null when the run did not interleave or recompute.
TP, PP, VPP, DP, WORLD, RECOMPUTE = LAYOUT_FIELDS = (
    "tensor_model_parallel_size", "pipeline_model_parallel_size", "virtual_pipeline_model_parallel_size",
    "data_parallel_size", "world_size", "recompute_granularity")
RECOMPUTE_GRANULARITIES = (None, "selective", "full")


class MetricsFileError(ValueError):
    """A metrics file that cannot calibrate anything (named, with the line when there is one)."""


@dataclass(frozen=True)
class MeasuredRun:
    """What a short run measured, reduced over its records, and the layout it ran."""

    layout: Layout
    step_ms: float
    tokens_per_second: float
    tflops_per_gpu: float
    global_batch: int
    split_ms: dict[str, float]  # keys of TIME_SPLIT_FIELDS present in the records
    records: int


@dataclass(frozen=True)
class Calibration:
    constants: ClusterConstants
    documents_per_pack: float
    run: MeasuredRun
    before: StepTime  # the run's layout predicted with the flags' constants
    after: StepTime  # ... and with the fitted ones


@dataclass(frozen=True)
class MetricsFile:
    """The iteration records of a ``--metrics-file`` and the line each came from."""

    path: Path
    records: list[dict]
    line_numbers: list[int]


def read_records(path: str | Path) -> list[dict]:
    """The iteration records of a ``--metrics-file`` (validation lines skipped)."""
    return read_metrics(path).records


def read_metrics(path: str | Path) -> MetricsFile:
    path = Path(path)
    if not path.is_file():
        raise MetricsFileError(f"--calibrate {path}: no such file (the trainer's --metrics-file)")
    records, line_numbers = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise MetricsFileError(f"{path}:{number}: not a JSON line ({error.msg})") from None
        if isinstance(record, dict) and "elapsed_ms_per_iteration" in record:
            missing = [k for k in REQUIRED_FIELDS if not isinstance(record.get(k), (int, float))]
            if missing:
                raise MetricsFileError(f"{path}:{number}: iteration record without {', '.join(missing)}")
            records.append(record)
            line_numbers.append(number)
    if not records:
        raise MetricsFileError(f"{path}: no iteration records (run the trainer with --metrics-file "
                               "and --log-interval smaller than --train-iters)")
    return MetricsFile(path, records, line_numbers)


def recorded_layout(metrics: MetricsFile) -> dict:
    """The layout fields (``LAYOUT_FIELDS``) the records carry: ``{}`` for a file written before
    they did.  A file whose records ran different layouts (a run resumed with another one appends
    to the same file) cannot calibrate: the error names the lines of each."""
    lines_of: dict[tuple, list[int]] = {}
    for number, record in zip(metrics.line_numbers, metrics.records):
        fields = tuple((key, record[key]) for key in LAYOUT_FIELDS if key in record)
        lines_of.setdefault(fields, []).append(number)
    if len(lines_of) > 1:
        parts = "; ".join(f"lines {line_ranges(lines)}: {describe_fields(dict(fields))}"
                          for fields, lines in lines_of.items())
        raise MetricsFileError(f"{metrics.path}: records of {len(lines_of)} layouts ({parts}); calibrate on one "
                               "run's records (copy its lines to a file of their own)")
    fields = dict(next(iter(lines_of)))
    for key, value in fields.items():
        if key == RECOMPUTE:
            valid = value in RECOMPUTE_GRANULARITIES
        else:
            valid = (isinstance(value, int) and not isinstance(value, bool) and value > 0) or (key == VPP and value is None)
        if not valid:
            raise MetricsFileError(f"{metrics.path}:{metrics.line_numbers[0]}: {key} {value!r} is not a "
                                   f"{'recompute granularity' if key == RECOMPUTE else 'positive integer'}")
    return fields


def describe_fields(fields: dict) -> str:
    """``TP2 PP2 VP2 DP2, 8 GPUs, recompute full`` for the layout fields present."""
    if not fields:
        return "no layout recorded"
    sizes = " ".join(f"{name}{fields[key]}" for name, key in (("TP", TP), ("PP", PP), ("VP", VPP), ("DP", DP))
                     if fields.get(key) is not None)
    parts = [sizes] if sizes else []
    if WORLD in fields:
        parts.append(f"{fields[WORLD]} GPUs")
    if RECOMPUTE in fields:
        parts.append(f"recompute {fields[RECOMPUTE] or 'none'}")
    return ", ".join(parts)


def line_ranges(numbers: list[int]) -> str:
    """``[1, 2, 3, 7]`` -> ``1-3, 7``."""
    spans: list[list[int]] = []
    for number in numbers:
        if spans and number == spans[-1][1] + 1:
            spans[-1][1] = number
        else:
            spans.append([number, number])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def measured_run(records: list[dict], layout: Layout) -> MeasuredRun:
    """The run's median iteration (by step time; the lower of two middles): every figure from that
    one record, so its time split adds up to its step, as medians of the parts would not."""
    timed = records[1:] if len(records) > 1 else records  # the first interval holds warm-up
    by_step = sorted(timed, key=lambda r: float(r["elapsed_ms_per_iteration"]))
    record = by_step[(len(by_step) - 1) // 2]
    present = [name for name, key in TIME_SPLIT_FIELDS.items() if isinstance(record.get(key), (int, float))]
    step_ms = float(record["elapsed_ms_per_iteration"])
    split = modelled_split({name: float(record[TIME_SPLIT_FIELDS[name]]) for name in present}, step_ms, layout.dp)
    return MeasuredRun(layout, step_ms, float(record["tokens_per_second"]), float(record["tflops_per_gpu"]),
                       int(record["global_batch_size"]), split, len(timed))


def modelled_split(raw: dict[str, float], step_ms: float, replicas: int) -> dict[str, float]:
    """One record's time split (ms) in the model's terms.

    The trainer's forward-backward holds the micro-batch fetches (``data_wait``) and the exposed
    gradient reduction, megatron-core's forward timer (``stage_compute``) the fetches too; the
    model counts the reduction as ``dp_exposed`` and the fetches as step overhead, so both come
    out.  The overhead is the whole step outside the schedule's modelled part; with one replica
    (DP=1) it holds the gradient finalisation too (layer-norm and embedding syncs, no DP traffic
    for the model to fit a bandwidth to)."""
    split = dict(raw)
    fetches = raw.get("data_wait", 0.0)
    if "forward_backward" in raw:
        reduction = raw.get("grad_reduce", 0.0)
        split["forward_backward"] = raw["forward_backward"] - reduction - fetches
        split["overhead"] = step_ms - raw["forward_backward"] + fetches + (reduction if replicas == 1 else 0.0)
    if "stage_compute" in raw:
        split["stage_compute"] = raw["stage_compute"] - fetches
    return split


def documents_per_pack(job: Job, run: MeasuredRun) -> float:
    """Equal-length documents per pack that make as many attention pairs as the run's data."""
    preset = job.preset
    work = job.workload(run.layout.tp)
    flops_per_token = run.tflops_per_gpu * 1e12 * run.layout.gpus / run.tokens_per_second
    attention_per_token = flops_per_token / flops.TRAINING_FLOPS_PER_FORWARD - flops.forward_flops_per_token(
        preset, work.padded_vocab)
    pairs = attention_per_token / flops.attention_forward_flops_per_layer(preset, 1.0) / preset.num_layers
    pairs_per_pack = pairs * job.seq_length
    s = job.seq_length
    # A pack of d equal documents makes s (s/d + 1) / 2 pairs: between s (all singletons) and s(s+1)/2.
    pairs_per_pack = min(max(pairs_per_pack, s), s * (s + 1) / 2)
    return s / (2 * pairs_per_pack / s - 1)


def solve_increasing(target: float, f, low: float = 1e-6, high: float = 1e6) -> float:
    """``x`` with ``f(x) = target`` for ``f`` decreasing in ``x`` (bisection on a log scale)."""
    for _ in range(200):
        middle = math.sqrt(low * high)
        if f(middle) > target:
            low = middle
        else:
            high = middle
    return math.sqrt(low * high)


def fit_dp_bandwidth(work, layout: Layout, constants: ClusterConstants, step: StepTime,
                     exposed_s: float) -> ClusterConstants:
    """The DP bandwidth that leaves ``exposed_s`` of the gradient traffic exposed."""
    all_traffic = dp_comm_seconds(work, layout, constants)
    if layout.dp == 1 or exposed_s <= 0 or all_traffic == 0:
        return constants  # nothing exposed: the run says nothing about the bandwidth
    window = (step.compute + step.recompute) / step.microbatches
    overlap = constants.dp_overlap
    needed = exposed_s / (1 - overlap) if overlap < 1 else math.inf
    if overlap * needed > window:
        needed = exposed_s + window
    gbps = dp_gbps(work, layout, constants) * all_traffic / needed
    if layout.tp * layout.dp > work.gpus_per_node:
        return replace(constants, inter_node_gbps=gbps)
    return replace(constants, intra_node_gbps=gbps)


def calibrate(job: Job, run: MeasuredRun, constants: ClusterConstants) -> Calibration:
    """Constants (and documents per pack) that reproduce ``run``; ``job`` is the planned job,
    whose model, sequence and micro-batch the run used."""
    docs = documents_per_pack(job, run)
    run_job = replace(job, gpus=run.layout.gpus, global_batch=run.global_batch, documents_per_pack=docs)
    work = run_job.workload(run.layout.tp)
    if predict(work, run.layout, constants) is None:
        raise MetricsFileError(f"the run's global batch {run.global_batch} does not split over "
                               f"{run.layout.describe()}: is that the layout of the run the records come from?")
    before = predict(replace(work, documents_per_pack=job.documents_per_pack), run.layout, constants)
    split = run.split_ms
    if "overhead" in split:
        constants = replace(constants, step_overhead_ms=split["overhead"])

    def predicted_seconds(tflops: float) -> float:
        step = predict(work, run.layout, replace(constants, achieved_tflops=tflops))
        if "stage_compute" in split:  # TP collectives run inside the layers' passes
            return step.compute + step.recompute + step.tp_comm
        if "forward_backward" in split:
            return step.compute + step.recompute + step.tp_comm + step.bubble
        return step.total

    target = split.get("stage_compute", split.get("forward_backward", run.step_ms)) / 1000.0
    constants = replace(constants, achieved_tflops=solve_increasing(target, predicted_seconds))
    if "grad_reduce" in split:
        step = predict(work, run.layout, constants)
        constants = fit_dp_bandwidth(work, run.layout, constants, step, split["grad_reduce"] / 1000.0)
    return Calibration(constants, docs, run, before, predict(work, run.layout, constants))
