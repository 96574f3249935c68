"""The paper's decoding presets for Hugging Face inference, per output modality (MIO paper,
arXiv 2409.17692, Table 8).

text: beam search with 5 beams, no sampling; image, speech, video: sampling with top-p 0.7.
Repetition penalty 1.0 for text and image, 1.15 for speech and video; temperature 1.0.
``max_new_tokens`` is ours: room for the longest output of each kind (an image is 32 codes plus
its two wrappers; a 15 s four-codebook speech answer is 3,000 codes; a video 4-8 images).
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron_mio.tokenizer.vocab import Modality

# The output modalities: the token modalities, and video (a sequence of images).
MODALITIES = (*(m.label for m in Modality), "video")


@dataclass(frozen=True)
class DecodingPreset:
    num_beams: int
    do_sample: bool
    top_p: float | None
    repetition_penalty: float
    temperature: float
    max_new_tokens: int

    def generate_kwargs(self) -> dict:
        kwargs = {
            "num_beams": self.num_beams,
            "do_sample": self.do_sample,
            "repetition_penalty": self.repetition_penalty,
            "max_new_tokens": self.max_new_tokens,
        }
        if self.do_sample:
            kwargs.update(top_p=self.top_p, temperature=self.temperature)
        return kwargs


DECODING_PRESETS: dict[str, DecodingPreset] = {
    "text": DecodingPreset(num_beams=5, do_sample=False, top_p=None, repetition_penalty=1.0,
                           temperature=1.0, max_new_tokens=512),
    "image": DecodingPreset(num_beams=1, do_sample=True, top_p=0.7, repetition_penalty=1.0,
                            temperature=1.0, max_new_tokens=64),
    "speech": DecodingPreset(num_beams=1, do_sample=True, top_p=0.7, repetition_penalty=1.15,
                             temperature=1.0, max_new_tokens=3200),
    "video": DecodingPreset(num_beams=1, do_sample=True, top_p=0.7, repetition_penalty=1.15,
                            temperature=1.0, max_new_tokens=320),
}


def decoding_preset(modality: str) -> DecodingPreset:
    try:
        return DECODING_PRESETS[modality]
    except KeyError:
        raise ValueError(f"unknown output modality {modality!r}; choose from {MODALITIES}") from None
