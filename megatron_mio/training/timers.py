"""Where an iteration's time goes, Megatron-LM's ``--timing-log-level`` style.

Regions: ``data_wait`` (the host waiting for the next micro-batch), ``forward_backward`` (the
pipeline schedule, gradient reduction included), ``grad_reduce_exposed`` (the part of the
data-parallel gradient reduction that overlap did not hide: megatron-core's
``finalize_model_grads``, which waits for the buckets still in flight), ``optimizer`` (clip and
step) and ``checkpoint`` (the part of a save that blocks training).

On a GPU a region is a pair of CUDA events, recorded without waiting; the events are read (one
device synchronisation) only when a line is logged, so timing costs nothing in between.  On the
CPU the host clock is exact.  :meth:`IntervalTimers.reduce` then takes, over all ranks in one
all-reduce, the maximum of every region, the peak memory, and the slowest and fastest rank's time
per iteration.
"""

from __future__ import annotations

import resource
import time
from collections import defaultdict
from contextlib import contextmanager

import torch

REGIONS = ("data_wait", "forward_backward", "grad_reduce_exposed", "optimizer", "checkpoint")
# Regions that run on the device; data_wait and checkpoint are host waits.
DEVICE_REGIONS = ("forward_backward", "grad_reduce_exposed", "optimizer")


class IntervalTimers:
    """Per-region totals since the last logged line, on this rank."""

    def __init__(self, device: torch.device, enabled: bool = True):
        self.device = device
        self.enabled = enabled
        self.use_events = device.type == "cuda"
        self._host = defaultdict(float)  # seconds
        self._events: dict[str, list] = defaultdict(list)

    @contextmanager
    def region(self, name: str):
        if not self.enabled:
            yield
            return
        if self.use_events and name in DEVICE_REGIONS:
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            try:
                yield
            finally:
                stop.record()
                self._events[name].append((start, stop))
            return
        began = time.perf_counter()
        try:
            yield
        finally:
            self._host[name] += time.perf_counter() - began

    def add(self, name: str, seconds: float) -> None:
        """Host time measured elsewhere (the data iterator's waits)."""
        if self.enabled:
            self._host[name] += seconds

    def take(self) -> dict[str, float]:
        """Milliseconds per region since the last call; synchronises the device once if it must."""
        if self._events:
            torch.cuda.synchronize(self.device)
        totals = {name: self._host.get(name, 0.0) * 1000.0 for name in REGIONS}
        for name, pairs in self._events.items():
            totals[name] += sum(start.elapsed_time(stop) for start, stop in pairs)
        self._host.clear()
        self._events.clear()
        return totals

    def reduce(self, elapsed_per_iteration_ms: float, iterations: int) -> dict[str, float]:
        """The interval's timer fields, every rank taking part: each region's total per iteration
        (max over ranks), peak memory (max over ranks), slowest and fastest rank's iteration time."""
        regions = self.take()
        values = [regions[name] / max(iterations, 1) for name in REGIONS]
        values += [peak_memory_mb(self.device), elapsed_per_iteration_ms, -elapsed_per_iteration_ms]
        reduced = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(reduced, op=torch.distributed.ReduceOp.MAX)
        out = reduced.tolist()
        fields = {f"time_{name}_ms": out[index] for index, name in enumerate(REGIONS)}
        fields["peak_memory_mb"] = out[len(REGIONS)]
        fields["iteration_ms_slowest_rank"] = out[len(REGIONS) + 1]
        fields["iteration_ms_fastest_rank"] = -out[len(REGIONS) + 2]
        return fields


def peak_memory_mb(device: torch.device) -> float:
    """Peak device memory allocated by torch (GPU), or the process's peak resident size (CPU)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


class TimedIterator:
    """Wraps a batch iterator; the host time spent in ``next`` goes to the ``data_wait`` region."""

    def __init__(self, iterator, timers: IntervalTimers):
        self.iterator, self.timers = iterator, timers

    def __iter__(self):
        return self

    def __next__(self):
        began = time.perf_counter()
        try:
            return next(self.iterator)
        finally:
            self.timers.add("data_wait", time.perf_counter() - began)


def timed(function, timers: IntervalTimers, name: str):
    """``function`` with its calls counted in region ``name`` (megatron-core's finalize hook)."""

    def wrapper(*args, **kwargs):
        with timers.region(name):
            return function(*args, **kwargs)

    return wrapper
