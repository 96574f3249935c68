"""Shared pytest fixtures."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def sentencepiece_model_path(tmp_path_factory) -> str:
    """A tiny SentencePiece base model (Unigram, nmt_nfkc, byte fallback), trained once per
    session on the synthetic corpus' text lines."""
    from megatron_mio.data.synthetic import sample_text_lines
    from megatron_mio.tokenizer import train_sentencepiece

    path = tmp_path_factory.mktemp("sentencepiece") / "base.model"
    return train_sentencepiece(sample_text_lines(n=2000, seed=0), path, vocab_size=1000)


@pytest.fixture(scope="session")
def mio_tokenizer_dir(tmp_path_factory, sentencepiece_model_path) -> str:
    """A MIO tokenizer directory (base + 12,292 MIO tokens + ChatML) built once per session."""
    from megatron_mio.tokenizer import build_mio_tokenizer

    directory = tmp_path_factory.mktemp("mio_tokenizer") / "tokenizer"
    build_mio_tokenizer(sentencepiece_model_path, directory)
    return str(directory)


@pytest.fixture(scope="session")
def mio_tokenizer(mio_tokenizer_dir):
    """The ``MIOTokenizer`` for ``mio_tokenizer_dir``."""
    from megatron_mio.tokenizer import MIOTokenizer

    return MIOTokenizer(mio_tokenizer_dir)
