"""Hugging Face ``LlamaConfig`` <-> our ModelPreset, with the checks for what we do not support.

The rotary base lives in a different field per transformers major version: 5.x keeps it in
``config.rope_parameters["rope_theta"]``, 4.x in ``config.rope_theta`` (a converter that misses it
gives Yi the default 10,000 instead of 5,000,000).  We write the field the *installed* version
uses, and read either, so a config written by the other version converts too.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from megatron_mio.model.presets import ModelPreset

SUPPORTED_MODEL_TYPES = ("llama",)

# ModelPreset field -> LlamaConfig field, for the fields both sides hold as they are.
HF_FIELDS = {
    "num_layers": "num_hidden_layers",
    "hidden_size": "hidden_size",
    "ffn_hidden_size": "intermediate_size",
    "num_attention_heads": "num_attention_heads",
    "num_query_groups": "num_key_value_heads",
    "norm_epsilon": "rms_norm_eps",
    "max_position_embeddings": "max_position_embeddings",
}
HF_DEFAULTS = {"rms_norm_eps": 1e-6, "max_position_embeddings": 4096}  # LlamaConfig's / Yi's


class UnsupportedModelError(ValueError):
    """The checkpoint uses a feature our GPTModel mapping does not reproduce exactly."""


def read_config_json(hf_dir: str | Path) -> dict:
    path = Path(hf_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no config.json; is {hf_dir} a Hugging Face model directory?")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}, line {err.lineno}: invalid JSON ({err.msg})") from None


def rope_base(config: dict, source: str = "config.json") -> float:
    """The rotary base of a config dict saved by transformers 4.x or 5.x."""
    params = config.get("rope_parameters") or {}
    if "rope_theta" in params:
        theta = params["rope_theta"]
    elif "rope_theta" in config:
        theta = config["rope_theta"]
    else:
        raise ValueError(f"{source}: no rope_theta (neither rope_parameters.rope_theta nor rope_theta)")
    scaling = config.get("rope_scaling") or {}
    rope_type = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if rope_type != "default":
        raise UnsupportedModelError(f"{source}: rope_type {rope_type!r} (only plain RoPE is supported)")
    return float(theta)


def _require(condition: bool, source: str, field: str, message: str) -> None:
    if not condition:
        raise UnsupportedModelError(f"{source}: field {field!r}: {message}")


def preset_from_hf_config(config: dict, source: str = "config.json") -> ModelPreset:
    """Validate a LlamaForCausalLM config and describe it as a ModelPreset."""
    _require(config.get("model_type") in SUPPORTED_MODEL_TYPES, source, "model_type",
             f"{config.get('model_type')!r} is not a Llama model")
    for field in ("num_local_experts", "num_experts", "n_routed_experts"):
        _require(not config.get(field), source, field, "mixture-of-experts models are not supported")
    _require(not config.get("attention_bias", False), source, "attention_bias", "biases are not supported")
    _require(not config.get("mlp_bias", False), source, "mlp_bias", "biases are not supported")
    _require(config.get("hidden_act", "silu") == "silu", source, "hidden_act", "only SwiGLU (silu) is supported")
    hf = {**HF_DEFAULTS, **config}
    # Without num_key_value_heads the model has one key/value head per query head (no GQA).
    hf["num_key_value_heads"] = config.get("num_key_value_heads") or config.get("num_attention_heads")
    missing = [name for name in HF_FIELDS.values() if hf.get(name) is None]
    _require(not missing, source, missing[0] if missing else "", "missing")
    preset = ModelPreset(**{ours: hf[theirs] for ours, theirs in HF_FIELDS.items()},
                         rotary_base=rope_base(config, source))
    heads, hidden, groups = preset.num_attention_heads, preset.hidden_size, preset.num_query_groups
    head_dim = config.get("head_dim") or preset.head_dim
    _require(head_dim * heads == hidden, source, "head_dim",
             f"{head_dim} x {heads} heads != hidden_size {hidden}")
    _require(heads % groups == 0, source, "num_key_value_heads", f"{groups} does not divide {heads} heads")
    return preset


def uses_rope_parameters() -> bool:
    """True for transformers 5.x, where the rope base moved into ``rope_parameters``."""
    from transformers import LlamaConfig

    return hasattr(LlamaConfig(), "rope_parameters")


def llama_config(preset: ModelPreset, vocab_size: int, dtype: torch.dtype, special_ids: dict):
    """A ``transformers.LlamaConfig`` for a preset, in the installed version's conventions."""
    from transformers import LlamaConfig

    if uses_rope_parameters():
        rope = {"rope_parameters": {"rope_type": "default", "rope_theta": preset.rotary_base}}
    else:
        rope = {"rope_theta": preset.rotary_base}
    config = LlamaConfig(
        vocab_size=vocab_size,
        **{theirs: getattr(preset, ours) for ours, theirs in HF_FIELDS.items()},
        head_dim=preset.head_dim,
        hidden_act="silu",
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        **rope,
        **special_ids,
    )
    config.architectures = ["LlamaForCausalLM"]
    if uses_rope_parameters():
        config.dtype = dtype
    else:
        config.torch_dtype = dtype
    return config
