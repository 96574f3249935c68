"""Memory per GPU of a MIO training layout (``megatron_mio.planner``, ``plan_parallelism``).

The estimate is an itemised count of what megatron-core keeps in memory on the busiest rank:

* **weights, gradients, optimizer states** from the parameters each (TP, PP) rank holds: the
  embedding on the first stage, the untied output layer and final norm on the last, ``L / PP``
  transformer layers on each, matrices split ``1 / TP``, norms replicated.  Bytes per parameter
  follow megatron-core's mixed precision: bf16 weights (2), fp32 gradient buffer (4), fp32 main
  weights + Adam's two moments (12).  The distributed optimizer splits those 12 bytes over DP.
  Pure fp32 (the CPU path) keeps no main copy: 4 + 4 + 8.
* **activations**: the tensors autograd saves during the forward pass, counted tensor by tensor
  for megatron-core's transformer layer (see :func:`layer_activation_bytes`), times the layers
  whose activations are alive at once under the 1F1B schedule (the first stage holds ``PP``
  micro-batches of ``L / PP`` layers; with an interleaved schedule a bit more).
* **transient** peaks in the backward pass: the gradient of the fp32 logits on the last stage,
  and one layer recomputed under full recompute.

What it does not model (allocator fragmentation, the CUDA context, NCCL buffers, TE
workspaces) is covered by a fixed reserve (``overhead_gib``) when judging whether a layout fits.
``tests/test_plan_parallelism.py`` checks the counts against what a tiny megatron-core GPTModel
really allocates on the CPU: parameters, gradient buffers and optimizer states exactly, saved
activations within a stated tolerance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from megatron_mio.model.presets import ModelPreset

GIB = 1024**3


@dataclass(frozen=True)
class Precision:
    """Bytes per element of each kind of state."""

    name: str
    activation: int  # activations and weights as the model computes with them
    weight: int
    grad: int  # the DDP gradient buffer
    main_weight: int  # fp32 master copy kept by the optimizer (0: the weights are already fp32)
    adam_states: int = 8  # exp_avg + exp_avg_sq, fp32


BF16 = Precision("bf16", activation=2, weight=2, grad=4, main_weight=4)
FP32 = Precision("fp32", activation=4, weight=4, grad=4, main_weight=0)
PRECISIONS = {p.name: p for p in (BF16, FP32)}


@dataclass(frozen=True)
class Layout:
    """One way to spread training over GPUs."""

    tp: int
    pp: int
    dp: int
    vpp: int | None = None  # virtual pipeline stages per rank (interleaved 1F1B)
    sequence_parallel: bool = False
    distributed_optimizer: bool = True
    recompute: str | None = None  # None, "selective" (core attention) or "full" (every layer)

    @property
    def gpus(self) -> int:
        return self.tp * self.pp * self.dp

    def describe(self) -> str:
        parts = [f"TP{self.tp}", f"PP{self.pp}", f"DP{self.dp}"]
        if self.vpp:
            parts.append(f"VPP{self.vpp}")
        if self.sequence_parallel:
            parts.append("SP")
        return " ".join(parts)


@dataclass(frozen=True)
class Kernels:
    """Which implementations the activations come from (they save different tensors).

    ``attention``: ``flash`` (transformer-engine / varlen flash attention: q, k, v, the output
    and the log-sum-exp are saved, no ``s x s`` matrix) or ``dense`` (megatron's local
    DotProductAttention with a dense document mask: keys and values repeated to every head, the
    fp32 softmax and the probabilities saved).  ``fused_swiglu``: megatron's fused bias-SwiGLU
    keeps only its input (GPU); unfused (CPU) it also keeps the SiLU output and the gate half.
    ``fused_norm``: TE's norm+linear and CUDA's RMSNorm keep the input and the normalised output;
    torch's CPU RMSNorm also keeps the normalised tensor before the weight is applied.
    """

    attention: str = "flash"
    fused_swiglu: bool = True
    fused_norm: bool = True


GPU_KERNELS = Kernels("flash", fused_swiglu=True, fused_norm=True)
CPU_LOCAL_KERNELS = Kernels("dense", fused_swiglu=False, fused_norm=False)


# ---------------------------------------------------------------------------------- parameters


def layer_parameters(preset: ModelPreset, tp: int) -> int:
    """Parameters of one transformer layer on one TP rank (matrices split, norms replicated)."""
    h, f = preset.hidden_size, preset.ffn_hidden_size
    kv = preset.head_dim
    qkv = h * (preset.num_attention_heads + 2 * preset.num_query_groups) * kv
    proj = preset.num_attention_heads * kv * h
    mlp = h * 2 * f + f * h  # SwiGLU: gate and up in one fc1, then fc2
    norms = 2 * h
    return (qkv + proj + mlp) // tp + norms


def stage_parameters(preset: ModelPreset, vocab_padded: int, tp: int, pp: int, stage: int) -> int:
    """Parameters held by one (TP, PP) rank of pipeline stage ``stage`` (0-based)."""
    layers = preset.num_layers // pp
    count = layers * layer_parameters(preset, tp)
    embedding = vocab_padded * preset.hidden_size // tp
    if stage == 0:
        count += embedding
    if stage == pp - 1:
        count += embedding + preset.hidden_size  # untied output layer + final norm
    return count


def total_parameters(preset: ModelPreset, vocab_size: int) -> int:
    return stage_parameters(preset, vocab_size, 1, 1, 0)


# ---------------------------------------------------------------------------------- activations


def norm_activation_bytes(tokens: int, hidden: int, e: int, kernels: Kernels, share: int) -> int:
    """An RMSNorm feeding a linear layer, ``share`` = TP with sequence parallelism, else 1.

    Fused (TE, CUDA): the input and the output (the linear's input), in the compute dtype, and
    the fp32 1/rms.  Unfused (torch's CPU RMSNorm computes in fp32): the input upcast to fp32,
    the fp32 normalised tensor, the output in the compute dtype, and 1/rms.
    """
    rows = tokens // share
    if kernels.fused_norm:
        return 2 * rows * hidden * e + tokens * 4
    return 2 * rows * hidden * 4 + rows * hidden * e + tokens * 4


def layer_activation_bytes(preset: ModelPreset, seq: int, micro_batch: int, tp: int,
                           precision: Precision, kernels: Kernels, sequence_parallel: bool = False,
                           recompute: str | None = None) -> int:
    """Bytes autograd saves for one transformer layer and one micro-batch on one TP rank.

    Tensor by tensor (``sbh`` = seq x batch x hidden elements, ``e`` bytes each):
      two norms (:func:`norm_activation_bytes`);
      RoPE: cos and sin for q and for k (``4 s kv_channels``);
      attention, dense: q, k and v repeated to all heads (``3 sbh/TP``), the fp32 softmax and,
        below fp32, the probabilities in the compute dtype (``b heads/TP s^2`` each), the context
        fed to the output projection (``sbh/TP``);
      attention, flash: q and the grouped k after RoPE, v (a view of the fused QKV output, which
        it keeps alive: ``s b (h + 2 groups kv)/TP``), the output (``sbh/TP``, also the
        projection's input) and the fp32 log-sum-exp (``b heads/TP s``);
      MLP: fc1's output (``2 s b ffn/TP``) and the SwiGLU product fed to fc2 (``s b ffn/TP``);
        unfused also the SiLU output and the gate half (``2 s b ffn/TP``).
    Selective recompute keeps only the core attention's inputs (q, k and v with the QKV buffer)
    and output, no ``s^2`` terms;
    full recompute keeps only the layer's input (``sbh``, ``1/TP`` with sequence parallelism).
    """
    e = precision.activation
    s, b, h = seq, micro_batch, preset.hidden_size
    heads = preset.num_attention_heads
    kv = preset.head_dim
    f = preset.ffn_hidden_size
    tokens = s * b
    share = tp if sequence_parallel else 1
    if recompute == "full":
        return tokens * h * e // share

    norms = 2 * norm_activation_bytes(tokens, h, e, kernels, share)
    rope = 4 * s * kv * e
    group_width = preset.num_query_groups * kv
    # v is a view of the fused QKV projection's output, so keeping v keeps that whole buffer.
    qkv_buffer = tokens * (h + 2 * group_width) * e // tp
    q_and_k = tokens * (h + group_width) * e // tp  # after RoPE: new tensors
    context = tokens * h * e // tp
    if kernels.attention == "dense":
        if recompute == "selective":
            # The checkpoint keeps its inputs q, k, v (v holding the QKV buffer); the projection
            # keeps the context.
            attention = q_and_k + qkv_buffer + context
        else:
            probabilities = b * heads * s * s // tp * (4 + (e if e < 4 else 0))
            # q, and k, v repeated to every head (copies), and the context.
            attention = 3 * tokens * h * e // tp + context + probabilities
    elif kernels.attention == "flash":
        lse = b * heads * s * 4 // tp
        attention = q_and_k + qkv_buffer + context + lse
    else:
        raise ValueError(f"unknown attention kernel {kernels.attention!r}; use 'flash' or 'dense'")
    mlp = (3 if kernels.fused_swiglu else 5) * tokens * f * e // tp
    return norms + rope + attention + mlp


def shared_activation_bytes(seq: int, micro_batch: int, kernels: Kernels, first_stage: bool) -> int:
    """Per micro-batch, shared by every layer of a stage: with dense attention the boolean
    document mask ``[b, 1, s, s]``; on the first stage the token ids the embedding keeps (int64)."""
    mask = micro_batch * seq * seq if kernels.attention == "dense" else 0
    return mask + (micro_batch * seq * 8 if first_stage else 0)


def output_activation_bytes(preset: ModelPreset, vocab_padded: int, seq: int, micro_batch: int,
                            tp: int, precision: Precision, kernels: Kernels,
                            sequence_parallel: bool = False) -> int:
    """Last stage: the final norm and the vocab-parallel cross-entropy's fp32 softmax
    (``s b V/TP``), target mask (bool) and indices (int64)."""
    e = precision.activation
    tokens = seq * micro_batch
    share = tp if sequence_parallel else 1
    final_norm = norm_activation_bytes(tokens, preset.hidden_size, e, kernels, share)
    if sequence_parallel:
        final_norm += tokens * preset.hidden_size * e  # the output layer gathers the sequence
    cross_entropy = tokens * vocab_padded // tp * 4 + tokens * (1 + 8)
    return final_norm + cross_entropy


def in_flight_microbatches(pp: int, vpp: int | None, num_microbatches: int) -> float:
    """Micro-batches whose activations the first stage holds at the 1F1B peak (in units of one
    micro-batch through the stage's layers); the interleaved schedule adds (PP-1)/(PP*VPP)."""
    if pp == 1:
        return 1.0
    held = min(pp, num_microbatches)
    if vpp:
        held *= 1 + (pp - 1) / (pp * vpp)
    return held


# ---------------------------------------------------------------------------------- estimate


@dataclass
class MemoryEstimate:
    """Bytes on the busiest rank, by kind."""

    layout: Layout
    weights: int
    grads: int
    optimizer: int
    activations: int
    transient: int
    stage: int  # the pipeline stage this is for
    parameters: int  # parameters held by that rank
    breakdown: dict = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.weights + self.grads + self.optimizer + self.activations + self.transient


def state_bytes(parameters: int, dp: int, precision: Precision,
                distributed_optimizer: bool) -> tuple[int, int, int]:
    """(weights, grads, optimizer) bytes for ``parameters`` parameters on one rank."""
    optimizer = parameters * (precision.main_weight + precision.adam_states)
    if distributed_optimizer:
        optimizer = math.ceil(optimizer / dp)
    return parameters * precision.weight, parameters * precision.grad, optimizer


def microbatch_activation_bytes(preset: ModelPreset, vocab_padded: int, layout: Layout, stage: int,
                                *, seq_length: int, micro_batch: int, precision: Precision,
                                kernels: Kernels) -> int:
    """What one micro-batch leaves saved on one rank of pipeline stage ``stage``."""
    layers = preset.num_layers // layout.pp
    total = layers * layer_activation_bytes(preset, seq_length, micro_batch, layout.tp, precision,
                                            kernels, layout.sequence_parallel, layout.recompute)
    total += shared_activation_bytes(seq_length, micro_batch, kernels, stage == 0)
    if stage == layout.pp - 1:
        total += output_activation_bytes(preset, vocab_padded, seq_length, micro_batch, layout.tp,
                                         precision, kernels, layout.sequence_parallel)
    return total


def estimate(preset: ModelPreset, vocab_padded: int, layout: Layout, *, seq_length: int,
             micro_batch: int, num_microbatches: int = 1, precision: Precision = BF16,
             kernels: Kernels = GPU_KERNELS) -> MemoryEstimate:
    """The memory of the busiest pipeline stage of ``layout``."""
    if preset.num_layers % layout.pp:
        raise ValueError(f"{preset.num_layers} layers do not split over PP={layout.pp}")
    if preset.num_attention_heads % layout.tp or preset.num_query_groups % layout.tp:
        raise ValueError(f"{preset.num_attention_heads} heads / {preset.num_query_groups} groups "
                         f"do not split over TP={layout.tp}")
    logits_grad = seq_length * micro_batch * vocab_padded // layout.tp * 4
    recomputed_layer = 0
    if layout.recompute == "full":
        recomputed_layer = layer_activation_bytes(preset, seq_length, micro_batch, layout.tp,
                                                  precision, kernels, layout.sequence_parallel)
    best = None
    for stage in sorted({0, layout.pp - 1}):
        params = stage_parameters(preset, vocab_padded, layout.tp, layout.pp, stage)
        weights, grads, optimizer = state_bytes(params, layout.dp, precision,
                                                layout.distributed_optimizer)
        one = microbatch_activation_bytes(preset, vocab_padded, layout, stage,
                                          seq_length=seq_length, micro_batch=micro_batch,
                                          precision=precision, kernels=kernels)
        # The first stage holds PP micro-batches at the 1F1B peak; the last stage holds one.
        held = in_flight_microbatches(layout.pp, layout.vpp, num_microbatches) if stage == 0 else 1.0
        transient = recomputed_layer + (logits_grad if stage == layout.pp - 1 else 0)
        candidate = MemoryEstimate(layout, weights, grads, optimizer, int(held * one), transient,
                                   stage, params,
                                   breakdown={"microbatch_activation": one,
                                              "microbatches_in_flight": held})
        if best is None or candidate.total > best.total:
            best = candidate
    return best
