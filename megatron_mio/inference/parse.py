"""Generated ids -> text, image code lists and speech code lists (for the SEED-Tokenizer and
SpeechTokenizer decoders).

The tokenizer splits the ids into segments; an image must have 32 codes and speech the
content-only or sequential four-codebook layout, or the span is reported as invalid
(``complete: false``) rather than silently passed on to a decoder.
"""

from __future__ import annotations

from megatron_mio.inference.grammar import VIDEO_MAX_FRAMES, VIDEO_MIN_FRAMES
from megatron_mio.tokenizer import MIOTokenizer
from megatron_mio.tokenizer.mio_tokenizer import ImageSegment, SpeechSegment, TextSegment
from megatron_mio.tokenizer.vocab import IMAGE_CODES_PER_IMAGE


def answer_ids(tokenizer: MIOTokenizer, ids: list[int]) -> list[int]:
    """The answer: ids up to ``<|im_end|>``, without eos and padding."""
    if tokenizer.im_end_id in ids:
        ids = ids[: ids.index(tokenizer.im_end_id)]
    return [i for i in ids if i not in (tokenizer.eos_id, tokenizer.pad_id)]


def parse_output(tokenizer: MIOTokenizer, ids: list[int]) -> dict:
    """Generated ids (up to ``<|im_end|>``) -> JSON-ready text / images / speech."""
    result = {"text": "", "images": [], "speech": [], "valid": True}
    for segment in tokenizer.decode_segments(answer_ids(tokenizer, ids), strict=False):
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


def well_formed(tokenizer: MIOTokenizer, ids: list[int], modality: str) -> bool:
    """Whether the answer is usable as the requested modality: every span complete, and an
    image; a video (the first images in a row, 2 to 8 of them); or speech in the output layout
    (content and three timbre parts).  Text is always well-formed."""
    segments = tokenizer.decode_segments(answer_ids(tokenizer, ids), strict=False)
    images = [s for s in segments if isinstance(s, ImageSegment)]
    speech = [s for s in segments if isinstance(s, SpeechSegment)]
    if not all(s.complete and len(s.codes) == IMAGE_CODES_PER_IMAGE for s in images):
        return False
    if not all(s.complete for s in speech):
        return False
    if modality == "image":
        return bool(images)
    if modality == "speech":
        return any(s.timbre is not None for s in speech)
    if modality == "video":
        kinds = [isinstance(s, ImageSegment) for s in segments]
        if True not in kinds:
            return False
        first = kinds.index(True)
        frames = (kinds[first:] + [False]).index(False)
        return VIDEO_MIN_FRAMES <= frames <= VIDEO_MAX_FRAMES
    return True
