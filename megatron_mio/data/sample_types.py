"""The sample types of the JSONL schema (``docs/data_format.md``), one class each.

A type's class holds its four rules: how a JSON object of the type is parsed into a sample
(``parse``), how the stage's template renders it (``render``), where it may be cut when it is
longer than the sequence length (``units``, cut by ``splitting.split_sample``) and which speech
it holds (``speech``: the ``--max-speech-seconds`` filter).  ``SampleType`` declares all four
abstract, so a class that misses one cannot be registered; adding a type is one new class with
``@register`` (``tests/test_sample_types.py`` also wants a sample of it in ``synthetic``).
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from typing import ClassVar

import numpy as np

from megatron_mio.data import schema as S
from megatron_mio.data.splitting import TEXT, RenderedSample, Unit, join_units
from megatron_mio.data.templates import (
    Document,
    TemplateRenderer,
    TokenRun,
    bos_run,
    encode_document,
    encode_runs,
)


class SampleType(abc.ABC):
    """The rules of one sample type; ``name`` is its ``"type"`` value in the JSONL."""

    name: ClassVar[str]
    sample_class: ClassVar[type]

    @abc.abstractmethod
    def parse(self, obj: dict) -> S.Sample:
        """The validated sample of a decoded JSON object whose ``type`` is ``name``."""

    @abc.abstractmethod
    def render(self, renderer: TemplateRenderer, sample: S.Sample, rng: np.random.Generator
               ) -> Document:
        """The sample through the stage's template (``rng`` draws the random choices)."""

    @abc.abstractmethod
    def units(self, renderer: TemplateRenderer, sample: S.Sample, rng: np.random.Generator,
              append_eod: bool) -> RenderedSample:
        """The rendered sample as the units the splitter may cut between; joined, exactly
        ``render``'s encoding with its bos (plus an eos where the type takes ``append_eod``)."""

    @abc.abstractmethod
    def speech(self, sample: S.Sample) -> Iterator[S.Speech]:
        """Every speech segment of the sample, in order."""


REGISTRY: dict[str, SampleType] = {}  # the "type" value -> its rules, in registration order
_BY_CLASS: dict[type, SampleType] = {}


def register(cls: type[SampleType]) -> type[SampleType]:
    """Add a sample type; instantiating it fails (``TypeError``) if a rule is missing."""
    rules = cls()
    if cls.name in REGISTRY:
        raise ValueError(f"sample type {cls.name!r} is registered twice")
    REGISTRY[cls.name] = rules
    _BY_CLASS[cls.sample_class] = rules
    return cls


def type_of(sample: S.Sample) -> SampleType:
    try:
        return _BY_CLASS[type(sample)]
    except KeyError:
        raise TypeError(f"{type(sample).__name__} is not a registered sample type") from None


# ------------------------------------------------------------------------------ the entry points
def parse_sample(obj) -> S.Sample:
    """A decoded JSON object -> a typed, validated sample."""
    name = S.require(obj, "type", "")
    if name not in REGISTRY:
        raise S.SampleError("type", f"unknown type {name!r} (expected one of "
                                    f"{', '.join(REGISTRY)})")
    return REGISTRY[name].parse(obj)


def render(renderer: TemplateRenderer, sample: S.Sample, rng: np.random.Generator) -> Document:
    return type_of(sample).render(renderer, sample, rng)


