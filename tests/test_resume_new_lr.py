"""Resume with a new learning rate and weight decay (``--override-opt_param-scheduler``).

4 iterations at lr 1e-3 (weight decay 0.01), then a resume from iteration 4 with ``--lr 5e-4
--weight-decay 0.1 --override-opt_param-scheduler``.  Iteration 5 must run at 5e-4 on the loaded
weights, data position and Adam moments: its loss and its moments equal those of a straight
5-iteration run (same weights, same batch, so the same gradient), and its weights are exactly
AdamW's step 5 from the iteration-4 weights with lr 5e-4 and those moments.  Without the flag the
resume is refused with one error naming both values and the flag.  Both optimizers: megatron's
distributed optimizer (DP=2) and the plain one (1 rank).
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch

from megatron_mio.checkpoint.layout import iteration_dir, write_tracker
from megatron_mio.training.arguments import ConfigError, parse_args
from megatron_mio.training.checkpointing import resume_point
from megatron_mio.training.resume import check_schedule
from tests.test_checkpoint import read_checkpoint
from tests.trainer_runs import train

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]

BETA1, BETA2, EPS = 0.9, 0.95, 1e-8
OLD_LR, NEW_LR, OLD_WD, NEW_WD = 1e-3, 5e-4, 0.01, 0.1
RUN = [
    "--use-cpu", "--mock-data", "--model-preset", "tiny", "--num-layers", "4", "--vocab-size", "300",
    "--seq-length", "64", "--micro-batch-size", "1", "--global-batch-size", "4", "--lr-decay-style", "constant",
    "--lr-warmup-iters", "0", "--adam-beta1", str(BETA1), "--adam-beta2", str(BETA2), "--adam-eps", str(EPS),
    "--train-iters", "5", "--log-interval", "1",
]
# The distributed optimizer saved fully_reshardable: its moments are stored per parameter, which
# this test reads (dp_reshardable stores flat per-rank buffers).
OPTIMIZERS = {"distributed": (2, ["--use-distributed-optimizer", "--dist-ckpt-optim-fully-reshardable"]),
              "plain": (1, [])}
NEW = ["--lr", str(NEW_LR), "--weight-decay", str(NEW_WD)]


@pytest.fixture(scope="module", params=sorted(OPTIMIZERS))
def runs(request, tmp_path_factory):
    nproc, optimizer = OPTIMIZERS[request.param]
    root = Path(tmp_path_factory.mktemp(f"new_lr_{request.param}"))
    straight = train(root, "straight", nproc, [*optimizer, "--lr", str(OLD_LR), "--weight-decay", str(OLD_WD),
                                               "--save", root / "straight_ckpt", "--save-interval", "4"], base=RUN)
    ckpt = root / "resumed_ckpt"
    ckpt.mkdir()
    shutil.copytree(iteration_dir(root / "straight_ckpt", 4), iteration_dir(ckpt, 4))
    write_tracker(ckpt, 4)
    # The same resume without the flag, checked before the resumed run saves iteration 5 there.
    refused = parse_args([*RUN, *optimizer, *NEW, "--load", str(ckpt)], world_size=nproc)
    with pytest.raises(ConfigError) as refusal:
        check_schedule(refused.optim, refused.checkpoint, resume_point(refused.checkpoint))
    resumed = train(root, "resumed", nproc, [*optimizer, *NEW, "--override-opt_param-scheduler",
                                             "--load", ckpt, "--save", ckpt], base=RUN)
    return {"straight": straight, "resumed": resumed, "refusal": str(refusal.value), "r4_dir": iteration_dir(ckpt, 4),
            "s4": read_checkpoint(iteration_dir(root / "straight_ckpt", 4)),
            "s5": read_checkpoint(iteration_dir(root / "straight_ckpt", 5)),
            "r5": read_checkpoint(iteration_dir(ckpt, 5)), "r5_dir": iteration_dir(ckpt, 5)}


def test_without_the_flag_the_resume_is_refused_naming_both_values(runs):
    message = runs["refusal"]
    assert message.startswith(f"--load {runs['r4_dir']} was trained with another schedule")
    for part in ("--lr: 0.001 in the checkpoint, 0.0005 now", "--start-weight-decay (or --weight-decay): 0.01 in "
                 "the checkpoint, 0.1 now", "--override-opt_param-scheduler"):
        assert part in message, message


def test_iteration_5_runs_at_the_new_rate_from_the_loaded_state(runs):
    straight, resumed = runs["straight"], runs["resumed"]
    [record] = resumed["records"]
    assert record["iteration"] == 5 and record["learning_rate"] == NEW_LR
    assert straight["records"][4]["learning_rate"] == OLD_LR
    # Same weights and the same batch as the straight run's iteration 5: the data position is restored.
    assert record["consumed_samples"] == straight["records"][4]["consumed_samples"] == 20
    assert record["loss"] == straight["losses"][5]


def test_new_values_are_in_the_schedule_and_param_groups(runs):
    from megatron.core import dist_checkpointing

    common = dist_checkpointing.load_common_state_dict(runs["r5_dir"])
    schedule = common["opt_param_scheduler"]
    assert (schedule["max_lr"], schedule["start_wd"], schedule["end_wd"], schedule["num_steps"]) == (NEW_LR, NEW_WD, NEW_WD, 5)
    groups = [g for g in _param_groups(common["optimizer"])]
    assert groups and all(g["max_lr"] == NEW_LR and g["lr"] == NEW_LR for g in groups)
    assert sorted(g["weight_decay"] for g in groups) == [0.0, NEW_WD]  # norms decay-free, weights at the new value


def test_moments_are_the_loaded_ones_and_the_step_is_adamw_at_the_new_rate(runs):
    s4, s5, r5 = runs["s4"], runs["s5"], runs["r5"]
    names = [k for k in r5 if not k.startswith("optimizer.")]
    assert len(names) == 9
    worst = {"new lr": 0.0, "old lr": 0.0, "fresh moments": 0.0, "second moment": 0.0}
    for name in names:
        m5, v5 = r5[f"optimizer.state.exp_avg.{name}"], r5[f"optimizer.state.exp_avg_sq.{name}"]
        # Same gradient as the straight run (same weights, same batch) on top of the same moments.
        assert torch.equal(m5, s5[f"optimizer.state.exp_avg.{name}"]), name
        assert torch.equal(v5, s5[f"optimizer.state.exp_avg_sq.{name}"]), name
        m4, v4 = s4[f"optimizer.state.exp_avg.{name}"].double(), s4[f"optimizer.state.exp_avg_sq.{name}"].double()
        grad = (m5.double() - BETA1 * m4) / (1 - BETA1)
        # The second moment too was updated from the loaded one, with the gradient the first implies.
        v5_from_v4 = BETA2 * v4 + (1 - BETA2) * grad * grad
        worst["second moment"] = max(worst["second moment"], (v5.double() - v5_from_v4).abs().max().item() / v5.abs().max().item())
        decay = 0.0 if "norm" in name else NEW_WD
        p4, p5 = s4[name].double(), r5[name].double()
        scale = (p5 - p4).abs().max().item()
        worst["new lr"] = max(worst["new lr"], (p5 - adamw(p4, m5.double(), v5.double(), 5, NEW_LR, decay)).abs().max().item() / scale)
        worst["old lr"] = max(worst["old lr"], (p5 - adamw(p4, m5.double(), v5.double(), 5, OLD_LR, decay)).abs().max().item() / scale)
        fresh_m, fresh_v = (1 - BETA1) * grad, (1 - BETA2) * grad * grad
        worst["fresh moments"] = max(worst["fresh moments"], (p5 - adamw(p4, fresh_m, fresh_v, 1, NEW_LR, decay)).abs().max().item() / scale)
    # Relative to the size of the step (the second moment: to its own size): float32 rounding only
    # (measured ~1e-4 and ~1e-7), against errors of order one.
    assert worst["new lr"] < 1e-3 and worst["second moment"] < 1e-5, worst
    assert worst["old lr"] > 0.3 and worst["fresh moments"] > 0.3, worst


def adamw(param, exp_avg, exp_avg_sq, step, lr, weight_decay):
    """torch.optim.AdamW's update (decoupled weight decay, bias correction at ``step``)."""
    param = param * (1 - lr * weight_decay)
    denom = (exp_avg_sq.sqrt() / math.sqrt(1 - BETA2 ** step)) + EPS
    return param - lr / (1 - BETA1 ** step) * exp_avg / denom


def _param_groups(state):
    if isinstance(state, dict):
        for key, value in state.items():
            if key == "param_groups":
                yield from value
            else:
                yield from _param_groups(value)
