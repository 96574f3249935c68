"""A converted, vocabulary-extended model trains with the real trainer (pipeline + virtual
pipeline), exports back to transformers, and generates a well-formed image through
tools/generate.py; plus the prompt template, the output parser and the presets on their own
(the grammar: tests/test_grammar.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from megatron_mio.convert import convert_from_hf, convert_to_hf
from megatron_mio.convert import layout as L
from megatron_mio.inference.presets import DECODING_PRESETS
from megatron_mio.inference import chat_prompt_ids, parse_output
from tests.distributed import REPO_ROOT, cpu_env, run_torchrun
from tests.test_convert import base_vocab, read_hf, save_random_llama, tiny_llama_config  # noqa: F401

TRAIN = ["--use-cpu", "--mock-data", "--model-preset", "tiny", "--num-layers", "4", "--seq-length", "32",
         "--micro-batch-size", "1", "--global-batch-size", "2", "--lr", "1e-3", "--lr-warmup-iters", "0",
         "--lr-decay-iters", "4", "--log-interval", "1",
         "--no-bias-swiglu-fusion", "--no-bias-dropout-fusion"]  # compiling costs more than this tiny run


@pytest.fixture(scope="module")
def trained_export(tmp_path_factory, base_vocab, mio_tokenizer_dir, mio_tokenizer):  # noqa: F811
    """HF -> extended Megatron checkpoint -> 2 training steps at PP=2 x VP=2 -> HF."""
    root = tmp_path_factory.mktemp("trained")
    hf = save_random_llama(root / "hf", tiny_llama_config(base_vocab))
    convert_from_hf(str(hf), str(root / "init"), tp=1, pp=2, tokenizer_dir=mio_tokenizer_dir, progress=False)
    run_torchrun("megatron_mio.pretrain", 2, [
        *TRAIN, "--vocab-size", len(mio_tokenizer), "--pipeline-model-parallel-size", "2",
        "--num-layers-per-virtual-pipeline-stage", "1", "--use-distributed-optimizer", "--load", root / "init", "--finetune",
        "--train-iters", "2", "--save", root / "trained", "--save-interval", "2",
        "--metrics-file", root / "metrics.jsonl",
    ], module=True, timeout=600)
    convert_to_hf(str(root / "trained"), str(root / "export"), tokenizer_dir=mio_tokenizer_dir, progress=False)
    return {"root": root, "hf": hf, "export": root / "export"}


@pytest.mark.multiprocess
@pytest.mark.slow
def test_extended_model_trains_and_exports(trained_export, mio_tokenizer, base_vocab):  # noqa: F811
    root = trained_export["root"]
    records = [json.loads(line) for line in (root / "metrics.jsonl").read_text().splitlines() if line.strip()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert (root / "trained" / "latest_checkpointed_iteration.txt").read_text().strip() == "2"
    before, after = read_hf(trained_export["hf"]), read_hf(trained_export["export"])
    assert after[L.HF_EMBEDDING].shape == (len(mio_tokenizer), 64)
    assert before.keys() == after.keys()
    moved = [n for n in before if not torch.equal(before[n], after[n][: before[n].shape[0]])]
    assert len(moved) == len(before)  # training changed every tensor, and export kept them all
    for name in before:  # ...by a small step from the converted weights (rows stayed aligned)
        assert (before[name] - after[name][: before[name].shape[0]]).abs().max() < 0.05, name


@pytest.mark.multiprocess
@pytest.mark.slow
def test_trained_model_generates(trained_export, tmp_path, mio_tokenizer):
    out = tmp_path / "gen.json"
    subprocess.run([sys.executable, str(REPO_ROOT / "tools" / "generate.py"), "--hf-dir", trained_export["export"],
                    "--prompt", "Please generate an image of a cat.", "--modality", "image",
                    "--max-new-tokens", "40", "--output", out],
                   check=True, cwd=REPO_ROOT, env=cpu_env(), capture_output=True, timeout=300)
    result = json.loads(out.read_text())
    assert result["decoding"]["do_sample"] and result["decoding"]["top_p"] == 0.7
    assert 34 <= len(result["generated_ids"]) <= 40
    assert all(0 <= i < len(mio_tokenizer) for i in result["generated_ids"])
    assert result["valid"] and result["grammar"] and result["images"][0]["complete"]
    assert len(result["images"][0]["codes"]) == 32


def test_prompt_uses_the_sft_chat_template(mio_tokenizer):
    ids = chat_prompt_ids(mio_tokenizer, "Say hi.", mode="voice", image_codes=list(range(32)))
    text = mio_tokenizer.decode(ids)
    assert ids[0] == mio_tokenizer.bos_id and ids.count(mio_tokenizer.bos_id) == 1
    assert text.count("<|im_start|>") == 3 and "You are MIO" in text
    assert ids != chat_prompt_ids(mio_tokenizer, "Say hi.", mode="std", image_codes=list(range(32)))
    header = [mio_tokenizer.im_start_id, *mio_tokenizer.encode_text("assistant\n")]
    assert ids[-len(header):] == header
    assert "<image>" + "".join(f"<img{i}>" for i in range(32)) + "</image>" in text


def test_output_parser_validates_codes(mio_tokenizer):
    tok = mio_tokenizer
    image = tok.image_ids(np.arange(32)).tolist()
    speech = tok.speech_ids(np.array([5, 6]), np.array([[1, 2], [3, 4], [5, 6]])).tolist()
    ids = tok.encode_text("Here:") + image + speech + [tok.im_end_id] + tok.encode_text("ignored")
    result = parse_output(tok, ids)
    assert result["valid"] and result["text"].strip() == "Here:"
    assert result["images"] == [{"codes": list(range(32)), "complete": True}]
    assert result["speech"][0]["content"] == [5, 6] and result["speech"][0]["timbre"] == [[1, 2], [3, 4], [5, 6]]
    truncated = parse_output(tok, image[:10])  # no </image>, 9 codes: invalid, not dropped
    assert not truncated["valid"] and truncated["images"][0]["codes"] == list(range(9))


def test_decoding_presets_follow_table_8():
    text, image, speech, video = (DECODING_PRESETS[m] for m in ("text", "image", "speech", "video"))
    assert (text.num_beams, text.do_sample, text.repetition_penalty) == (5, False, 1.0)
    for preset, penalty in ((image, 1.0), (speech, 1.15), (video, 1.15)):
        assert (preset.do_sample, preset.top_p, preset.temperature, preset.repetition_penalty) == (True, 0.7, 1.0, penalty)
