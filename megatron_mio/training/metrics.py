"""What the trainer reports: Megatron's iteration line, TensorBoard, and ``--metrics-file``.

Every logged iteration produces one record (a dict); the console line, the TensorBoard scalars
and the JSON line are all printed from that record, so they always agree.  Losses are averaged
per labelled token over the log interval (the same per-token average the gradient uses);
per-modality losses are over the tokens whose *label* is text, image or speech.

Throughput: ``tokens/s`` counts every position of every pack.  Model FLOPs are counted as
3 x forward (forward + backward, no recomputation), with the attention term over the pairs that
document-causal attention really computes (sum over documents of n(n+1)/2), so packs of many short
documents are not credited with dense-attention work.  MFU divides by the device's dense peak.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field

import torch

from megatron_mio.data.batch import valid_cu_seqlens
from megatron_mio.model.flops import forward_flops_per_token, training_flops
from megatron_mio.tokenizer.vocab import Modality
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
    forward_backward_seconds: float = 0.0
    optimizer_seconds: float = 0.0
    started: float = field(default_factory=time.time)


class MetricsLogger:
    """Prints, and writes to TensorBoard and ``--metrics-file``, on the logging rank only."""

    def __init__(self, run: RunDescription, *, train_iters: int, world_size: int, device_name: str | None,
                 is_logging_rank: bool, tensorboard_dir: str | None = None, metrics_file: str | None = None):
        self.run = run
        self.train_iters = train_iters
        self.world_size = world_size
        self.device_name = device_name
        self.peak = peak_tflops(device_name, run.precision)
        self.is_logging_rank = is_logging_rank
        self.flops_per_token = forward_flops_per_token(run.preset, run.padded_vocab_size)
        self.writer = None
        if is_logging_rank and tensorboard_dir:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=tensorboard_dir)
        self.metrics_path = metrics_file if is_logging_rank else None
        if self.metrics_path:
            os.makedirs(os.path.dirname(os.path.abspath(self.metrics_path)), exist_ok=True)

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
            "global_batch_size": self.run.global_batch_size,
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
            "forward_backward_ms_per_iteration": stats.forward_backward_seconds * 1000.0 / max(stats.iterations, 1),
            "optimizer_ms_per_iteration": stats.optimizer_seconds * 1000.0 / max(stats.iterations, 1),
            # The device's peak since the start (None on the CPU, which has no allocator statistics).
            "max_memory_allocated_bytes": torch.cuda.max_memory_allocated() if self.device_name else None,
        }

    def emit(self, record: dict) -> None:
        if not self.is_logging_rank:
            return
        print(format_line(record), flush=True)
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("iteration", "train_iters"):
                    self.writer.add_scalar(key, value, record["iteration"])
            self.writer.flush()
        if self.metrics_path:
            with open(self.metrics_path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")

    def emit_eval(self, iteration: int, valid_loss: float | None) -> None:
        """The validation loss line (and its TensorBoard scalar / JSON line)."""
        print(f" validation loss at iteration {iteration} | lm loss: {_fmt(valid_loss, '.6E')} |", flush=True)
        if self.writer is not None and valid_loss is not None:
            self.writer.add_scalar("valid_loss", valid_loss, iteration)
        if self.metrics_path:
            with open(self.metrics_path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"iteration": iteration, "valid_loss": valid_loss}) + "\n")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def format_line(r: dict) -> str:
    """Megatron-LM's iteration line, with the per-modality losses and MFU added."""
    names = [kind.label for kind in Modality]
    return (
        f" iteration {r['iteration']:8d}/{r['train_iters']:8d} |"
        f" consumed samples: {r['consumed_samples']:12d} |"
        f" elapsed time per iteration (ms): {r['elapsed_ms_per_iteration']:.1f} |"
        f" learning rate: {r['learning_rate']:.6E} |"
        f" global batch size: {r['global_batch_size']:5d} |"
        f" lm loss: {_fmt(r['loss'], '.6E')} |"
        f" loss {'/'.join(names)}: {' / '.join(_fmt(r[f'loss_{name}'], '.4E') for name in names)} |"
        + (f" loss scale: {r['loss_scale']:.1f} |" if r["loss_scale"] is not None else "")
        + f" grad norm: {_fmt(r['grad_norm'], '.3f')} |"
        f" number of skipped iterations: {r['skipped_iterations']:3d} |"
        f" tokens/s: {r['tokens_per_second']:.0f} |"
        f" TFLOP/s/GPU: {r['tflops_per_gpu']:.1f} |"
        f" MFU: {_fmt(None if r['mfu'] is None else 100 * r['mfu'], '.1f')}{'' if r['mfu'] is None else '%'} |"
    )
