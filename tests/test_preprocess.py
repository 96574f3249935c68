"""tools/preprocess_data.py: round trip through megatron-core's IndexedDataset, determinism
across worker counts and shard counts (merged), bad input (fail: line number and nothing left
behind; skip: reported), long documents split or dropped and reported, the speech-length
filter, glob prefixes in mixtures and pack_stats' coverage warning."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from megatron_mio.data import synthetic
from megatron_mio.data import templates as T
from megatron_mio.data.indexed import open_dataset
from megatron_mio.data.preprocess import (
    PreprocessConfig,
    PreprocessError,
    merge_preprocessed,
    preprocess,
    shard_output_prefix,
)
from megatron_mio.data.sample_types import parse_sample, render_units
from megatron_mio.data.splitting import split_sample

REPO = Path(__file__).resolve().parents[1]
OUTPUTS = (".bin", ".idx", ".loss_mask.bin", ".loss_mask.idx", ".modality_counts.npy",
           ".report.json")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    directory = tmp_path_factory.mktemp("corpus")
    return synthetic.write_sample_corpus(directory, seed=3)


def run(tokenizer_dir, inputs, prefix, stage, **kwargs):
    """The run's report, as written to ``P.report.json``."""
    return preprocess(PreprocessConfig(inputs=[str(p) for p in inputs], output_prefix=str(prefix),
                                       tokenizer=tokenizer_dir, stage=stage,
                                       **kwargs)).report.to_json()


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
    expected_docs, dropped_tokens = [], 0
    for line_number, line in enumerate(lines, start=1):
        rng = np.random.default_rng([11, 0, line_number])
        pieces, dropped = split_sample(render_units(renderer, parse_sample(json.loads(line)),
                                                    rng), 2800)
        expected_docs += pieces
        dropped_tokens += sum(d.tokens for d in dropped)
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
    assert report["dropped"]["tokens"] == dropped_tokens
    on_disk = json.loads(Path(str(prefix) + ".report.json").read_text())
    assert on_disk["documents_written"] == report["documents_written"]


def _without_prefix(report: dict) -> dict:
    return {k: v for k, v in report.items() if k not in ("output_prefix", "shard")}


def test_reruns_are_byte_identical_for_any_worker_count(mio_tokenizer_dir, corpus, tmp_path):
    inputs = [corpus["pretrain"], corpus["pretrain"]]  # the second file gets other random choices
    run(mio_tokenizer_dir, inputs, tmp_path / "a", "1", seed=5, seq_length=300)
    # Tasks of ~3 kB: many per file, cut inside files, appended with add_index.
    run(mio_tokenizer_dir, inputs, tmp_path / "b", "1", seed=5, seq_length=300, workers=2,
        task_bytes=3000)
    a, b = files_of(tmp_path / "a"), files_of(tmp_path / "b")
    report_a, report_b = json.loads(a.pop(".report.json")), json.loads(b.pop(".report.json"))
    assert a == b
    assert report_a["split"]["documents"] > 0 and report_a["dropped"]["tokens"] > 0
    assert _without_prefix(report_a) == _without_prefix(report_b)
    run(mio_tokenizer_dir, inputs, tmp_path / "c", "1", seed=6)
    assert files_of(tmp_path / "a")[".bin"] != files_of(tmp_path / "c")[".bin"]


@pytest.mark.parametrize("num_shards", [2, 3, 5])
def test_shards_merged_are_byte_identical_to_one_run(mio_tokenizer_dir, corpus, tmp_path,
                                                     num_shards):
    """2 and 5 shards of 2 files: whole files / byte ranges cut at lines; 3: ranges that span
    a file end.  Merged in order, the data files are the single run's, byte for byte."""
    inputs = [corpus["pretrain"], corpus["sft"].replace("sft", "pretrain_copy")]
    Path(inputs[1]).write_bytes(Path(corpus["pretrain"]).read_bytes())
    single = tmp_path / "single"
    run(mio_tokenizer_dir, inputs, single, "2", seed=2, seq_length=300)
    prefixes = []
    for index in range(num_shards):
        report = run(mio_tokenizer_dir, inputs, tmp_path / "shard", "2", seed=2, seq_length=300,
                     num_shards=num_shards, shard_index=index, workers=1 + index % 2,
                     task_bytes=5000)
        prefixes.append(shard_output_prefix(str(tmp_path / "shard"), index, num_shards))
        assert report["output_prefix"] == prefixes[-1] and Path(prefixes[-1] + ".idx").exists()
    sizes = [len(open_dataset(p)[0]) for p in prefixes]
    assert sum(sizes) == len(open_dataset(str(single))[0]) and min(sizes) > 0
    merged = merge_preprocessed(prefixes, str(tmp_path / "merged")).to_json()
    a, b = files_of(single), files_of(tmp_path / "merged")
    report_single = json.loads(a.pop(".report.json"))
    b.pop(".report.json")
    assert a == b
    assert _without_prefix(merged) == _without_prefix(report_single)


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


