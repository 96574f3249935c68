"""Attention backends that keep every document of a pack to itself.

``local``: megatron-core's DotProductAttention with a dense block-diagonal causal mask
``[b, 1, s, s]`` (True = masked).  The layer spec sets ``attn_mask_type=arbitrary`` so that no
fused causal softmax can replace our mask by a plain causal one (the Megatron-LM trap where
documents silently attend to each other).
"""

from __future__ import annotations

from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.spec_utils import ModuleSpec

from megatron_mio.data.batch import document_causal_mask

BACKENDS = ("local",)


def layer_spec(backend: str) -> ModuleSpec:
    """The transformer-layer spec for one attention backend."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; available: {BACKENDS}")
    spec = get_gpt_layer_local_spec(normalization="RMSNorm")
    spec.submodules.self_attention.params["attn_mask_type"] = AttnMaskType.arbitrary
    return spec


def attention_kwargs(cu_seqlens, seq_length: int, backend: str) -> dict:
    """What GPTModel.forward needs, besides ids and positions, to keep documents apart."""
    if backend == "local":
        return {"attention_mask": document_causal_mask(cu_seqlens, seq_length)}
    raise ValueError(f"unknown attention backend {backend!r}; available: {BACKENDS}")
