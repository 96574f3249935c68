"""The JSONL sample schema (``docs/data_format.md``): parsing and validation of one sample.

Every problem raises ``SampleError(field, message)`` with a dotted field path
(``messages[1].content[0].speech.timbre[2]``); the preprocessing driver adds file and line.
Unknown extra keys (ids, sources, ...) are ignored.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from megatron_mio.tokenizer import vocab as V

SAMPLE_TYPES = ("language", "image_text_pair", "video_text_pair", "speech_text_pair",
                "interleaved", "chat")
CHAT_MODES = ("std", "voice")
CHAT_ROLES = ("system", "user", "assistant")
IMAGE_DIRECTIONS = ("caption", "generation")
VIDEO_DIRECTIONS = ("to_text", "to_video")
SPEECH_DIRECTIONS = ("asr", "tts")


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


def _require(obj: dict, key: str, field: str):
    if not isinstance(obj, dict):
        raise SampleError(field or "sample", f"expected a JSON object, got {type(obj).__name__}")
    if key not in obj:
        raise SampleError(_join(field, key), "missing")
    return obj[key]


def _join(field: str, key: str) -> str:
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
    content = parse_codes(_require(value, "content", field), _join(field, "content"),
                          V.SPEECH_CODEBOOK_SIZE)
    if content.ndim != 1:
        raise SampleError(_join(field, "content"), "expected a flat list of codes")
    timbre = None
    if value.get("timbre") is not None:
        raw = value["timbre"]
        tfield = _join(field, "timbre")
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


def _parse_direction(obj: dict, field: str, choices: tuple[str, ...]) -> str | None:
    direction = obj.get("direction")
    if direction is not None and direction not in choices:
        raise SampleError(_join(field, "direction"), f"must be one of {', '.join(choices)}, "
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
    return kind, parse(value[kind], _join(field, kind))


def parse_parts(value, field: str) -> list[Part]:
    if isinstance(value, str):
        return [("text", parse_text(value, field))]
    if not isinstance(value, list) or not value:
        raise SampleError(field, "expected a string or a non-empty list of segments")
    return [parse_part(item, f"{field}[{i}]") for i, item in enumerate(value)]


def _parse_chat(obj: dict) -> Chat:
    mode = obj.get("mode", "std")
    if mode not in CHAT_MODES:
        raise SampleError("mode", f"must be one of {', '.join(CHAT_MODES)}, got {mode!r}")
    raw = _require(obj, "messages", "")
    if not isinstance(raw, list) or not raw:
        raise SampleError("messages", "expected a non-empty list of messages")
    messages = []
    for i, message in enumerate(raw):
        field = f"messages[{i}]"
        role = _require(message, "role", field)
        if role not in CHAT_ROLES:
            raise SampleError(f"{field}.role", f"must be one of {', '.join(CHAT_ROLES)}, "
                                               f"got {role!r}")
        if role == "system" and i != 0:
            raise SampleError(f"{field}.role", "a system message may only come first")
        parts = parse_parts(_require(message, "content", field), f"{field}.content")
        if role == "assistant":
            for j, (kind, value) in enumerate(parts):
                if kind == "speech" and value.timbre is None:
                    raise SampleError(f"{field}.content[{j}].speech.timbre",
                                      "assistant speech is generated: timbre is required")
        messages.append(Message(role, parts))
    if not any(m.role == "assistant" for m in messages):
        raise SampleError("messages", "no assistant message: nothing to train on")
    return Chat(mode=mode, messages=messages)


def parse_sample(obj) -> Sample:
    """A decoded JSON object -> a typed, validated sample."""
    sample_type = _require(obj, "type", "")
    if sample_type not in SAMPLE_TYPES:
        raise SampleError("type", f"unknown type {sample_type!r} (expected one of "
                                  f"{', '.join(SAMPLE_TYPES)})")
    if sample_type == "language":
        return Language(parse_text(_require(obj, "text", ""), "text"))
    if sample_type == "image_text_pair":
        return ImageTextPair(parse_image(_require(obj, "image", ""), "image"),
                             parse_text(_require(obj, "caption", ""), "caption"),
                             _parse_direction(obj, "", IMAGE_DIRECTIONS))
    if sample_type == "video_text_pair":
        return VideoTextPair(parse_video(_require(obj, "video", ""), "video"),
                             parse_text(_require(obj, "description", ""), "description"),
                             _parse_direction(obj, "", VIDEO_DIRECTIONS))
    if sample_type == "speech_text_pair":
        speech = parse_speech(_require(obj, "speech", ""), "speech")
        direction = _parse_direction(obj, "", SPEECH_DIRECTIONS)
        if direction == "tts" and speech.timbre is None:
            raise SampleError("speech.timbre", "direction tts generates speech: timbre is required")
        return SpeechTextPair(speech, parse_text(_require(obj, "transcription", ""),
                                                 "transcription"), direction)
    if sample_type == "interleaved":
        return Interleaved(parse_parts(_require(obj, "segments", ""), "segments"))
    return _parse_chat(obj)