def test_bad_input_with_workers_names_the_first_bad_line(mio_tokenizer_dir, tmp_path):
    lines = [GOOD] * 300 + [BAD_LINES["unknown_type"][0]] + [GOOD] * 50 + [BAD_LINES["empty_text"][0]]
    data = _write_lines(tmp_path / "in.jsonl", lines)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(PreprocessError) as error:
        run(mio_tokenizer_dir, [data], out / "P", "2", workers=2, task_bytes=2000)
    assert str(error.value).startswith(f"{data}:301: type: unknown type 'poem'")
    assert leftovers(out, "P") == []  # neither the output nor the workers' partial datasets


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


def test_long_documents_split_dropped_and_reported(mio_tokenizer_dir, mio_tokenizer, tmp_path):
    long_text = {"type": "language", "text": " ".join(["A small dog walks along the river."] * 40)}
    pair = {"type": "image_text_pair", "image": IMAGE, "caption": "A dog " * 30}
    speech = {"type": "speech_text_pair", "speech": {"content": [1] * 751}, "transcription": "x"}
    ok_speech = {"type": "speech_text_pair", "speech": {"content": [1] * 750},
                 "transcription": "x"}
    page = {"type": "interleaved", "segments": [{"text": "Look."}, {"image": IMAGE},
                                                {"speech": {"content": [3] * 60}},
                                                {"text": "The end of the page."}]}
    data = _write_lines(tmp_path / "in.jsonl", [long_text, pair, speech, ok_speech, b"", GOOD,
                                                page])
    report = run(mio_tokenizer_dir, [data], tmp_path / "P", "2", seq_length=40)
    tokens_ds, _ = open_dataset(str(tmp_path / "P"))
    assert all(len(doc) <= 40 for doc in tokens_ds)
    # The page was split into pieces, every token kept; the pairs and the speech clip dropped.
    assert report["split"]["documents"] == 2 and report["split"]["items"][0]["line"] == 1
    pieces = report["split"]["items"][0]["pieces"]
    assert report["documents_by_type"] == {"interleaved": 2, "language": pieces + 1}
    by_reason = report["dropped"]["by_reason"]
    assert set(by_reason) == {"pair_too_long", "segment_too_long", "speech_over_max_seconds"}
    assert by_reason["pair_too_long"]["image_text_pair"]["samples"] == 1
    assert by_reason["pair_too_long"]["speech_text_pair"]["samples"] == 1
    assert by_reason["segment_too_long"]["interleaved"] == {"samples": 1, "tokens": 62}
    assert by_reason["speech_over_max_seconds"]["speech_text_pair"]["samples"] == 1
    assert [i["line"] for i in report["dropped"]["items"]] == [2, 4, 7]
    assert report["dropped"]["tokens"] == sum(e["tokens"] for r in by_reason.values()
                                              for e in r.values())
    assert report["coverage"] == pytest.approx(
        report["tokens"]["total"] / (report["tokens"]["total"] + report["dropped"]["tokens"]))
    assert any("3,000+ tokens" in note for note in report["notes"])
    assert report["filtered"]["count"] == 1 and report["filtered"]["items"][0]["line"] == 3
    assert "15.0 s" in report["filtered"]["items"][0]["reason"]
    assert report["blank_lines"] == 1


