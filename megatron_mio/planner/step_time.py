"""Predicted time of one training step for a layout, term by term (``docs/planner.md``).

For the busiest pipeline stage (the last: ``L / PP`` layers plus the output layer) and one
micro-batch of ``b`` packs of ``s`` tokens:

* **compute** ``t_c``: the trainer's own model FLOP count (:func:`megatron_mio.model.flops`, the
  one it logs as TFLOP/s: matmuls plus document-causal attention over the pairs a pack of
  ``documents_per_pack`` equal documents makes), split over TP, at ``achieved_tflops``;
* **recompute** ``t_r``: full recompute runs each layer's forward again (1/3 of its training
  FLOPs), selective recompute the core attention's forward;
* **tensor parallel** ``t_tp``: per layer two all-reduces of the ``s b h`` activations in the
  forward and two in the backward (two more under full recompute), each moving
  ``2 (TP-1)/TP`` of the message over ``intra_node_gbps``, or ``inter_node_gbps`` when the TP
  group crosses a node.  Sequence parallelism replaces each all-reduce by a reduce-scatter plus an
  all-gather: the same bytes, so the same time here (it saves memory, not bandwidth);
  ``tp_overlap`` is the part hidden behind compute (0: megatron-core without TP comm overlap);
* **pipeline** (1F1B): ``(m + (PP-1)/VP) (t_c + t_r + t_tp)`` for ``m`` micro-batches per step and
  ``VP`` virtual stages per rank, i.e. a bubble fraction ``(PP-1) / (VP m + PP-1)``
  (``(PP-1)/(m+PP-1)`` without interleaving);
* **data parallel**: the distributed optimizer's gradient reduce-scatter (``grad_bytes`` per
  parameter) and parameter all-gather (``weight_bytes``), each ``(DP-1)/DP`` of the stage's
  parameters, over ``inter_node_gbps`` when the DP group spans nodes (``TP x DP > GPUs per node``)
  and ``intra_node_gbps`` otherwise; a plain optimizer all-reduces the gradients instead
  (``2 (DP-1)/DP``).  With ``--overlap-grad-reduce`` megatron-core runs this during the last
  micro-batch's backward: up to ``dp_overlap`` of it hides, but never more than one micro-batch's
  compute;
* **overhead**: ``step_overhead_ms`` per step for what is not modelled (data wait, the optimizer
  step, logging); a calibration fills it in from the run's time split.

Not modelled: pipeline point-to-point sends (``s b h`` per micro-batch, small next to the layers'
all-reduces), the interleaved schedule's extra sends, imbalance from the embedding on the first
stage, kernel-launch gaps.  ``--calibrate`` absorbs them into the fitted constants.
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron_mio.model import flops
from megatron_mio.model.presets import ModelPreset
from megatron_mio.planner.memory import Layout, stage_parameters

GB = 1e9  # network bandwidths are quoted in decimal GB/s


@dataclass(frozen=True)
class ClusterConstants:
    """Every constant of the step-time model (each one is a flag of ``plan_parallelism``).

    Defaults describe an H100 SXM cluster running megatron-core in bf16: ~40% of the 989 TFLOP/s
    dense peak in the model's matmuls, NVLink all-reduce bus bandwidth inside a node, one
    400 Gb/s InfiniBand NIC per GPU across nodes.  ``--calibrate`` replaces them with a short
    run's figures.
    """

    achieved_tflops: float = 400.0  # model FLOP/s per GPU while computing (1e12)
    intra_node_gbps: float = 300.0  # all-reduce bus bandwidth inside a node, GB/s
    inter_node_gbps: float = 40.0  # per GPU across nodes, GB/s
    tp_overlap: float = 0.0  # part of the TP collectives hidden behind compute
    dp_overlap: float = 1.0  # part of the DP traffic --overlap-grad-reduce can hide
    step_overhead_ms: float = 0.0  # data wait, optimizer step, logging: per step


@dataclass(frozen=True)
class Workload:
    """What one step trains: the model, the packs, the batch."""

    preset: ModelPreset
    padded_vocab: int  # at this layout's TP
    seq_length: int
    micro_batch: int
    global_batch: int
    documents_per_pack: float = 1.0
    activation_bytes: int = 2  # bf16 activations on the TP wire
    weight_bytes: int = 2  # parameters all-gathered by the distributed optimizer
    grad_bytes: int = 4  # bf16 gradients are reduced in fp32
    gpus_per_node: int = 8

    def microbatches(self, layout: Layout) -> int:
        """Micro-batches per step per pipeline (0 when the global batch does not divide)."""
        per_step = self.micro_batch * layout.dp
        return self.global_batch // per_step if self.global_batch % per_step == 0 else 0


@dataclass(frozen=True)
class StepTime:
    """One step's predicted time (seconds) by term, and what it yields."""

    layout: Layout
    microbatches: int
    compute: float  # m micro-batches' matmuls and attention on the busiest stage
    recompute: float
    tp_comm: float
    bubble: float  # idle time of the pipeline's fill and drain
    dp_comm: float  # gradient reduce-scatter + parameter all-gather (or all-reduce), all of it
    dp_hidden: float  # the part of dp_comm behind compute
    overhead: float
    tp_crosses_node: bool
    tokens_per_step: int
    model_flops_per_step: float  # the trainer's count, whole model, all replicas

    @property
    def dp_exposed(self) -> float:
        return self.dp_comm - self.dp_hidden

    @property
    def total(self) -> float:
        return (self.compute + self.recompute + self.tp_comm + self.bubble + self.dp_exposed
                + self.overhead)

    @property
    def bubble_fraction(self) -> float:
        return self.bubble / self.total if self.total else 0.0

    def tokens_per_second_per_gpu(self) -> float:
        return self.tokens_per_step / self.total / self.layout.gpus

    def model_tflops_per_gpu(self) -> float:
        """What the trainer would log as ``TFLOP/s/GPU`` for this step."""
        return self.model_flops_per_step / self.total / self.layout.gpus / 1e12

    def terms(self) -> dict[str, float]:
        return {"compute": self.compute, "recompute": self.recompute, "tp_comm": self.tp_comm,
                "bubble": self.bubble, "dp_exposed": self.dp_exposed, "overhead": self.overhead}


