"""Build megatron-core's GPTModel for a Yi/Llama preset.

The preset says what the model is; this module says how megatron-core builds it for one
parallel layout and one attention backend (see ``attention.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer import TransformerConfig

from megatron_mio.model.attention import check_document_masking, layer_spec
from megatron_mio.model.fusions import NO_FUSIONS, Fusions
from megatron_mio.model.presets import ModelPreset


def build_transformer_config(
    preset: ModelPreset,
    *,
    tensor_parallel_size: int = 1,
    pipeline_parallel_size: int = 1,
    virtual_pipeline_parallel_size: int | None = None,
    sequence_parallel: bool = False,
    bf16: bool = False,
    recompute_granularity: str | None = None,
    recompute_method: str | None = None,
    recompute_num_layers: int | None = None,
    fusions: Fusions = NO_FUSIONS,
    deterministic_init: bool = False,
) -> TransformerConfig:
    """A TransformerConfig with Llama semantics (RMSNorm, SwiGLU, GQA, no biases).

    ``fusions`` come from :func:`megatron_mio.model.fusions.plan_fusions` (what imports);
    the default, none, is the plain reference the parity tests use.  ``deterministic_init``
    initialises every weight on the CPU as the unsplit master weight, so any TP layout starts
    from the same numbers for a given seed.
    """
    dtype = torch.bfloat16 if bf16 else torch.float32
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
        tensor_model_parallel_size=tensor_parallel_size,
        pipeline_model_parallel_size=pipeline_parallel_size,
        virtual_pipeline_model_parallel_size=virtual_pipeline_parallel_size,
        sequence_parallel=sequence_parallel,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=bf16,
        recompute_granularity=recompute_granularity,
        recompute_method=recompute_method,
        recompute_num_layers=recompute_num_layers,
        use_cpu_initialization=deterministic_init,
        # Packs from different datasets share one shape, but pipeline p2p must not assume it.
        variable_seq_lengths=False,
    )


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
