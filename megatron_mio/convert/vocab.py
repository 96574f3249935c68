"""Vocabulary extension (the 12,292 MIO tokens) and tensor-parallel padding of vocabulary rows.

Rows ``[0, base)`` are the checkpoint's own rows, copied bit for bit.  Rows ``[base, vocab)``
are the tokens the MIO tokenizer added, at exactly the ids the tokenizer gives them:
``mean`` initialises each as the mean of the existing rows (the usual choice when adding
tokens to a trained model: new logits start near the average instead of at random extremes);
``normal`` draws each from a normal distribution with the existing rows' per-dimension mean and
standard deviation.  Rows ``[vocab, padded)`` are TP padding: zero, and never exported.
The matrices are made block by block of rows (they are a model's largest tensors), never whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch

NEW_TOKEN_INITS = ("mean", "normal")


@dataclass(frozen=True)
class RowStatistics:
    """Per-dimension mean and standard deviation of a matrix's rows (fp32)."""

    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def of_blocks(cls, blocks: Iterable[torch.Tensor]) -> "RowStatistics":
        """Accumulated block by block in fp64, so no fp32 copy of the whole (largest) matrix exists."""
        count, total, squares = 0, None, None
        for block in blocks:
            block64 = block.to(torch.float64)
            block_sum, block_squares = block64.sum(dim=0), block64.square().sum(dim=0)
            total = block_sum if total is None else total + block_sum
            squares = block_squares if squares is None else squares + block_squares
            count += block.shape[0]
        if not count:
            raise ValueError("statistics of an empty matrix")
        mean = total / count
        variance = (squares - count * mean.square()) / max(count - 1, 1)
        return cls(mean.float(), variance.clamp_min(0).sqrt().float())


def check_init(init: str) -> None:
    if init not in NEW_TOKEN_INITS:
        raise ValueError(f"unknown new-token init {init!r}; choose from {NEW_TOKEN_INITS}")


def vocabulary_block(old_rows: torch.Tensor, start: int, stop: int, vocab: int, init: str,
                     statistics: Callable[[], RowStatistics], seed: int) -> torch.Tensor:
    """Rows ``[start, stop)`` of the extended ``[padded, h]`` matrix.

    ``old_rows`` are the checkpoint's rows ``[start, min(stop, base))`` (possibly none);
    ``statistics`` (called only when the block holds new rows) describes all old rows.  Normal
    draws are seeded per block start, so the result does not depend on the order blocks are made.
    """
    check_init(init)
    hidden = old_rows.shape[1]
    base = start + old_rows.shape[0]
    rows = torch.zeros(stop - start, hidden, dtype=old_rows.dtype)
    rows[: base - start] = old_rows
    new_start, new_stop = max(start, base), min(stop, vocab)
    if new_stop > new_start:
        stats = statistics()
        if init == "mean":
            new = stats.mean.expand(new_stop - new_start, hidden)
        else:
            generator = torch.Generator().manual_seed(seed * 1_000_003 + new_start)
            new = stats.mean + stats.std * torch.randn(new_stop - new_start, hidden, generator=generator)
        rows[new_start - start : new_stop - start] = new.to(old_rows.dtype)
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
