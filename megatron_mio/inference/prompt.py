"""The prompt: MIO's SFT ChatML template (``megatron_mio.data.templates``) with the generation prompt.

The prompt is rendered by the template the model was fine-tuned on (same system prompts, same
ChatML layout, one bos in front, ``<|im_start|>assistant\\n`` at the end), not by a copy of it.
"""

from __future__ import annotations

import numpy as np

from megatron_mio.data import schema as S
from megatron_mio.data.templates import TemplateRenderer, encode_document
from megatron_mio.tokenizer import MIOTokenizer
from megatron_mio.tokenizer.vocab import IMAGE_CODES_PER_IMAGE

MODES = S.CHAT_MODES  # "std", "voice": the system prompt


def chat_prompt_ids(tokenizer: MIOTokenizer, text: str, mode: str = "std",
                    image_codes=None, speech_codes=None) -> list[int]:
    """bos + system + user turn (optional image / speech input) + ``<|im_start|>assistant\\n``."""
    parts: list = []
    if image_codes is not None:
        if len(image_codes) != IMAGE_CODES_PER_IMAGE:
            raise ValueError(f"an image is exactly {IMAGE_CODES_PER_IMAGE} codes, got {len(image_codes)}")
        parts.append(("image", np.asarray(image_codes, dtype=np.int64)))
    if speech_codes is not None:
        parts.append(("speech", S.Speech(content=np.asarray(speech_codes, dtype=np.int64), timbre=None)))
    parts.append(("text", text))
    chat = S.Chat(mode=mode, messages=[S.Message("user", parts)])
    document = TemplateRenderer(tokenizer, "sft").render_chat(chat, add_generation_prompt=True)
    ids, _ = encode_document(document, tokenizer)
    return ids.tolist()
