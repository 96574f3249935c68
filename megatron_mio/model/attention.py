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

import dataclasses
import functools
from typing import Callable

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

# Mask types under which megatron's DotProductAttention applies the mask it is given.
_MASK_HONOURING_TYPES = (AttnMaskType.arbitrary, AttnMaskType.padding)


@functools.cache
def te_available() -> bool:
    """Whether transformer-engine imports (a GPU extra; never on the CPU machines)."""
    from megatron.core.extensions.transformer_engine import HAVE_TE

    return bool(HAVE_TE)


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


def _always() -> bool:
    return True


def _local_spec() -> ModuleSpec:
    return get_gpt_layer_local_spec(normalization="RMSNorm")


def _dense_mask_inputs(cu_seqlens, seq_length: int, device) -> dict:
    require_host_tensor(cu_seqlens, "cu_seqlens")
    return {"attention_mask": document_causal_mask(cu_seqlens, seq_length).to(device or "cpu", non_blocking=True)}


def _packed_seq_inputs(cu_seqlens, seq_length: int, device) -> dict:
    return {"attention_mask": None, "packed_seq_params": document_packed_seq_params(cu_seqlens, seq_length, device)}


@dataclasses.dataclass(frozen=True)
class AttentionBackend:
    """Everything the code needs to know about one ``--attention-backend``: one record each.

    Every field is required, so a backend added without one of its pieces fails at import (and
    ``tests/test_attention.py`` runs every piece of every record).
    """

    name: str
    available: Callable[[], bool]  # whether it can run in this process
    missing: str  # what to do when it cannot (one line)
    base_spec: Callable[[], ModuleSpec]  # megatron-core's layer spec the core attention goes into
    core_attention: Callable[[], type]  # the class put in the spec; check_document_masking accepts it
    mask_type: AttnMaskType  # the spec's attn_mask_type; the class refuses any other
    inputs: Callable  # (host cu_seqlens [b, L], seq_length, device) -> GPTModel.forward keywords
    uses_megatron_softmax: bool  # megatron's (apex-fusable) masked softmax runs: masked_softmax_fusion
    te_linear_layers: bool  # TE's linear layers: gradient accumulation fusion comes from TE, not apex
    default_candidate: bool  # may be the default (in record order) when it can run; not the slow reference

    def layer_spec(self) -> ModuleSpec:
        if not self.available():
            raise ValueError(f"attention backend {self.name!r} cannot run here: {self.missing}")
        spec = self.base_spec()
        spec.submodules.self_attention.submodules.core_attention = self.core_attention()
        spec.submodules.self_attention.params["attn_mask_type"] = self.mask_type
        return spec


_RECORDS = (
    AttentionBackend(
        name="te", available=te_available,
        missing="it needs transformer-engine, which is not installed; use --attention-backend torch",
        base_spec=get_gpt_layer_with_transformer_engine_spec, core_attention=_te_document_attention_class,
        mask_type=AttnMaskType.padding_causal, inputs=_packed_seq_inputs,
        uses_megatron_softmax=False, te_linear_layers=True, default_candidate=True,
    ),
    AttentionBackend(
        name="torch", available=_always, missing="",
        base_spec=_local_spec, core_attention=lambda: DocumentAttention,
        mask_type=AttnMaskType.padding_causal, inputs=_packed_seq_inputs,
        uses_megatron_softmax=False, te_linear_layers=False, default_candidate=True,
    ),
    AttentionBackend(
        name="local", available=_always, missing="",
        base_spec=_local_spec, core_attention=lambda: DocumentMaskedDotProductAttention,
        mask_type=AttnMaskType.arbitrary, inputs=_dense_mask_inputs,
        uses_megatron_softmax=True, te_linear_layers=False, default_candidate=False,
    ),
)
BACKENDS: dict[str, AttentionBackend] = {record.name: record for record in _RECORDS}


def get_backend(name: str) -> AttentionBackend:
    try:
        return BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown attention backend {name!r}; available: {tuple(BACKENDS)}") from None


def default_backend() -> str:
    """The first default candidate that can run: ``te`` when transformer-engine is installed, else ``torch``."""
    return next(name for name, record in BACKENDS.items() if record.default_candidate and record.available())


def available_backends() -> tuple[str, ...]:
    """The backends that can run in this environment."""
    return tuple(name for name, record in BACKENDS.items() if record.available())


def layer_spec(backend: str) -> ModuleSpec:
    """The transformer-layer spec for one attention backend."""
    return get_backend(backend).layer_spec()


def attention_kwargs(cu_seqlens, seq_length: int, backend: str, device=None) -> dict:
    """What GPTModel.forward needs, besides ids and positions, to keep documents apart.

    ``cu_seqlens`` is the *host* copy of the batch's ``int32 [b, L]`` tensor: boundaries are read
    before the batch goes to the GPU, so no micro-batch waits on the device.  The results are on
    ``device`` (default: the CPU).
    """
    return get_backend(backend).inputs(cu_seqlens, seq_length, device)


def _document_core_attention_classes() -> tuple[type, ...]:
    return tuple(record.core_attention() for record in BACKENDS.values() if record.available())


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
