"""One micro-batch through GPTModel, in the shape megatron-core's pipeline schedules expect.

The loss is per token: ``loss_func`` returns the *sum* of the cross-entropy over labelled tokens
and their count, so megatron-core (``calculate_per_token_loss=True``) and ``finalize_model_grads``
divide by the number of labelled tokens of the whole global batch, across micro-batches and DP
ranks.  Packs of different fill therefore weigh each token equally, as the paper's loss does.
"""

from __future__ import annotations

from functools import partial

import torch
from megatron.core import parallel_state
from megatron.core.utils import get_attr_wrapped_model

from megatron_mio.model.inputs import model_inputs
from megatron_mio.training.losses import LossReport


def loss_and_reports(loss_mask: torch.Tensor, modality: torch.Tensor, token_losses: torch.Tensor):
    """megatron-core's per-token loss triple: the summed loss, its token count, and the report.

    The report (:class:`LossReport`: overall and per-modality sums) is summed over micro-batches
    and data-parallel ranks by the trainer before it divides.
    """
    total = (token_losses.float() * loss_mask.float()).sum()
    count = loss_mask.float().sum().to(torch.int)
    return total, count, LossReport.of_tokens(token_losses, loss_mask, modality)


def forward_step(data_iterator, model, attention_backend: str = "local", device=None):
    """megatron-core ``forward_step_func``: returns the stage output and the loss closure."""
    batch = next(data_iterator)  # every pipeline stage reads the batch: all need cu_seqlens
    # The chunk's virtual stage sits on the GPTModel inside the DDP / Float16Module wrappers.
    vp_stage = get_attr_wrapped_model(model, "vp_stage")
    first = parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage)
    last = parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage)
    host_cu_seqlens = batch["cu_seqlens"]
    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()} if device is not None else batch
    inputs = model_inputs(batch, attention_backend, host_cu_seqlens)
    if not first:
        inputs["input_ids"] = None
    labels = batch["labels"] if last else None
    output = model(**inputs, labels=labels)
    return output, partial(loss_and_reports, batch["loss_mask"], batch["modality"])
