"""Hugging Face <-> megatron-core checkpoint conversion, shared by both conversion tools.

``layout``: the tensor mapping (names, QKV grouping, fused gated MLP); ``hf_config``: the
Llama config and what we refuse; ``vocab``: vocabulary extension and TP padding; ``hf_io`` /
``megatron_io``: streaming readers and writers; ``from_hf`` / ``to_hf``: the two directions;
``parity``: logits of both sides for ``tools/compare_logits.py``.  Generation lives in
``megatron_mio.inference``.
"""

from megatron_mio.convert.from_hf import convert_from_hf
from megatron_mio.convert.hf_config import UnsupportedModelError
from megatron_mio.convert.to_hf import convert_to_hf

__all__ = ["UnsupportedModelError", "convert_from_hf", "convert_to_hf"]
