"""MIO's output grammar as a ``transformers`` logits processor.

Spans (MIO paper, arXiv 2409.17692; ``megatron_mio.tokenizer.vocab``):

- image: ``<image>``, exactly 32 SEED-Tokenizer codes, ``</image>``; a video is 2 to 8 images in
  a row (the paper's videos have 4-8 frames);
- speech output: ``<spch>``, the content codes (codebook 0), then the timbre-1, timbre-2 and
  timbre-3 codes (``<spch{1024k+c}>``), each exactly as many as the content, then ``</spch>``.

Inside a span only the tokens that continue it are allowed.  Outside spans the text vocabulary
is left exactly as the model scored it; only the MIO code and closing tokens (meaningless there)
are banned, and an opening token only while the whole span still fits in ``max_new_tokens``.
A speech span's content part stops in time to leave room for its three timbre parts.  With a
requested output modality the answer opens with that span.

Each row's progress is a small tuple (``Progress``) advanced by one token per step; the
processor finds every row's parent among the previous step's rows (the same row unless beam
search reordered them), so any batch, beam search and sampling work alike, at a cost per step
of a comparison of the rows and one masked fill.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from transformers import LogitsProcessor

from megatron_mio.tokenizer import MIOTokenizer
from megatron_mio.tokenizer import vocab as V

VIDEO_MIN_FRAMES = 2
VIDEO_MAX_FRAMES = 8
IMAGE_SPAN_TOKENS = V.IMAGE_CODES_PER_IMAGE + 2  # <image>, 32 codes, </image>
SPEECH_MIN_SPAN_TOKENS = V.SPEECH_CODEBOOKS + 2  # <spch>, one code per codebook, </spch>
MASK_CACHE_SIZE = 64  # per processor: distinct combinations of row states kept as masks

# What each generated token is, as the grammar sees it.
TEXT, IMAGE_OPEN, IMAGE_CLOSE, IMAGE_CODE, SPEECH_OPEN, SPEECH_CLOSE, CONTENT_CODE, TIMBRE_CODE = range(8)
_FRAME_KINDS = (IMAGE_OPEN, IMAGE_CODE, IMAGE_CLOSE)

# The grammar states, one allowed-token mask each.
STATES = (
    "text",              # outside spans; an image or a speech span may open
    "text_no_image",     # outside; an image no longer fits (or the video has its 8 frames)
    "text_no_span",      # outside; not even the shortest speech span fits
    "open_image",        # the answer (or the video's next frame) must open an image
    "open_speech",       # the answer must open speech
    "image_code",
    "image_close",
    "speech_content",    # the first content code
    "speech_content_or_timbre1",
    "speech_timbre1",
    "speech_timbre2",
    "speech_timbre3",
    "speech_close",
)
S = {name: i for i, name in enumerate(STATES)}

# What the requested output modality forces (``None``: the model chooses).
OPENING_SPAN = {"text": None, "image": IMAGE_OPEN, "video": IMAGE_OPEN, "speech": SPEECH_OPEN}


def min_new_tokens(modality: str) -> int:
    """The smallest ``max_new_tokens`` in which the requested modality's answer fits."""
    return {"text": 0, "image": IMAGE_SPAN_TOKENS, "video": VIDEO_MIN_FRAMES * IMAGE_SPAN_TOKENS,
            "speech": SPEECH_MIN_SPAN_TOKENS}[modality]