def bubble_fraction(pp: int, microbatches: int, vp: int = 1) -> float:
    """Idle share of a 1F1B step: ``(PP-1) / (VP m + PP-1)`` (``VP = 1``: not interleaved)."""
    return (pp - 1) / (vp * microbatches + pp - 1)


def stage_forward_flops(work: Workload, layout: Layout) -> tuple[float, float]:
    """(layers, output layer) forward FLOPs of one micro-batch on the last stage, whole TP group."""
    preset = work.preset
    tokens = work.micro_batch * work.seq_length
    pairs = work.micro_batch * flops.packed_attention_pairs(work.seq_length, work.documents_per_pack)
    layer = (tokens * flops.layer_forward_flops_per_token(preset)
             + flops.attention_forward_flops_per_layer(preset, pairs))
    layers = preset.num_layers // layout.pp * layer
    return layers, tokens * flops.logits_forward_flops_per_token(preset, work.padded_vocab)


def recompute_forward_flops(work: Workload, layout: Layout) -> float:
    """Forward FLOPs run again per micro-batch on the last stage, whole TP group."""
    if layout.recompute == "full":
        return stage_forward_flops(work, layout)[0]
    if layout.recompute == "selective":
        pairs = work.micro_batch * flops.packed_attention_pairs(work.seq_length, work.documents_per_pack)
        return work.preset.num_layers // layout.pp * flops.attention_forward_flops_per_layer(work.preset, pairs)
    return 0.0


def all_reduce_seconds(message_bytes: float, ranks: int, gbps: float) -> float:
    """Ring all-reduce: each rank sends and receives ``2 (n-1)/n`` of the message."""
    return 2 * (ranks - 1) / ranks * message_bytes / (gbps * GB) if ranks > 1 else 0.0


def tp_comm_per_microbatch(work: Workload, layout: Layout, constants: ClusterConstants) -> float:
    collectives_per_layer = 4 + (2 if layout.recompute == "full" else 0)
    message = work.micro_batch * work.seq_length * work.preset.hidden_size * work.activation_bytes
    gbps = constants.inter_node_gbps if layout.tp > work.gpus_per_node else constants.intra_node_gbps
    layers = work.preset.num_layers // layout.pp
    seconds = layers * collectives_per_layer * all_reduce_seconds(message, layout.tp, gbps)
    return seconds * (1.0 - constants.tp_overlap)


def dp_gbps(work: Workload, layout: Layout, constants: ClusterConstants) -> float:
    """Megatron-core orders ranks TP fastest, then DP: a DP group spans TP x DP consecutive GPUs."""
    spans_nodes = layout.tp * layout.dp > work.gpus_per_node
    return constants.inter_node_gbps if spans_nodes else constants.intra_node_gbps


def dp_comm_seconds(work: Workload, layout: Layout, constants: ClusterConstants) -> float:
    """All of the step's data-parallel traffic for the last stage's parameters."""
    d = layout.dp
    if d == 1:
        return 0.0
    params = stage_parameters(work.preset, work.padded_vocab, layout.tp, layout.pp, layout.pp - 1)
    if layout.distributed_optimizer:
        volume = (d - 1) / d * params * (work.grad_bytes + work.weight_bytes)
    else:
        volume = 2 * (d - 1) / d * params * work.grad_bytes
    return volume / (dp_gbps(work, layout, constants) * GB)


def predict(work: Workload, layout: Layout, constants: ClusterConstants) -> StepTime | None:
    """The step time of ``layout``, or None when the global batch does not split over it."""
    m = work.microbatches(layout)
    if m == 0:
        return None
    flop_rate = constants.achieved_tflops * 1e12
    layers_fwd, logits_fwd = stage_forward_flops(work, layout)
    compute_mb = flops.TRAINING_FLOPS_PER_FORWARD * (layers_fwd + logits_fwd) / layout.tp / flop_rate
    recompute_mb = recompute_forward_flops(work, layout) / layout.tp / flop_rate
    tp_mb = tp_comm_per_microbatch(work, layout, constants)
    microbatch = compute_mb + recompute_mb + tp_mb
    vp = layout.vpp or 1
    dp_all = dp_comm_seconds(work, layout, constants)
    # --overlap-grad-reduce starts the bucketed reduce during the last micro-batch's backward.
    hidden = min(constants.dp_overlap * dp_all, compute_mb + recompute_mb)
    tokens = work.global_batch * work.seq_length
    pairs = work.global_batch * flops.packed_attention_pairs(work.seq_length, work.documents_per_pack)
    return StepTime(
        layout=layout, microbatches=m, compute=m * compute_mb, recompute=m * recompute_mb,
        tp_comm=m * tp_mb, bubble=(layout.pp - 1) / vp * microbatch, dp_comm=dp_all,
        dp_hidden=hidden, overhead=constants.step_overhead_ms / 1000.0,
        tp_crosses_node=layout.tp > work.gpus_per_node, tokens_per_step=tokens,
        model_flops_per_step=flops.training_flops(work.preset, work.padded_vocab, tokens, pairs),
    )
