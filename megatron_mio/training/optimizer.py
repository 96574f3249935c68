"""megatron-core's (distributed) AdamW, its LR/WD scheduler, and the optimizer step with skipping.

Two silent resume bugs of megatron-core 0.19.2 are fixed here.  Both live in the path where
neither transformer-engine nor apex is installed, so the distributed optimizer wraps
``torch.optim.AdamW`` (always the case on CPU).  The fixes apply to torch's Adam/AdamW only:
transformer-engine's and apex's FusedAdam keep ``step`` in the param groups, and TE's
``state_dict`` raises ``KeyError: 'step'`` on a state entry it does not know.

1. ``DistributedOptimizer.load_state_dict`` gives every parameter's state *the same* ``step``
   tensor; ``torch.optim.AdamW`` then increments it once per parameter, so after one step the
   bias correction uses step ``3 + n_params`` instead of 4.  Wrong loss after resume, no error.
2. ``DistributedOptimizer._set_main_param_and_optimizer_states`` copies every tensor of the
   optimizer state, including ``step``: the fully-reshardable load has no ``step`` key and
   fails; the dp-reshardable load reads ``step`` back as 0, so AdamW's bias correction restarts
   after a resume (wrong updates, no error).  It also runs with autograd on, which fails for
   fp32 models, whose main parameters are views of the model's leaves.

``tests/test_checkpoint.py`` resumes 3+3 iterations against 6 straight and compares losses
exactly; it fails with either fix removed.
"""

from __future__ import annotations

import math
from types import MethodType

import torch
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer
from megatron.core.optimizer.optimizer import ChainedOptimizer, MegatronOptimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from megatron_mio.model.model_config import Precision
from megatron_mio.training.config import OptimConfig


def optimizer_config(optim: OptimConfig, precision: Precision, *, distributed: bool,
                     overlap_param_gather: bool = False) -> OptimizerConfig:
    """AdamW with decoupled weight decay; clipping by global norm (``--clip-grad``)."""
    return OptimizerConfig(
        optimizer="adam",
        lr=optim.lr,
        min_lr=optim.min_lr,
        weight_decay=optim.weight_decay,
        adam_beta1=optim.adam_beta1,
        adam_beta2=optim.adam_beta2,
        adam_eps=optim.adam_eps,
        decoupled_weight_decay=True,
        clip_grad=optim.clip_grad,
        bf16=precision.bf16,
        fp16=precision.fp16,
        params_dtype=precision.dtype,
        loss_scale=precision.loss_scale,
        initial_loss_scale=precision.initial_loss_scale,
        min_loss_scale=precision.min_loss_scale,
        use_distributed_optimizer=distributed,
        overlap_param_gather=overlap_param_gather,
    )


def build_optimizer(config: OptimizerConfig, model_chunks) -> MegatronOptimizer:
    """megatron-core's optimizer for ``model_chunks`` (``config``: from :func:`optimizer_config`)."""
    optimizer = get_megatron_optimizer(config, model_chunks)
    for inner in _distributed_torch_adams(optimizer):
        _fix_torch_adam_step_state(inner)
    return optimizer


def build_scheduler(optim: OptimConfig, optimizer) -> OptimizerParamScheduler:
    """Warmup then decay, Megatron-LM semantics (steps are iterations)."""
    return OptimizerParamScheduler(
        optimizer,
        init_lr=optim.lr_warmup_init,
        max_lr=optim.lr,
        min_lr=optim.min_lr,
        lr_warmup_steps=optim.lr_warmup_steps,
        lr_decay_steps=optim.lr_decay_iters,
        lr_decay_style=optim.lr_decay_style,
        start_wd=optim.start_weight_decay,
        end_wd=optim.end_weight_decay,
        wd_incr_steps=optim.weight_decay_incr_iters,
        wd_incr_style=optim.weight_decay_incr_style,
        use_checkpoint_opt_param_scheduler=not optim.override_opt_param_scheduler,
        override_opt_param_scheduler=optim.override_opt_param_scheduler,
    )


