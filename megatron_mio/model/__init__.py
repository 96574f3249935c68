"""The MIO model: Yi/Llama presets -> megatron-core TransformerConfig -> GPTModel."""

from megatron_mio.model.gpt import build_gpt_model, build_transformer_config
from megatron_mio.model.presets import PRESETS, VOCAB_SIZE_DIVISIBLE_BY, ModelPreset, get_preset, padded_vocab_size

__all__ = [
    "PRESETS",
    "VOCAB_SIZE_DIVISIBLE_BY",
    "ModelPreset",
    "build_gpt_model",
    "build_transformer_config",
    "get_preset",
    "padded_vocab_size",
]
