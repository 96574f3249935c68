"""Hugging Face LlamaForCausalLM -> megatron-core torch_dist checkpoint (iteration 0).

The checkpoint is written from one process, tensor by tensor (see ``megatron_io``), and loads
with ``python -m megatron_mio.pretrain --load M`` or ``--finetune`` at the requested TP/PP, and at
any other whose tensor-parallel size divides the padded vocabulary (``--tp`` sets the padding; the
trainer adopts the padding the checkpoint's description records).
"""

from __future__ import annotations

import functools
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from megatron_mio.atomic import atomic_directory
from megatron_mio.checkpoint.description import SPECIAL_ID_FIELDS, Conversion, describe_model
from megatron_mio.checkpoint.layout import common_state, iteration_dir, write_tracker
from megatron_mio.convert import layout as L
from megatron_mio.convert.hf_config import UnsupportedModelError, preset_from_hf_config, read_config_json
from megatron_mio.convert.hf_io import HFCheckpointReader
from megatron_mio.convert.megatron_io import Chunk, layer_chunk, layer_objects, whole_chunk, write_checkpoint
from megatron_mio.convert.vocab import RowStatistics, check_added_token_ids, check_init, vocabulary_block
from megatron_mio.model.presets import VOCAB_SIZE_DIVISIBLE_BY, ModelPreset, padded_vocab_size

TOKENIZER_SUBDIR = "tokenizer"  # the tokenizer travels with the checkpoint for the export
VOCAB_BLOCK_BYTES = 2**26  # vocabulary matrices are written in row blocks of at most 64 MiB


@dataclass(frozen=True)
class ImportPlan:
    preset: ModelPreset
    base_vocab: int
    vocab: int
    padded_vocab: int
    dtype: torch.dtype
    tied: bool


def validate_layout(preset: ModelPreset, tp: int, pp: int, tied: bool, source: str) -> None:
    if tied and pp > 1:
        raise UnsupportedModelError(
            f"{source}: tie_word_embeddings=true with --pp {pp}: tied embeddings across pipeline "
            "stages are not supported (convert with --pp 1, or untie the model first)"
        )
    if preset.num_layers % pp:
        raise ValueError(f"--pp {pp} does not divide the {preset.num_layers} layers of {source}")
    if preset.num_query_groups % tp or preset.num_attention_heads % tp:
        raise ValueError(
            f"--tp {tp} must divide the {preset.num_attention_heads} heads and "
            f"{preset.num_query_groups} query groups of {source}"
        )
    if preset.ffn_hidden_size % tp:
        raise ValueError(f"--tp {tp} does not divide the FFN size {preset.ffn_hidden_size} of {source}")


def reject_biases(reader: HFCheckpointReader) -> None:
    biases = [n for n in reader.names() if n.endswith(".bias")]
    if biases:
        raise UnsupportedModelError(f"{reader.dir}: linear biases are not supported (e.g. {biases[0]})")


def tokenizer_vocab(tokenizer_dir: str, base_vocab: int) -> int:
    """Size of the MIO vocabulary, after checking that it extends the model's base vocabulary."""
    from megatron_mio.tokenizer import MIOTokenizer
    from megatron_mio.tokenizer.vocab import mio_tokens

    tokenizer = MIOTokenizer(tokenizer_dir)
    vocab = len(tokenizer)
    if vocab < base_vocab:
        raise ValueError(
            f"{tokenizer_dir}: tokenizer has {vocab} ids, fewer than the checkpoint's {base_vocab} rows"
        )
    ids = {token: tokenizer.vocab[token] for token in mio_tokens()}
    if vocab == base_vocab:
        # The model already has a row for every id of the tokenizer, MIO tokens included (e.g. an
        # exported MIO model coming back): nothing to extend, the tokenizer just travels along.
        return vocab
    check_added_token_ids(ids, base_vocab, vocab, tokenizer_dir)
    return vocab


def plan_import(hf_dir: str, tp: int, pp: int, tokenizer_dir: str | None, divisible_by: int) -> tuple[ImportPlan, dict, HFCheckpointReader]:
    source = str(Path(hf_dir) / "config.json")
    config = read_config_json(hf_dir)
    preset = preset_from_hf_config(config, source)
    tied = bool(config.get("tie_word_embeddings", False))
    validate_layout(preset, tp, pp, tied, source)
    reader = HFCheckpointReader(hf_dir)
    reject_biases(reader)
    (base_vocab, hidden), dtype = reader.shape_and_dtype(L.HF_EMBEDDING)
    if hidden != preset.hidden_size or base_vocab != config.get("vocab_size", base_vocab):
        raise ValueError(f"{source}: embedding {(base_vocab, hidden)} disagrees with vocab_size/hidden_size")
    vocab = tokenizer_vocab(tokenizer_dir, base_vocab) if tokenizer_dir else base_vocab
    plan = ImportPlan(preset, base_vocab, vocab, padded_vocab_size(vocab, divisible_by, tp), dtype, tied)
    return plan, config, reader


