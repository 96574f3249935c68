"""The output layer's padding columns take no part in the softmax.

The output layer has ``padded_vocab_size`` columns (a multiple of ``VOCAB_SIZE_DIVISIBLE_BY`` x
TP, see ``presets.padded_vocab_size``), more than the tokenizer has ids.  Left alone, the padding
columns (logit 0 at initialisation) take probability mass that no real token has: the loss of a freshly
converted model is above the one ``transformers`` computes on the same documents, and by an
amount that depends on the TP layout.  Setting them to -inf on the ranks that hold them, before
megatron-core's vocab-parallel cross entropy, makes the loss, the per-modality losses and any
sampling from these logits see only the real vocabulary; their gradient is then exactly zero.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from megatron.core.models.gpt import GPTModel
from megatron.core.parallel_state import get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size

from megatron_mio.model.presets import padded_vocab_size

log = logging.getLogger(__name__)


def padded_vocab_for_load(vocab_size: int, divisible_by: int, tensor_parallel_size: int,
                          saved: Mapping | None) -> int:
    """A run's padded vocabulary: the checkpoint's (``saved``: its model description, or None),
    when this tensor-parallel size can shard it.

    Padding depends on the TP size (``padded_vocab_size``), and padding rows that the checkpoint
    does not have would keep their fresh initialisation and take part in the softmax.  Adopting
    the saved size (when it divides by this TP size and holds the whole vocabulary) makes a
    reshard exact; otherwise the run pads its own way and the checkpoint load warns.
    """
    own = padded_vocab_size(vocab_size, divisible_by, tensor_parallel_size)
    recorded = (saved or {}).get("padded_vocab_size")
    if recorded is None or recorded == own:
        return own
    if recorded >= vocab_size and recorded % tensor_parallel_size == 0:
        log.info("using the checkpoint's padded vocabulary of %d rows (this layout alone would pad %d to %d)",
                 recorded, vocab_size, own)
        return recorded
    return own


def padding_columns(width: int, first_column: int, vocab_size: int) -> slice | None:
    """The local columns ``[start, width)`` of a ``width``-column logit block that starts at the
    global column ``first_column`` and lie at or beyond ``vocab_size`` (None when there are none)."""
    start = max(vocab_size - first_column, 0)
    return slice(start, width) if start < width else None


def mask_vocab_padding(model: GPTModel, vocab_size: int) -> None:
    """Make ``model``'s logits -inf in every column at or beyond ``vocab_size`` (the real ids).

    A forward hook on the output layer fills the padding columns in place (no copy of the
    logits); it handles both this rank's vocabulary shard and logits gathered over TP.  Does
    nothing on a pipeline stage without the output layer.
    """
    layer = getattr(model, "output_layer", None)
    if layer is None:
        return
    shard = layer.output_size_per_partition
    padded = shard * get_tensor_model_parallel_world_size()
    if not 0 < vocab_size <= padded:
        raise ValueError(f"a vocabulary of {vocab_size} ids does not fit the output layer's {padded} columns")

    def hook(module, inputs, output):
        logits = output[0] if isinstance(output, tuple) else output
        # Vocabulary-parallel logits hold this rank's shard; gathered ones start at column 0.
        first = get_tensor_model_parallel_rank() * shard if logits.shape[-1] == shard else 0
        columns = padding_columns(logits.shape[-1], first, vocab_size)
        if columns is not None:
            logits[..., columns] = float("-inf")

    layer.register_forward_hook(hook)
