"""The MIO vocabulary: spellings, counts and order of the 12,292 multimodal tokens.

One source of truth for every fact about MIO's tokens, as the MIO paper ("MIO: A Foundation
Model on Multimodal Tokens", arXiv 2409.17692) and its released code spell them: SEED-Tokenizer
image codes ``<img0>``..``<img8191>``, SpeechTokenizer codes ``<spch0>``..``<spch4095>`` (four
codebooks of 1,024: content = 0..1023, timbre codebook k = 1024*k + code), the four wrapping
tokens, Yi-6B-Chat's ChatML tokens, and the ``Modality`` of a token.
"""

from __future__ import annotations

import enum

IMAGE_CODEBOOK_SIZE = 8192
IMAGE_CODES_PER_IMAGE = 32
SPEECH_CODEBOOK_SIZE = 1024
SPEECH_CODEBOOKS = 4  # content + 3 timbre codebooks kept by MIO
SPEECH_TIMBRE_CODEBOOKS = SPEECH_CODEBOOKS - 1
SPEECH_CODES_PER_SECOND = 50

IMAGE_START = "<image>"
IMAGE_END = "</image>"
SPEECH_START = "<spch>"
SPEECH_END = "</spch>"
WRAPPER_TOKENS = (IMAGE_START, IMAGE_END, SPEECH_START, SPEECH_END)

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
CHATML_TOKENS = (IM_START, IM_END)

NUM_SPEECH_TOKENS = SPEECH_CODEBOOK_SIZE * SPEECH_CODEBOOKS
NUM_MIO_TOKENS = IMAGE_CODEBOOK_SIZE + NUM_SPEECH_TOKENS + len(WRAPPER_TOKENS)  # 12,292
YI_BASE_VOCAB_SIZE = 64_000  # Yi-6B's SentencePiece vocabulary
MIO_VOCAB_SIZE_FOR_YI = YI_BASE_VOCAB_SIZE + NUM_MIO_TOKENS  # 76,292, before padding for TP


class Modality(enum.IntEnum):
    """The modality of a token: the per-modality loss, the token counts of every report.

    Stored as uint8 in the packed batch and in the tokenizer's modality table; the wrapping
    tokens belong to their modality (``<image>`` is IMAGE).
    """

    TEXT = 0
    IMAGE = 1
    SPEECH = 2

    @property
    def label(self) -> str:
        """The name logs and reports use: ``text``, ``image``, ``speech`` (``loss_image``)."""
        return self.name.lower()


def image_token(code: int) -> str:
    return f"<img{code}>"


def speech_token(code: int) -> str:
    """Spelling of a *global* speech code (codebook k, code c -> 1024*k + c)."""
    return f"<spch{code}>"


def mio_tokens() -> list[str]:
    """The 12,292 MIO tokens in the order they are appended to the base vocabulary."""
    tokens = [image_token(i) for i in range(IMAGE_CODEBOOK_SIZE)]
    tokens += [speech_token(i) for i in range(NUM_SPEECH_TOKENS)]
    tokens += list(WRAPPER_TOKENS)
    assert len(tokens) == NUM_MIO_TOKENS
    return tokens
