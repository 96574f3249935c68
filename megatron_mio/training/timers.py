"""Where an iteration's time goes, Megatron-LM's ``--timing-log-level`` style.

Regions: ``data_wait`` (the host waiting for the next micro-batch), ``forward_backward`` (the
pipeline schedule, gradient reduction included), ``grad_reduce_exposed`` (the part of the
data-parallel gradient reduction that overlap did not hide: megatron-core's
``finalize_model_grads``, which waits for the buckets still in flight), ``optimizer`` (clip and
step) and ``checkpoint`` (the part of a save that blocks training).  Level 2 adds
``stage_compute``: this rank's forward and backward passes inside the training schedule, timed by
megatron-core's own per-micro-batch timers (``config.timers``, :class:`MegatronCoreTimers`), so
that ``forward_backward - stage_compute`` is what the rank spent waiting on its pipeline
neighbours (the bubble) and on point-to-point transfers.  It includes fetching each micro-batch,
as megatron-core's ``forward-compute`` does.

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
LEVEL_2_REGIONS = ("stage_compute",)
# Regions that run on the device; data_wait and checkpoint are host waits.
DEVICE_REGIONS = ("forward_backward", "grad_reduce_exposed", "optimizer", "stage_compute")
# The names under which megatron-core's schedules time a micro-batch's forward and backward
# (Megatron-LM's log level 2); the p2p and optimizer timers it also calls are not taken.
STAGE_COMPUTE_TIMERS = ("forward-compute", "backward-compute")


def timed_regions(level: int) -> tuple[str, ...]:
    """The regions ``--timing-log-level`` ``level`` reports (none at 0)."""
    return () if level <= 0 else REGIONS + (LEVEL_2_REGIONS if level >= 2 else ())


class IntervalTimers:
    """Per-region totals since the last logged line, on this rank."""

    def __init__(self, device: torch.device, level: int = 1):
        self.device = device
        self.regions = timed_regions(level)
        self.use_events = device.type == "cuda"
        self._host = defaultdict(float)  # seconds
        self._events: dict[str, list] = defaultdict(list)
        self._open: dict[str, object] = {}  # region -> its start (host seconds or a CUDA event)

    @property
    def enabled(self) -> bool:
        return bool(self.regions)

    def start(self, name: str) -> None:
        if name not in self.regions:
            return
        if self.use_events and name in DEVICE_REGIONS:
            began = torch.cuda.Event(enable_timing=True)
            began.record()
            self._open[name] = began
        else:
            self._open[name] = time.perf_counter()

    def stop(self, name: str) -> None:
        began = self._open.pop(name, None)
        if began is None:
            return
        if isinstance(began, float):
            self._host[name] += time.perf_counter() - began
        else:
            stopped = torch.cuda.Event(enable_timing=True)
            stopped.record()
            self._events[name].append((began, stopped))

    @contextmanager
    def region(self, name: str):
        self.start(name)
        try:
            yield
        finally:
            self.stop(name)

    @contextmanager
    def stage_compute(self, config):
        """Inside: megatron-core's schedules report each micro-batch's compute to ``stage_compute``
        through ``config`` (the model's TransformerConfig); outside (evaluation) they do not."""
        if "stage_compute" not in self.regions:
            yield
            return
        previous, config.timers = config.timers, MegatronCoreTimers(self)
        try:
            yield
        finally:
            config.timers = previous

    def add(self, name: str, seconds: float) -> None:
        """Host time measured elsewhere (the data iterator's waits)."""
        if name in self.regions:
            self._host[name] += seconds

    def take(self) -> dict[str, float]:
        """Milliseconds per region since the last call; synchronises the device once if it must."""
        if self._events:
            torch.cuda.synchronize(self.device)
        totals = {name: self._host.get(name, 0.0) * 1000.0 for name in self.regions}
        for name, pairs in self._events.items():
            totals[name] += sum(start.elapsed_time(stop) for start, stop in pairs)
        self._host.clear()
        self._events.clear()
        return totals

    def reduce(self, elapsed_per_iteration_ms: float, iterations: int) -> dict[str, float]:
        """The interval's timer fields, every rank taking part: each region's total per iteration
        (max over ranks), peak memory (max over ranks), slowest and fastest rank's iteration time."""
        regions = self.take()
        values = [regions[name] / max(iterations, 1) for name in self.regions]
        values += [peak_memory_mb(self.device), elapsed_per_iteration_ms, -elapsed_per_iteration_ms]
        reduced = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(reduced, op=torch.distributed.ReduceOp.MAX)
        out = reduced.tolist()
        count = len(self.regions)
        fields = {f"time_{name}_ms": out[index] for index, name in enumerate(self.regions)}
        fields["peak_memory_mb"] = out[count]
        fields["iteration_ms_slowest_rank"] = out[count + 1]
        fields["iteration_ms_fastest_rank"] = -out[count + 2]
        return fields


def peak_memory_mb(device: torch.device) -> float:
    """Peak device memory allocated by torch (GPU), or the process's peak resident size (CPU)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


class MegatronCoreTimers:
    """megatron-core's ``config.timers`` interface (``timers(name, log_level).start()`` /
    ``.stop()``, as ``megatron.core.timers.Timers``) writing into :class:`IntervalTimers`.

    megatron-core's own ``Timers`` synchronises the device at every start and stop and cannot run
    on a CPU-only torch; this one records CUDA events (or reads the host clock) like every other
    region.  Only the per-micro-batch compute timers are taken; the others are ignored.
    """

    class _Region:
        def __init__(self, timers: IntervalTimers, name: str):
            self.timers, self.name = timers, name

        def start(self, barrier: bool = False) -> None:
            self.timers.start(self.name)

        def stop(self, barrier: bool = False) -> None:
            self.timers.stop(self.name)

    class _Ignored:
        def start(self, barrier: bool = False) -> None:
            pass

        def stop(self, barrier: bool = False) -> None:
            pass

    def __init__(self, timers: IntervalTimers):
        self._compute = self._Region(timers, "stage_compute")
        self._ignored = self._Ignored()

    def __call__(self, name: str, log_level: int | None = None):
        return self._compute if name in STAGE_COMPUTE_TIMERS else self._ignored


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