def leaf_optimizers(optimizer: MegatronOptimizer) -> list[MegatronOptimizer]:
    if isinstance(optimizer, ChainedOptimizer):
        return list(optimizer.chained_optimizers)
    return [optimizer]


def _distributed_torch_adams(optimizer: MegatronOptimizer) -> list[DistributedOptimizer]:
    """The DistributedOptimizers that wrap torch's own Adam/AdamW (the ones with the bugs)."""
    return [
        inner for inner in leaf_optimizers(optimizer)
        if isinstance(inner, DistributedOptimizer) and isinstance(inner.optimizer, torch.optim.Adam)
    ]


def _fix_torch_adam_step_state(dist_opt: DistributedOptimizer) -> None:
    """Patch one DistributedOptimizer instance (see the module docstring)."""
    original_load = dist_opt.load_state_dict
    original_set = dist_opt._set_main_param_and_optimizer_states

    def load_state_dict(self, state_dict):
        original_load(state_dict)
        # Bug 1: give each parameter its own step counter (torch increments it in place).
        for state in self.optimizer.state.values():
            step = state.get("step")
            if isinstance(step, torch.Tensor):
                state["step"] = step.detach().clone()

    def set_main_param_and_optimizer_states(self, model_param, tensors):
        # Bug 2: ``step`` is not a per-element tensor of the checkpoint; it is restored from the
        # param groups by load_state_dict.  Hand the current step through unchanged (a
        # fully_reshardable state has no ``step``; a dp_reshardable one reads it back as 0).
        group_index, group_order = self.model_param_group_index_map[model_param]
        main_param = self.optimizer.param_groups[group_index]["params"][group_order]
        step = self.optimizer.state.get(main_param, {}).get("step")
        if isinstance(step, torch.Tensor):
            tensors = {**tensors, "step": step.clone()}
        # Bug 3: the dp_reshardable load calls this with autograd on; with fp32 parameters the
        # main parameter is a view of the model's leaf and the in-place copy raises.
        with torch.no_grad():
            return original_set(model_param, tensors)

    dist_opt.load_state_dict = MethodType(load_state_dict, dist_opt)
    dist_opt._set_main_param_and_optimizer_states = MethodType(set_main_param_and_optimizer_states, dist_opt)


def optimizer_step(optimizer: MegatronOptimizer) -> tuple[bool, float]:
    """Clip and step, unless the gradient is not finite: returns (stepped, grad norm).

    megatron-core's ``step()`` only skips on an fp16 loss-scale overflow; with bf16/fp32 a NaN
    gradient would reach AdamW and poison every weight.  So the same sequence as
    ``MegatronOptimizer.step`` is run here with a finiteness check between the global grad
    norm (identical on every rank) and the parameter update.
    """
    if optimizer.prepare_grads():  # fp16 loss-scale overflow, already counted by the scaler
        return False, float("nan")
    clip = optimizer.config.clip_grad
    grad_norm = optimizer.clip_grad_norm(clip) if clip > 0 else optimizer.get_grad_norm()
    grad_norm = float(grad_norm)
    if not math.isfinite(grad_norm):
        return False, grad_norm
    stepped = optimizer.step_with_ready_grads()
    return bool(stepped), grad_norm


def initialize_empty_state(optimizer: MegatronOptimizer) -> None:
    """Give a fresh torch AdamW behind a DistributedOptimizer its state before a checkpoint load.

    ``DistributedOptimizer.state_dict()`` (called while building the load request) reads every
    parameter's ``step`` and fails on an optimizer that has not stepped yet; zeros are the state
    of a step-0 AdamW, and the load then overwrites them.  Fused Adams (TE, apex) keep ``step``
    in their param groups and need nothing here.
    """
    for inner in _distributed_torch_adams(optimizer):
        for group in inner.optimizer.param_groups:
            for param in group["params"]:
                state = inner.optimizer.state[param]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(param.data)
                    state["exp_avg_sq"] = torch.zeros_like(param.data)
