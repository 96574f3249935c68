"""MIO's output grammar as a ``transformers`` logits processor.

Spans (DESIGN.md, "Facts from the paper"):

- image: ``<image>``, exactly 32 SEED-Tokenizer codes, ``</image>``; a video is 2 to 8 images in
  a row (the paper's videos have 4-8 frames);
- speech output: ``<spch>``, the content codes (codebook 0), then the timbre-1, timbre-2 and
  timbre-3 codes (``<spch{1024k+c}>``), each exactly as many as the content, then ``</spch>``.

Inside a span only the tokens that continue it are allowed.  Outside spans the text vocabulary
is left exactly as the model scored it; only the MIO code and closing tokens (meaningless there)
are banned, and an opening token only while the whole span still fits in ``max_new_tokens``.
A speech span's content part stops in time to leave room for its three timbre parts.  With a
requested output modality the answer opens with that span.

The state of every row is recomputed from its generated ids at each step (a handful of
vectorised operations over ``[rows, generated]``), so it follows beam search's reordering of
rows without any bookkeeping and works for any batch of rows in different states.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor

from megatron_mio.tokenizer import MIOTokenizer
from megatron_mio.tokenizer import vocab as V

VIDEO_MIN_FRAMES = 2
VIDEO_MAX_FRAMES = 8
IMAGE_SPAN_TOKENS = V.IMAGE_CODES_PER_IMAGE + 2  # <image>, 32 codes, </image>
SPEECH_MIN_SPAN_TOKENS = V.SPEECH_CODEBOOKS + 2  # <spch>, one code per codebook, </spch>

# What each generated token is (the kinds the state machine distinguishes).
TEXT, IMAGE_OPEN, IMAGE_CLOSE, IMAGE_CODE, SPEECH_OPEN, SPEECH_CLOSE = range(6)
SPEECH_CODE = 6  # + codebook: 6 content, 7..9 timbre 1..3

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
OPENING_SPAN = {"text": None, "image": "image", "video": "image", "speech": "speech"}


def min_new_tokens(modality: str) -> int:
    """The smallest ``max_new_tokens`` in which the requested modality's answer fits."""
    return {"text": 0, "image": IMAGE_SPAN_TOKENS, "video": VIDEO_MIN_FRAMES * IMAGE_SPAN_TOKENS,
            "speech": SPEECH_MIN_SPAN_TOKENS}[modality]