class Progress(NamedTuple):
    """Where one answer is: the open span (``TEXT`` outside, else its opening kind), the span
    tokens after the opener, the speech content codes among them, and the answer's leading run
    of whole images (``in_run``: nothing else so far)."""

    span: int = TEXT
    since_open: int = 0
    content: int = 0
    frames: int = 0
    in_run: bool = True

    def advance(self, kind: int) -> "Progress":
        in_run = self.in_run and kind in _FRAME_KINDS
        if kind == IMAGE_OPEN or kind == SPEECH_OPEN:
            return Progress(kind, 0, 0, self.frames, in_run)
        if kind == IMAGE_CLOSE or kind == SPEECH_CLOSE:
            return Progress(TEXT, 0, 0, self.frames + (kind == IMAGE_CLOSE), in_run)
        if self.span == TEXT:
            return self if in_run == self.in_run else self._replace(in_run=in_run)
        return Progress(self.span, self.since_open + 1, self.content + (kind == CONTENT_CODE),
                        self.frames, in_run)

    def state(self, remaining: int, modality: str) -> int:
        """The grammar state (an index into ``STATES``) with ``remaining`` tokens still allowed
        (this one included)."""
        if self.span == IMAGE_OPEN:
            return S["image_code"] if self.since_open < V.IMAGE_CODES_PER_IMAGE else S["image_close"]
        if self.span == SPEECH_OPEN:
            content, timbre = self.content, self.since_open - self.content
            if timbre == 0:  # one more content code needs itself, its 3 timbre codes, </spch>
                if content == 0:
                    return S["speech_content"]
                more = remaining >= 1 + V.SPEECH_TIMBRE_CODEBOOKS * (content + 1) + 1
                return S["speech_content_or_timbre1"] if more else S["speech_timbre1"]
            if timbre < V.SPEECH_TIMBRE_CODEBOOKS * content:
                return S["speech_timbre1"] + timbre // max(content, 1)
            return S["speech_close"]
        if self.in_run:
            if self.frames == 0 and OPENING_SPAN[modality] is not None:
                return S["open_image"] if OPENING_SPAN[modality] == IMAGE_OPEN else S["open_speech"]
            if modality == "video" and self.frames < VIDEO_MIN_FRAMES:
                return S["open_image"]
        video_full = modality == "video" and self.in_run and self.frames >= VIDEO_MAX_FRAMES
        if remaining >= IMAGE_SPAN_TOKENS and not video_full:
            return S["text"]
        return S["text_no_image"] if remaining >= SPEECH_MIN_SPAN_TOKENS else S["text_no_span"]


class MIOGrammar:
    """The token kinds and per-state allowed-token masks of one tokenizer (built once)."""

    def __init__(self, tokenizer: MIOTokenizer):
        self.vocab_size = tokenizer.vocab_size
        kind = torch.full((self.vocab_size,), TEXT, dtype=torch.long)
        image_codes = torch.as_tensor(tokenizer.image_code_ids(), dtype=torch.long)
        speech_codes = [torch.as_tensor(tokenizer.speech_code_ids(k), dtype=torch.long)
                        for k in range(V.SPEECH_CODEBOOKS)]
        kind[image_codes] = IMAGE_CODE
        kind[speech_codes[0]] = CONTENT_CODE
        for ids in speech_codes[1:]:
            kind[ids] = TIMBRE_CODE
        kind[tokenizer.image_start_id] = IMAGE_OPEN
        kind[tokenizer.image_end_id] = IMAGE_CLOSE
        kind[tokenizer.speech_start_id] = SPEECH_OPEN
        kind[tokenizer.speech_end_id] = SPEECH_CLOSE
        self.kind = kind.tolist()  # a list: one lookup per row and step, in Python

        def only(*ids) -> torch.Tensor:
            allowed = torch.zeros(self.vocab_size, dtype=torch.bool)
            for i in ids:
                allowed[i] = True
            return allowed

        outside = kind == TEXT  # text, ChatML, specials
        opens_image, opens_speech = only(tokenizer.image_start_id), only(tokenizer.speech_start_id)
        allowed = {
            "text": outside | opens_image | opens_speech,
            "text_no_image": outside | opens_speech,
            "text_no_span": outside,
            "open_image": opens_image,
            "open_speech": opens_speech,
            "image_code": only(image_codes),
            "image_close": only(tokenizer.image_end_id),
            "speech_content": only(speech_codes[0]),
            "speech_content_or_timbre1": only(speech_codes[0], speech_codes[1]),
            "speech_timbre1": only(speech_codes[1]),
            "speech_timbre2": only(speech_codes[2]),
            "speech_timbre3": only(speech_codes[3]),
            "speech_close": only(tokenizer.speech_end_id),
        }
        self.allowed = torch.stack([allowed[name] for name in STATES])  # [states, vocab]
        self._banned: dict[tuple, torch.Tensor] = {}

    def banned(self, width: int, device) -> torch.Tensor:
        """bool [states, width]: what each state refuses, for logits of ``width`` entries (ids
        past the tokenizer's vocabulary, TP padding rows, count as text)."""
        key = (width, str(device))
        if key not in self._banned:
            if width < self.vocab_size:
                raise ValueError(f"the model scores {width} tokens, fewer than the tokenizer's "
                                 f"{self.vocab_size}")
            allowed = torch.zeros(len(STATES), width, dtype=torch.bool)
            allowed[:, : self.vocab_size] = self.allowed
            allowed[[S["text"], S["text_no_image"], S["text_no_span"]], self.vocab_size:] = True
            self._banned[key] = (~allowed).to(device)
        return self._banned[key]

    def token_kind(self, token: int) -> int:
        return self.kind[token] if token < len(self.kind) else TEXT

    def progress(self, answer: list[int]) -> Progress:
        """Replay an answer's ids (a valid prefix) from the start."""
        progress = Progress()
        for token in answer:
            progress = progress.advance(self.token_kind(token))
        return progress

    def states(self, generated: torch.Tensor, max_new_tokens: int, modality: str = "text") -> torch.Tensor:
        """The state of every row of ``generated`` ``[rows, n]`` (answers so far), from scratch."""
        remaining = max_new_tokens - generated.shape[1]
        return torch.tensor([self.progress(row).state(remaining, modality) for row in generated.tolist()],
                            dtype=torch.long)


