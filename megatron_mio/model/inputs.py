"""A packed batch (``megatron_mio.data.batch``) -> the keyword arguments of ``GPTModel.forward``.

Shared by the trainer's forward step and the conversion's logit parity, so both run the model
exactly alike.
"""

from __future__ import annotations

import torch

from megatron_mio.model.attention import attention_kwargs


def model_inputs(batch: dict, attention_backend: str, host_cu_seqlens: torch.Tensor | None = None) -> dict:
    """The GPTModel keyword arguments for one batch (on its device) and attention backend.

    Document boundaries come from ``host_cu_seqlens`` (default: the batch's own, on the CPU).
    """
    tokens = batch["tokens"]
    cu_seqlens = batch["cu_seqlens"] if host_cu_seqlens is None else host_cu_seqlens
    inputs = {"input_ids": tokens, "position_ids": batch["position_ids"]}
    inputs.update(attention_kwargs(cu_seqlens, tokens.shape[1], attention_backend, tokens.device))
    return inputs
