"""Per-document causal attention from document boundaries, without transformer-engine.

``DocumentAttention`` is a megatron-core ``core_attention`` module (the class is put in the
layer spec; megatron's ``SelfAttention`` builds one per layer and calls it after the QKV
projection and RoPE).  It never sees a dense ``[s, s]`` mask: it takes the documents of the
micro-batch from ``packed_seq_params.cu_seqlens_q`` and lets every token attend causally to
the tokens of its own document only.

Layouts (what megatron's SelfAttention hands over):

* ``qkv_format="sbhd"`` (what :func:`document_packed_seq_params` builds, used by the trainer):
  query ``[s, b, heads, dim]``, key/value ``[s, b, groups, dim]``, output ``[s, b, heads*dim]``.
  ``cu_seqlens_q`` indexes the micro-batch's tokens in batch-major order (token ``i`` of row
  ``r`` is ``r*s + i``).  RoPE then uses positions ``0..s-1`` of the whole row, which is exact per
  document because RoPE only depends on the distance between query and key.
* ``qkv_format="thd"`` (micro-batch of one, flattened): query ``[t, heads, dim]``, output
  ``[t, heads*dim]``; megatron restarts RoPE positions at every document from ``cu_seqlens``.

The kernel is chosen in one place, :func:`choose_kernel`, from the tensors and what imports:
on CUDA in fp16/bf16, torch's varlen flash attention when this torch has it (for GQA only where
a tiny grouped call at start-up, :func:`probe_grouped_kv`, shows that it takes grouped K/V);
else on CUDA, compiled FlexAttention with a document block mask; else (the CPU) SDPA called per
document.
All of them compute the same function; the tests compare them with the dense-mask reference
(:func:`document_causal_mask`, the ``local`` backend's dense mask, also built here).

FlexAttention's block mask costs a pass over all ``(b*s)^2 / 128^2`` blocks, so it is built once
per micro-batch, not per layer: :func:`document_packed_seq_params` returns a
:class:`DocumentPackedSeqParams`, which owns the mask.  Its lifetime is the micro-batch on one
model chunk: the forward step builds it from the batch (every pipeline stage and every virtual
chunk runs its own forward step, so each builds its own), megatron-core passes that object to
every layer and to a layer's recomputed forward, FlexAttention's autograd keeps the mask for the
backward, and it is freed with the micro-batch.  Nothing is cached anywhere else.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from typing import Callable

import torch
import torch.nn.functional as F
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_mio.data.batch import document_ids, valid_cu_seqlens

# A kernel takes flattened q [t, heads, dim], k/v [t, groups, dim], the int32 document
# boundaries over those t tokens, the longest document (an upper bound is fine) and the softmax
# scale, and returns [t, heads, dim].
Kernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int, float], torch.Tensor]


def require_host_tensor(tensor: torch.Tensor, name: str) -> None:
    """Boundaries are read on the host: reading them from a GPU tensor would stall the stream."""
    if tensor.device.type != "cpu":
        raise ValueError(
            f"{name} must be the host copy of the batch (got a tensor on {tensor.device}): reading "
            "document boundaries from the device synchronises it on every micro-batch"
        )


def document_causal_mask(cu_seqlens: torch.Tensor, seq_length: int) -> torch.Tensor:
    """Dense block-diagonal causal mask ``[b, 1, s, s]``, True where attention is *forbidden*.

    megatron-core's convention (True = masked).  Only the ``local`` attention backend needs it;
    the others take ``cu_seqlens`` directly.
    """
    docs = document_ids(cu_seqlens, seq_length)
    same_document = docs.unsqueeze(2) == docs.unsqueeze(1)
    causal = torch.ones(seq_length, seq_length, dtype=torch.bool, device=docs.device).tril()
    return ~(same_document & causal).unsqueeze(1)


@dataclasses.dataclass
class DocumentPackedSeqParams(PackedSeqParams):
    """The PackedSeqParams of one micro-batch of packs, and the one owner of its block mask.

    megatron-core hands this very object to every layer's core attention, and again to a layer's
    recomputed forward (its checkpoint wrappers close over it), so a mask cached here is built
    once per micro-batch and model chunk and seen identically by the forward, the recompute and
    (saved by FlexAttention's autograd) the backward.  It goes away with the micro-batch.
    """

    _flex_block_mask: tuple | None = dataclasses.field(default=None, init=False, repr=False,
                                                      compare=False)

    def flex_block_mask(self, total: int):
        """FlexAttention's document block mask over the ``total`` flattened tokens (cached)."""
        cached = self._flex_block_mask
        if cached is None or cached[0] != total:
            cached = self._flex_block_mask = (total, document_block_mask(self.cu_seqlens_q, total))
        return cached[1]


def document_packed_seq_params(cu_seqlens: torch.Tensor, seq_length: int,
                               device=None) -> DocumentPackedSeqParams:
    """PackedSeqParams (``sbhd``) for a micro-batch of packs, from the batch's ``cu_seqlens``.

    ``cu_seqlens`` is the host copy of the batch contract's ``int32 [b, L]`` (``-1`` padded, each
    row ``0 .. s``); the result lives on ``device`` (default: the CPU), copied without waiting.
    Rows are concatenated batch-major into one boundary list over ``b * s`` tokens.
    ``max_seqlen_*`` is ``s``: megatron sizes the RoPE table from it, and the global positions
    of the sbhd layout run up to ``s - 1``; for the kernels it is a valid upper bound.
    """
    if cu_seqlens.dim() != 2:
        raise ValueError(f"cu_seqlens must be [batch, L]; got shape {tuple(cu_seqlens.shape)}")
    require_host_tensor(cu_seqlens, "cu_seqlens")
    rows = []
    for index, row in enumerate(cu_seqlens):
        bounds = valid_cu_seqlens(row).to(torch.int64)
        if bounds.numel() < 2 or bounds[0] != 0 or bounds[-1] != seq_length:
            raise ValueError(
                f"cu_seqlens row {index} must run from 0 to seq_length={seq_length}; "
                f"got {bounds.tolist()}"
            )
        if bool((bounds[1:] < bounds[:-1]).any()):
            raise ValueError(f"cu_seqlens row {index} is not non-decreasing: {bounds.tolist()}")
        rows.append(bounds[1:] + index * seq_length)
    flat = torch.cat([torch.zeros(1, dtype=torch.int64)] + rows).to(torch.int32)
    if device is not None and torch.device(device).type != "cpu":
        flat = flat.pin_memory().to(device, non_blocking=True)
    return DocumentPackedSeqParams(
        qkv_format="sbhd",
        cu_seqlens_q=flat,
        cu_seqlens_kv=flat,
        max_seqlen_q=seq_length,
        max_seqlen_kv=seq_length,
    )


def _document_spans(cu_seqlens: torch.Tensor) -> list[tuple[int, int]]:
    bounds = cu_seqlens.tolist()
    return [(start, end) for start, end in zip(bounds[:-1], bounds[1:]) if end > start]


def sdpa_per_document(q, k, v, cu_seqlens, max_seqlen, scale):
    """SDPA called once per document, causal inside it: exact and cheap on the CPU."""
    outputs = []
    for start, end in _document_spans(cu_seqlens):
        out = F.scaled_dot_product_attention(
            q[start:end].transpose(0, 1),
            k[start:end].transpose(0, 1),
            v[start:end].transpose(0, 1),
            is_causal=True,
            scale=scale,
            enable_gqa=q.size(1) != k.size(1),
        )
        outputs.append(out.transpose(0, 1))
    return torch.cat(outputs, dim=0)


def _token_document_ids(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    positions = torch.arange(total, device=cu_seqlens.device, dtype=torch.int32)
    return torch.bucketize(positions, cu_seqlens[1:-1].to(torch.int32), right=True)


def flex_document_attention(q, k, v, cu_seqlens, max_seqlen, scale, *, compiled: bool = True,
                            block_mask=None):
    """FlexAttention with a block mask built from the document ids of every token.

    ``block_mask``: the micro-batch's mask (``DocumentPackedSeqParams.flex_block_mask``), so
    that the layers share one; built here when not given.
    """
    from torch.nn.attention.flex_attention import flex_attention

    if block_mask is None:
        block_mask = document_block_mask(cu_seqlens, q.size(0))
    attend = _compiled_flex_attention() if compiled else flex_attention
    out = attend(
        q.transpose(0, 1).unsqueeze(0),
        k.transpose(0, 1).unsqueeze(0),
        v.transpose(0, 1).unsqueeze(0),
        block_mask=block_mask,
        scale=scale,
        enable_gqa=q.size(1) != k.size(1),
    )
    return out.squeeze(0).transpose(0, 1)


def document_block_mask(cu_seqlens: torch.Tensor, total: int):
    """FlexAttention's block mask: causal inside each document of the flattened tokens."""
    from torch.nn.attention.flex_attention import create_block_mask

    docs = _token_document_ids(cu_seqlens, total)

    def same_document_causal(batch, head, q_index, kv_index):
        return (docs[q_index] == docs[kv_index]) & (q_index >= kv_index)

    return create_block_mask(same_document_causal, None, None, total, total, device=cu_seqlens.device)


@functools.cache
def _compiled_flex_attention():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


@dataclasses.dataclass(frozen=True)
class VarlenSignature:
    """How one torch release spells ``torch.nn.attention.varlen.varlen_attn``.

    * 2.9: ``(q, k, v, cu_q, cu_k, max_q, max_k, is_causal=False, return_aux=None)``: no scale;
    * 2.10, 2.11: ``..., *, return_aux, scale, window_size``; causal is ``window_size=(-1, 0)``;
    * 2.12 and later: also ``enable_gqa``.
    """

    causal: dict
    takes_scale: bool
    takes_gqa: bool

    @classmethod
    def of(cls, varlen_attn) -> "VarlenSignature | None":
        parameters = inspect.signature(varlen_attn).parameters
        if "is_causal" in parameters:
            causal = {"is_causal": True}
        elif "window_size" in parameters:
            causal = {"window_size": (-1, 0)}
        else:
            return None
        return cls(causal, "scale" in parameters, "enable_gqa" in parameters)


@dataclasses.dataclass(frozen=True)
class Varlen:
    """torch's varlen flash attention as this process calls it.

    ``grouped_kv``: it takes K/V with fewer heads than the query (through ``enable_gqa`` where
    the signature has it, else as they are), as :func:`probe_grouped_kv` found by calling it.
    Without it, K/V are copied once per query head before the call.
    """

    attend: Callable
    signature: VarlenSignature
    grouped_kv: bool


def varlen_kernel(varlen: Varlen) -> Kernel:
    """A :data:`Kernel` over ``varlen.attend`` for the signature it has."""
    signature = varlen.signature

    def attend(q, k, v, cu_seqlens, max_seqlen, scale):
        kwargs = dict(signature.causal)
        if signature.takes_scale:
            kwargs["scale"] = scale
        elif not math.isclose(scale, 1.0 / math.sqrt(q.size(-1))):
            q = q * (scale * math.sqrt(q.size(-1)))  # the kernel applies 1/sqrt(dim) itself
        if q.size(1) != k.size(1):
            if not varlen.grouped_kv:  # chosen for GQA only when no other kernel exists (choose_kernel)
                k = k.repeat_interleave(q.size(1) // k.size(1), dim=1)
                v = v.repeat_interleave(q.size(1) // v.size(1), dim=1)
            elif signature.takes_gqa:
                kwargs["enable_gqa"] = True
        return varlen.attend(q, k, v, cu_seqlens, cu_seqlens, int(max_seqlen), int(max_seqlen), **kwargs)

    attend.__qualname__ = "varlen_kernel" + ("(grouped K/V)" if varlen.grouped_kv else "(K/V copied per head)")
    return attend


def probe_grouped_kv(varlen_attn, signature: VarlenSignature, device, dtype=torch.bfloat16) -> bool:
    """Whether ``varlen_attn`` takes grouped K/V and gets them right: one tiny call, compared with
    SDPA per document.

    FlashAttention accepts K/V heads that divide the query heads, but which torch releases pass
    them through (2.10/2.11 have no ``enable_gqa`` yet may accept them; 2.12+ check the head
    counts in Python) is a fact about the installed build, so it is asked, not read from the
    version.  Any refusal or a wrong result means no.
    """
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(64, heads, 64, generator=generator).to(device, dtype) for heads in (4, 2, 2))
    cu = torch.tensor([0, 24, 64], dtype=torch.int32, device=device)
    scale = 1.0 / math.sqrt(64)
    try:
        got = varlen_kernel(Varlen(varlen_attn, signature, grouped_kv=True))(q, k, v, cu, 40, scale)
    except Exception:  # noqa: BLE001 - whatever the build raises for grouped K/V, the answer is no
        return False
    want = sdpa_per_document(q.float(), k.float(), v.float(), cu.cpu(), 40, scale)
    if got.shape != want.shape:
        return False
    error = (got.float() - want).abs().max() / want.abs().max()
    return bool(error < 3e-2)  # bf16 rounding is ~4e-3; a wrong pairing of heads is O(1)


@functools.cache
def installed_varlen(device_type: str = "cuda") -> Varlen | None:
    """torch's varlen flash attention on this device (probed once), or None without one.

    Flash needs CUDA, so on any other device there is none.
    """
    if device_type != "cuda" or not torch.cuda.is_available():
        return None
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    signature = VarlenSignature.of(varlen_attn)
    if signature is None:
        return None
    return Varlen(varlen_attn, signature, probe_grouped_kv(varlen_attn, signature, torch.device("cuda")))


def choose_kernel(device_type: str, dtype: torch.dtype, grouped: bool, varlen: Varlen | None,
                  has_flex: bool) -> Kernel:
    """The kernel for a query on ``device_type`` in ``dtype`` (``grouped``: fewer K/V heads).

    Flash (varlen) needs CUDA and fp16/bf16.  A varlen that does not take grouped K/V would need
    them copied once per query head and kept for backward; FlexAttention takes the groups
    natively, so it is preferred then for GQA models.
    """
    if device_type == "cuda":
        flash_dtype = dtype in (torch.float16, torch.bfloat16)
        if flash_dtype and varlen is not None and (varlen.grouped_kv or not grouped or not has_flex):
            return varlen_kernel(varlen)
        if has_flex:
            return flex_document_attention
    return sdpa_per_document


def document_attention_kernel(query: torch.Tensor, key: torch.Tensor | None = None) -> Kernel:
    """The kernel for these tensors (see :func:`choose_kernel`), chosen once per kind of call."""
    grouped = key is not None and key.size(-2) != query.size(-2)
    return _installed_kernel(query.device.type, query.dtype, grouped)


@functools.cache
def _installed_kernel(device_type: str, dtype: torch.dtype, grouped: bool) -> Kernel:
    return choose_kernel(device_type, dtype, grouped, installed_varlen(device_type), has_flex_attention())


@functools.cache
def has_flex_attention() -> bool:
    try:
        import torch.nn.attention.flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


class DocumentAttention(MegatronModule):
    """megatron-core core attention: causal attention inside each document of a pack.

    Built by megatron's SelfAttention with the ``CoreAttentionBuilder`` keywords.  Heads are
    whatever this tensor-parallel rank holds; the GQA ratio is read from the tensors (megatron
    hands over ``groups_per_rank`` key/value heads, one when groups are split across ranks).
    """

    def __init__(
        self,
        config: TransformerConfig,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str,
        attention_dropout: float | None = None,
        softmax_scale: float | None = None,
        cp_comm_type: str | None = None,
        pg_collection=None,
    ):
        super().__init__(config=config)
        dropout = config.attention_dropout if attention_dropout is None else attention_dropout
        unsupported = {
            "attention_dropout > 0": dropout > 0,
            "context_parallel_size > 1": config.context_parallel_size > 1,
            "softmax_type other than vanilla": config.softmax_type != "vanilla",
            "sliding-window attention": config.window_size is not None,
        }
        refused = [name for name, present in unsupported.items() if present]
        if refused:
            raise ValueError(
                f"the torch attention backend does not support {', '.join(refused)}; "
                "use --attention-backend te or local"
            )
        if attention_type != "self":
            raise ValueError(f"DocumentAttention is self-attention only; got {attention_type!r}")
        head_dim = config.kv_channels
        # apply_query_key_layer_scaling only rescales inside megatron's fused softmax; the
        # product is the plain 1/sqrt(d) scale, which is what we apply.
        self.softmax_scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(head_dim)
        self.layer_number = layer_number

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        attn_mask_type: AttnMaskType | None = None,
        attention_bias: torch.Tensor | None = None,
        packed_seq_params: PackedSeqParams | None = None,
    ) -> torch.Tensor:
        cu_seqlens = document_boundaries(packed_seq_params, attention_mask, attention_bias)
        thd = packed_seq_params.qkv_format == "thd"
        # thd: [t, heads, dim] already, megatron squeezed the dummy batch dimension.
        tokens = query.size(0) if thd else query.size(0) * query.size(1)
        _check_token_count(cu_seqlens, tokens)
        kernel = _with_block_mask(document_attention_kernel(query, key), packed_seq_params, tokens)
        if thd:
            out = kernel(query, key, value, cu_seqlens, packed_seq_params.max_seqlen_q, self.softmax_scale)
            return out.reshape(out.size(0), -1)
        seq, batch = query.shape[:2]
        flat = [batch_major(x) for x in (query, key, value)]
        out = kernel(*flat, cu_seqlens, packed_seq_params.max_seqlen_q, self.softmax_scale)
        # [b*s, heads, dim] -> [s, b, heads*dim]
        return out.reshape(batch, seq, -1).transpose(0, 1).contiguous()


def _with_block_mask(kernel: Kernel, params: PackedSeqParams, tokens: int) -> Kernel:
    """FlexAttention gets the micro-batch's block mask, built once on its params object (params
    built elsewhere, e.g. megatron's own thd ones, own no cache: FlexAttention builds it then)."""
    if kernel is flex_document_attention and isinstance(params, DocumentPackedSeqParams):
        return functools.partial(flex_document_attention, block_mask=params.flex_block_mask(tokens))
    return kernel


def batch_major(x: torch.Tensor) -> torch.Tensor:
    """[s, b, heads, dim] -> [b*s, heads, dim], the token order of the flattened cu_seqlens."""
    if x.size(1) == 1:
        return x.squeeze(1)
    return x.transpose(0, 1).reshape(-1, x.size(2), x.size(3))


def document_boundaries(packed_seq_params, attention_mask, attention_bias) -> torch.Tensor:
    """The cu_seqlens to attend within, or a loud error: never fall back to plain causal."""
    if attention_bias is not None:
        raise ValueError("the torch attention backend does not take an attention_bias")
    if packed_seq_params is None or packed_seq_params.cu_seqlens_q is None:
        raise ValueError(
            "the torch attention backend needs the document boundaries in packed_seq_params "
            "(megatron_mio.model.attention.attention_kwargs); without them documents of a pack "
            "would attend to each other"
        )
    if packed_seq_params.qkv_format not in ("sbhd", "thd"):
        raise ValueError(f"unsupported qkv_format {packed_seq_params.qkv_format!r}")
    if attention_mask is not None:
        raise ValueError(
            "the torch attention backend takes documents from packed_seq_params, not from a dense "
            "attention_mask; pass exactly what attention_kwargs(..., backend='torch') returns"
        )
    if packed_seq_params.cu_seqlens_kv is not None and (
        packed_seq_params.cu_seqlens_kv is not packed_seq_params.cu_seqlens_q
        and not torch.equal(packed_seq_params.cu_seqlens_kv, packed_seq_params.cu_seqlens_q)
    ):
        raise ValueError("self-attention over documents needs cu_seqlens_kv == cu_seqlens_q")
    return packed_seq_params.cu_seqlens_q


def _check_token_count(cu_seqlens: torch.Tensor, tokens: int) -> None:
    # Only on the CPU: on CUDA this would stall the stream on every layer, and the boundaries
    # were validated when attention_kwargs built them.
    if cu_seqlens.device.type == "cpu" and int(cu_seqlens[-1]) != tokens:
        raise ValueError(
            f"cu_seqlens cover {int(cu_seqlens[-1])} tokens but the micro-batch has {tokens}"
        )
