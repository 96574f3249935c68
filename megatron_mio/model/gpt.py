"""Build megatron-core's GPTModel for a Yi/Llama preset.

The preset says what the model is; this module says how megatron-core builds it for one
parallel layout and one attention backend (see ``attention.py``).
"""

from __future__ import annotations

import torch.nn.functional as F
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer import TransformerConfig

from megatron_mio.model.attention import check_document_masking, layer_spec
from megatron_mio.model.fusions import NO_FUSIONS, Fusions
from megatron_mio.model.model_config import FP32, NO_RECOMPUTE, SINGLE_RANK, ParallelLayout, Precision, Recompute
from megatron_mio.model.presets import ModelPreset


def build_transformer_config(
    preset: ModelPreset,
    layout: ParallelLayout = SINGLE_RANK,
    precision: Precision = FP32,
    *,
    recompute: Recompute = NO_RECOMPUTE,
    fusions: Fusions = NO_FUSIONS,
    deterministic_init: bool = False,
) -> TransformerConfig:
    """The one TransformerConfig of a model, complete: Llama semantics (RMSNorm, SwiGLU, GQA, no
    biases) in ``layout`` and ``precision``; the trainer and the parity check both build it here.

    ``fusions`` come from :func:`megatron_mio.model.fusions.plan_fusions` (what imports);
    the default, none, is the plain reference the parity tests use.  ``deterministic_init``
    initialises every weight on the CPU as the unsplit master weight, so any TP layout starts
    from the same numbers for a given seed.  The loss is per token (``step.py``).
    """
    interleaved = layout.virtual_pipeline_model_parallel_size is not None
    return TransformerConfig(
        num_layers=preset.num_layers,
        hidden_size=preset.hidden_size,
        ffn_hidden_size=preset.ffn_hidden_size,
        num_attention_heads=preset.num_attention_heads,
        num_query_groups=preset.num_query_groups,
        kv_channels=preset.head_dim,
        layernorm_epsilon=preset.norm_epsilon,
        init_method_std=preset.init_method_std,
        normalization="RMSNorm",
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        attention_softmax_in_fp32=True,
        **fusions.config_fields(),
        tensor_model_parallel_size=layout.tensor_model_parallel_size,
        pipeline_model_parallel_size=layout.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=layout.virtual_pipeline_model_parallel_size,
        sequence_parallel=layout.sequence_parallel,
        params_dtype=precision.dtype,
        pipeline_dtype=precision.dtype,
        bf16=precision.bf16,
        fp16=precision.fp16,
        recompute_granularity=recompute.granularity,
        recompute_method=recompute.method,
        recompute_num_layers=recompute.num_layers,
        use_cpu_initialization=deterministic_init,
        calculate_per_token_loss=True,
        # Packs from different datasets share one shape, but pipeline p2p must not assume it.
        variable_seq_lengths=False,
        **_pipeline_p2p(interleaved),
    )


def _pipeline_p2p(interleaved: bool) -> dict:
    """How pipeline stages exchange tensors: Megatron-LM's choice, separate sends for VPP.

    The interleaved schedule's steady state sends an activation to the next stage and a gradient
    to the previous one in the same call.  With two pipeline ranks both are the same peer, and
    megatron-core's batched p2p (``batch_p2p_comm``, TransformerConfig's default) posts them as
    untagged sends in the order [prev, next] on both sides: the peer's "from previous" receive gets
    the gradient and its "from next" receive the activation (same shape, so no error, only wrong
    numbers; NVIDIA/Megatron-LM#750, #1450; NCCL matches same-peer ops in order too).  The
    overlapped, unbatched p2p (Megatron-LM's default for interleaving) sends the two directions on
    different process groups, so they cannot cross.
    """
    return {"overlap_p2p_comm": interleaved, "batch_p2p_comm": not interleaved}


def build_gpt_model(
    config: TransformerConfig,
    preset: ModelPreset,
    vocab_size: int,
    *,
    attention_backend: str = "local",
    pre_process: bool = True,
    post_process: bool = True,
    vp_stage: int | None = None,
) -> GPTModel:
    """One pipeline stage (or the whole model) of MIO as a megatron-core GPTModel.

    ``vocab_size`` must already be padded for tensor parallelism (``padded_vocab_size``).
    """
    model = GPTModel(
        config=config,
        transformer_layer_spec=layer_spec(attention_backend),
        vocab_size=vocab_size,
        max_sequence_length=preset.max_position_embeddings,
        pre_process=pre_process,
        post_process=post_process,
        parallel_output=True,
        share_embeddings_and_output_weights=False,
        position_embedding_type="rope",
        rotary_base=int(preset.rotary_base),
        vp_stage=vp_stage,
    )
    check_document_masking(model)
    return model
