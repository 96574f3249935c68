"""Attention backends that keep every document of a pack to itself (``--attention-backend``).

=========  ==============================================================  =====================
backend    core attention in the layer spec                                GPTModel.forward gets
=========  ==============================================================  =====================
``te``     transformer-engine's DotProductAttention (megatron's TE spec),  ``packed_seq_params``
           called in the ``thd`` layout with ``cu_seqlens``, mask type
           ``padding_causal``; only when transformer-engine imports
``torch``  :class:`~megatron_mio.model.document_attention.DocumentAttention`  ``packed_seq_params``
           (varlen flash / FlexAttention on CUDA, SDPA per document on CPU)
``local``  megatron's DotProductAttention with a dense block-diagonal      ``attention_mask``
           causal mask, mask type ``arbitrary``: the slow exact reference  ``[b, 1, s, s]``
=========  ==============================================================  =====================

The ``te`` and ``torch`` backends take the same :class:`PackedSeqParams` (``qkv_format="sbhd"``,
batch-major ``cu_seqlens`` over the micro-batch, see ``document_packed_seq_params``): the model
keeps its ``[s, b, h]`` activations, so pipeline shapes and the loss are identical for every
backend, and RoPE uses row positions, which is exact per document since RoPE is relative.

The known trap (Megatron-LM #2357, #415): a ``causal`` mask type lets megatron's fused softmax
build its own causal mask and silently drop the document mask.  Every core attention here checks
its mask type when built and refuses to run without document boundaries;
:func:`check_document_masking` refuses a model whose layers use any other core attention.
"""

from __future__ import annotations

import functools

import torch
from megatron.core.models.gpt.gpt_layer_specs import (
    get_gpt_layer_local_spec,
    get_gpt_layer_with_transformer_engine_spec,
)
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.spec_utils import ModuleSpec

from megatron_mio.model.document_attention import (
    DocumentAttention, batch_major, document_boundaries, document_causal_mask,
    document_packed_seq_params, require_host_tensor,
)

BACKENDS = ("te", "torch", "local")

# Mask types under which megatron's DotProductAttention applies the mask it is given.
_MASK_HONOURING_TYPES = (AttnMaskType.arbitrary, AttnMaskType.padding)


@functools.cache
def te_available() -> bool:
    """Whether transformer-engine imports (a GPU extra; never on the CPU machines)."""
    from megatron.core.extensions.transformer_engine import HAVE_TE

    return bool(HAVE_TE)


def default_backend() -> str:
    """``te`` when transformer-engine is installed, else ``torch``."""
    return "te" if te_available() else "torch"


def available_backends() -> tuple[str, ...]:
    """The backends that can run in this environment."""
    return tuple(b for b in BACKENDS if b != "te" or te_available())


class DocumentMaskedDotProductAttention(DotProductAttention):
    """megatron's DotProductAttention that cannot run without the document mask.

    Refuses, when built, a mask type under which the fused softmax would replace the given mask
    by a plain causal one, and refuses, when called, a missing or mis-shaped mask.
    """

    def __init__(self, config, layer_number, attn_mask_type, attention_type, **kwargs):
        if attn_mask_type not in _MASK_HONOURING_TYPES:
            raise ValueError(
                f"the local attention backend needs attn_mask_type arbitrary or padding, got "
                f"{attn_mask_type.name}: with a causal mask type megatron's fused softmax drops "
                "the document mask and documents of a pack attend to each other"
            )
        super().__init__(config, layer_number, attn_mask_type, attention_type, **kwargs)

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        if attention_mask is None:
            raise ValueError(
                "the local attention backend needs the dense document mask "
                "(attention_kwargs(..., backend='local')); got attention_mask=None"
            )
        seq_q, seq_k = query.size(0), key.size(0)
        if attention_mask.dim() != 4 or tuple(attention_mask.shape[-2:]) != (seq_q, seq_k):
            raise ValueError(
                f"document mask must be [b, 1, {seq_q}, {seq_k}]; got {tuple(attention_mask.shape)}"
            )
        return super().forward(query, key, value, attention_mask, attn_mask_type=attn_mask_type,
                               attention_bias=attention_bias, packed_seq_params=packed_seq_params)


