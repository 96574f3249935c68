"""Model FLOPs of a MIO training step: the count the trainer logs as TFLOP/s and the planner
predicts step time from (``megatron_mio.training.metrics``, ``megatron_mio.planner.step_time``).

Matmul FLOPs only (2 per multiply-add), training = 3 x forward (forward + backward, no
recomputation).  Attention's score and value products are counted over the query-key pairs that
document-causal attention really computes (the sum over documents of n(n+1)/2), so packs of many
short documents are not credited with dense-attention work.  Pure arithmetic: no torch.
"""

from __future__ import annotations

from megatron_mio.model.presets import ModelPreset

# Forward + backward: the backward pass costs two forwards (gradients of inputs and of weights).
TRAINING_FLOPS_PER_FORWARD = 3.0


def layer_forward_flops_per_token(preset: ModelPreset) -> float:
    """One token through one transformer layer's matmuls: q/k/v, output projection, SwiGLU."""
    h = preset.hidden_size
    qkv = h * (h + 2 * preset.num_query_groups * preset.head_dim)
    return 2.0 * (qkv + h * h + 3 * h * preset.ffn_hidden_size)


def logits_forward_flops_per_token(preset: ModelPreset, padded_vocab: int) -> float:
    """One token through the output layer (the embedding lookup costs no matmul)."""
    return 2.0 * preset.hidden_size * padded_vocab


def forward_flops_per_token(preset: ModelPreset, padded_vocab: int) -> float:
    """Matmul FLOPs of one token through the model, without the attention score/value products."""
    return (preset.num_layers * layer_forward_flops_per_token(preset)
            + logits_forward_flops_per_token(preset, padded_vocab))


def attention_forward_flops_per_layer(preset: ModelPreset, attention_pairs: float) -> float:
    """Scores (q.k) and the weighted sum of values over ``attention_pairs`` query-key pairs."""
    return 4.0 * preset.hidden_size * attention_pairs


def training_flops(preset: ModelPreset, padded_vocab: int, tokens: float, attention_pairs: float) -> float:
    """Model FLOPs of training on ``tokens`` positions whose documents make ``attention_pairs``."""
    forward = (tokens * forward_flops_per_token(preset, padded_vocab)
               + preset.num_layers * attention_forward_flops_per_layer(preset, attention_pairs))
    return TRAINING_FLOPS_PER_FORWARD * forward


def packed_attention_pairs(seq_length: int, documents: float) -> float:
    """Query-key pairs of one pack of ``seq_length`` tokens split into ``documents`` equal documents."""
    if documents < 1:
        raise ValueError(f"a pack holds at least one document, not {documents}")
    length = seq_length / documents
    return documents * length * (length + 1) / 2
