"""HF <-> Megatron conversion: bit-exact round trips at every TP/PP, logit parity against
``transformers`` through real torchrun ranks, vocabulary extension, refusals, and the trainer
starting from (and exporting back to) a converted model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from megatron_mio.checkpoint.layout import resolve_checkpoint
from megatron_mio.convert import UnsupportedModelError, convert_from_hf, convert_to_hf
from megatron_mio.convert import layout as L
from megatron_mio.convert.megatron_io import CheckpointReader
from megatron_mio.model.presets import get_preset, padded_vocab_size
from tests.distributed import REPO_ROOT, run_torchrun

ROPE_BASE = 5e6


def tiny_llama_config(vocab, **overrides):
    """The ``tiny`` preset's shape (GQA: 4 heads, 2 groups) as a transformers LlamaConfig."""
    from transformers import LlamaConfig

    preset = get_preset("tiny")
    fields = dict(
        vocab_size=vocab, hidden_size=preset.hidden_size, intermediate_size=preset.ffn_hidden_size,
        num_hidden_layers=4, num_attention_heads=preset.num_attention_heads,
        num_key_value_heads=preset.num_query_groups, rms_norm_eps=preset.norm_epsilon,
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_BASE},
        max_position_embeddings=preset.max_position_embeddings, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2,
    )
    fields.update(overrides)
    return LlamaConfig(**fields)


def save_random_llama(directory: Path, config, seed=0, max_shard_size=None) -> Path:
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # every tensor random, norms included, so a swapped tensor shows
        for param in model.parameters():
            param.normal_(0.0, 0.2)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(directory, **kwargs)
    return directory


def read_hf(directory: Path) -> dict[str, torch.Tensor]:
    index = directory / "model.safetensors.index.json"
    files = set(json.loads(index.read_text())["weight_map"].values()) if index.exists() else {"model.safetensors"}
    tensors = {}
    for name in files:
        tensors.update(load_file(directory / name))
    return tensors


# Small row blocks for the vocabulary matrices (not a multiple of any vocabulary boundary), so
# blocks straddle the base / extended / padded rows.
VOCAB_BLOCK_BYTES = 20_000


@pytest.fixture(scope="session")
def base_vocab(sentencepiece_model_path) -> int:
    """The test model's vocabulary: the session's SentencePiece base model (tests/conftest.py)."""
    import sentencepiece

    return sentencepiece.SentencePieceProcessor(model_file=sentencepiece_model_path).get_piece_size()


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory, base_vocab) -> Path:
    # Sharded on purpose: the reader must follow the index.
    return save_random_llama(tmp_path_factory.mktemp("hf") / "tiny", tiny_llama_config(base_vocab),
                             max_shard_size="100KB")


@pytest.mark.parametrize("tp,pp", [(1, 1), (2, 1), (1, 2), (2, 2)])
def test_round_trip_is_bit_identical(hf_model, base_vocab, tmp_path, tp, pp):
    # Vocabulary matrices in row blocks that align with nothing: streamed back in those pieces.
    convert_from_hf(str(hf_model), str(tmp_path / "mg"), tp=tp, pp=pp, progress=False,
                    vocab_block_bytes=VOCAB_BLOCK_BYTES)
    reader = CheckpointReader(resolve_checkpoint(tmp_path / "mg"))
    assert len(reader.row_blocks(L.EMBEDDING, base_vocab)) > 2
    assert reader.global_shape(L.EMBEDDING)[0] == padded_vocab_size(base_vocab, 128, tp)
    convert_to_hf(str(tmp_path / "mg"), str(tmp_path / "hf"), max_shard_bytes=200_000, progress=False)
    original, exported = read_hf(hf_model), read_hf(tmp_path / "hf")
    assert original.keys() == exported.keys()
    for name in original:
        assert original[name].dtype == exported[name].dtype, name
        assert torch.equal(original[name], exported[name]), name
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["rope_parameters"]["rope_theta"] == ROPE_BASE
    assert (config["num_key_value_heads"], config["vocab_size"]) == (2, base_vocab)
    assert len(set(json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())["weight_map"].values())) > 1


