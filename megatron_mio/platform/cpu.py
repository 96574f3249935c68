"""Run megatron-core on the CPU: the redirection that makes its CUDA-only code paths work.

megatron-core assumes CUDA everywhere: it calls ``torch.cuda.current_device()``, creates tensors
with ``device="cuda"`` literals (the pipeline schedules, the grad buffers), moves modules with
``.cuda()``, keeps a "CUDA" RNG tracker, waits on CUDA streams, and compares ``Tensor.type()`` with
``'torch.cuda.FloatTensor'`` in the optimizers and gradient clipping.  For tests and laptops we
redirect all of that to the CPU, in three pieces:

1. ``_CudaToCpuMode``: a ``TorchFunctionMode`` that rewrites every ``cuda`` device argument of a
   torch call to ``cpu`` and turns ``Tensor.cuda()`` / ``pin_memory()`` into no-ops.
2. Stand-ins for the ``torch.cuda`` functions megatron-core calls (device index, streams, events,
   synchronisation, memory statistics, the RNG), which behave as a single device would.
3. ``Tensor.type()`` without arguments reports CPU float tensors under their CUDA names, so the
   optimizer's dtype checks take the same branches as on a GPU.

Nothing here is imported or active unless :func:`enable` is called, which happens only through
``megatron_mio.platform.setup(use_cpu=True)`` (``--use-cpu`` or ``MIO_USE_CPU=1``).  Sequence
parallelism and fused kernels need transformer-engine or apex and are not available on this path.
"""

from __future__ import annotations

import contextlib
import functools
import logging

import torch
from torch.overrides import TorchFunctionMode

_ENABLED = False
_MODE: "_CudaToCpuMode | None" = None

_CUDA_TYPE_NAMES = {
    "torch.FloatTensor": "torch.cuda.FloatTensor",
    "torch.HalfTensor": "torch.cuda.HalfTensor",
    "torch.BFloat16Tensor": "torch.cuda.BFloat16Tensor",
}


def _is_cuda_device(value) -> bool:
    # megatron passes torch.cuda.current_device() (an int) as a device: ints name CUDA devices.
    if isinstance(value, int) and not isinstance(value, bool):
        return True
    if isinstance(value, torch.device):
        return value.type == "cuda"
    if isinstance(value, str):
        return value == "cuda" or value.startswith("cuda:")
    return False


def _to_cpu(value):
    return torch.device("cpu") if _is_cuda_device(value) else value


class _CudaToCpuMode(TorchFunctionMode):
    """Rewrites CUDA device arguments of every torch call to the CPU."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.Tensor.cuda, torch.Tensor.pin_memory):
            return args[0]
        if "device" in kwargs:
            kwargs["device"] = _to_cpu(kwargs["device"])
        if kwargs.get("pin_memory"):
            kwargs["pin_memory"] = False
        if func is torch.Tensor.to or func is torch.nn.Module.to:
            args = tuple(_to_cpu(a) for a in args)
        return func(*args, **kwargs)


class _Stream:
    """A CUDA stream stand-in: on the CPU all work is already ordered."""

    def __init__(self, *args, **kwargs):
        pass

    def wait_stream(self, other):
        pass

    def wait_event(self, event):
        pass

    def record_event(self, event=None):
        return event or _Event()

    def synchronize(self):
        pass

    def query(self):
        return True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _Event:
    def __init__(self, *args, **kwargs):
        pass

    def record(self, stream=None):
        pass

    def wait(self, stream=None):
        pass

    def synchronize(self):
        pass

    def query(self):
        return True

    def elapsed_time(self, other):
        return 0.0


_DEFAULT_STREAM = _Stream()


def _patch_torch_cuda() -> None:
    cuda = torch.cuda
    cuda.current_device = lambda: 0
    cuda.set_device = lambda device: None
    cuda.device_count = lambda: 1
    cuda.synchronize = lambda device=None: None
    cuda.empty_cache = lambda: None
    cuda.current_stream = lambda device=None: _DEFAULT_STREAM
    cuda.default_stream = lambda device=None: _DEFAULT_STREAM
    cuda.Stream = _Stream
    cuda.Event = _Event
    cuda.stream = lambda stream=None: contextlib.nullcontext()
    cuda.memory_allocated = lambda device=None: 0
    cuda.max_memory_allocated = lambda device=None: 0
    cuda.memory_reserved = lambda device=None: 0
    cuda.max_memory_reserved = lambda device=None: 0
    cuda.reset_peak_memory_stats = lambda device=None: None
    # The "CUDA" RNG is the CPU generator: dropout and init on the CPU draw from it.
    # (torch.manual_seed itself calls cuda.manual_seed_all, hence the generator call.)
    cuda.manual_seed = lambda seed: torch.default_generator.manual_seed(int(seed))
    cuda.manual_seed_all = lambda seed: None
    cuda.get_rng_state = lambda device="cuda": torch.get_rng_state()
    cuda.set_rng_state = lambda state, device="cuda": torch.set_rng_state(state)
    cuda.random.get_rng_state = cuda.get_rng_state
    cuda.random.set_rng_state = cuda.set_rng_state


def _patch_megatron_rng() -> None:
    from megatron.core.tensor_parallel import random as mpu_random

    mpu_random._get_cuda_rng_state = lambda device="cuda", clone=False, graph_safe=False: (
        torch.get_rng_state()
    )
    mpu_random._set_cuda_rng_state = lambda new_state, device=-1, graph_safe=False: (
        torch.set_rng_state(new_state)
    )


def _patch_tensor_type() -> None:
    original = torch.Tensor.type

    @functools.wraps(original)
    def type_with_cuda_names(self, dtype=None, non_blocking=False, **kwargs):
        if dtype is None and not kwargs:
            name = original(self)
            return _CUDA_TYPE_NAMES.get(name, name)
        return original(self, dtype, non_blocking, **kwargs)

    torch.Tensor.type = type_with_cuda_names


class _DropAliasedRngWarning(logging.Filter):
    # The tracker's "CUDA" state is the CPU generator here, so it always sees the CPU state move.
    def filter(self, record: logging.LogRecord) -> bool:
        return "CPU RNG state changed within GPU RNG context" not in record.getMessage()


def enable() -> None:
    """Switch the CPU redirection on for the rest of this process (idempotent)."""
    global _ENABLED, _MODE
    if _ENABLED:
        return
    if torch.cuda.is_available():
        raise RuntimeError(
            "--use-cpu redirection requested on a machine with CUDA; run without --use-cpu "
            "(or set CUDA_VISIBLE_DEVICES='') so that GPU runs are never patched"
        )
    _patch_torch_cuda()
    _patch_megatron_rng()
    _patch_tensor_type()
    logging.getLogger("megatron.core.tensor_parallel.random").addFilter(_DropAliasedRngWarning())
    _MODE = _CudaToCpuMode()
    _MODE.__enter__()
    _ENABLED = True


def is_enabled() -> bool:
    return _ENABLED
