"""Preemption: SIGTERM / SIGUSR1 ask the run to finish its iteration, save, and exit 0.

Slurm sends the warning signal ahead of the time limit (the launch scripts ask for
``#SBATCH --signal=B:USR1@600``: USR1 to the batch shell ten minutes before, which relays it to
the trainers) and SIGTERM before it kills a job.  The handler only records the signal; the
trainer reads :attr:`ExitSignal.received` after each iteration in its one stop-check all-reduce
(``Trainer.should_stop``), so every rank stops at the same iteration (a rank that got the signal
a moment later still saves the same checkpoint).
"""

from __future__ import annotations

import logging
import signal

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class ExitSignal:
    """Records SIGTERM / SIGUSR1 while installed (``enabled``); :meth:`restore` uninstalls."""

    def __init__(self, enabled: bool):
        self.received: int | None = None
        self._previous = {}
        if enabled:
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.received is None:
            log.warning("received %s: finishing this iteration, then saving and exiting", signal.Signals(signum).name)
        self.received = signum

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
