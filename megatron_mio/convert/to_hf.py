"""megatron-core torch_dist checkpoint (any TP/PP/virtual PP) -> Hugging Face LlamaForCausalLM.

Reads one tensor at a time (of a vocabulary matrix: one stored chunk's rows; ``CheckpointReader``)
and streams it into the safetensors shards (``HFCheckpointWriter``), strips the TP padding rows,
and writes the config in the installed transformers version's conventions, a generation config
and the tokenizer.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from tqdm import tqdm

from megatron_mio.atomic import atomic_directory
from megatron_mio.checkpoint.description import SPECIAL_ID_FIELDS, description_from_checkpoint, preset_of
from megatron_mio.checkpoint.layout import resolve_checkpoint
from megatron_mio.convert import layout as L
from megatron_mio.convert.from_hf import TOKENIZER_SUBDIR
from megatron_mio.convert.hf_config import llama_config
from megatron_mio.convert.hf_io import HFCheckpointWriter
from megatron_mio.convert.megatron_io import CheckpointReader
from megatron_mio.inference.presets import DECODING_PRESETS
from megatron_mio.model.presets import ModelPreset

# Files of a model directory that a tokenizer directory must not overwrite.
MODEL_FILES = ("config.json", "generation_config.json")


def check_shapes(reader: CheckpointReader, preset: ModelPreset, vocab: int) -> None:
    """The description must match the tensors: fail before writing anything otherwise."""
    shape = L.AttentionShape.of(preset)
    n, h, f = preset.num_layers, preset.hidden_size, preset.ffn_hidden_size
    expected = {
        L.LAYER_QKV: (n, shape.qkv_rows, h),
        L.LAYER_PROJ: (n, h, h),
        L.LAYER_FC1: (n, 2 * f, h),
        L.LAYER_FC2: (n, h, f),
        L.FINAL_NORM: (h,),
    }
    for key, want in expected.items():
        got = reader.global_shape(key)
        if got != want:
            raise ValueError(f"{reader.dir}: {key} has shape {got}, the model description implies {want}")
    for key in (L.EMBEDDING, L.OUTPUT_LAYER):
        rows, hidden = reader.global_shape(key)
        if hidden != h or rows < vocab:
            raise ValueError(f"{reader.dir}: {key} {(rows, hidden)} cannot hold a vocabulary of {vocab}")


def tokenizer_for_export(load: str, tokenizer_dir: str | None) -> Path | None:
    if tokenizer_dir:
        return Path(tokenizer_dir)
    bundled = Path(load) / TOKENIZER_SUBDIR
    return bundled if bundled.is_dir() else None


def copy_tokenizer(tokenizer_dir: Path, out: Path) -> None:
    for path in tokenizer_dir.iterdir():
        if path.is_file() and path.name not in MODEL_FILES and not path.name.endswith(".safetensors"):
            shutil.copy2(path, out / path.name)


def convert_to_hf(load: str, output: str, *, tokenizer_dir: str | None = None, iteration: int | None = None,
                  force: bool = False, max_shard_bytes: int = 2**30, preset_name: str | None = None,
                  vocab_size: int | None = None, dtype: torch.dtype | None = None, progress: bool = True) -> dict:
    """Export; returns the model description used."""
    directory = resolve_checkpoint(load, iteration)
    reader = CheckpointReader(directory)
    tokenizer_path = tokenizer_for_export(load, tokenizer_dir)
    tokenizer = None
    if tokenizer_path is not None:
        from megatron_mio.tokenizer import MIOTokenizer

        tokenizer = MIOTokenizer(tokenizer_path)
    description = description_from_checkpoint(reader.common, preset_name, vocab_size, str(directory))
    if description.get("vocab_size") is None and tokenizer is not None:
        description["vocab_size"] = len(tokenizer)
    vocab = description.get("vocab_size")
    if vocab is None:
        raise ValueError(f"{directory}: vocabulary size unknown; pass --vocab-size or --tokenizer")
    if tokenizer is not None and len(tokenizer) != vocab:
        raise ValueError(
            f"{tokenizer_path}: tokenizer has {len(tokenizer)} ids but the checkpoint's vocabulary "
            f"has {vocab}: wrong tokenizer for this model"
        )
    preset = preset_of(description)
    check_shapes(reader, preset, vocab)
    out_dtype = dtype or reader.dtype(L.EMBEDDING)
    cast = lambda t: t.to(out_dtype)  # noqa: E731  (no copy when the dtype already matches)
    with atomic_directory(output, overwrite=force) as stage:
        writer = HFCheckpointWriter(stage, L.hf_tensor_specs(preset, vocab, out_dtype), max_shard_bytes)
        steps = preset.num_layers + 2
        with tqdm(total=steps, desc="Megatron -> HF", unit="step", disable=not progress) as bar:
            write_vocabulary(reader, writer, L.EMBEDDING, L.HF_EMBEDDING, vocab, cast)
            bar.update()
            for layer in range(preset.num_layers):
                write_layer(reader, writer, layer, preset, cast)
                bar.update()
            writer.add(L.HF_FINAL_NORM, cast(reader.read({L.FINAL_NORM: None})[L.FINAL_NORM]))
            write_vocabulary(reader, writer, L.OUTPUT_LAYER, L.HF_OUTPUT_LAYER, vocab, cast)
            writer.finish()
            bar.update()
        special_ids = {k: description.get(k) for k in SPECIAL_ID_FIELDS}
        if tokenizer is not None:
            special_ids = {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id,
                           "pad_token_id": tokenizer.pad_id}
        llama_config(preset, vocab, out_dtype, special_ids).save_pretrained(stage)
        generation_config(special_ids).save_pretrained(stage)
        if tokenizer_path is not None:
            copy_tokenizer(tokenizer_path, stage)
    return description


def write_vocabulary(reader: CheckpointReader, writer: HFCheckpointWriter, key: str, hf_name: str, vocab: int,
                     cast) -> None:
    """The first ``vocab`` rows (TP padding dropped), one stored chunk's rows at a time."""
    for start, stop in reader.row_blocks(key, vocab):
        writer.add(hf_name, cast(reader.read_rows(key, start, stop)))