class MIOGrammar:
    """The token kinds and per-state allowed-token masks of one tokenizer (built once)."""

    def __init__(self, tokenizer: MIOTokenizer):
        self.vocab_size = tokenizer.vocab_size
        kind = torch.full((self.vocab_size,), TEXT, dtype=torch.long)
        image_codes = torch.as_tensor(tokenizer.image_code_ids(), dtype=torch.long)
        speech_codes = [torch.as_tensor(tokenizer.speech_code_ids(k), dtype=torch.long)
                        for k in range(V.SPEECH_CODEBOOKS)]
        kind[image_codes] = IMAGE_CODE
        for k, ids in enumerate(speech_codes):
            kind[ids] = SPEECH_CODE + k
        kind[tokenizer.image_start_id] = IMAGE_OPEN
        kind[tokenizer.image_end_id] = IMAGE_CLOSE
        kind[tokenizer.speech_start_id] = SPEECH_OPEN
        kind[tokenizer.speech_end_id] = SPEECH_CLOSE
        self.kind = kind

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
        self._banned_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def tables(self, width: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(token kinds, banned masks [states, width]) for a model whose logits have ``width``
        entries: ids past the tokenizer's vocabulary (padding rows) count as text."""
        key = (width, str(device))
        if key not in self._banned_cache:
            if width < self.vocab_size:
                raise ValueError(f"the model scores {width} tokens, fewer than the tokenizer's "
                                 f"{self.vocab_size}")
            kind = torch.full((width,), TEXT, dtype=torch.long)
            kind[: self.vocab_size] = self.kind
            allowed = torch.zeros(len(STATES), width, dtype=torch.bool)
            allowed[:, : self.vocab_size] = self.allowed
            allowed[[S["text"], S["text_no_image"], S["text_no_span"]], self.vocab_size:] = True
            self._banned_cache[key] = (kind.to(device), (~allowed).to(device))
        return self._banned_cache[key]

    def states(self, generated: torch.Tensor, max_new_tokens: int, modality: str = "text",
               kind: torch.Tensor | None = None) -> torch.Tensor:
        """The grammar state (an index into ``STATES``) of every row after ``generated``
        ``[rows, n]`` (the answer's ids so far, a valid prefix)."""
        rows, n = generated.shape
        device = generated.device
        remaining = max_new_tokens - n  # tokens that may still be generated, this one included
        opening = OPENING_SPAN[modality]
        if n == 0:
            state = {"image": "open_image", "speech": "open_speech"}.get(opening)
            return torch.full((rows,), S[state or _outside(remaining)], dtype=torch.long, device=device)

        kinds = (self.kind.to(device) if kind is None else kind)[generated]
        position = torch.arange(n, device=device)
        opener = (kinds == IMAGE_OPEN) | (kinds == SPEECH_OPEN)
        closer = (kinds == IMAGE_CLOSE) | (kinds == SPEECH_CLOSE)
        last_open = torch.where(opener, position, -1).amax(1)
        last_close = torch.where(closer, position, -1).amax(1)
        inside = last_open > last_close
        open_kind = kinds.gather(1, last_open.clamp(min=0)[:, None])[:, 0]
        since_open = n - 1 - last_open  # span tokens after the opener

        # Image: 32 codes, then the closer.
        image = torch.where(since_open < V.IMAGE_CODES_PER_IMAGE, S["image_code"], S["image_close"])

        # Speech: content codes while the three timbre parts still fit, then 3 x content codes.
        content = ((kinds == SPEECH_CODE) & (position > last_open[:, None])).sum(1)
        timbre = since_open - content
        more_content_fits = remaining >= 1 + V.SPEECH_TIMBRE_CODEBOOKS * (content + 1) + 1
        in_content = torch.where(content == 0, S["speech_content"],
                                 torch.where(more_content_fits, S["speech_content_or_timbre1"],
                                             S["speech_timbre1"]))
        codebook = timbre // content.clamp(min=1)  # 0, 1, 2 for timbre parts 1, 2, 3
        in_timbre = torch.where(timbre < V.SPEECH_TIMBRE_CODEBOOKS * content,
                                S["speech_timbre1"] + codebook, S["speech_close"])
        speech = torch.where(timbre == 0, in_content, in_timbre)

        state = torch.full((rows,), S[_outside(remaining)], dtype=torch.long, device=device)
        if modality == "video":  # the answer opens with 2 to 8 frames in a row
            all_frames = ((kinds == IMAGE_OPEN) | (kinds == IMAGE_CODE) | (kinds == IMAGE_CLOSE)).all(1)
            frames = (kinds == IMAGE_CLOSE).sum(1)
            in_video = all_frames & ~inside
            state = torch.where(in_video & (frames < VIDEO_MIN_FRAMES), S["open_image"], state)
            capped = in_video & (frames >= VIDEO_MAX_FRAMES) & (state == S["text"])
            state = torch.where(capped, S["text_no_image"], state)
        state = torch.where(inside & (open_kind == IMAGE_OPEN), image, state)
        return torch.where(inside & (open_kind == SPEECH_OPEN), speech, state)


def _outside(remaining: int) -> str:
    if remaining >= IMAGE_SPAN_TOKENS:
        return "text"
    return "text_no_image" if remaining >= SPEECH_MIN_SPAN_TOKENS else "text_no_span"


class MIOGrammarLogitsProcessor(LogitsProcessor):
    """Bans every token the grammar does not allow next (greedy, sampling, beam search, any
    batch).  ``prompt_length`` is the (padded) prompt width of ``input_ids``; ``modality`` the
    requested output modality (``"text"``: the model chooses whether to open a span)."""

    def __init__(self, grammar: MIOGrammar, prompt_length: int, max_new_tokens: int,
                 modality: str = "text"):
        if modality not in OPENING_SPAN:
            raise ValueError(f"unknown output modality {modality!r}; choose from {tuple(OPENING_SPAN)}")
        if max_new_tokens < min_new_tokens(modality):
            raise ValueError(f"max_new_tokens {max_new_tokens} is too small for a {modality} answer "
                             f"(at least {min_new_tokens(modality)} tokens)")
        self.grammar = grammar
        self.prompt_length = prompt_length
        self.max_new_tokens = max_new_tokens
        self.modality = modality

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        kind, banned = self.grammar.tables(scores.shape[-1], scores.device)
        state = self.grammar.states(input_ids[:, self.prompt_length:], self.max_new_tokens,
                                    self.modality, kind)
        return scores.masked_fill(banned[state], -float("inf"))
