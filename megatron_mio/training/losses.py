"""The loss a step reports: summed token losses and labelled-token counts, overall and per modality.

A report holds *sums*, never means, so that the reports of micro-batches, data-parallel ranks and
log intervals add up exactly and the mean is taken once, per labelled token (what the gradient
uses).  The modality of a token is that of its label (``Modality``, from the tokenizer's table).
A micro-batch's report holds tensors on the batch's device (no host sync per micro-batch); it is
a flat tensor only on its way through the all-reduce (:func:`reduce_reports`), and plain floats
after it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from megatron_mio.tokenizer.vocab import Modality


@dataclass
class Sums:
    """Sum of token losses and the number of tokens it is over (floats, or 0-dim tensors)."""

    loss: float | torch.Tensor = 0.0
    tokens: float | torch.Tensor = 0.0

    def mean(self) -> float | None:
        return float(self.loss / self.tokens) if self.tokens > 0 else None

    def __add__(self, other: "Sums") -> "Sums":
        return Sums(self.loss + other.loss, self.tokens + other.tokens)


@dataclass
class LossReport:
    """Loss sums over all labelled tokens (``total``) and over those of each label modality."""

    total: Sums = field(default_factory=Sums)
    by_modality: dict[Modality, Sums] = field(default_factory=lambda: {kind: Sums() for kind in Modality})

    @classmethod
    def of_tokens(cls, token_losses: torch.Tensor, loss_mask: torch.Tensor, modality: torch.Tensor) -> "LossReport":
        """The report of one micro-batch: ``token_losses`` where ``loss_mask``, by ``modality``."""
        mask = loss_mask.float()
        losses = token_losses.detach().float()

        def sums(selected: torch.Tensor) -> Sums:
            return Sums((losses * selected).sum(), selected.sum())

        return cls(sums(mask), {kind: sums((modality == kind).float() * mask) for kind in Modality})

    def __add__(self, other: "LossReport") -> "LossReport":
        return LossReport(self.total + other.total,
                          {kind: self.by_modality[kind] + other.by_modality[kind] for kind in Modality})

    # The flat form, for collectives only: [total, (each modality in enum order)] x (loss, tokens).
    def _flat(self) -> list:
        parts = [self.total] + [self.by_modality[kind] for kind in Modality]
        return [value for part in parts for value in (part.loss, part.tokens)]

    @classmethod
    def _from_flat(cls, values: list[float]) -> "LossReport":
        pairs = [Sums(values[i], values[i + 1]) for i in range(0, len(values), 2)]
        return cls(pairs[0], dict(zip(Modality, pairs[1:])))


def reduce_reports(reports: list[LossReport], group) -> LossReport:
    """The sum of micro-batch reports over the micro-batches and the ranks of ``group``.

    Summed in fp32 on the device, as one all-reduce; read back as float64 values on the host.
    """
    flat = torch.stack([torch.stack(report._flat()).float() for report in reports]).sum(0)
    torch.distributed.all_reduce(flat, group=group)
    return LossReport._from_flat(flat.double().cpu().tolist())