def write_layer(reader: CheckpointReader, writer: HFCheckpointWriter, layer: int, preset: ModelPreset,
                cast) -> None:
    """One decoder layer, one Megatron tensor (gate and up: one half of fc1) in memory at a time."""
    names = L.hf_layer_names(layer)
    f, h = preset.ffn_hidden_size, preset.hidden_size

    def read(key: str) -> torch.Tensor:
        return reader.read({key: layer})[key]

    def fc1_rows(start: int) -> torch.Tensor:
        return reader.read_slices({L.LAYER_FC1: ((layer, start, 0), (1, f, h))})[L.LAYER_FC1][0]

    writer.add(names["input_norm"], cast(read(L.LAYER_INPUT_NORM)))
    for role, tensor in zip("qkv", L.unpack_qkv(read(L.LAYER_QKV), L.AttentionShape.of(preset))):
        writer.add(names[role], cast(tensor))
    writer.add(names["o"], cast(read(L.LAYER_PROJ)))
    writer.add(names["mlp_norm"], cast(read(L.LAYER_MLP_NORM)))
    writer.add(names["gate"], cast(fc1_rows(0)))
    writer.add(names["up"], cast(fc1_rows(f)))
    writer.add(names["down"], cast(read(L.LAYER_FC2)))


def generation_config(special_ids: dict):
    """Defaults for text output (MIO paper, Table 8); ``tools/generate.py`` picks per modality."""
    from transformers import GenerationConfig

    text = DECODING_PRESETS["text"]
    ids = {k: v for k, v in special_ids.items() if v is not None}
    return GenerationConfig(**text.generate_kwargs(), **ids)
