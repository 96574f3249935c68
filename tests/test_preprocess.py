"""tools/preprocess_data.py: round trip through megatron-core's IndexedDataset, determinism
across worker counts, bad input (fail: line number and nothing left behind; skip: reported),
long documents and the speech-length filter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from megatron_mio.data import schema as S
from megatron_mio.data import synthetic
from megatron_mio.data import templates as T
from megatron_mio.data.indexed import open_dataset
from megatron_mio.data.preprocess import PreprocessConfig, PreprocessError, preprocess

REPO = Path(__file__).resolve().parents[1]
OUTPUTS = (".bin", ".idx", ".loss_mask.bin", ".loss_mask.idx", ".modality_counts.npy",
           ".report.json")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    directory = tmp_path_factory.mktemp("corpus")
    return synthetic.write_sample_corpus(directory, seed=3)


def run(tokenizer_dir, inputs, prefix, stage, **kwargs):
    return preprocess(PreprocessConfig(inputs=[str(p) for p in inputs], output_prefix=str(prefix),
                                       tokenizer=tokenizer_dir, stage=stage, **kwargs))


def files_of(prefix) -> dict[str, bytes]:
    return {s: Path(str(prefix) + s).read_bytes() for s in OUTPUTS}


def leftovers(directory: Path, name: str) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.lstrip(".").startswith(name))


@pytest.mark.parametrize("stage,kind", [("2", "pretrain"), ("sft", "sft")])
def test_round_trip_through_megatron_reader(mio_tokenizer, mio_tokenizer_dir, corpus, tmp_path,
                                            stage, kind):
    prefix = tmp_path / "out"
    report = run(mio_tokenizer_dir, [corpus[kind]], prefix, stage, seed=11)
    tokens_ds, mask_ds = open_dataset(str(prefix))
    lines = Path(corpus[kind]).read_text(encoding="utf-8").splitlines()
    renderer = T.TemplateRenderer(mio_tokenizer, stage)
    table = mio_tokenizer.modality_table()
    counts = np.load(str(prefix) + ".modality_counts.npy")
    expected_docs = []
    for line_number, line in enumerate(lines, start=1):
        rng = np.random.default_rng([11, 0, line_number])
        tokens, mask = T.render_sample(renderer, S.parse_sample(json.loads(line)), rng)
        if tokens.size <= 2800:  # all of these are multimodal or chats: longer ones are dropped
            expected_docs.append((tokens, mask))
    assert len(tokens_ds) == len(mask_ds) == len(expected_docs) == report["documents_written"]
    assert tokens_ds.index.dtype == np.int32 and mask_ds.index.dtype == np.uint8
    for i, (tokens, mask) in enumerate(expected_docs):
        np.testing.assert_array_equal(tokens_ds[i], tokens)
        np.testing.assert_array_equal(mask_ds[i], mask)
        np.testing.assert_array_equal(counts[i], np.bincount(table[tokens], minlength=3))
    assert report["tokens"]["total"] == sum(t.size for t, _ in expected_docs)
    assert report["tokens"]["image"] == int(counts[:, 1].sum()) > 0
    assert report["tokens"]["speech"] == int(counts[:, 2].sum()) > 0
    assert report["samples_read"] == len(lines)
    assert report["long_documents"]["dropped"] == len(lines) - len(expected_docs)
    on_disk = json.loads(Path(str(prefix) + ".report.json").read_text())
    assert on_disk["documents_written"] == report["documents_written"]


def test_reruns_are_byte_identical_for_any_worker_count(mio_tokenizer_dir, corpus, tmp_path):
    inputs = [corpus["pretrain"], corpus["pretrain"]]  # the second file gets other random choices
    run(mio_tokenizer_dir, inputs, tmp_path / "a", "1", seed=5)
    run(mio_tokenizer_dir, inputs, tmp_path / "b", "1", seed=5, workers=2, chunk_size=7)
    a, b = files_of(tmp_path / "a"), files_of(tmp_path / "b")
    report_a, report_b = json.loads(a.pop(".report.json")), json.loads(b.pop(".report.json"))
    assert a == b
    assert report_a.pop("output_prefix") != report_b.pop("output_prefix")
    assert report_a == report_b
    run(mio_tokenizer_dir, inputs, tmp_path / "c", "1", seed=6)
    assert files_of(tmp_path / "a")[".bin"] != files_of(tmp_path / "c")[".bin"]


GOOD = {"type": "language", "text": "A good line."}
IMAGE = list(range(32))
BAD_LINES = {
    "malformed_json": (b'{"type": "language", "text": "oops"', "line", "malformed JSON"),
    "non_utf8": (b'{"type": "language", "text": "caf\xe9"}', "line", "not valid UTF-8"),
    "unknown_type": ({"type": "poem", "text": "x"}, "type", "unknown type 'poem'"),
    "missing_field": ({"type": "image_text_pair", "image": IMAGE}, "caption", "missing"),
    "code_out_of_range": ({"type": "image_text_pair", "image": IMAGE[:31] + [8192],
                           "caption": "x"}, "image", "code 8192 out of range 0..8191"),
    "image_not_32_codes": ({"type": "image_text_pair", "image": IMAGE[:31], "caption": "x"},
                           "image", "exactly 32 codes"),
    "video_frame": ({"type": "video_text_pair", "video": [IMAGE, [1, 2]], "description": "x"},
                    "video[1]", "exactly 32 codes"),
    "speech_code_out_of_range": ({"type": "speech_text_pair", "speech": {"content": [1, 1024]},
                                  "transcription": "x"}, "speech.content", "code 1024 out of range"),
    "timbre_unequal": ({"type": "speech_text_pair", "transcription": "x", "speech": {
        "content": [1, 2, 3], "timbre": [[1, 2, 3], [1, 2], [1, 2, 3]]}}, "speech.timbre[1]",
        "has 2 codes but content has 3"),
    "empty_text": ({"type": "image_text_pair", "image": IMAGE, "caption": "  "}, "caption",
                   "empty text"),
    "float_codes": ({"type": "interleaved", "segments": [{"text": "a"}, {"image": [0.5] * 32}]},
                    "segments[1].image", "expected a list of integers"),
}


def _write_lines(path: Path, lines) -> Path:
    with open(path, "wb") as f:
        for line in lines:
            f.write(line if isinstance(line, bytes) else json.dumps(line).encode())
            f.write(b"\n")
    return path


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_bad_input_fails_with_line_and_leaves_nothing(mio_tokenizer_dir, tmp_path, case):
    line, field, message = BAD_LINES[case]
    data = _write_lines(tmp_path / "in.jsonl", [GOOD, line, GOOD])
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(PreprocessError) as error:
        run(mio_tokenizer_dir, [data], out / "P", "2")
    assert str(error.value).startswith(f"{data}:2: {field}: ")
    assert message in str(error.value)
    assert leftovers(out, "P") == []


def test_bad_input_is_skipped_and_reported(mio_tokenizer_dir, tmp_path):
    lines = [GOOD] + [BAD_LINES[c][0] for c in sorted(BAD_LINES)] + [GOOD]
    data = _write_lines(tmp_path / "in.jsonl", lines)
    report = run(mio_tokenizer_dir, [data], tmp_path / "P", "2", on_error="skip")
    skipped = report["skipped"]["items"]
    assert report["documents_written"] == 2 and report["skipped"]["count"] == len(BAD_LINES)
    assert [item["line"] for item in skipped] == list(range(2, 2 + len(BAD_LINES)))
    assert [item["field"] for item in skipped] == [BAD_LINES[c][1] for c in sorted(BAD_LINES)]
    assert len(open_dataset(str(tmp_path / "P"))[0]) == 2


def test_cli_exits_nonzero_with_the_location(mio_tokenizer_dir, tmp_path):
    data = _write_lines(tmp_path / "in.jsonl", [GOOD, GOOD, BAD_LINES["unknown_type"][0]])
    result = subprocess.run(
        [sys.executable, str(REPO / "tools/preprocess_data.py"), "--input", str(data),
         "--output-prefix", str(tmp_path / "P"), "--tokenizer", mio_tokenizer_dir,
         "--stage", "1"], capture_output=True, text=True)
    assert result.returncode != 0
    assert f"{data}:3: type: unknown type 'poem'" in result.stderr
    assert leftovers(tmp_path, "P") == []


def test_long_documents_and_long_speech(mio_tokenizer_dir, tmp_path):
    long_text = {"type": "language", "text": " ".join(["A small dog walks along the river."] * 40)}
    pair = {"type": "image_text_pair", "image": IMAGE, "caption": "A dog " * 30}
    speech = {"type": "speech_text_pair", "speech": {"content": [1] * 751}, "transcription": "x"}
    ok_speech = {"type": "speech_text_pair", "speech": {"content": [1] * 750},
                 "transcription": "x"}
    data = _write_lines(tmp_path / "in.jsonl", [long_text, pair, speech, ok_speech, b"", GOOD])
    report = run(mio_tokenizer_dir, [data], tmp_path / "P", "2", seq_length=40)
    assert report["long_documents"]["kept"] == 1 and report["long_documents"]["dropped"] == 2
    assert [i["line"] for i in report["long_documents"]["items"]] == [1, 2, 4]
    assert report["filtered"]["count"] == 1 and report["filtered"]["items"][0]["line"] == 3
    assert "15.0 s" in report["filtered"]["items"][0]["reason"]
    assert report["blank_lines"] == 1
    assert report["documents_by_type"] == {"language": 2}
