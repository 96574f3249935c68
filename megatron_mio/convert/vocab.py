"""Vocabulary extension (the 12,292 MIO tokens) and tensor-parallel padding of vocabulary rows.

Rows ``[0, base)`` are the checkpoint's own rows, copied bit for bit.  Rows ``[base, vocab)``
are the tokens the MIO tokenizer added, at exactly the ids the tokenizer gives them:
``mean`` initialises each as the mean of the existing rows (the usual choice when adding
tokens to a trained model: new logits start near the average instead of at random extremes);
``normal`` draws each from a normal distribution with the existing rows' per-dimension mean and
standard deviation.  Rows ``[vocab, padded)`` are TP padding: zero, and never exported.
"""

from __future__ import annotations

import torch

NEW_TOKEN_INITS = ("mean", "normal")


def vocabulary_rows(old: torch.Tensor, vocab: int, padded: int, init: str, seed: int) -> torch.Tensor:
    """``old [base, h]`` -> ``[padded, h]``: old rows, new-token rows, zero padding rows."""
    if init not in NEW_TOKEN_INITS:
        raise ValueError(f"unknown new-token init {init!r}; choose from {NEW_TOKEN_INITS}")
    base, hidden = old.shape
    if not base <= vocab <= padded:
        raise ValueError(f"need base rows {base} <= vocabulary {vocab} <= padded {padded}")
    rows = torch.zeros(padded, hidden, dtype=old.dtype)
    rows[:base] = old
    added = vocab - base
    if added:
        # Accumulate in fp32 without an fp32 copy of the whole (largest) tensor.
        mean = old.mean(dim=0, dtype=torch.float32)
        if init == "mean":
            new = mean.expand(added, hidden)
        else:
            generator = torch.Generator().manual_seed(seed)
            std = old.float().std(dim=0)
            new = mean + std * torch.randn(added, hidden, generator=generator)
        rows[base:vocab] = new.to(old.dtype)
    return rows


def check_added_token_ids(token_ids: dict[str, int], base: int, vocab: int, source: str) -> None:
    """Every added (MIO) token must land on a new row, inside the extended vocabulary."""
    outside = {t: i for t, i in token_ids.items() if not base <= i < vocab}
    if outside:
        sample = dict(list(outside.items())[:5])
        raise ValueError(
            f"{source}: {len(outside)} MIO tokens have ids outside the new rows [{base}, {vocab}) "
            f"(e.g. {sample}); the tokenizer must extend the model's base vocabulary of {base}"
        )
