"""Inference with an exported MIO model (``transformers``): prompts, decoding, grammar, parsing.

``prompt``: the SFT ChatML prompt; ``presets``: the paper's decoding presets (Table 8);
``grammar``: MIO's span grammar as a ``transformers`` logits processor; ``parse``: generated ids
to text / images / speech; ``generation``: all of it around ``model.generate``.

Needs torch, ``transformers`` and the tokenizer only: importing it loads neither megatron-core
nor the trainer.
"""

from megatron_mio.inference.generation import Generator, generate, output_modality
from megatron_mio.inference.grammar import MIOGrammar, MIOGrammarLogitsProcessor
from megatron_mio.inference.parse import parse_output, well_formed
from megatron_mio.inference.presets import DECODING_PRESETS, MODALITIES, decoding_preset
from megatron_mio.inference.prompt import chat_prompt_ids

__all__ = [
    "DECODING_PRESETS", "Generator", "MIOGrammar", "MIOGrammarLogitsProcessor", "MODALITIES",
    "chat_prompt_ids", "decoding_preset", "generate", "output_modality", "parse_output", "well_formed",
]
