"""The MIO tokenizer: vocabulary layout, SentencePiece and AutoTokenizer parity, code lookup,
structured decoding, modality table, idempotent rebuilds."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
from tokenizers import AddedToken

from megatron_mio.data.synthetic import sample_text_lines
from megatron_mio.tokenizer import MIOTokenizer, build_mio_tokenizer, train_sentencepiece
from megatron_mio.tokenizer import vocab as V
from megatron_mio.tokenizer.build import fast_tokenizer_from_sentencepiece, load_sentencepiece_proto
from megatron_mio.tokenizer.vocab import Modality

REPO = Path(__file__).resolve().parents[1]

# Text where a converted tokenizer typically goes wrong: whitespace runs, tabs and newlines,
# NFKC (full-width, ligatures, circled digits, ideographic space), CJK, emoji (byte fallback).
EDGE_TEXTS = [
    "  Hello   world  ", "x\ty\nz", "line one\n\nline two", "Ｆｕｌｌ　width ① ﬁne ½",
    "東京タワーは３３３メートルです。", "😀 emoji ☃ and ∑ math", "", " ", "\n", "café naïve résumé",
    "“smart quotes” — dash … ellipsis", "tab\t\tend  ", "ALLCAPS123 mixed-Case_words",
]


@pytest.fixture(scope="module")
def auto_tokenizer(mio_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(mio_tokenizer_dir)


@pytest.fixture(scope="module")
def base_size(sentencepiece_model_path):
    return spm.SentencePieceProcessor(model_file=sentencepiece_model_path).get_piece_size()


def _random_mixed_string(rng: random.Random, lines: list[str]) -> str:
    """A string like the released MIO code builds: text with inline image/speech tokens."""
    parts = []
    for _ in range(rng.randint(1, 5)):
        kind = rng.choice(["text", "image", "speech", "chat"])
        if kind == "text":
            parts.append(rng.choice(lines + EDGE_TEXTS))
        elif kind == "image":
            codes = [rng.randrange(8192) for _ in range(32)]
            parts.append("<image>" + "".join(f"<img{c}>" for c in codes) + "</image>")
        elif kind == "speech":
            parts.append("<spch>" + "".join(f"<spch{rng.randrange(4096)}>" for _ in range(20))
                         + "</spch>")
        else:
            parts.append(f"<|im_start|>{rng.choice(['user', 'assistant'])}\n")
    return rng.choice(["", " ", "\n"]).join(parts)


def test_vocabulary_layout(auto_tokenizer, mio_tokenizer, base_size):
    assert len(auto_tokenizer) == base_size + V.NUM_MIO_TOKENS + 2
    expected = V.mio_tokens() + [V.IM_START, V.IM_END]
    assert auto_tokenizer.convert_tokens_to_ids(expected) == list(
        range(base_size, base_size + len(expected)))
    assert auto_tokenizer.convert_tokens_to_ids(["<img0>", "<img8191>", "<spch0>", "</spch>"]) == [
        base_size, base_size + 8191, base_size + 8192, base_size + 12291]
    assert mio_tokenizer.vocab_size == len(auto_tokenizer)
    assert mio_tokenizer.bos_id == auto_tokenizer.bos_token_id
    assert mio_tokenizer.eos_id == auto_tokenizer.eos_token_id
    assert mio_tokenizer.im_start_id == base_size + V.NUM_MIO_TOKENS
    assert mio_tokenizer.im_end_id == base_size + V.NUM_MIO_TOKENS + 1
    np.testing.assert_array_equal(mio_tokenizer.image_ids(np.arange(8192), wrap=False),
                                  np.arange(base_size, base_size + 8192))
    np.testing.assert_array_equal(mio_tokenizer.speech_ids(np.arange(1024), wrap=False),
                                  np.arange(base_size + 8192, base_size + 8192 + 1024))


def test_fast_tokenizer_matches_sentencepiece(auto_tokenizer, sentencepiece_model_path):
    sp = spm.SentencePieceProcessor(model_file=sentencepiece_model_path)
    texts = sample_text_lines(n=400, seed=123) + EDGE_TEXTS
    mismatches = [t for t in texts
                  if auto_tokenizer(t, add_special_tokens=False)["input_ids"] != sp.encode(t)]
    assert mismatches == []
    # The texts really exercise byte fallback and NFKC.
    assert any(sp.id_to_piece(i).startswith("<0x") for i in sp.encode("😀"))
    assert sp.encode("Ｆｕｌｌ") == sp.encode("Full")


def test_inline_tokens_match_auto_tokenizer(auto_tokenizer, mio_tokenizer):
    rng = random.Random(7)
    lines = sample_text_lines(n=50, seed=9)
    for _ in range(60):
        text = _random_mixed_string(rng, lines)
        ours = mio_tokenizer.encode_mixed(text, add_bos=True)
        assert auto_tokenizer(text)["input_ids"] == ours, text
        assert ours.count(mio_tokenizer.bos_id) == 1 + text.count("<s>")


def test_inline_tokens_map_to_the_code_lookup(mio_tokenizer):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 8192, 32)
    content = rng.integers(0, 1024, 40)
    timbre = rng.integers(0, 1024, (3, 40))
    image_text = "<image>" + "".join(f"<img{c}>" for c in image) + "</image>"
    codes = np.concatenate([content] + [timbre[k] + 1024 * (k + 1) for k in range(3)])
    speech_text = "<spch>" + "".join(f"<spch{c}>" for c in codes) + "</spch>"
    assert mio_tokenizer.encode_mixed(image_text) == mio_tokenizer.image_ids(image).tolist()
    assert mio_tokenizer.encode_mixed(speech_text) == mio_tokenizer.speech_ids(
        content, timbre).tolist()
    # Spellings that are not tokens stay text.
    assert mio_tokenizer.encode_mixed("<img8192>") == mio_tokenizer.encode_text("<img8192>")


def test_codes_out_of_range_are_rejected(mio_tokenizer):
    with pytest.raises(ValueError, match="image code 8192"):
        mio_tokenizer.image_ids([8192])
    with pytest.raises(ValueError, match="speech content code -1"):
        mio_tokenizer.speech_ids([-1])
    with pytest.raises(ValueError, match="timbre must have shape"):
        mio_tokenizer.speech_ids([1, 2], [[1, 2], [3, 4]])


def test_decode_segments(mio_tokenizer):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 8192, 32)
    content, timbre = rng.integers(0, 1024, 25), rng.integers(0, 1024, (3, 25))
    asr = rng.integers(0, 1024, 10)
    ids = (mio_tokenizer.encode_text("A dog runs.") + mio_tokenizer.image_ids(image).tolist()
           + mio_tokenizer.encode_text("Listen:") + mio_tokenizer.speech_ids(content, timbre).tolist()
           + mio_tokenizer.speech_ids(asr).tolist() + [mio_tokenizer.im_end_id])
    text1, img, text2, tts, speech_in, end = mio_tokenizer.decode_segments(ids)
    assert text1.text == "A dog runs." and text2.text == "Listen:"
    np.testing.assert_array_equal(img.codes, image)
    np.testing.assert_array_equal(tts.content, content)
    np.testing.assert_array_equal(tts.timbre, timbre)
    np.testing.assert_array_equal(speech_in.content, asr)
    assert speech_in.timbre is None
    assert end.text == V.IM_END
    assert mio_tokenizer.decode(ids).startswith("A dog runs.<image><img")


@pytest.mark.parametrize("layout", ["unequal", "out_of_order", "unclosed"])
def test_incomplete_speech_is_detected(mio_tokenizer, layout):
    content, timbre = np.arange(8), np.arange(24).reshape(3, 8)
    ids = mio_tokenizer.speech_ids(content, timbre).tolist()
    if layout == "unequal":
        del ids[-2]  # drop one code of the last codebook
    elif layout == "out_of_order":
        ids[1], ids[9] = ids[9], ids[1]  # a timbre code inside the content part
    else:
        ids = ids[:-1]
    with pytest.raises(ValueError):
        mio_tokenizer.decode_segments(ids)
    (segment,) = mio_tokenizer.decode_segments(ids, strict=False)
    assert not segment.complete and segment.timbre is None and segment.codes is not None


def test_unclosed_image_is_detected(mio_tokenizer):
    ids = mio_tokenizer.image_ids(np.arange(32)).tolist()[:-5]
    with pytest.raises(ValueError, match="not closed"):
        mio_tokenizer.decode_segments(ids)
    (segment,) = mio_tokenizer.decode_segments(ids, strict=False)
    assert not segment.complete and segment.codes.tolist() == list(range(28))


def test_modality_table(mio_tokenizer, base_size):
    table = mio_tokenizer.modality_table()
    assert table.dtype == np.uint8 and table.shape == (mio_tokenizer.vocab_size,)
    assert (table == Modality.IMAGE).sum() == 8192 + 2
    assert (table == Modality.SPEECH).sum() == 4096 + 2
    assert (table[:base_size] == Modality.TEXT).all()
    ids = mio_tokenizer.encode_mixed("a <image><img3></image> b <spch><spch4095></spch>")
    assert table[ids].tolist() == [0, 1, 1, 1, 0, 2, 2, 2]


def _directory_bytes(directory) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Path(directory).iterdir())}


def test_rebuild_on_own_output_changes_nothing(mio_tokenizer_dir, tmp_path):
    again = build_mio_tokenizer(mio_tokenizer_dir, tmp_path / "again")
    assert again.added_mio_tokens == 0 and again.added_chatml_tokens == []
    assert _directory_bytes(tmp_path / "again") == _directory_bytes(mio_tokenizer_dir)
    in_place = tmp_path / "in_place"
    shutil.copytree(mio_tokenizer_dir, in_place)
    build_mio_tokenizer(in_place, in_place)
    assert _directory_bytes(in_place) == _directory_bytes(mio_tokenizer_dir)


def test_base_with_chatml_keeps_its_ids(tmp_path):
    model = train_sentencepiece(sample_text_lines(n=300, seed=3), tmp_path / "chatml.model",
                                vocab_size=400)
    # Rebuild the model with ChatML as user-defined pieces, as Yi's tokenizer has them.
    proto = load_sentencepiece_proto(model)
    for token in (V.IM_START, V.IM_END):
        piece = proto.pieces.add()
        piece.piece, piece.score, piece.type = token, 0.0, piece.USER_DEFINED
    (tmp_path / "chatml.model").write_bytes(proto.SerializeToString())
    out = subprocess.run([sys.executable, str(REPO / "tools/build_tokenizer.py"), "--base",
                          str(tmp_path / "chatml.model"), "--output", str(tmp_path / "tok")],
                         capture_output=True, text=True, check=True).stdout
    assert "ChatML" not in out and "added 12292 MIO tokens" in out
    tokenizer = MIOTokenizer(tmp_path / "tok")
    n = len(proto.pieces)
    assert (tokenizer.im_start_id, tokenizer.im_end_id) == (n - 2, n - 1)
    assert tokenizer.vocab_size == n + V.NUM_MIO_TOKENS


def test_tool_reports_added_chatml(sentencepiece_model_path, tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "tools/build_tokenizer.py"), "--base",
                          sentencepiece_model_path, "--output", str(tmp_path / "tok")],
                         capture_output=True, text=True, check=True).stdout
    assert "lacks ChatML: added <|im_start|> <|im_end|>" in out


def test_lookup_follows_the_directory_vocabulary(sentencepiece_model_path, tmp_path):
    """A released tokenizer may order the MIO tokens differently: ids come from its vocabulary."""
    tokenizer = fast_tokenizer_from_sentencepiece(load_sentencepiece_proto(sentencepiece_model_path))
    shuffled = V.mio_tokens() + [V.IM_START, V.IM_END]
    random.Random(0).shuffle(shuffled)
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in shuffled])
    directory = tmp_path / "released"
    directory.mkdir()
    tokenizer.save(str(directory / "tokenizer.json"))
    shutil.copyfile(sentencepiece_model_path, directory / "tokenizer.model")
    mio = MIOTokenizer(directory)
    codes = [0, 17, 8191]
    assert mio.image_ids(codes, wrap=False).tolist() == [
        tokenizer.token_to_id(f"<img{c}>") for c in codes]
    assert mio.speech_ids([5], [[1], [2], [3]], wrap=False).tolist() == [
        tokenizer.token_to_id(f"<spch{c}>") for c in (5, 1025, 2050, 3075)]


def test_missing_mio_token_is_reported(mio_tokenizer_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(mio_tokenizer_dir, broken)
    data = json.loads((broken / "tokenizer.json").read_text(encoding="utf-8"))
    for token in data["added_tokens"]:
        if token["content"] == "<img77>":
            token["content"] = "<imgX77>"
    (broken / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ValueError, match=r"1 of the 12292 MIO tokens are missing.*<img77>"):
        MIOTokenizer(broken)


def test_directory_without_sentencepiece_model(mio_tokenizer_dir, mio_tokenizer, tmp_path):
    """An HF directory holding only tokenizer.json works as a base and as a tokenizer."""
    json_only = tmp_path / "json_only"
    shutil.copytree(mio_tokenizer_dir, json_only)
    (json_only / "tokenizer.model").unlink()
    result = build_mio_tokenizer(json_only, tmp_path / "rebuilt")
    assert result.added_mio_tokens == 0
    fast_only = MIOTokenizer(tmp_path / "rebuilt")
    text = "A small dog <image><img1></image> looks at the café.\nＦｕｌｌ ①"
    assert fast_only.encode_mixed(text) == mio_tokenizer.encode_mixed(text)
    assert fast_only.encode_text_split("user\n", "Hello there") == mio_tokenizer.encode_text_split(
        "user\n", "Hello there")