def test_append_eod_and_cli_warning(mio_tokenizer_dir, mio_tokenizer, tmp_path):
    pair = {"type": "image_text_pair", "image": IMAGE, "caption": "A dog " * 30}
    data = _write_lines(tmp_path / "in.jsonl", [GOOD, pair, GOOD])
    result = subprocess.run(
        [sys.executable, str(REPO / "tools/preprocess_data.py"), "--input", str(data),
         "--output-prefix", str(tmp_path / "P"), "--tokenizer", mio_tokenizer_dir,
         "--stage", "1", "--seq-length", "40", "--append-eod"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    warning = [line for line in result.stderr.splitlines() if "image_text_pair" in line]
    assert warning and warning[0].startswith("preprocess_data: warning: dropped ")
    assert warning[0].endswith(" tokens of 1 image_text_pair samples: pair_too_long")
    tokens_ds, mask_ds = open_dataset(str(tmp_path / "P"))
    assert len(tokens_ds) == 2
    assert all(doc[-1] == mio_tokenizer.eos_id for doc in tokens_ds)
    assert all(mask[-1] == 1 for mask in mask_ds)


def test_random_long_tail_corpus_written_without_cut_spans(mio_tokenizer_dir, mio_tokenizer,
                                                           tmp_path):
    """Every document of a random long-tail corpus, read back from the files: within
    seq_length, no image or speech span cut; all language and almost all interleaved tokens kept."""
    from tests.test_splitting import spans_intact

    samples = synthetic.long_tail_samples(seed=5, n_pages=10, n_interleaved=10,
                                          median_sentences=20)
    data = synthetic.write_jsonl(tmp_path / "pages.jsonl", samples)
    report = run(mio_tokenizer_dir, [data], tmp_path / "P", "2", seq_length=256, workers=2,
                 task_bytes=20_000)
    tokens_ds, _ = open_dataset(str(tmp_path / "P"))
    assert len(tokens_ds) == report["documents_written"] > len(samples)
    for doc in tokens_ds:
        assert len(doc) <= 256 and spans_intact(np.asarray(doc), mio_tokenizer)
    # Only what cannot fit is lost: speech clips (up to 10 s, 4 codebooks) over 256 tokens.
    assert list(report["dropped"]["by_reason"]) == ["segment_too_long"]
    assert list(report["dropped"]["by_reason"]["segment_too_long"]) == ["interleaved"]
    assert {d["segment"] for item in report["dropped"]["items"] for d in item["dropped"]} <= {
        "speech", "video"}


def test_glob_prefixes_in_a_mixture(mio_tokenizer_dir, corpus, tmp_path):
    from megatron_mio.data.mixture import MixtureError, load_mixture

    for index in (2, 0, 1):
        run(mio_tokenizer_dir, [corpus["pretrain"]], tmp_path / "data" / "pairs", "2",
            num_shards=3, shard_index=index)
    (tmp_path / "mix.yaml").write_text(
        "types:\n  pairs: {weight: 1, prefixes: [data/pairs-*, data/single]}\n")
    run(mio_tokenizer_dir, [corpus["pretrain"]], tmp_path / "data" / "single", "2")
    mixture = load_mixture(tmp_path / "mix.yaml")
    assert mixture.types[0].prefixes == tuple(
        [shard_output_prefix(str(tmp_path / "data" / "pairs"), i, 3) for i in range(3)]
        + [str(tmp_path / "data" / "single")])
    (tmp_path / "mix.yaml").write_text(
        "types:\n  pairs:\n    weight: 1\n    prefixes:\n      - data/pairs-*\n      - data/laion_*\n")
    with pytest.raises(MixtureError, match=r"mix.yaml:6: types.pairs.prefixes.1: the pattern "
                                           r"'.*data/laion_\*' matches no dataset"):
        load_mixture(tmp_path / "mix.yaml")


def test_pack_stats_reports_coverage_and_warns_below_99_percent(mio_tokenizer_dir, corpus,
                                                               tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("pack_stats", REPO / "tools/pack_stats.py")
    pack_stats = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pack_stats)
    prefix = tmp_path / "P"
    report = run(mio_tokenizer_dir, [corpus["pretrain"]], prefix, "2", seq_length=256)
    argv = ["--data-path", str(prefix), "--json", "--cache-dir", str(tmp_path / "cache")]
    assert pack_stats.main(argv + ["--seq-length", "256"]) == 0
    out = capsys.readouterr()
    stats = json.loads(out.out)["datasets"][0]
    assert stats["written_tokens"] == report["tokens"]["total"]
    assert stats["coverage"] == 1.0 and "reach the packs" not in out.err  # every piece fits
    # What preprocessing itself dropped (pairs over 256 tokens) is named too.
    assert f"pack_stats: warning: {prefix}: preprocessing wrote " \
           f"{100 * report['coverage']:.1f}% of its corpus' tokens" in out.err
    assert stats["corpus_tokens"] == report["tokens"]["total"] + report["dropped"]["tokens"]
    # Training at a shorter length than preprocessing: the packer drops what is longer.
    assert pack_stats.main(argv + ["--seq-length", "128"]) == 0
    out = capsys.readouterr()
    stats = json.loads(out.out)["datasets"][0]
    assert stats["coverage"] < 0.99
    assert f"pack_stats: warning: {prefix}: only {100 * stats['coverage']:.1f}% of the " \
           "tokens preprocessing wrote reach the packs" in out.err
    assert "--seq-length 256" in out.err


def test_merge_datasets_tool(mio_tokenizer_dir, corpus, tmp_path):
    for index in range(2):
        run(mio_tokenizer_dir, [corpus["pretrain"]], tmp_path / "s", "2", num_shards=2,
            shard_index=index)
    run(mio_tokenizer_dir, [corpus["pretrain"]], tmp_path / "single", "2")
    tool = [sys.executable, str(REPO / "tools/merge_datasets.py")]
    result = subprocess.run(tool + ["--input", str(tmp_path / "s-*"), "--output-prefix",
                                    str(tmp_path / "merged")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    a, b = files_of(tmp_path / "single"), files_of(tmp_path / "merged")
    a.pop(".report.json")
    assert json.loads(b.pop(".report.json"))["shard"]["merged_from"] == [
        shard_output_prefix(str(tmp_path / "s"), i, 2) for i in range(2)]
    assert a == b
    result = subprocess.run(tool + ["--input", str(tmp_path / "nothing-*"), "--output-prefix",
                                    str(tmp_path / "m2")], capture_output=True, text=True)
    assert result.returncode == 2 and "'" + str(tmp_path / "nothing-*") + "' matches no dataset" \
        in result.stderr
    assert leftovers(tmp_path, "m2") == []
