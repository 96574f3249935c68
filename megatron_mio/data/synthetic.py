"""A small, realistic, deterministic sample corpus in MIO's JSONL schema (``docs/data_format.md``).

Codes are random (no SEED-Tokenizer or SpeechTokenizer runs here) but shaped like the real thing:
32 codes per image, 4-8 frames per video, 50 speech codes per second for 2-15 s, timbre on the
samples that generate speech.  Text is varied natural-ish English with accented Latin, CJK,
full-width forms and typographic punctuation, so NFKC normalisation and byte fallback are
exercised.  Used by the tests, the quickstart and the packing/trainer benchmarks.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterable
from pathlib import Path

from megatron_mio.atomic import atomic_file
from megatron_mio.tokenizer import vocab as V

_SUBJECTS = ["a small dog", "the old fisherman", "two children", "a red bicycle", "the city council",
             "my neighbour", "a group of tourists", "the orchestra", "a young chef", "the café owner",
             "a hiker in Zürich", "the team from São Paulo", "an engineer", "the museum guide",
             "a cat named Mochi", "the naïve student", "a street vendor in 東京", "the pilot"]
_VERBS = ["walks along", "looks at", "paints", "repairs", "talks about", "waits near", "photographs",
          "describes", "crosses", "cleans", "studies", "follows", "carries", "celebrates"]
_OBJECTS = ["the river bank", "a wooden bridge", "the morning market", "an empty stadium",
            "a plate of noodles", "the snowy mountains", "a crowded train station",
            "the 数据 centre", "a résumé", "the harbour at dusk", "a field of sunflowers",
            "the library's reading room", "a broken umbrella", "the ｆｕｌｌ-width sign",
            "a 3½-hour concert", "the garden behind the house"]
_TAILS = ["", "", " in the rain", " at sunset", " with a smile", " for the third time",
          " before breakfast", " while it snows", ", which surprised everyone", " — again",
          " near the 2nd avenue", " on 12 March 2021", " “without hesitation”", " (quietly)"]
_QUESTIONS = ["What is happening in this picture?", "Can you describe the image?",
              "Please transcribe what I said.", "What do you think about this?",
              "Tell me a short story about it.", "How many people are there?",
              "Generate an image of a lighthouse at night.", "Say hello to my friend."]


def _sentence(rng: random.Random) -> str:
    text = (f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}"
            f"{rng.choice(_TAILS)}")
    return text[0].upper() + text[1:] + rng.choice([".", ".", ".", "!", "?"])


def _paragraph(rng: random.Random, low: int, high: int) -> str:
    return " ".join(_sentence(rng) for _ in range(rng.randint(low, high)))


def sample_text_lines(n: int = 2000, seed: int = 0) -> list[str]:
    """Text lines to train a tiny SentencePiece base model on (the templates' own words and the
    system prompts included, so they tokenize into realistic pieces)."""
    rng = random.Random(seed)
    lines = [_paragraph(rng, 1, 4) for _ in range(n)]
    lines += _QUESTIONS + [
        "The caption of this image is:", "Please generate an image of", "Please describe the "
        "following video:", "Please generate a video for", "Transcribe this speech:",
        "Please generate a speech of", "The transcription of this speech is:",
        "You are MIO, an AI assistant capable of understanding and generating images, text, "
        "videos, and speech, selecting the appropriate modality according to the context.",
        "system", "user", "assistant",
    ]
    return lines


def _image(rng: random.Random) -> list[int]:
    return [rng.randrange(V.IMAGE_CODEBOOK_SIZE) for _ in range(V.IMAGE_CODES_PER_IMAGE)]


def _video(rng: random.Random) -> list[list[int]]:
    return [_image(rng) for _ in range(rng.randint(4, 8))]


def _speech(rng: random.Random, seconds: tuple[float, float], with_timbre: bool) -> dict:
    n = max(1, int(rng.uniform(*seconds) * V.SPEECH_CODES_PER_SECOND))
    speech = {"content": [rng.randrange(V.SPEECH_CODEBOOK_SIZE) for _ in range(n)]}
    if with_timbre:
        speech["timbre"] = [[rng.randrange(V.SPEECH_CODEBOOK_SIZE) for _ in range(n)]
                            for _ in range(V.SPEECH_TIMBRE_CODEBOOKS)]
    return speech


def _media_segment(rng: random.Random, image_weight: int, seconds) -> dict:
    """An image (``image_weight`` times as likely as each other kind), video or speech segment."""
    kind = rng.choices(["image", "video", "speech"], weights=[image_weight, 1, 1])[0]
    if kind == "image":
        return {"image": _image(rng)}
    if kind == "video":
        return {"video": _video(rng)}
    return {"speech": _speech(rng, seconds, rng.random() < 0.5)}


def _interleaved(rng: random.Random, seconds) -> dict:
    segments = []
    for k in range(rng.randint(3, 8)):
        if k % 2 == 0:
            segments.append({"text": _paragraph(rng, 1, 5)})
        else:
            segments.append(_media_segment(rng, 8, seconds))
    return {"type": "interleaved", "segments": segments}


def pretraining_samples(seed: int = 0, n_language: int = 8, n_image_pairs: int = 24,
                        n_video_pairs: int = 6, n_speech_pairs: int = 12, n_interleaved: int = 6,
                        speech_seconds: tuple[float, float] = (2.0, 15.0)) -> list[dict]:
    """Samples of every pre-training type, shuffled deterministically.  Half of the speech pairs
    carry timbre (usable in both directions), half content only (ASR only)."""
    rng = random.Random(seed)
    samples = [{"type": "language", "text": "\n".join(_paragraph(rng, 3, 12)
                                                     for _ in range(rng.randint(1, 4)))}
               for _ in range(n_language)]
    samples += [{"type": "image_text_pair", "image": _image(rng), "caption": _sentence(rng)}
                for _ in range(n_image_pairs)]
    samples += [{"type": "video_text_pair", "video": _video(rng), "description": _paragraph(rng, 1, 2)}
                for _ in range(n_video_pairs)]
    samples += [{"type": "speech_text_pair", "speech": _speech(rng, speech_seconds, k % 2 == 0),
                 "transcription": _sentence(rng)} for k in range(n_speech_pairs)]
    samples += [_interleaved(rng, speech_seconds) for _ in range(n_interleaved)]
    rng.shuffle(samples)
    return samples


def _chat(rng: random.Random, seconds) -> dict:
    if rng.random() < 0.3:  # voice mode: speech in, speech out
        messages = [{"role": "user", "content": [{"speech": _speech(rng, seconds, False)}]},
                    {"role": "assistant", "content": [{"speech": _speech(rng, seconds, True)}]}]
        return {"type": "chat", "mode": "voice", "messages": messages}
    messages = []
    for _ in range(rng.randint(1, 3)):
        user = rng.choice([
            _sentence(rng) + " " + rng.choice(_QUESTIONS),
            [{"image": _image(rng)}, {"text": rng.choice(_QUESTIONS)}],
            [{"text": "Please transcribe this."}, {"speech": _speech(rng, seconds, False)}],
        ])
        assistant = rng.choice([
            _paragraph(rng, 1, 3),
            [{"text": "Here it is:"}, {"image": _image(rng)}],
        ])
        messages += [{"role": "user", "content": user},
                     {"role": "assistant", "content": assistant}]
    return {"type": "chat", "mode": "std", "messages": messages}


def chat_samples(seed: int = 0, n: int = 16,
                 speech_seconds: tuple[float, float] = (2.0, 15.0)) -> list[dict]:
    """SFT chats: std mode (text/image turns) and voice mode (speech in, speech with timbre out)."""
    rng = random.Random(seed + 1_000_003)
    return [_chat(rng, speech_seconds) for _ in range(n)]


def write_jsonl(path: str | os.PathLike, samples: Iterable[dict]) -> str:
    """Write samples as JSON lines (UTF-8, non-ASCII kept as is); returns the path."""
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for sample in samples:
            f.write(json.dumps(sample, ensure_ascii=False) + "\n")
    return str(path)


def write_sample_corpus(directory: str | os.PathLike, seed: int = 0, scale: int = 1,
                        speech_seconds: tuple[float, float] = (2.0, 15.0)) -> dict:
    """Write ``pretrain.jsonl`` (every pre-training type) and ``sft.jsonl`` (chats) into
    ``directory``; ``scale`` multiplies every count, ``speech_seconds`` bounds every speech
    sample's length.  Returns {"pretrain": path, "sft": path}."""
    directory = Path(directory)
    pretrain = pretraining_samples(seed, n_language=8 * scale, n_image_pairs=24 * scale,
                                   n_video_pairs=6 * scale, n_speech_pairs=12 * scale,
                                   n_interleaved=6 * scale, speech_seconds=speech_seconds)
    chats = chat_samples(seed, n=16 * scale, speech_seconds=speech_seconds)
    return {"pretrain": write_jsonl(directory / "pretrain.jsonl", pretrain),
            "sft": write_jsonl(directory / "sft.jsonl", chats)}