@functools.cache
def _te_document_attention_class():
    """A TEDotProductAttention that takes our sbhd PackedSeqParams and runs TE in ``thd``.

    Defined lazily: megatron's TE classes exist only when transformer-engine imports.
    Untested on the CPU machines (transformer-engine cannot be installed there).
    """
    from megatron.core.extensions.transformer_engine import TEDotProductAttention

    class TEDocumentAttention(TEDotProductAttention):
        def __init__(self, config, layer_number, attn_mask_type, attention_type, **kwargs):
            if attn_mask_type != AttnMaskType.padding_causal:
                raise ValueError(
                    f"the te attention backend needs attn_mask_type padding_causal (the only "
                    f"causal type TE accepts with cu_seqlens); got {attn_mask_type.name}"
                )
            super().__init__(config, layer_number, attn_mask_type, attention_type, **kwargs)

        def forward(self, query, key, value, attention_mask, attn_mask_type=None,
                    attention_bias=None, packed_seq_params=None, **kwargs):
            cu_seqlens = document_boundaries(packed_seq_params, attention_mask, attention_bias)
            thd = PackedSeqParams(
                qkv_format="thd",
                cu_seqlens_q=cu_seqlens,
                cu_seqlens_kv=cu_seqlens,
                max_seqlen_q=packed_seq_params.max_seqlen_q,
                max_seqlen_kv=packed_seq_params.max_seqlen_kv,
            )
            if packed_seq_params.qkv_format == "thd":
                return super().forward(query, key, value, None, attn_mask_type=AttnMaskType.padding_causal,
                                       packed_seq_params=thd, **kwargs)
            seq, batch = query.shape[:2]
            out = super().forward(
                *(batch_major(x) for x in (query, key, value)), None,
                attn_mask_type=AttnMaskType.padding_causal, packed_seq_params=thd, **kwargs,
            )
            # TE returns [t, heads*dim] in thd; back to [s, b, heads*dim].
            return out.reshape(batch, seq, -1).transpose(0, 1).contiguous()

    return TEDocumentAttention


def _with_core_attention(spec: ModuleSpec, core_attention, mask_type: AttnMaskType) -> ModuleSpec:
    spec.submodules.self_attention.submodules.core_attention = core_attention
    spec.submodules.self_attention.params["attn_mask_type"] = mask_type
    return spec


def layer_spec(backend: str) -> ModuleSpec:
    """The transformer-layer spec for one attention backend."""
    if backend == "local":
        spec = get_gpt_layer_local_spec(normalization="RMSNorm")
        return _with_core_attention(spec, DocumentMaskedDotProductAttention, AttnMaskType.arbitrary)
    if backend == "torch":
        spec = get_gpt_layer_local_spec(normalization="RMSNorm")
        return _with_core_attention(spec, DocumentAttention, AttnMaskType.padding_causal)
    if backend == "te":
        if not te_available():
            raise ValueError(
                "attention backend 'te' needs transformer-engine, which is not installed; "
                "use --attention-backend torch"
            )
        spec = get_gpt_layer_with_transformer_engine_spec()
        return _with_core_attention(spec, _te_document_attention_class(), AttnMaskType.padding_causal)
    raise ValueError(f"unknown attention backend {backend!r}; available: {BACKENDS}")


def attention_kwargs(cu_seqlens, seq_length: int, backend: str, device=None) -> dict:
    """What GPTModel.forward needs, besides ids and positions, to keep documents apart.

    ``cu_seqlens`` is the *host* copy of the batch's ``int32 [b, L]`` tensor: boundaries are read
    before the batch goes to the GPU, so no micro-batch waits on the device.  The results are on
    ``device`` (default: the CPU).
    """
    if backend == "local":
        require_host_tensor(cu_seqlens, "cu_seqlens")
        return {"attention_mask": document_causal_mask(cu_seqlens, seq_length).to(device or "cpu", non_blocking=True)}
    if backend in ("torch", "te"):
        return {"attention_mask": None,
                "packed_seq_params": document_packed_seq_params(cu_seqlens, seq_length, device)}
    raise ValueError(f"unknown attention backend {backend!r}; available: {BACKENDS}")


def _document_core_attention_classes() -> tuple[type, ...]:
    classes = [DocumentMaskedDotProductAttention, DocumentAttention]
    if te_available():
        classes.append(_te_document_attention_class())
    return tuple(classes)


def check_document_masking(model: torch.nn.Module) -> None:
    """Raise unless every attention layer of ``model`` keeps documents apart.

    Guards against a model built from a foreign spec (e.g. megatron's stock local or TE spec
    with a causal mask type), which would train on documents attending to each other.
    """
    allowed = _document_core_attention_classes()
    for name, module in model.named_modules():
        core = getattr(module, "core_attention", None)
        if isinstance(core, torch.nn.Module) and not isinstance(core, allowed):
            raise ValueError(
                f"{name}.core_attention is {type(core).__name__}, which does not take document "
                f"boundaries; build the model with megatron_mio.model.attention.layer_spec"
            )
