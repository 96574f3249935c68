"""What a converted checkpoint records about its model, so that export needs no flags.

Stored in the checkpoint's common (non-sharded) state under ``mio_model``: the preset fields, the
true vocabulary size (padding excluded) and the special token ids of the source config.
Checkpoints written by the trainer describe the model in their ``args`` entry (``model``,
``vocab_size``, ``padded_vocab_size``); for anything else ``--preset``/``--vocab-size`` on the
export command line provide it.
"""

from __future__ import annotations

from dataclasses import asdict, fields

from megatron_mio.model.presets import ModelPreset, get_preset

COMMON_KEY = "mio_model"
SPECIAL_ID_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id")


def describe(preset: ModelPreset, vocab_size: int, padded_vocab_size: int, special_ids: dict, **extra) -> dict:
    return {
        **asdict(preset),
        "vocab_size": vocab_size,
        "padded_vocab_size": padded_vocab_size,
        **{k: special_ids.get(k) for k in SPECIAL_ID_FIELDS},
        **extra,
    }


def preset_of(description: dict) -> ModelPreset:
    return ModelPreset(**{f.name: description[f.name] for f in fields(ModelPreset)})


def description_from_checkpoint(common: dict, preset_name: str | None, vocab_size: int | None,
                                source: str) -> dict:
    """The stored description, or one built from ``--preset`` and ``--vocab-size``."""
    description = dict(common.get(COMMON_KEY) or {})
    trainer_args = common.get("args") or {}
    if not description and isinstance(trainer_args, dict) and "model" in trainer_args:
        description = {
            **trainer_args["model"],
            "vocab_size": trainer_args.get("vocab_size"),
            "padded_vocab_size": trainer_args.get("padded_vocab_size"),
        }
    if not description:
        if preset_name is None:
            raise ValueError(
                f"{source}: the checkpoint records no '{COMMON_KEY}' model description; "
                "pass --preset (and --vocab-size or --tokenizer) to describe the model"
            )
        description = asdict(get_preset(preset_name))
    if vocab_size is not None:
        description["vocab_size"] = vocab_size
    return description
