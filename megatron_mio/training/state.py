"""Where a run is: :class:`TrainState`, what a checkpoint saves and a resume restores."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainState:
    iteration: int = 0
    consumed_samples: int = 0
    skipped_total: int = 0  # iterations whose update was skipped (non-finite loss or gradient)
    skipped_in_a_row: int = 0
    last_saved: int | None = None  # the iteration of the newest checkpoint of this run, if any

    def counters(self) -> dict:
        """What a checkpoint records beside the iteration and consumed samples (Megatron-LM's keys)."""
        return {"skipped_total": self.skipped_total, "skipped_in_a_row": self.skipped_in_a_row}

    @classmethod
    def restored(cls, iteration: int, consumed_samples: int, counters: dict | None) -> TrainState:
        """The state a checkpoint of ``iteration`` holds (older checkpoints have no counters)."""
        counters = counters or {}
        return cls(iteration, consumed_samples, int(counters.get("skipped_total", 0)),
                   int(counters.get("skipped_in_a_row", 0)), last_saved=iteration)