def long_tail_samples(seed: int = 0, n_pages: int = 60, n_interleaved: int = 20,
                      median_sentences: float = 60.0, sigma: float = 1.0) -> list[dict]:
    """Web-like pages with a long tail of lengths: ``language`` pages and ``interleaved``
    pages (a paragraph, an image, a paragraph, ...; now and then a video or a speech clip) whose
    numbers of sentences are log-normal around ``median_sentences``.  With the tests' tokenizer
    a sentence is about 15 tokens, so the default puts most pages over 1,024 tokens."""
    rng = random.Random(seed)

    def n_sentences() -> int:
        return max(1, min(4000, int(rng.lognormvariate(0.0, sigma) * median_sentences)))

    samples = []
    for _ in range(n_pages):
        n, paragraphs = n_sentences(), []
        while n > 0:
            k = min(n, rng.randint(2, 12))
            paragraphs.append(" ".join(_sentence(rng) for _ in range(k)))
            n -= k
        samples.append({"type": "language", "text": "\n".join(paragraphs)})
    for _ in range(n_interleaved):
        n, segments = n_sentences(), []
        while n > 0:
            k = min(n, rng.randint(2, 10))
            segments.append({"text": " ".join(_sentence(rng) for _ in range(k))})
            n -= k
            segments.append(_media_segment(rng, 16, (2.0, 10.0)))
        samples.append({"type": "interleaved", "segments": segments})
    rng.shuffle(samples)
    return samples
