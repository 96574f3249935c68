"""The MIO vocabulary on top of a SentencePiece / Hugging Face base tokenizer."""

from megatron_mio.tokenizer.build import BuildResult, build_mio_tokenizer
from megatron_mio.tokenizer.mio_tokenizer import (
    ImageSegment,
    MIOTokenizer,
    Segment,
    SpeechSegment,
    TextSegment,
)
from megatron_mio.tokenizer.sentencepiece_train import train_sentencepiece

__all__ = [
    "BuildResult", "build_mio_tokenizer", "ImageSegment", "MIOTokenizer", "Segment",
    "SpeechSegment", "TextSegment", "train_sentencepiece",
]