def test_qkv_layout_is_grouped_per_query_group(hf_model, tmp_path):
    """Rows of layer 1's QKV: [q heads of group g, k_g, v_g] for each group g, in order."""
    convert_from_hf(str(hf_model), str(tmp_path / "mg"), progress=False)
    qkv = CheckpointReader(resolve_checkpoint(tmp_path / "mg")).read({L.LAYER_QKV: 1})[L.LAYER_QKV]
    hf = read_hf(hf_model)
    q, k, v = (hf[f"model.layers.1.self_attn.{n}_proj.weight"] for n in "qkv")
    d = 16  # head dim of the tiny preset
    group = qkv.reshape(2, 4 * d, 64)[1]  # group 1 = heads 2, 3
    assert torch.equal(group[: 2 * d], q[2 * d: 4 * d])
    assert torch.equal(group[2 * d: 3 * d], k[d: 2 * d])
    assert torch.equal(group[3 * d:], v[d: 2 * d])


def run_compare_logits(hf_dir, load, tp, pp, out: Path, extra=()):
    report = out / f"parity_tp{tp}_pp{pp}.json"
    run_torchrun(REPO_ROOT / "tools" / "compare_logits.py", tp * pp,
                 ["--hf-dir", hf_dir, "--load", load, "--tp", tp, "--pp", pp, "--use-cpu",
                  "--tolerance", "1e-4", "--json", report, *extra], timeout=300)
    return json.loads(report.read_text())


@pytest.mark.multiprocess
@pytest.mark.parametrize("tp,pp", [(1, 1), (2, 2)])
def test_logit_parity_with_transformers(hf_model, tmp_path, tp, pp):
    convert_from_hf(str(hf_model), str(tmp_path / "mg"), tp=tp, pp=pp, progress=False)
    report = run_compare_logits(hf_model, tmp_path / "mg", tp, pp, tmp_path)
    assert report["max_abs_diff"] < 1e-4 and report["top1_agreement"] == 1.0
    assert report["tokens"] > 40


@pytest.mark.multiprocess
def test_compare_logits_fails_on_a_wrong_model(hf_model, base_vocab, tmp_path):
    """The parity tool has teeth: another model's weights exceed the tolerance (exit 1)."""
    other = save_random_llama(tmp_path / "other", tiny_llama_config(base_vocab), seed=1)
    convert_from_hf(str(other), str(tmp_path / "mg"), progress=False)
    with pytest.raises(AssertionError, match="exit 1"):
        run_compare_logits(hf_model, tmp_path / "mg", 1, 1, tmp_path)


@pytest.mark.parametrize("init", ["mean", "normal"])
def test_vocabulary_extension(hf_model, base_vocab, tmp_path, mio_tokenizer_dir, mio_tokenizer, init):
    convert_from_hf(str(hf_model), str(tmp_path / "mg"), tp=2, tokenizer_dir=mio_tokenizer_dir,
                    new_token_init=init, progress=False, vocab_block_bytes=VOCAB_BLOCK_BYTES)
    vocab = len(mio_tokenizer)
    assert vocab >= base_vocab + 12_292
    reader = CheckpointReader(resolve_checkpoint(tmp_path / "mg"))
    hf = read_hf(hf_model)
    for key, name in ((L.EMBEDDING, L.HF_EMBEDDING), (L.OUTPUT_LAYER, L.HF_OUTPUT_LAYER)):
        rows = reader.read({key: None})[key]
        old = hf[name]
        assert rows.shape[0] == padded_vocab_size(vocab, 128, 2)
        assert torch.equal(rows[:base_vocab], old)  # old rows untouched
        assert not rows[vocab:].any()  # TP padding is zero
        new = rows[base_vocab:vocab]
        if init == "mean":
            assert torch.allclose(new, old.mean(0).expand_as(new))
        else:
            assert torch.allclose(new.mean(0), old.mean(0), atol=0.02)
            assert torch.allclose(new.std(0), old.std(0), rtol=0.1)
            assert not torch.equal(new[0], new[1])
    # ids aligned with the tokenizer: the MIO tokens all sit on new rows
    image_ids = mio_tokenizer.image_ids([0, 8191], wrap=True)
    assert all(base_vocab <= i < vocab for i in image_ids)

    convert_to_hf(str(tmp_path / "mg"), str(tmp_path / "hf"), progress=False)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert len(tokenizer) == vocab == model.config.vocab_size
    assert tokenizer.convert_tokens_to_ids("<img8191>") == mio_tokenizer.vocab["<img8191>"]
    exported = read_hf(tmp_path / "hf")
    assert exported[L.HF_EMBEDDING].shape[0] == vocab  # padding stripped
    assert torch.equal(exported[L.HF_EMBEDDING][:base_vocab], hf[L.HF_EMBEDDING])


