"""Inference with an exported MIO model: ChatML prompt, Table 8 decoding, parsed multimodal output.

The prompt is built by the SFT template itself (``megatron_mio.data.templates``: same system
prompts, same ChatML layout the model was trained on), followed by the assistant header.  The
generated ids are split by the tokenizer into text, image code lists and speech code lists;
images must have 32 codes and speech the content-only or sequential four-codebook layout, or the
segment is reported as invalid (``complete: false``) rather than silently passed on to a decoder.
"""

from __future__ import annotations

import numpy as np
import torch

from megatron_mio.convert.decoding import decoding_preset
from megatron_mio.data import schema as S
from megatron_mio.data.templates import TemplateRenderer, encode_document
from megatron_mio.tokenizer import MIOTokenizer
from megatron_mio.tokenizer.mio_tokenizer import ImageSegment, SpeechSegment, TextSegment
from megatron_mio.tokenizer.vocab import IMAGE_CODES_PER_IMAGE


def chat_prompt_ids(tokenizer: MIOTokenizer, text: str, mode: str = "std",
                    image_codes=None, speech_codes=None) -> list[int]:
    """bos + system + user turn (optional image / speech input) + ``<|im_start|>assistant\\n``
    (``encode_document`` puts the one bos in front, as in training)."""
    parts: list = []
    if image_codes is not None:
        parts.append(("image", np.asarray(image_codes, dtype=np.int64)))
    if speech_codes is not None:
        parts.append(("speech", S.Speech(content=np.asarray(speech_codes, dtype=np.int64), timbre=None)))
    parts.append(("text", text))
    chat = S.Chat(mode=mode, messages=[S.Message("user", parts)])
    ids, _ = encode_document(TemplateRenderer(tokenizer, "sft").render_chat(chat), tokenizer)
    header = [tokenizer.im_start_id, *tokenizer.encode_text("assistant\n")]
    return [*ids.tolist(), *header]


def parse_output(tokenizer: MIOTokenizer, ids: list[int]) -> dict:
    """Generated ids (up to ``<|im_end|>``) -> JSON-ready text / images / speech."""
    if tokenizer.im_end_id in ids:
        ids = ids[: ids.index(tokenizer.im_end_id)]
    ids = [i for i in ids if i not in (tokenizer.eos_id, tokenizer.pad_id)]
    result = {"text": "", "images": [], "speech": [], "valid": True}
    for segment in tokenizer.decode_segments(ids, strict=False):
        if isinstance(segment, TextSegment):
            result["text"] += segment.text
        elif isinstance(segment, ImageSegment):
            complete = segment.complete and len(segment.codes) == IMAGE_CODES_PER_IMAGE
            result["images"].append({"codes": segment.codes.tolist(), "complete": complete})
            result["valid"] &= complete
        elif isinstance(segment, SpeechSegment):
            timbre = None if segment.timbre is None else segment.timbre.tolist()
            result["speech"].append({"content": segment.content.tolist(), "timbre": timbre,
                                     "complete": segment.complete})
            result["valid"] &= segment.complete
    return result


def generate(hf_dir: str, prompt: str, *, modality: str = "text", mode: str = "std", image_codes=None,
             speech_codes=None, max_new_tokens: int | None = None, seed: int = 0) -> dict:
    from transformers import AutoModelForCausalLM

    tokenizer = MIOTokenizer(hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir)
    model.eval()
    prompt_ids = chat_prompt_ids(tokenizer, prompt, mode, image_codes, speech_codes)
    kwargs = decoding_preset(modality).generate_kwargs()
    if max_new_tokens is not None:
        kwargs["max_new_tokens"] = max_new_tokens
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt_ids]), attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
                             eos_token_id=[tokenizer.im_end_id, tokenizer.eos_id],
                             pad_token_id=tokenizer.pad_id, **kwargs)
    generated = out[0, len(prompt_ids):].tolist()
    return {"modality": modality, "mode": mode, "decoding": kwargs, "prompt_tokens": len(prompt_ids),
            "generated_ids": generated, **parse_output(tokenizer, generated)}
