"""The JSONL sample schema (``docs/data_format.md``): parsing and validation of one sample.

The sample dataclasses and the parsers of their fields; which fields a sample type has, and
how its sample is built from them, is the type's own rule (``sample_types``).
Every problem raises ``SampleError(field, message)`` with a dotted field path
(``messages[1].content[0].speech.timbre[2]``); the preprocessing driver adds file and line.
Unknown extra keys (ids, sources, ...) are ignored.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from megatron_mio.tokenizer import vocab as V

CHAT_MODES = ("std", "voice")
CHAT_ROLES = ("system", "user", "assistant")


class SampleError(ValueError):
    """A sample that does not follow the schema; ``field`` is the dotted path of the culprit."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclasses.dataclass
class Speech:
    content: np.ndarray  # int64 [n], 0..1023
    timbre: np.ndarray | None  # int64 [3, n] or None


# A part of interleaved or chat content: ("text", str) | ("image", int64[32]) |
# ("video", int64[frames, 32]) | ("speech", Speech).
Part = tuple[str, object]


@dataclasses.dataclass
class Language:
    text: str


@dataclasses.dataclass
class ImageTextPair:
    image: np.ndarray
    caption: str
    direction: str | None


@dataclasses.dataclass
class VideoTextPair:
    video: np.ndarray
    description: str
    direction: str | None


@dataclasses.dataclass
class SpeechTextPair:
    speech: Speech
    transcription: str
    direction: str | None


@dataclasses.dataclass
class Interleaved:
    parts: list[Part]


@dataclasses.dataclass
class Message:
    role: str
    parts: list[Part]


@dataclasses.dataclass
class Chat:
    mode: str
    messages: list[Message]


Sample = Language | ImageTextPair | VideoTextPair | SpeechTextPair | Interleaved | Chat


def require(obj: dict, key: str, field: str):
    if not isinstance(obj, dict):
        raise SampleError(field or "sample", f"expected a JSON object, got {type(obj).__name__}")
    if key not in obj:
        raise SampleError(join_field(field, key), "missing")
    return obj[key]


def join_field(field: str, key: str) -> str:
    return f"{field}.{key}" if field else key


def parse_text(value, field: str) -> str:
    if not isinstance(value, str):
        raise SampleError(field, f"expected a string, got {type(value).__name__}")
    if not value.strip():
        raise SampleError(field, "empty text")
    return value


def parse_codes(value, field: str, codebook: int, shape_hint: str = "a list of integers"
                ) -> np.ndarray:
    """A 1-D or 2-D list of integer codes in 0..codebook-1."""
    if not isinstance(value, list) or not value:
        raise SampleError(field, f"expected {shape_hint}, non-empty")
    try:
        codes = np.asarray(value)
    except ValueError:  # ragged nesting
        raise SampleError(field, f"expected {shape_hint}") from None
    if codes.dtype.kind not in "iu":
        raise SampleError(field, f"expected {shape_hint} (got {codes.dtype.kind!r}-kind values)")
    if codes.min() < 0 or codes.max() >= codebook:
        bad = codes[(codes < 0) | (codes >= codebook)].ravel()[0]
        raise SampleError(field, f"code {int(bad)} out of range 0..{codebook - 1}")
    return codes.astype(np.int64)


def parse_image(value, field: str) -> np.ndarray:
    codes = parse_codes(value, field, V.IMAGE_CODEBOOK_SIZE)
    if codes.ndim != 1 or codes.size != V.IMAGE_CODES_PER_IMAGE:
        raise SampleError(field, f"an image needs exactly {V.IMAGE_CODES_PER_IMAGE} codes, "
                                 f"got {codes.size if codes.ndim == 1 else codes.shape}")
    return codes


def parse_video(value, field: str) -> np.ndarray:
    if not isinstance(value, list) or not value:
        raise SampleError(field, "expected a non-empty list of frames")
    return np.stack([parse_image(frame, f"{field}[{i}]") for i, frame in enumerate(value)])


def parse_speech(value, field: str) -> Speech:
    content = parse_codes(require(value, "content", field), join_field(field, "content"),
                          V.SPEECH_CODEBOOK_SIZE)
    if content.ndim != 1:
        raise SampleError(join_field(field, "content"), "expected a flat list of codes")
    timbre = None
    if value.get("timbre") is not None:
        raw = value["timbre"]
        tfield = join_field(field, "timbre")
        if not isinstance(raw, list) or len(raw) != V.SPEECH_TIMBRE_CODEBOOKS:
            raise SampleError(tfield, f"expected {V.SPEECH_TIMBRE_CODEBOOKS} lists of codes")
        rows = []
        for k, row in enumerate(raw):
            codes = parse_codes(row, f"{tfield}[{k}]", V.SPEECH_CODEBOOK_SIZE)
            if codes.ndim != 1 or codes.size != content.size:
                raise SampleError(f"{tfield}[{k}]", f"has {codes.size} codes but content has "
                                                    f"{content.size}: timbre lists must match it")
            rows.append(codes)
        timbre = np.stack(rows)
    return Speech(content=content, timbre=timbre)


def parse_direction(obj: dict, field: str, choices: tuple[str, ...]) -> str | None:
    direction = obj.get("direction")
    if direction is not None and direction not in choices:
        raise SampleError(join_field(field, "direction"), f"must be one of {', '.join(choices)}, "
                                                     f"got {direction!r}")
    return direction


def parse_part(value, field: str) -> Part:
    """One segment of interleaved or chat content: exactly one of text/image/video/speech."""
    if not isinstance(value, dict):
        raise SampleError(field, "expected an object with one of text, image, video, speech")
    kinds = [k for k in ("text", "image", "video", "speech") if k in value]
    if len(kinds) != 1:
        raise SampleError(field, "expected exactly one of text, image, video, speech")
    kind = kinds[0]
    parse = {"text": parse_text, "image": parse_image, "video": parse_video,
             "speech": parse_speech}[kind]
    return kind, parse(value[kind], join_field(field, kind))


def parse_parts(value, field: str) -> list[Part]:
    if isinstance(value, str):
        return [("text", parse_text(value, field))]
    if not isinstance(value, list) or not value:
        raise SampleError(field, "expected a string or a non-empty list of segments")
    return [parse_part(item, f"{field}[{i}]") for i, item in enumerate(value)]