def layer_chunks(reader: HFCheckpointReader, plan: ImportPlan) -> list[Chunk]:
    p, n, dt = plan.preset, plan.preset.num_layers, plan.dtype
    shape = L.AttentionShape.of(p)
    h, f = p.hidden_size, p.ffn_hidden_size
    chunks = []
    for layer in range(n):
        names = L.hf_layer_names(layer)
        get = lambda role, names=names: reader.get(names[role])  # noqa: E731
        chunks += [
            layer_chunk(L.LAYER_INPUT_NORM, n, layer, (h,), dt, lambda g=get: g("input_norm")),
            layer_chunk(L.LAYER_QKV, n, layer, (shape.qkv_rows, h), dt,
                        lambda g=get: L.pack_qkv(g("q"), g("k"), g("v"), shape)),
            layer_chunk(L.LAYER_PROJ, n, layer, (h, h), dt, lambda g=get: g("o")),
            layer_chunk(L.LAYER_MLP_NORM, n, layer, (h,), dt, lambda g=get: g("mlp_norm")),
            # fc1 = [gate; up]: two chunks of the [2F, h] matrix, so each is read on its own.
            layer_chunk(L.LAYER_FC1, n, layer, (f, h), dt, lambda g=get: g("gate"), 0, 2 * f),
            layer_chunk(L.LAYER_FC1, n, layer, (f, h), dt, lambda g=get: g("up"), f, 2 * f),
            layer_chunk(L.LAYER_FC2, n, layer, (h, f), dt, lambda g=get: g("down")),
        ]
    return chunks


def vocabulary_chunks(reader: HFCheckpointReader, plan: ImportPlan, key: str, hf_name: str, init: str,
                      seed: int, block_bytes: int) -> list[Chunk]:
    """The extended, padded ``[padded_vocab, h]`` matrix as row blocks of at most ``block_bytes``.

    The vocabulary matrices are the model's largest tensors; in blocks, neither this writer nor a
    reader of the checkpoint (DCP loads a stored chunk whole) ever holds one of them entirely.
    """
    h, base = plan.preset.hidden_size, plan.base_vocab
    block = max(1, block_bytes // (h * plan.dtype.itemsize))
    statistics = functools.cache(lambda: RowStatistics.of_blocks(
        reader.get_rows(hf_name, start, min(start + block, base)) for start in range(0, base, block)
    ))

    def produce(start: int, stop: int) -> torch.Tensor:
        old = reader.get_rows(hf_name, min(start, base), min(stop, base))
        return vocabulary_block(old, start, stop, plan.vocab, init, statistics, seed)

    chunks = []
    for start in range(0, plan.padded_vocab, block):
        stop = min(start + block, plan.padded_vocab)
        chunks.append(Chunk(key, (plan.padded_vocab, h), (start, 0), (stop - start, h), plan.dtype,
                            lambda start=start, stop=stop: produce(start, stop)))
    return chunks


def model_chunks(reader: HFCheckpointReader, plan: ImportPlan, init: str, seed: int,
                 vocab_block_bytes: int = VOCAB_BLOCK_BYTES) -> list[Chunk]:
    check_init(init)
    h = plan.preset.hidden_size
    output_name = L.HF_EMBEDDING if plan.tied else L.HF_OUTPUT_LAYER
    return [
        *vocabulary_chunks(reader, plan, L.EMBEDDING, L.HF_EMBEDDING, init, seed, vocab_block_bytes),
        *layer_chunks(reader, plan),
        whole_chunk(L.FINAL_NORM, (h,), plan.dtype, lambda: reader.get(L.HF_FINAL_NORM)),
        *vocabulary_chunks(reader, plan, L.OUTPUT_LAYER, output_name, init, seed + 1, vocab_block_bytes),
    ]


def convert_from_hf(hf_dir: str, output: str, *, tp: int = 1, pp: int = 1, tokenizer_dir: str | None = None,
                    new_token_init: str = "mean", seed: int = 0, force: bool = False,
                    divisible_by: int = VOCAB_SIZE_DIVISIBLE_BY, progress: bool = True,
                    vocab_block_bytes: int = VOCAB_BLOCK_BYTES) -> ImportPlan:
    """Write ``output/iter_0000000`` + tracker from a HF Llama directory; returns the plan used."""
    plan, config, reader = plan_import(hf_dir, tp, pp, tokenizer_dir, divisible_by)
    if plan.tied:
        print(f"{hf_dir}: tied input/output embeddings become two untied copies (MIO unties them)")
    chunks = model_chunks(reader, plan, new_token_init, seed, vocab_block_bytes)
    special_ids = {k: config.get(k) for k in SPECIAL_ID_FIELDS}
    if tokenizer_dir:
        from megatron_mio.tokenizer import MIOTokenizer

        tokenizer = MIOTokenizer(tokenizer_dir)
        special_ids = {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id,
                       "pad_token_id": tokenizer.pad_id}
    conversion = Conversion(dtype=str(plan.dtype).removeprefix("torch."), base_vocab_size=plan.base_vocab,
                            new_token_init=new_token_init if plan.vocab > plan.base_vocab else None,
                            tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)
    description = describe_model(plan.preset, plan.vocab, plan.padded_vocab, special_ids=special_ids,
                                 conversion=conversion)
    objects = layer_objects(L.LAYER_EXTRA_STATE_KEYS, plan.preset.num_layers)
    with atomic_directory(output, overwrite=force) as stage:
        with tqdm(total=len(chunks), desc="HF -> Megatron", unit="tensor", disable=not progress) as bar:
            write_checkpoint(iteration_dir(stage, 0), chunks, objects, common_state(0, 0, description),
                             lambda chunk: bar.update())
        if tokenizer_dir:
            shutil.copytree(tokenizer_dir, stage / TOKENIZER_SUBDIR)
        write_tracker(stage, 0)
    return plan
