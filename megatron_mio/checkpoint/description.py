"""What a checkpoint records about its model: one schema, written by the trainer and the converter.

A plain dict (it unpickles without this package) under ``args`` in the common state
(``layout.DESCRIPTION_KEY``):

- ``model``: the ``ModelPreset`` fields, the architecture;
- ``vocab_size``: the true vocabulary, padding excluded (None where the writer did not know it);
  ``padded_vocab_size``: the rows of the embedding and output matrices;
- ``bos_token_id``, ``eos_token_id``, ``pad_token_id``: the tokenizer's special ids, where the
  writer knew them (the converter), for the exported ``config.json``;
- the parallel layout of the run that saved it (``SavedLayout``, the trainer's): its RNG states
  and a dp_reshardable optimizer state are sharded by it, so a resume compares it with its own.
  A converted checkpoint holds no per-rank state and records none;
- ``conversion``: how ``convert.from_hf`` made the checkpoint (provenance, read by no one).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, fields
from typing import TypedDict

from megatron_mio.checkpoint.layout import DESCRIPTION_KEY
from megatron_mio.model.presets import ModelPreset, get_preset

SPECIAL_ID_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id")
# The fields of a SavedLayout that decide how per-rank state is sharded.
PARALLEL_FIELDS = ("tensor_model_parallel_size", "pipeline_model_parallel_size", "virtual_pipeline_model_parallel_size")


class SavedLayout(TypedDict, total=False):
    tensor_model_parallel_size: int
    pipeline_model_parallel_size: int
    virtual_pipeline_model_parallel_size: int | None
    data_parallel_size: int
    seq_length: int
    bf16: bool


class Conversion(TypedDict):
    dtype: str  # of the Hugging Face weights, kept in the checkpoint
    base_vocab_size: int  # rows of the source model; the rows above it were added
    new_token_init: str | None  # how the added rows were initialised (None: none added)
    tensor_model_parallel_size: int  # the layout the converter checked the shapes for
    pipeline_model_parallel_size: int


class ModelDescription(SavedLayout, total=False):
    model: dict
    vocab_size: int | None
    padded_vocab_size: int | None
    bos_token_id: int | None
    eos_token_id: int | None
    pad_token_id: int | None
    conversion: Conversion


def saved_layout(*, tensor_parallel: int, pipeline_parallel: int, virtual_pipeline: int | None,
                 data_parallel: int, seq_length: int, bf16: bool) -> SavedLayout:
    return SavedLayout(tensor_model_parallel_size=tensor_parallel, pipeline_model_parallel_size=pipeline_parallel,
                       virtual_pipeline_model_parallel_size=virtual_pipeline, data_parallel_size=data_parallel,
                       seq_length=seq_length, bf16=bf16)


def describe_model(preset: ModelPreset, vocab_size: int | None, padded_vocab_size: int | None, *,
                   special_ids: Mapping[str, int | None] | None = None, layout: SavedLayout | None = None,
                   conversion: Conversion | None = None) -> ModelDescription:
    description = ModelDescription(model=asdict(preset), vocab_size=vocab_size, padded_vocab_size=padded_vocab_size)
    description.update({k: (special_ids or {}).get(k) for k in SPECIAL_ID_FIELDS})
    description.update(layout or {})
    if conversion is not None:
        description["conversion"] = conversion
    return description


def read_description(common: Mapping) -> ModelDescription | None:
    """The description a checkpoint's common state records; None when there is none (or the
    entry is Megatron-LM's argparse namespace, which does not describe the model this way)."""
    recorded = common.get(DESCRIPTION_KEY)
    return recorded if isinstance(recorded, dict) and "model" in recorded else None


def preset_of(description: ModelDescription) -> ModelPreset:
    model = description["model"]
    return ModelPreset(**{f.name: model[f.name] for f in fields(ModelPreset) if f.name in model})


def description_from_checkpoint(common: Mapping, preset_name: str | None, vocab_size: int | None,
                                source: str) -> ModelDescription:
    """The recorded description, else one from ``--preset``; ``--vocab-size`` overrides either."""
    description = read_description(common)
    if description is None:
        if preset_name is None:
            raise ValueError(
                f"{source}: the checkpoint records no model description ('{DESCRIPTION_KEY}' entry); "
                "pass --preset (and --vocab-size or --tokenizer) to describe the model"
            )
        description = describe_model(get_preset(preset_name), None, None)
    description = ModelDescription(description)
    if vocab_size is not None:
        description["vocab_size"] = vocab_size
    return description
