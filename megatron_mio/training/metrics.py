"""What the trainer reports: one record per logged iteration, handed to every sink (``loggers.py``:
Megatron's iteration line, TensorBoard, ``--metrics-file``), so they always agree.  Losses are averaged
per labelled token over the log interval (the same per-token average the gradient uses);
per-modality losses are over the tokens whose *label* is text, image or speech.

Throughput: ``tokens/s`` counts every position of every pack.  Model FLOPs are counted as
3 x forward (forward + backward, no recomputation), with the attention term over the pairs that
document-causal attention really computes (sum over documents of n(n+1)/2), so packs of many short
documents are not credited with dense-attention work.  MFU divides by the device's dense peak.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from megatron_mio.data.batch import valid_cu_seqlens
from megatron_mio.model.flops import training_flops
from megatron_mio.tokenizer.vocab import Modality
from megatron_mio.training.loggers import MetricsSink
from megatron_mio.training.losses import LossReport
from megatron_mio.training.run import RunDescription

# Dense (no sparsity) peak TFLOP/s per device by precision, from the vendors' data sheets.
# Matched by substring of torch.cuda.get_device_name(), most specific first.
PEAK_TFLOPS = (
    ("H100 PCIe", {"bf16": 756.0, "fp16": 756.0, "fp32": 378.0}),
    ("H100", {"bf16": 989.0, "fp16": 989.0, "fp32": 494.5}),
    ("H200", {"bf16": 989.0, "fp16": 989.0, "fp32": 494.5}),
    ("A100", {"bf16": 312.0, "fp16": 312.0, "fp32": 156.0}),
)


def peak_tflops(device_name: str | None, precision: str) -> float | None:
    """The device's peak for ``precision`` (fp32 means TF32 tensor cores), None if unknown/CPU."""
    if not device_name:
        return None
    for key, peaks in PEAK_TFLOPS:
        if key in device_name:
            return peaks[precision]
    return None


def attention_pairs(cu_seqlens: torch.Tensor) -> int:
    """Query-key pairs that document-causal attention computes in a micro-batch."""
    total = 0
    for row in cu_seqlens:
        lengths = valid_cu_seqlens(row).diff().to(torch.int64)
        total += int((lengths * (lengths + 1) // 2).sum())
    return total


class CountingIterator:
    """Wraps a batch iterator and counts tokens and attention pairs of what it yields."""

    def __init__(self, iterator):
        self.iterator = iterator
        self.tokens = 0
        self.pairs = 0

    def __iter__(self):
        return self

    def __next__(self):
        batch = next(self.iterator)
        self.tokens += batch["tokens"].numel()
        self.pairs += attention_pairs(batch["cu_seqlens"])
        return batch

    def take(self) -> tuple[int, int]:
        counts = (self.tokens, self.pairs)
        self.tokens = self.pairs = 0
        return counts


@dataclass
class IntervalStats:
    """Sums over the iterations since the last log line."""

    loss: LossReport = field(default_factory=LossReport)
    iterations: int = 0
    skipped: int = 0
    grad_norms: list = field(default_factory=list)
    tokens: int = 0
    pairs: int = 0
    started: float = field(default_factory=time.time)


class MetricsLogger:
    """Builds the iteration record and hands it (and the validation loss) to every sink."""

    def __init__(self, run: RunDescription, sinks: list[MetricsSink], *, train_iters: int, world_size: int,
                 device_name: str | None):
        self.run = run
        self.sinks = sinks
        self.train_iters = train_iters
        self.world_size = world_size
        self.peak = peak_tflops(device_name, run.precision.name)

    def record(self, *, iteration: int, consumed_samples: int, lr: float, stats: IntervalStats,
               total_skipped: int, loss_scale: float | None) -> dict:
        elapsed = time.time() - stats.started
        per_iter = elapsed / max(stats.iterations, 1)
        model_flops = training_flops(self.run.preset, self.run.padded_vocab_size, stats.tokens, stats.pairs)
        tflops_per_gpu = model_flops / elapsed / self.world_size / 1e12 if elapsed > 0 else 0.0
        finite_norms = [n for n in stats.grad_norms if n == n and abs(n) != float("inf")]
        by_modality = stats.loss.by_modality
        return {
            "iteration": iteration,
            "train_iters": self.train_iters,
            "consumed_samples": consumed_samples,
            "elapsed_ms_per_iteration": per_iter * 1000.0,
            "learning_rate": lr,
            "global_batch_size": self.run.batch.global_batch_size,
            "loss": stats.loss.total.mean(),
            **{f"loss_{kind.label}": by_modality[kind].mean() for kind in Modality},
            **{f"tokens_{kind.label}": int(by_modality[kind].tokens) for kind in Modality},
            "grad_norm": stats.grad_norms[-1] if stats.grad_norms else None,
            "grad_norm_mean": sum(finite_norms) / len(finite_norms) if finite_norms else None,
            "loss_scale": loss_scale,
            "skipped_iterations": stats.skipped,
            "total_skipped_iterations": total_skipped,
            "tokens_per_second": stats.tokens / elapsed if elapsed > 0 else 0.0,
            "tflops_per_gpu": tflops_per_gpu,
            "mfu": tflops_per_gpu / self.peak if self.peak else None,
            **self.layout_fields(),
        }

    def layout_fields(self) -> dict:
        """How the run is laid out, under Megatron-LM's argument names: a metrics file says what
        it measured (the planner's ``--calibrate`` reads them)."""
        layout = self.run.layout
        return {
            "tensor_model_parallel_size": layout.tensor_model_parallel_size,
            "pipeline_model_parallel_size": layout.pipeline_model_parallel_size,
            "virtual_pipeline_model_parallel_size": layout.virtual_pipeline_model_parallel_size,
            "data_parallel_size": layout.data_parallel_size,
            "world_size": self.world_size,
            "recompute_granularity": self.run.recompute.granularity,
        }

    def emit(self, record: dict) -> None:
        for sink in self.sinks:
            sink.write_iteration(record)

    def emit_eval(self, iteration: int, valid_loss: float | None) -> None:
        """The validation loss (line, TensorBoard scalar, JSON line)."""
        for sink in self.sinks:
            sink.write_validation(iteration, valid_loss)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
