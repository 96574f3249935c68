"""Where the code runs: CUDA + NCCL on clusters (the product), CPU + gloo for tests and laptops.

This is the one switch between the two paths.  ``setup(use_cpu)`` is called once at start-up,
before megatron-core builds anything; every other module asks the returned :class:`Platform` for
its device and never branches on CUDA availability itself.  The CPU redirection (``cpu.py``) is
imported and enabled only when ``use_cpu`` is true.
"""

from __future__ import annotations

import os
import re
import sys
import warnings
from dataclasses import dataclass
from datetime import timedelta

import torch

ENV_USE_CPU = "MIO_USE_CPU"


@dataclass(frozen=True)
class Platform:
    device: torch.device
    backend: str  # torch.distributed backend
    use_cpu: bool

    @property
    def rng_device_type(self) -> str:
        """Which generator ``torch.cuda``'s RNG calls reach: the GPU's, or (CPU redirection) the host's."""
        return "cpu" if self.use_cpu else "cuda"


def cpu_requested(flag: bool = False) -> bool:
    """``--use-cpu`` or ``MIO_USE_CPU=1`` in the environment."""
    return bool(flag) or os.environ.get(ENV_USE_CPU, "") not in ("", "0")


def local_device_index(environ=os.environ, device_count: int | None = None) -> int:
    """This process's GPU on its node: ``LOCAL_RANK`` modulo the GPUs it can see.

    The modulo keeps launchers that give each task one visible GPU (``CUDA_VISIBLE_DEVICES`` per
    rank, as some Slurm set-ups do) working, where ``LOCAL_RANK`` would point past the device list.
    """
    count = torch.cuda.device_count() if device_count is None else device_count
    return int(environ.get("LOCAL_RANK", "0")) % max(count, 1)


def check_rendezvous(environ=os.environ) -> None:
    """Refuse a world of one where Slurm started several tasks without torchrun.

    A bare ``srun -n 8 python -m megatron_mio.pretrain`` gives each task no ``RANK``; joining a
    world of one there would train eight independent models, each believing it is alone.
    """
    if "RANK" in environ:
        return
    tasks = int(environ.get("SLURM_STEP_NUM_TASKS") or 1)
    if tasks > 1:
        raise RuntimeError(
            f"Slurm started {tasks} tasks of this step but none has a torchrun rendezvous (RANK is unset): "
            "launch one torchrun per node (examples/launch_common.sh), or srun a single task"
        )


def setup(use_cpu: bool = False) -> Platform:
    """Choose the device and backend for this process; on CPU, enable the redirection."""
    use_cpu = cpu_requested(use_cpu)
    if use_cpu:
        from megatron_mio.platform import cpu

        cpu.enable()
        return Platform(device=torch.device("cpu"), backend="gloo", use_cpu=True)
    if not torch.cuda.is_available():
        raise RuntimeError(
            "no CUDA device is visible; pass --use-cpu (or set MIO_USE_CPU=1) to run on the CPU"
        )
    index = local_device_index()
    torch.cuda.set_device(index)
    return Platform(device=torch.device("cuda", index), backend="nccl", use_cpu=False)


def describe(platform: Platform, attention_backend: str) -> str:
    """The one start-up line of a CLI: device, process-group backend and attention backend."""
    device = platform.device
    name = "" if platform.use_cpu else f" ({torch.cuda.get_device_name(device)})"
    return f"device {device}{name} ({platform.backend}), attention backend {attention_backend}"


# megatron-core warns from every module that has a fallback (optimizers, norms, multi-tensor
# kernels: six warnings, each at its own place) that transformer-engine / apex are missing.
_MISSING_FUSED = re.compile(r"(Transformer Engine|Apex)\b.*\bnot installed", re.IGNORECASE)
_SHOWN = {"missing_fused": False}


def quiet_import_warnings() -> None:
    """Show megatron-core's "transformer-engine / apex not installed" warnings once per process,
    as one line; every other warning is shown as before.  CLIs call this before importing
    megatron-core."""
    original = warnings.showwarning
    if getattr(original, "_mio_quiet", False):
        return

    def show(message, category, filename, lineno, file=None, line=None):
        if not _MISSING_FUSED.search(str(message)):
            return original(message, category, filename, lineno, file, line)
        if not _SHOWN["missing_fused"]:
            _SHOWN["missing_fused"] = True
            print("warning: megatron-core: transformer-engine and apex are not installed; using its "
                  "torch fallbacks (optimizers, norms, multi-tensor kernels)", file=file or sys.stderr)

    show._mio_quiet = True
    warnings.showwarning = show


def init_distributed(platform: Platform, timeout_minutes: int = 30) -> None:
    """Join the process group torchrun (or srun + torchrun) described in the environment.

    A plain ``python`` run without torchrun becomes a world of one on a free local port; the
    process environment is left untouched, so child processes never inherit a stale rendezvous.
    """
    if torch.distributed.is_initialized():
        return
    check_rendezvous()
    kwargs = {}
    if not platform.use_cpu:
        kwargs["device_id"] = platform.device
    if "RANK" not in os.environ:
        kwargs.update(init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    torch.distributed.init_process_group(
        backend=platform.backend, timeout=timedelta(minutes=timeout_minutes), **kwargs
    )


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