def render_sample(renderer: TemplateRenderer, sample: S.Sample, rng: np.random.Generator
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Sample -> (token ids, loss mask) in one call."""
    return encode_document(render(renderer, sample, rng), renderer.tokenizer)


def render_units(renderer: TemplateRenderer, sample: S.Sample, rng: np.random.Generator,
                 append_eod: bool = False) -> RenderedSample:
    """A sample as the units the splitter may cut between.  Joined, the units are exactly
    ``render_sample``'s tokens and loss mask (plus the eos with ``append_eod`` on a page)."""
    return type_of(sample).units(renderer, sample, rng, append_eod)


def speech_parts(sample: S.Sample) -> Iterator[S.Speech]:
    return type_of(sample).speech(sample)


# ------------------------------------------------------------------------------ shared rules
def _pretraining_document(renderer: TemplateRenderer) -> Document:
    if renderer.stage == "sft":
        raise S.SampleError("type", "--stage sft takes chat samples only")
    return Document()


def _encoded_with_bos(renderer: TemplateRenderer, doc: Document
                      ) -> list[tuple[np.ndarray, np.ndarray]]:
    return [bos_run(doc, renderer.tokenizer)] + encode_runs(doc, renderer.tokenizer)


def _goes(direction: str | None, way: str, rng, probability: float) -> bool:
    """Whether a pair goes ``way``: as the sample's ``direction`` says, else with ``probability``.
    The draw is made either way, so a sample's direction does not shift its neighbours' draws."""
    drawn = rng.random() < probability
    return drawn if direction is None else direction == way


def _speech_of(parts: list[S.Part]) -> Iterator[S.Speech]:
    return (value for kind, value in parts if kind == "speech")


class _Pair(SampleType):
    """A modality item with its text: one template, never cut."""

    def units(self, renderer, sample, rng, append_eod):
        doc = self.render(renderer, sample, rng)
        return RenderedSample(None, [join_units(_encoded_with_bos(renderer, doc), "pair")])

    def speech(self, sample):
        return iter(())


# ------------------------------------------------------------------------------ the types
@register
class LanguageType(SampleType):
    """A text page; cut anywhere; ``append_eod`` ends it with the eos."""

    name = "language"
    sample_class = S.Language

    def parse(self, obj):
        return S.Language(S.parse_text(S.require(obj, "text", ""), "text"))

    def render(self, renderer, sample, rng):
        doc = _pretraining_document(renderer)
        doc.text(sample.text)
        return doc

    def units(self, renderer, sample, rng, append_eod):
        runs = _encoded_with_bos(renderer, self.render(renderer, sample, rng))
        if append_eod:
            runs.append((np.array([renderer.tokenizer.eos_id], dtype=np.int32),
                         np.ones(1, np.uint8)))
        return RenderedSample(None, [join_units(runs, TEXT)])

    def speech(self, sample):
        return iter(())


@register
class ImageTextPairType(_Pair):
    name = "image_text_pair"
    sample_class = S.ImageTextPair
    DIRECTIONS = ("caption", "generation")
    CAPTION = "{image} The caption of this image is: {caption}"
    GENERATION = 'Please generate an image of "{caption}": {image}'
    GENERATION_PROBABILITY = 0.5  # caption or generation, at random

    def parse(self, obj):
        return S.ImageTextPair(S.parse_image(S.require(obj, "image", ""), "image"),
                               S.parse_text(S.require(obj, "caption", ""), "caption"),
                               S.parse_direction(obj, "", self.DIRECTIONS))

    def render(self, renderer, sample, rng):
        doc = _pretraining_document(renderer)
        generation = _goes(sample.direction, "generation", rng, self.GENERATION_PROBABILITY)
        renderer.fill(doc, self.GENERATION if generation else self.CAPTION,
                      caption=sample.caption, image=lambda d: renderer.image(d, sample.image))
        return doc


@register
class VideoTextPairType(_Pair):
    name = "video_text_pair"
    sample_class = S.VideoTextPair
    DIRECTIONS = ("to_text", "to_video")
    TO_TEXT = "Please describe the following video: {video} {description}"
    TO_VIDEO = 'Please generate a video for "{description}": {video}'
    TO_VIDEO_PROBABILITY = 0.6  # 60% text-to-video, 40% video-to-text

    def parse(self, obj):
        return S.VideoTextPair(S.parse_video(S.require(obj, "video", ""), "video"),
                               S.parse_text(S.require(obj, "description", ""), "description"),
                               S.parse_direction(obj, "", self.DIRECTIONS))

    def render(self, renderer, sample, rng):
        doc = _pretraining_document(renderer)
        to_video = _goes(sample.direction, "to_video", rng, self.TO_VIDEO_PROBABILITY)
        renderer.fill(doc, self.TO_VIDEO if to_video else self.TO_TEXT,
                      description=sample.description,
                      video=lambda d: renderer.video(d, sample.video))
        return doc


@register
class SpeechTextPairType(_Pair):
    name = "speech_text_pair"
    sample_class = S.SpeechTextPair
    DIRECTIONS = ("asr", "tts")
    ASR = "{speech} Transcribe this speech: {transcription}"
    ASR_STAGE3 = "{speech} The transcription of this speech is: {transcription}"
    TTS = 'Please generate a speech of "{transcription}": {speech}'
    TTS_PROBABILITY = 0.5  # pairs with timbre: ASR or TTS, at random

    def parse(self, obj):
        speech = S.parse_speech(S.require(obj, "speech", ""), "speech")
        direction = S.parse_direction(obj, "", self.DIRECTIONS)
        if direction == "tts" and speech.timbre is None:
            raise S.SampleError("speech.timbre", "direction tts generates speech: timbre is required")
        return S.SpeechTextPair(speech, S.parse_text(S.require(obj, "transcription", ""),
                                                     "transcription"), direction)

    def render(self, renderer, sample, rng):
        doc = _pretraining_document(renderer)
        # Content-only speech cannot be generated, so it draws nothing (and is always ASR).
        tts = sample.speech.timbre is not None and rng.random() < self.TTS_PROBABILITY
        if sample.direction is not None:
            tts = sample.direction == "tts"
        if tts:
            template = self.TTS
        else:
            template = self.ASR_STAGE3 if renderer.stage == "3" else self.ASR
        renderer.fill(doc, template, transcription=sample.transcription,
                      speech=lambda d: renderer.speech(d, sample.speech, generated=tts))
        return doc

    def speech(self, sample):
        yield sample.speech


@register
class InterleavedType(SampleType):
    """A page of text and modality segments; cut between segments (and inside text)."""

    name = "interleaved"
    sample_class = S.Interleaved

    def parse(self, obj):
        return S.Interleaved(S.parse_parts(S.require(obj, "segments", ""), "segments"))

    def render(self, renderer, sample, rng):
        doc = _pretraining_document(renderer)
        renderer.parts(doc, sample.parts, speech_generated=lambda s: s.timbre is not None)
        return doc

    def units(self, renderer, sample, rng, append_eod):
        doc = self.render(renderer, sample, rng)
        runs = _encoded_with_bos(renderer, doc)
        kinds = [run.kind if isinstance(run, TokenRun) else TEXT for run in doc.runs]
        # The bos travels with the first segment, so no piece is a lone bos.
        units = [join_units(runs[:2], kinds[0])]
        units += [Unit(t, m, kind) for (t, m), kind in zip(runs[2:], kinds[1:])]
        return RenderedSample(None, units)

    def speech(self, sample):
        return _speech_of(sample.parts)


@register
class ChatType(SampleType):
    """An SFT conversation (Yi ChatML); cut between exchanges, each piece with the system
    message."""

    name = "chat"
    sample_class = S.Chat
    MODES = S.CHAT_MODES
    ROLES = S.CHAT_ROLES

    def parse(self, obj):
        mode = obj.get("mode", "std")
        if mode not in self.MODES:
            raise S.SampleError("mode", f"must be one of {', '.join(self.MODES)}, got {mode!r}")
        raw = S.require(obj, "messages", "")
        if not isinstance(raw, list) or not raw:
            raise S.SampleError("messages", "expected a non-empty list of messages")
        messages = [self._message(message, i) for i, message in enumerate(raw)]
        if not any(m.role == "assistant" for m in messages):
            raise S.SampleError("messages", "no assistant message: nothing to train on")
        return S.Chat(mode=mode, messages=messages)

    def _message(self, message, i: int) -> S.Message:
        field = f"messages[{i}]"
        role = S.require(message, "role", field)
        if role not in self.ROLES:
            raise S.SampleError(f"{field}.role", f"must be one of {', '.join(self.ROLES)}, "
                                                 f"got {role!r}")
        if role == "system" and i != 0:
            raise S.SampleError(f"{field}.role", "a system message may only come first")
        parts = S.parse_parts(S.require(message, "content", field), f"{field}.content")
        if role == "assistant":
            for j, (kind, value) in enumerate(parts):
                if kind == "speech" and value.timbre is None:
                    raise S.SampleError(f"{field}.content[{j}].speech.timbre",
                                        "assistant speech is generated: timbre is required")
        return S.Message(role, parts)

    @staticmethod
    def _check_stage(renderer: TemplateRenderer) -> None:
        if renderer.stage != "sft":
            raise S.SampleError("type", "chat samples need --stage sft")

    def render(self, renderer, sample, rng):
        self._check_stage(renderer)
        return renderer.render_chat(sample)

    def units(self, renderer, sample, rng, append_eod):
        self._check_stage(renderer)
        system, exchanges = renderer.render_chat_exchanges(sample)
        header = join_units(_encoded_with_bos(renderer, system), "header")
        return RenderedSample(header, [join_units(encode_runs(e, renderer.tokenizer), "exchange")
                                       for e in exchanges])

    def speech(self, sample):
        return (speech for message in sample.messages for speech in _speech_of(message.parts))
