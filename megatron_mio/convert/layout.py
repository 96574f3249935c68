"""The one mapping between Hugging Face Llama tensors and megatron-core GPTModel tensors.

Megatron side: the *global* tensors of a torch_dist checkpoint, named and shaped as
``GPTModel.sharded_state_dict()`` names them (megatron-core 0.19).  Every transformer-layer tensor
is stacked on a leading layer axis (``decoder.layers.<name>`` with shape ``[num_layers, ...]``),
so the global tensors do not depend on TP or PP: a reader at any layout takes its own slices.

- QKV: one matrix per layer, rows grouped per query group:
  ``[q heads of group 0 | k of group 0 | v of group 0 | q heads of group 1 | ...]``.
  Tensor parallelism splits these rows, so each rank owns whole groups.
- Gated MLP: ``linear_fc1 = [gate; up]`` on the row axis (rows ``[0, F)`` and ``[F, 2F)``) (megatron-core's swiglu sharded factory
  stores the TP-independent global tensor this way).
- The input / pre-MLP RMSNorms live under the fused-layernorm names
  (``linear_qkv.layer_norm_weight``, ``linear_fc1.layer_norm_weight``), the names both the local
  and the transformer-engine layer specs use in their sharded state dicts.
- Embedding and output layer carry the TP-padded vocabulary; padding rows are zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from megatron_mio.model.presets import ModelPreset

# Megatron global keys (torch_dist checkpoint); layer tensors have a leading layer axis.
EMBEDDING = "embedding.word_embeddings.weight"
FINAL_NORM = "decoder.final_layernorm.weight"
OUTPUT_LAYER = "output_layer.weight"
LAYER_QKV = "decoder.layers.self_attention.linear_qkv.weight"
LAYER_PROJ = "decoder.layers.self_attention.linear_proj.weight"
LAYER_INPUT_NORM = "decoder.layers.self_attention.linear_qkv.layer_norm_weight"
LAYER_FC1 = "decoder.layers.mlp.linear_fc1.weight"
LAYER_FC2 = "decoder.layers.mlp.linear_fc2.weight"
LAYER_MLP_NORM = "decoder.layers.mlp.linear_fc1.layer_norm_weight"
LAYER_KEYS = (LAYER_INPUT_NORM, LAYER_QKV, LAYER_PROJ, LAYER_MLP_NORM, LAYER_FC1, LAYER_FC2)
# Linear layers whose (empty, for the local spec) ``_extra_state`` the model's state dict lists.
LAYER_EXTRA_STATE_KEYS = (
    "decoder.layers.self_attention.linear_proj._extra_state",
    "decoder.layers.self_attention.linear_qkv._extra_state",
    "decoder.layers.mlp.linear_fc1._extra_state",
    "decoder.layers.mlp.linear_fc2._extra_state",
)

# Hugging Face LlamaForCausalLM names.
HF_EMBEDDING = "model.embed_tokens.weight"
HF_FINAL_NORM = "model.norm.weight"
HF_OUTPUT_LAYER = "lm_head.weight"


def hf_layer_names(layer: int) -> dict[str, str]:
    """HF tensor names of one decoder layer, by role."""
    p = f"model.layers.{layer}."
    return {
        "input_norm": p + "input_layernorm.weight",
        "q": p + "self_attn.q_proj.weight",
        "k": p + "self_attn.k_proj.weight",
        "v": p + "self_attn.v_proj.weight",
        "o": p + "self_attn.o_proj.weight",
        "mlp_norm": p + "post_attention_layernorm.weight",
        "gate": p + "mlp.gate_proj.weight",
        "up": p + "mlp.up_proj.weight",
        "down": p + "mlp.down_proj.weight",
    }


def hf_tensor_specs(preset: ModelPreset, vocab: int, dtype: torch.dtype) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    """Every HF tensor (name, shape, dtype), in the order the export writes them."""
    h, f = preset.hidden_size, preset.ffn_hidden_size
    shape = AttentionShape.of(preset)
    per_role = {
        "input_norm": (h,), "q": (shape.heads * shape.head_dim, h), "k": (shape.groups * shape.head_dim, h),
        "v": (shape.groups * shape.head_dim, h), "o": (h, h), "mlp_norm": (h,), "gate": (f, h),
        "up": (f, h), "down": (h, f),
    }
    specs = [(HF_EMBEDDING, (vocab, h), dtype)]
    for layer in range(preset.num_layers):
        specs += [(name, per_role[role], dtype) for role, name in hf_layer_names(layer).items()]
    return specs + [(HF_FINAL_NORM, (h,), dtype), (HF_OUTPUT_LAYER, (vocab, h), dtype)]


@dataclass(frozen=True)
class AttentionShape:
    heads: int
    groups: int
    head_dim: int

    @classmethod
    def of(cls, preset: ModelPreset) -> "AttentionShape":
        return cls(preset.num_attention_heads, preset.num_query_groups, preset.head_dim)

    @property
    def heads_per_group(self) -> int:
        return self.heads // self.groups

    @property
    def qkv_rows(self) -> int:
        return (self.heads + 2 * self.groups) * self.head_dim


def pack_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, shape: AttentionShape) -> torch.Tensor:
    """HF q/k/v projections -> megatron's QKV matrix, rows grouped per query group."""
    hidden = q.shape[1]
    q = q.reshape(shape.groups, shape.heads_per_group * shape.head_dim, hidden)
    k = k.reshape(shape.groups, shape.head_dim, hidden)
    v = v.reshape(shape.groups, shape.head_dim, hidden)
    return torch.cat([q, k, v], dim=1).reshape(shape.qkv_rows, hidden)


def unpack_qkv(qkv: torch.Tensor, shape: AttentionShape) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Megatron's grouped QKV matrix -> HF q, k, v projections (contiguous copies)."""
    hidden = qkv.shape[1]
    grouped = qkv.reshape(shape.groups, (shape.heads_per_group + 2) * shape.head_dim, hidden)
    q_rows = shape.heads_per_group * shape.head_dim
    q, k, v = torch.split(grouped, [q_rows, shape.head_dim, shape.head_dim], dim=1)
    return (
        q.reshape(shape.heads * shape.head_dim, hidden).contiguous(),
        k.reshape(shape.groups * shape.head_dim, hidden).contiguous(),
        v.reshape(shape.groups * shape.head_dim, hidden).contiguous(),
    )
