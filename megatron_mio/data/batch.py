"""The packed batch: the one contract between the data pipeline and the model.

Every item of a packed dataset, and every micro-batch the trainer feeds to GPTModel, is a dict
with these keys (``b`` = micro-batch size, ``s`` = sequence length):

=================  ===============  =========================================================
key                dtype, shape     meaning
=================  ===============  =========================================================
``tokens``         int64 [b, s]     input ids; padding at the end of a pack is ``pad_id``
``labels``         int64 [b, s]     the next token *of the same document*; 0 where none
``loss_mask``      float32 [b, s]   1.0 where ``labels`` is trained on (SFT masks applied,
                                    0 on each document's last token and on padding)
``position_ids``   int64 [b, s]     restart at 0 in each document
``cu_seqlens``     int32 [b, L]     document boundaries in the pack: 0, end_1, ..., s, then
                                    -1 padding up to the fixed length L; trailing padding
                                    tokens, if any, form the last segment so it ends at s
``modality``       uint8 [b, s]     modality of the *label* token (``Modality``), for
                                    per-modality loss
=================  ===============  =========================================================
"""

from __future__ import annotations

import torch


BATCH_KEYS = ("tokens", "labels", "loss_mask", "position_ids", "cu_seqlens", "modality")


def valid_cu_seqlens(cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Drop the -1 padding of one pack's ``cu_seqlens`` row."""
    return cu_seqlens[cu_seqlens >= 0]


def document_ids(cu_seqlens: torch.Tensor, seq_length: int) -> torch.Tensor:
    """[b, s] index of the segment each token belongs to."""
    positions = torch.arange(seq_length, device=cu_seqlens.device)
    rows = []
    for row in cu_seqlens:
        bounds = valid_cu_seqlens(row)[1:-1].to(positions.dtype)
        rows.append(torch.bucketize(positions, bounds, right=True))
    return torch.stack(rows)

