"""Train a tiny SentencePiece base model from text lines (tests, quickstart, benchmarks).

Real MIO runs use Yi-6B's 64,000-piece model; everything here works with any SentencePiece
model, so tests train a small one on text they generate instead of downloading weights.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable

import sentencepiece as spm

from megatron_mio.atomic import write_bytes


def train_sentencepiece(
    lines: Iterable[str],
    output_path: str | os.PathLike,
    vocab_size: int = 1000,
    model_type: str = "unigram",
    byte_fallback: bool = True,
    seed_sentencepiece_size: int = 20000,
) -> str:
    """Train a Llama-style SentencePiece model (``<unk>``=0, ``<s>``=1, ``</s>``=2) on ``lines``.

    Writes ``output_path`` (a ``.model`` file) and returns its path.  Byte fallback is on by
    default, as in Llama and Yi, so unseen characters still round-trip.
    """
    output_path = os.fspath(output_path)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(lines)),
        model_writer=model,
        vocab_size=vocab_size,
        model_type=model_type,
        byte_fallback=byte_fallback,
        character_coverage=1.0,  # every character of the training text; others fall back to bytes
        seed_sentencepiece_size=seed_sentencepiece_size,
        normalization_rule_name="nmt_nfkc",
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        hard_vocab_limit=False,
        num_threads=1,
        minloglevel=2,
    )
    write_bytes(output_path, model.getvalue())
    return output_path
