"""The quickstart's corpus fits its sequence length: preprocessing drops nothing and pack_stats
has nothing to warn about (the tests' tokenizer is the quickstart's recipe: the synthetic text
lines, 1,000 SentencePiece pieces)."""

from __future__ import annotations

import json

from megatron_mio import quickstart
from megatron_mio.commands import pack_stats
from megatron_mio.data.preprocess import PreprocessConfig, preprocess


def test_quickstart_corpus_fits_its_sequence_length(mio_tokenizer_dir, tmp_path, capsys):
    corpus = quickstart.write_quickstart_corpus(tmp_path / "corpus")
    prefixes = []
    for name, stage in (("pretrain", "2"), ("sft", "sft")):
        prefix = str(tmp_path / name)
        report = preprocess(PreprocessConfig(inputs=[corpus[name]], output_prefix=prefix,
                                             tokenizer=mio_tokenizer_dir, stage=stage,
                                             seq_length=quickstart.SEQ_LENGTH)).report
        assert report.body.dropped.tokens == 0 and report.body.filtered.count == 0, name
        assert report.body.samples_read > 0 and report.warnings() == []
        assert report.body.tokens.by_modality["speech"] > 0, name  # short, but there
        prefixes.append(prefix)
    argv = ["--data-path", "3", prefixes[0], "1", prefixes[1], "--seq-length",
            str(quickstart.SEQ_LENGTH), "--tokenizer", mio_tokenizer_dir, "--json",
            "--cache-dir", str(tmp_path / "cache")]
    assert pack_stats.main(argv) == 0
    out = capsys.readouterr()
    stats = json.loads(out.out)
    assert stats["warnings"] == [] and "warning" not in out.err
    assert stats["dropped_too_long"] == 0
    assert all(d["coverage"] == 1.0 and d["corpus_coverage"] == 1.0 for d in stats["datasets"])
