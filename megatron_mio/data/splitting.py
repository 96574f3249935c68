"""Cutting a rendered sample that is longer than the sequence length into pieces.

The packer packs whole documents only, so preprocessing, which still knows the segments, cuts
what can be cut.  Each sample type says where its sample may be cut (``SampleType.units`` in
``sample_types``): as units, cut between and never inside except text.  Each piece is its own
document (masking, labels and positions restart in it):

- ``language``: consecutive pieces of at most ``budget`` tokens; every token of the page is in
  exactly one piece; the first piece starts with the bos (and, with ``append_eod``, the last ends
  with the eos).
- ``interleaved``: cut between segments; an image, a video or a speech segment is never cut; a
  text segment longer than a whole piece is cut at a token boundary; a non-text segment that
  alone is longer than a piece is dropped (counted) and the page goes on in the next piece.
- ``chat``: cut between exchanges (a user turn and the assistant turns that answer it); every
  piece starts with the bos and the same system message; an exchange that does not fit next to
  the system message is dropped (counted).
- pairs (image, video, speech with their text) cannot be cut: one longer than the budget is
  dropped (counted).
"""

from __future__ import annotations

import dataclasses

import numpy as np

TEXT = "text"  # the one unit kind that may be cut at any token
DROP_REASONS = {  # unit kind -> why a unit of that kind that alone exceeds a piece is dropped
    "pair": "pair_too_long",
    "image": "segment_too_long", "video": "segment_too_long", "speech": "segment_too_long",
    "exchange": "exchange_too_long",
}


@dataclasses.dataclass
class Unit:
    """Consecutive tokens of a sample that stay together unless ``kind`` is ``"text"``."""

    tokens: np.ndarray
    loss_mask: np.ndarray
    kind: str  # "text", "image", "video", "speech", "exchange" or "pair"


@dataclasses.dataclass
class RenderedSample:
    header: Unit | None  # repeated at the start of every piece (a chat's bos + system message)
    units: list[Unit]  # the rest of the sample, in order


@dataclasses.dataclass(frozen=True)
class Dropped:
    reason: str  # a value of DROP_REASONS
    kind: str  # the unit kind
    tokens: int


def join_units(parts: list[tuple[np.ndarray, np.ndarray]], kind: str) -> Unit:
    """Encoded runs ``(tokens, loss_mask)`` as one unit of ``kind``."""
    return Unit(np.concatenate([t for t, _ in parts]), np.concatenate([m for _, m in parts]), kind)


def split_sample(sample: RenderedSample, budget: int
                 ) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[Dropped]]:
    """Pieces ``(tokens, loss_mask)`` of at most ``budget`` tokens, and what had to be dropped."""
    header = [(sample.header.tokens, sample.header.loss_mask)] if sample.header else []
    header_size = sum(t.size for t, _ in header)
    total = header_size + sum(u.tokens.size for u in sample.units)
    if total <= budget:  # the common case: one piece, the whole sample
        parts = header + [(u.tokens, u.loss_mask) for u in sample.units]
        return [(np.concatenate([t for t, _ in parts]), np.concatenate([m for _, m in parts]))], []
    room = budget - header_size  # what a piece holds besides the header
    if room <= 0:  # a system message that alone fills a piece: nothing of the chat fits
        return [], [Dropped(DROP_REASONS["exchange"], "exchange", total)]
    pieces, dropped, current = [], [], []
    size = 0

    def flush():
        nonlocal size
        if current:
            parts = header + current
            pieces.append((np.concatenate([t for t, _ in parts]),
                           np.concatenate([m for _, m in parts])))
            current.clear()
        size = 0

    for unit in sample.units:
        n = unit.tokens.size
        if n == 0:
            continue
        if size + n <= room:
            current.append((unit.tokens, unit.loss_mask))
            size += n
        elif unit.kind == TEXT and n > room:  # cut anyway: fill the current piece first
            start = 0
            while start < n:
                take = min(room - size, n - start)
                if take:
                    current.append((unit.tokens[start:start + take],
                                    unit.loss_mask[start:start + take]))
                    size += take
                    start += take
                if size == room:
                    flush()
        else:
            flush()
            if n <= room:
                current.append((unit.tokens, unit.loss_mask))
                size = n
            else:
                dropped.append(Dropped(DROP_REASONS[unit.kind], unit.kind, n))
    flush()
    if not pieces and header_size:  # every exchange dropped: the system message goes too
        dropped.append(Dropped(DROP_REASONS["exchange"], "header", header_size))
    return pieces, dropped
