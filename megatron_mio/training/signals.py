"""Preemption: SIGTERM / SIGUSR1 ask the run to finish its iteration, save, and exit 0.

Slurm sends SIGUSR1 (``#SBATCH --signal=USR1@120``) or SIGTERM before it kills a job.  The
handler only records the signal; the training loop asks :meth:`ExitSignal.requested` after each
iteration, which all-reduces the flag so that every rank stops at the same iteration (a rank
that got the signal a moment later still saves the same checkpoint).
"""

from __future__ import annotations

import logging
import signal

import torch

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class ExitSignal:
    def __init__(self, enabled: bool, device: torch.device):
        self.received: int | None = None
        self.device = device
        self._previous = {}
        if enabled:
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.received is None:
            log.warning("received %s: finishing this iteration, then saving and exiting", signal.Signals(signum).name)
        self.received = signum

    def requested(self) -> bool:
        """True on every rank when any rank received a signal (a collective: call on all ranks)."""
        flag = torch.tensor([1 if self.received is not None else 0], dtype=torch.int32, device=self.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
