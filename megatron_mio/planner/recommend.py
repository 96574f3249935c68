"""The layouts that fit, fastest first, the one to run, and why its neighbours lose.

Every candidate ``TP x PP x DP = GPUs`` (with virtual pipeline stages and recompute variants) gets
a memory estimate (:mod:`megatron_mio.planner.memory`) and a step time
(:mod:`megatron_mio.planner.step_time`).  Those that fit are ranked by predicted tokens/s per
GPU; the first is recommended.  Its neighbours (one knob changed: TP or PP doubled or halved,
interleaving or recompute switched) each get the one reason they lose.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from megatron_mio.model.presets import ModelPreset, padded_vocab_size
from megatron_mio.planner.memory import (
    GIB,
    GPU_KERNELS,
    Kernels,
    Layout,
    MemoryEstimate,
    Precision,
    estimate,
)
from megatron_mio.planner.step_time import ClusterConstants, StepTime, Workload, predict

VIRTUAL_STAGES = (2, 4)  # interleaving depths tried per pipeline rank


@dataclass(frozen=True)
class Job:
    """The question: which layout for this model, batch and cluster."""

    preset: ModelPreset
    vocab_size: int  # before padding
    vocab_divisible_by: int
    gpus: int
    gpus_per_node: int
    gpu_memory_gib: float
    overhead_gib: float
    seq_length: int
    micro_batch: int
    global_batch: int
    documents_per_pack: float
    precision: Precision
    kernels: Kernels = GPU_KERNELS
    sequence_parallel: bool = False
    distributed_optimizer: bool = True

    def workload(self, tp: int) -> Workload:
        return Workload(self.preset, padded_vocab_size(self.vocab_size, self.vocab_divisible_by, tp),
                        self.seq_length, self.micro_batch, self.global_batch, self.documents_per_pack,
                        activation_bytes=self.precision.activation, weight_bytes=self.precision.weight,
                        grad_bytes=self.precision.grad, gpus_per_node=self.gpus_per_node)


@dataclass(frozen=True)
class Evaluation:
    """One layout judged: its memory, its step time, and whether it can run at all."""

    layout: Layout
    memory: MemoryEstimate | None
    step: StepTime | None
    fits: bool
    problem: str | None  # why it cannot run (memory, batch), None when it can

    @property
    def tokens_per_second_per_gpu(self) -> float:
        return self.step.tokens_per_second_per_gpu() if self.step else 0.0


def layout_problem(job: Job, layout: Layout) -> str | None:
    """Why the model or the batch does not split over ``layout`` (None: it does)."""
    preset = job.preset
    if job.gpus % (layout.tp * layout.pp):
        return f"TP x PP = {layout.tp * layout.pp} does not divide {job.gpus} GPUs"
    if preset.num_attention_heads % layout.tp or preset.num_query_groups % layout.tp:
        return (f"{preset.num_attention_heads} heads / {preset.num_query_groups} query groups "
                f"do not split over TP={layout.tp}")
    if preset.num_layers % (layout.pp * (layout.vpp or 1)):
        return f"{preset.num_layers} layers do not split into PP x VP = {layout.pp * (layout.vpp or 1)} stages"
    per_step = job.micro_batch * layout.dp
    if job.global_batch % per_step:
        return f"global batch {job.global_batch} is not a multiple of micro-batch x DP = {per_step}"
    if layout.vpp and (job.global_batch // per_step) % layout.pp:
        return (f"interleaving needs the micro-batches per step ({job.global_batch // per_step}) "
                f"to be a multiple of PP={layout.pp}")
    return None


def evaluate(job: Job, layout: Layout, constants: ClusterConstants) -> Evaluation:
    problem = layout_problem(job, layout)
    if problem:
        return Evaluation(layout, None, None, False, problem)
    work = job.workload(layout.tp)
    step = predict(work, layout, constants)
    memory = estimate(job.preset, work.padded_vocab, layout, seq_length=job.seq_length,
                      micro_batch=job.micro_batch, num_microbatches=step.microbatches,
                      precision=job.precision, kernels=job.kernels)
    budget = (job.gpu_memory_gib - job.overhead_gib) * GIB
    if memory.total > budget:
        return Evaluation(layout, memory, step, False,
                          f"memory: needs {memory.total / GIB:.1f} GiB of the "
                          f"{job.gpu_memory_gib - job.overhead_gib:g} GiB left after the reserve")
    return Evaluation(layout, memory, step, True, None)


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def candidate_layouts(job: Job) -> list[Layout]:
    """Every TP x PP x DP = GPUs the model splits over, TP across nodes included (it is judged,
    not hidden), with interleaving depths and recompute variants."""
    recomputes = (None, "selective", "full") if job.kernels.attention == "dense" else (None, "full")
    layouts = []
    for tp in divisors(job.gpus):
        for pp in divisors(job.gpus // tp):
            for vpp in (None, *VIRTUAL_STAGES) if pp > 1 else (None,):
                for recompute in recomputes:
                    layout = Layout(tp, pp, job.gpus // (tp * pp), vpp=vpp,
                                    sequence_parallel=job.sequence_parallel and tp > 1,
                                    distributed_optimizer=job.distributed_optimizer, recompute=recompute)
                    if layout_problem(job, layout) is None:
                        layouts.append(layout)
    return layouts


def rank(job: Job, constants: ClusterConstants) -> tuple[list[Evaluation], list[Evaluation]]:
    """(layouts that fit, fastest first; layouts that do not fit)."""
    judged = [evaluate(job, layout, constants) for layout in candidate_layouts(job)]
    fitting = sorted((e for e in judged if e.fits),
                     key=lambda e: (-e.tokens_per_second_per_gpu, e.memory.total))
    return fitting, [e for e in judged if not e.fits]


def neighbours(layout: Layout, gpus: int, recomputes=(None, "full")) -> list[Layout]:
    """Layouts one knob away: TP or PP doubled/halved (DP absorbing it), interleaving, recompute."""
    found = []
    for tp, pp in ((layout.tp * 2, layout.pp), (layout.tp // 2, layout.pp),
                   (layout.tp, layout.pp * 2), (layout.tp, layout.pp // 2)):
        if tp >= 1 and pp >= 1 and gpus % (tp * pp) == 0:
            found.append(replace(layout, tp=tp, pp=pp, dp=gpus // (tp * pp),
                                 vpp=layout.vpp if pp > 1 else None))
    if layout.pp > 1:
        found.append(replace(layout, vpp=None if layout.vpp else VIRTUAL_STAGES[0]))
    for recompute in recomputes:
        if recompute != layout.recompute:
            found.append(replace(layout, recompute=recompute))
    unique = []
    for candidate in found:
        if candidate != layout and candidate not in unique:
            unique.append(candidate)
    return unique


TERM_NAMES = {
    "compute": "more compute per GPU",
    "recompute": "recomputes the forward",
    "tp_comm": "TP all-reduces",
    "bubble": "pipeline bubble",
    "dp_exposed": "exposed data-parallel gradient/parameter traffic",
    "overhead": "fixed overhead",
}


def loss_reason(candidate: Evaluation, best: Evaluation) -> str:
    """The one reason ``candidate`` is not recommended over ``best``."""
    if candidate.problem:
        return candidate.problem
    slower = 1 - candidate.tokens_per_second_per_gpu / best.tokens_per_second_per_gpu
    # Per GPU-second: the step's terms times the GPUs it keeps busy, so layouts of different
    # DP compare on the same token count.
    scale_c = candidate.layout.gpus / candidate.step.tokens_per_step
    scale_b = best.layout.gpus / best.step.tokens_per_step
    costs_c, costs_b = candidate.step.terms(), best.step.terms()
    worst = max(costs_c, key=lambda k: costs_c[k] * scale_c - costs_b[k] * scale_b)
    share = costs_c[worst] / candidate.step.total
    what = TERM_NAMES[worst]
    if worst == "tp_comm" and candidate.step.tp_crosses_node:
        what = f"TP{candidate.layout.tp} crosses a node: its all-reduces go over the inter-node network"
    if worst == "compute" and candidate.layout.pp > best.layout.pp:
        what = (f"uneven stages: the last of PP{candidate.layout.pp} also runs the output layer "
                f"({candidate.step.compute / candidate.step.total:.0%} of its step is compute)")
        return f"{slower:.0%} slower: {what}"
    if worst == "bubble":
        what = f"pipeline bubble (PP{candidate.layout.pp}, {candidate.step.microbatches} micro-batches)"
    return f"{slower:.0%} slower: {what}, {share:.0%} of its step"


def recommendation_reason(best: Evaluation, job: Job) -> str:
    step = best.step
    comm = (step.tp_comm + step.dp_exposed) / step.total
    return (f"fastest predicted layout that fits: {best.tokens_per_second_per_gpu:,.0f} tokens/s/GPU, "
            f"{best.memory.total / GIB:.1f} of {job.gpu_memory_gib:g} GiB, "
            f"bubble {step.bubble_fraction:.0%}, exposed communication {comm:.0%}")


def launch_command(layout: Layout, job: Job, script: str) -> str:
    """The sbatch line: the variables examples/launch_common.sh reads, and in EXTRA_ARGS the
    trainer flags it has no variable for.  (The distributed optimizer is the stage configs'.)"""
    nodes = -(-job.gpus // job.gpus_per_node)
    extra = []
    if layout.vpp:
        extra += ["--num-layers-per-virtual-pipeline-stage", str(job.preset.num_layers // (layout.pp * layout.vpp))]
    if layout.sequence_parallel:
        extra.append("--sequence-parallel")
    if layout.recompute == "full":
        extra += ["--recompute-granularity", "full", "--recompute-method", "uniform", "--recompute-num-layers", "1"]
    elif layout.recompute == "selective":
        extra += ["--recompute-granularity", "selective"]
    words = [f"TP={layout.tp}", f"PP={layout.pp}", f"MICRO_BATCH={job.micro_batch}",
             f"GLOBAL_BATCH={job.global_batch}"]
    if extra:
        words.append(f'EXTRA_ARGS="{" ".join(extra)}"')
    words += ["sbatch", f"--nodes={nodes}", f"--gpus-per-node={min(job.gpus, job.gpus_per_node)}", script]
    return " ".join(words)