def test_refuses_existing_output_without_force(hf_model, tmp_path):
    out = tmp_path / "mg"
    out.mkdir()
    with pytest.raises(FileExistsError, match="--force"):
        convert_from_hf(str(hf_model), str(out), progress=False)
    convert_from_hf(str(hf_model), str(out), force=True, progress=False)
    assert (out / "latest_checkpointed_iteration.txt").read_text().strip() == "0"
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # staging dir renamed away


@pytest.mark.parametrize("overrides,pp,message", [
    ({"attention_bias": True}, 1, "biases"),
    ({"tie_word_embeddings": True}, 2, "tied embeddings"),
    ({"num_local_experts": 8}, 1, "mixture-of-experts"),
    ({"rope_parameters": {"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0}}, 1, "rope_type"),
])
def test_unsupported_configs_fail_clearly(tmp_path, base_vocab, overrides, pp, message):
    directory = tmp_path / "hf"
    directory.mkdir()
    config = tiny_llama_config(base_vocab, num_hidden_layers=2).to_dict()
    config.update(overrides)
    (directory / "config.json").write_text(json.dumps(config))
    save_file({"model.embed_tokens.weight": torch.zeros(base_vocab, 64)}, directory / "model.safetensors")
    with pytest.raises(UnsupportedModelError, match=message):
        convert_from_hf(str(directory), str(tmp_path / "mg"), pp=pp, progress=False)
    assert not (tmp_path / "mg").exists()


def test_export_rejects_a_tokenizer_of_another_size(hf_model, tmp_path, mio_tokenizer_dir):
    convert_from_hf(str(hf_model), str(tmp_path / "mg"), progress=False)
    with pytest.raises(ValueError, match="wrong tokenizer"):
        convert_to_hf(str(tmp_path / "mg"), str(tmp_path / "hf"), tokenizer_dir=mio_tokenizer_dir, progress=False)
    assert not (tmp_path / "hf").exists()


def test_streaming_shard_writer(tmp_path):
    """Tensors written in row blocks land in safetensors shards that safetensors reads back
    exactly; out-of-order or missing tensors are refused."""
    from megatron_mio.convert.hf_io import INDEX_NAME, HFCheckpointWriter

    tensors = {"a": torch.randn(5, 3), "b": torch.arange(7, dtype=torch.bfloat16), "c": torch.randn(4, 2).half()}
    specs = [(name, tuple(t.shape), t.dtype) for name, t in tensors.items()]
    writer = HFCheckpointWriter(tmp_path, specs, max_shard_bytes=70)  # a: 60 B, b: 14 B, c: 16 B
    with pytest.raises(RuntimeError, match="out of order"):
        writer.add("b", tensors["b"])
    writer.add("a", tensors["a"][:2])
    writer.add("a", tensors["a"][2:])
    writer.add("b", tensors["b"])
    with pytest.raises(RuntimeError, match="never written"):
        writer.finish()
    writer.add("c", tensors["c"])
    writer.finish()
    weight_map = json.loads((tmp_path / INDEX_NAME).read_text())["weight_map"]
    assert len(set(weight_map.values())) == 2
    read = {}
    for shard in set(weight_map.values()):
        read.update(load_file(tmp_path / shard))
    assert read.keys() == tensors.keys()
    assert all(torch.equal(read[name], t) for name, t in tensors.items())
