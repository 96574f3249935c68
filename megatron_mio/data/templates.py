"""What MIO's templates (paper, Appendix C and SFT) are built from: documents of runs, their
encoding into token ids and loss mask, the modality parts and the ChatML rendering of chats.
Each sample type's own template is its class in ``sample_types``.

A document is built as a list of *runs*: text runs (encoded with SentencePiece) and token runs
(ids from the code lookup tables, ChatML and wrapper tokens).  The formatted string of a document
is its runs concatenated, token runs spelled out (``<image><img5>...``); encoding that string with
the MIO tokenizer gives the same ids as the direct path, because each maximal text run between
tokens is encoded on its own either way (``docs/data_format.md`` states the joining rules).
"""

from __future__ import annotations

import dataclasses
import string

import numpy as np

from megatron_mio.data import schema as S
from megatron_mio.tokenizer import chatml
from megatron_mio.tokenizer.mio_tokenizer import MIOTokenizer

STAGES = ("1", "2", "3", "sft")

SYSTEM_PROMPT_STD = ("You are MIO, an AI assistant capable of understanding and generating images, "
                     "text, videos, and speech, selecting the appropriate modality according to "
                     "the context.")
SYSTEM_PROMPT_VOICE = ("You are MIO, an AI assistant capable of understanding images, text, videos, "
                       "and speech, and generating speech. Please respond to the user with speech "
                       "only, starting with <spch> and ending with </spch>.")
SYSTEM_PROMPTS = {"std": SYSTEM_PROMPT_STD, "voice": SYSTEM_PROMPT_VOICE}

PART_SEPARATOR = " "  # between consecutive parts of interleaved / chat content


@dataclasses.dataclass
class TextRun:
    text: str
    supervised: bool
    head: str = ""  # an unsupervised prefix encoded together with ``text`` (SFT role header)


@dataclasses.dataclass
class TokenRun:
    ids: np.ndarray
    supervised: bool
    kind: str = "token"  # "image", "video", "speech": a segment that is never cut


class Document:
    """Runs of a document under construction; adjacent text is merged into one run."""

    def __init__(self, supervised: bool = True):
        self.runs: list[TextRun | TokenRun] = []
        self.supervised = supervised  # default supervision of what is added

    def text(self, text: str, supervised: bool | None = None) -> None:
        supervised = self.supervised if supervised is None else supervised
        last = self.runs[-1] if self.runs else None
        if isinstance(last, TextRun):
            if last.supervised == supervised:
                last.text += text
                return
            if supervised and not last.supervised:  # unsupervised header, then content
                self.runs[-1] = TextRun(text, True, head=last.head + last.text)
                return
            raise ValueError("supervised text cannot be followed by unsupervised text in one run")
        self.runs.append(TextRun(text, supervised))

    def tokens(self, ids, supervised: bool | None = None, kind: str = "token") -> None:
        supervised = self.supervised if supervised is None else supervised
        self.runs.append(TokenRun(np.asarray(ids, dtype=np.int32), supervised, kind))

    def extend(self, other: "Document") -> None:
        """Append another document's runs (one that starts with a token run, so no text merges
        across the join and the encoding is the two encodings back to back)."""
        if other.runs and isinstance(other.runs[0], TextRun) and self.runs:
            raise ValueError("a document joined to another must start with a token run")
        self.runs.extend(other.runs)


