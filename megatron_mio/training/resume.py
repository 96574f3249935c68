"""Resuming with new hyperparameters: ``--lr``, ``--min-lr`` and weight decay from the flags.

A checkpoint records the schedule (``OptimizerParamScheduler.state_dict()``: ``max_lr``,
``min_lr``, ``start_wd``, ``end_wd``, ...) and, in every optimizer parameter group, the
``max_lr`` / ``min_lr`` the group was built with, which megatron-core uses as the group's identity
when it loads the optimizer.  A resume with another ``--lr`` therefore failed inside megatron-core
("Could not find parameter group with key ...").  As in Megatron-LM, ``--override-opt_param-scheduler``
takes the schedule from the flags.  Here:

- without it, a changed value is one error naming the checkpoint's value, the flag's value and
  ``--override-opt_param-scheduler``, raised before any process group or model exists;
- with it, the saved parameter groups are given this run's values before the optimizer state is
  loaded, so the Adam moments, the step count, the iteration and the data position come from the
  checkpoint and the rates from the flags.

Schedule *lengths* (warmup, decay iterations) are not compared: they follow ``--train-iters``
when not given, and extending a run changes them; megatron-core keeps the checkpoint's unless the
schedule is overridden (and logs which it uses).
"""

from __future__ import annotations

import logging

from megatron_mio.checkpoint.layout import SCHEDULER_KEY
from megatron_mio.training.arguments import ConfigError
from megatron_mio.training.config import CheckpointConfig, OptimConfig

log = logging.getLogger(__name__)

def schedule_settings(optim: OptimConfig) -> dict[str, tuple[object, str]]:
    """Scheduler state key -> (this run's value, the flag that sets it)."""
    return {
        "max_lr": (optim.lr, "--lr"),
        "min_lr": (optim.min_lr, "--min-lr"),
        "start_wd": (optim.start_weight_decay, "--start-weight-decay (or --weight-decay)"),
        "end_wd": (optim.end_weight_decay, "--end-weight-decay (or --weight-decay)"),
        "lr_decay_style": (optim.lr_decay_style, "--lr-decay-style"),
        "wd_incr_style": (optim.weight_decay_incr_style, "--weight-decay-incr-style"),
    }


def loads_schedule(checkpoint: CheckpointConfig, common: dict) -> bool:
    """Whether this run restores the optimizer and schedule from the checkpoint."""
    return not checkpoint.finetune and checkpoint.load_optim and SCHEDULER_KEY in common


def schedule_changes(optim: OptimConfig, saved: dict) -> list[tuple[str, object, object]]:
    """(flag, checkpoint value, this run's value) for every schedule value the flags change."""
    return [(flag, saved[key], value) for key, (value, flag) in schedule_settings(optim).items()
            if key in saved and saved[key] != value]


def check_schedule(optim: OptimConfig, checkpoint: CheckpointConfig, point) -> None:
    """Refuse a resume whose flags change the saved schedule unless ``--override-opt_param-scheduler``."""
    if point is None or not loads_schedule(checkpoint, point.common):
        return
    changes = schedule_changes(optim, point.common[SCHEDULER_KEY])
    if not changes:
        return
    described = "; ".join(f"{flag}: {old} in the checkpoint, {new} now" for flag, old, new in changes)
    if not optim.override_opt_param_scheduler:
        raise ConfigError(
            f"--load {point.directory} was trained with another schedule ({described}): pass "
            f"--override-opt_param-scheduler to continue with the new values (the Adam moments, the "
            f"iteration and the data position still come from the checkpoint), or give the checkpoint's values"
        )
    log.info("--override-opt_param-scheduler: %s", described)


def retarget_param_groups(optimizer_state: dict, saved_schedule: dict, max_lr: float, min_lr: float) -> None:
    """Give the saved parameter groups this run's ``max_lr`` / ``min_lr`` (in place).

    Only values equal to the saved schedule's are replaced: those are the groups built from the
    flags (a group with its own override would keep it, and megatron-core then names it).
    megatron-core matches saved groups by these two keys.
    """
    wanted = {"max_lr": max_lr, "min_lr": min_lr}
    for groups in _param_group_lists(optimizer_state):
        for group in groups:
            for key, value in wanted.items():
                if key in group and group[key] == saved_schedule.get(key):
                    group[key] = value


def _param_group_lists(state):
    """Every ``param_groups`` list in a (possibly chained, possibly distributed) optimizer state."""
    if isinstance(state, dict):
        for key, value in state.items():
            if key == "param_groups" and isinstance(value, list):
                yield value
            else:
                yield from _param_group_lists(value)
    elif isinstance(state, (list, tuple)):
        for value in state:
            yield from _param_group_lists(value)