class MIOGrammarLogitsProcessor(LogitsProcessor):
    """Bans every token the grammar does not allow next (greedy, sampling, beam search, any
    batch).  ``prompt_length`` is the (padded) prompt width of ``input_ids``; ``modality`` the
    requested output modality (``"text"``: the model chooses whether to open a span)."""

    def __init__(self, grammar: MIOGrammar, prompt_length: int, max_new_tokens: int,
                 modality: str = "text"):
        if modality not in OPENING_SPAN:
            raise ValueError(f"unknown output modality {modality!r}; choose from {tuple(OPENING_SPAN)}")
        if max_new_tokens < min_new_tokens(modality):
            raise ValueError(f"max_new_tokens {max_new_tokens} cannot hold the requested {modality} "
                             f"answer (it needs at least {min_new_tokens(modality)} tokens)")
        self.grammar = grammar
        self.prompt_length = prompt_length
        self.max_new_tokens = max_new_tokens
        self.modality = modality
        self._previous: torch.Tensor | None = None  # last step's answers
        self._progress: list[Progress] = []
        self._mask_cache: dict[tuple[int, ...], torch.Tensor] = {}

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        answers = input_ids[:, self.prompt_length:]
        self._progress = self._advance(answers)
        self._previous = answers
        remaining = self.max_new_tokens - answers.shape[1]
        state = tuple(p.state(remaining, self.modality) for p in self._progress)
        return scores.masked_fill(self._banned_rows(state, scores), -float("inf"))

    def _banned_rows(self, state: tuple[int, ...], scores: torch.Tensor) -> torch.Tensor:
        """bool [rows, vocab]; the few combinations of states a batch goes through are kept."""
        rows = self._mask_cache.get(state)
        if rows is None:
            banned = self.grammar.banned(scores.shape[-1], scores.device)
            rows = banned[torch.tensor(state, device=scores.device)]
            if len(self._mask_cache) >= MASK_CACHE_SIZE:
                self._mask_cache.clear()
            self._mask_cache[state] = rows
        return rows

    def _advance(self, answers: torch.Tensor) -> list[Progress]:
        """Every row's progress: its parent's (the previous step's row it extends) advanced by
        its last token, or replayed from the start when it has none."""
        rows, n = answers.shape
        previous = self._previous
        if n == 0:
            return [Progress()] * rows
        if previous is None or previous.shape[1] != n - 1:
            return [self.grammar.progress(row) for row in answers.tolist()]
        if previous.shape[0] == rows and torch.equal(answers[:, :-1], previous):
            parents = list(range(rows))  # greedy and sampling: every row extends itself
        else:  # beam search reorders (and may repeat) rows
            match = (answers[:, None, :-1] == previous[None]).all(-1)
            parents = torch.where(match.any(1), match.int().argmax(1), -1).tolist()
        last = answers[:, -1].tolist()
        return [self._progress[p].advance(self.grammar.token_kind(t)) if p >= 0
                else self.grammar.progress(answers[row].tolist())
                for row, (p, t) in enumerate(zip(parents, last))]