def encode_runs(doc: Document, tokenizer: MIOTokenizer) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each run -> (int32 token ids, uint8 loss mask), without a bos."""
    encoded = []
    for run in doc.runs:
        if isinstance(run, TokenRun):
            encoded.append((run.ids, np.full(run.ids.size, run.supervised, dtype=np.uint8)))
        elif run.head:
            text_ids, n_head = tokenizer.encode_text_split(run.head, run.text)
            run_mask = np.full(len(text_ids), run.supervised, dtype=np.uint8)
            run_mask[:n_head] = 0
            encoded.append((np.asarray(text_ids, dtype=np.int32), run_mask))
        else:
            text_ids = np.asarray(tokenizer.encode_text(run.text), dtype=np.int32)
            encoded.append((text_ids, np.full(text_ids.size, run.supervised, dtype=np.uint8)))
    return encoded


def bos_run(doc: Document, tokenizer: MIOTokenizer) -> tuple[np.ndarray, np.ndarray]:
    """The bos every document starts with.  It is never a target (labels stay inside a
    document); it carries the document's default so that pre-training masks are all ones and
    SFT masks are exactly the assistant spans."""
    return (np.array([tokenizer.bos_id], dtype=np.int32),
            np.full(1, doc.supervised, dtype=np.uint8))


def encode_document(doc: Document, tokenizer: MIOTokenizer) -> tuple[np.ndarray, np.ndarray]:
    """Runs -> (int32 token ids, uint8 loss mask), with a bos in front.

    ``loss_mask[i]`` says whether token ``i`` is a training target."""
    encoded = [bos_run(doc, tokenizer)] + encode_runs(doc, tokenizer)
    return (np.concatenate([ids for ids, _ in encoded]),
            np.concatenate([mask for _, mask in encoded]))


def format_document(doc: Document, tokenizer: MIOTokenizer) -> str:
    """The document as one string with inline token spellings (without the bos): the form the
    released MIO code builds, and the baseline input for ``AutoTokenizer``."""
    return "".join(run.head + run.text if isinstance(run, TextRun) else tokenizer.decode(run.ids)
                   for run in doc.runs)


class TemplateRenderer:
    """The tokenizer and stage a sample type renders with, and the pieces every template shares
    (modality parts, text templates with slots, ChatML messages)."""

    def __init__(self, tokenizer: MIOTokenizer, stage: str):
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r} (expected one of {', '.join(STAGES)})")
        self.tokenizer = tokenizer
        self.stage = stage

    # -- modality parts ------------------------------------------------------------------
    def image(self, doc: Document, codes: np.ndarray, supervised=None) -> None:
        doc.tokens(self.tokenizer.image_ids(codes), supervised, kind="image")

    def video(self, doc: Document, frames: np.ndarray, supervised=None) -> None:
        doc.tokens(np.concatenate([self.tokenizer.image_ids(f) for f in frames]), supervised,
                   kind="video")

    def speech(self, doc: Document, speech: S.Speech, generated: bool, supervised=None) -> None:
        """Speech as input: content codes only; as output: the sequential four codebooks."""
        timbre = speech.timbre if generated else None
        doc.tokens(self.tokenizer.speech_ids(speech.content, timbre), supervised, kind="speech")

    def parts(self, doc: Document, parts: list[S.Part], speech_generated, supervised=None) -> None:
        """Content parts joined by ``PART_SEPARATOR``; ``speech_generated(speech)`` tells the
        layout of each speech part."""
        for i, (kind, value) in enumerate(parts):
            if i:
                doc.text(PART_SEPARATOR, supervised)
            if kind == "text":
                doc.text(value, supervised)
            elif kind == "image":
                self.image(doc, value, supervised)
            elif kind == "video":
                self.video(doc, value, supervised)
            else:
                self.speech(doc, value, speech_generated(value), supervised)

    def fill(self, doc: Document, template: str, **values) -> None:
        """Add ``template`` to ``doc``: literal text as text, ``{name}`` from ``values`` (a string
        is text; a callable adds token runs)."""
        for literal, name, _, _ in string.Formatter().parse(template):
            if literal:
                doc.text(literal)
            if name is not None:
                value = values[name]
                doc.text(value) if isinstance(value, str) else value(doc)

    # -- SFT ---------------------------------------------------------------------------------
    def render_chat(self, chat: S.Chat, add_generation_prompt: bool = False) -> Document:
        """Yi ChatML (``megatron_mio.tokenizer.chatml``): ``<|im_start|>{role}\\n{content}<|im_end|>\\n``
        per message, the system prompt of the chat's mode first (unless the chat brings its own);
        loss on assistant content and its ``<|im_end|>`` only.  ``add_generation_prompt`` ends
        the chat with the header of the assistant turn to generate (``<|im_start|>assistant\\n``)."""
        system, exchanges = self.render_chat_exchanges(chat)
        for exchange in exchanges:
            system.extend(exchange)
        if add_generation_prompt:
            system.tokens([self.tokenizer.im_start_id], supervised=False)
            system.text(chatml.ASSISTANT_ROLE + chatml.ROLE_END, supervised=False)
        return system

    def render_chat_exchanges(self, chat: S.Chat) -> tuple[Document, list[Document]]:
        """The system message and the exchanges of a chat, each its own run list: an exchange
        is a user turn and the assistant turns that answer it (a chat may open with an assistant
        turn: that is an exchange too).  Every message starts with the ``<|im_start|>`` token, so
        the exchanges' encodings back to back are the whole chat's encoding."""
        messages = chat.messages
        if messages[0].role != "system":
            messages = [S.Message("system", [("text", SYSTEM_PROMPTS[chat.mode])])] + messages
        system = Document(supervised=False)
        self._message(system, messages[0])
        exchanges: list[Document] = []
        for message in messages[1:]:
            if message.role == "user" or not exchanges:
                exchanges.append(Document(supervised=False))
            self._message(exchanges[-1], message)
        return system, exchanges

    def _message(self, doc: Document, message: S.Message) -> None:
        assistant = message.role == chatml.ASSISTANT_ROLE
        doc.tokens([self.tokenizer.im_start_id])
        doc.text(message.role + chatml.ROLE_END)
        if message.role == "system":
            self._system_prompt(doc, message.parts)
        else:
            self.parts(doc, message.parts, speech_generated=lambda s: assistant,
                        supervised=assistant)
        doc.tokens([self.tokenizer.im_end_id], supervised=assistant)
        doc.text(chatml.MESSAGE_END)

    def _system_prompt(self, doc: Document, parts: list[S.Part]) -> None:
        """System text may name tokens (the voice prompt says ``<spch>`` ... ``</spch>``): they
        are the tokens there, as in Yi's string-level chat template.  Other text never is."""
        if any(kind != "text" for kind, _ in parts):
            raise S.SampleError("messages[0].content", "a system message holds text only")
        text = PART_SEPARATOR.join(value for _, value in parts)
        for piece in self.tokenizer.split_added_tokens(text):
            doc.text(piece) if isinstance(piece, str) else doc.tokens([piece])
