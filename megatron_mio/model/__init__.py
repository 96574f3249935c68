"""The MIO model: Yi/Llama presets -> megatron-core TransformerConfig -> GPTModel.

The builders are imported on first use (PEP 562), so that reading a preset or the FLOP count
(``megatron_mio.model.presets``, ``megatron_mio.model.flops``: pure arithmetic, used by the planner)
does not import torch and megatron-core.
"""

from importlib import import_module

_EXPORTS = {
    "build_gpt_model": "megatron_mio.model.gpt",
    "build_transformer_config": "megatron_mio.model.gpt",
    "PRESETS": "megatron_mio.model.presets",
    "VOCAB_SIZE_DIVISIBLE_BY": "megatron_mio.model.presets",
    "ModelPreset": "megatron_mio.model.presets",
    "get_preset": "megatron_mio.model.presets",
    "padded_vocab_size": "megatron_mio.model.presets",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
