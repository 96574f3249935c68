"""``MIOTokenizer``: text through SentencePiece, image and speech codes through lookup arrays.

Text is encoded with the base SentencePiece model (the tokenization MIO trained with); image and
speech codes become ids by indexing numpy arrays built from the directory's own vocabulary at
load time, never by building and re-parsing ``<imgN>`` strings.  Strings that carry inline MIO
tokens (what the released MIO inference code produces) are split on the tokenizer's added tokens
and each text piece is encoded on its own, which is what ``AutoTokenizer`` does with the same
directory.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

import numpy as np
import sentencepiece as spm
from sentencepiece import sentencepiece_pb2
from tokenizers import Tokenizer

from megatron_mio.tokenizer import vocab as V
from megatron_mio.tokenizer.build import SENTENCEPIECE_MODEL, TOKENIZER_CONFIG, TOKENIZER_JSON


@dataclasses.dataclass
class TextSegment:
    text: str


@dataclasses.dataclass
class ImageSegment:
    codes: np.ndarray  # SEED-Tokenizer codes, 0..8191
    complete: bool = True  # False when ``</image>`` never came (a truncated generation)


@dataclasses.dataclass
class SpeechSegment:
    content: np.ndarray  # codebook-0 codes, 0..1023
    timbre: np.ndarray | None = None  # [3, len(content)] codes 0..1023, None for content-only
    complete: bool = True  # False when the layout is broken or ``</spch>`` never came
    codes: np.ndarray | None = None  # the global codes as generated, kept when incomplete


Segment = TextSegment | ImageSegment | SpeechSegment

# Candidates for added tokens inside a string: ``<...>`` without whitespace or nested brackets.
_TOKEN_CANDIDATE = r"<[^<>\s]{1,64}>"


def _config_token(config: dict, key: str) -> str | None:
    value = config.get(key)
    return value.get("content") if isinstance(value, dict) else value


class MIOTokenizer:
    """Load a directory written by ``tools/build_tokenizer.py`` (or a released MIO tokenizer)."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        if not (self.directory / TOKENIZER_JSON).is_file():
            what = "no such directory" if not self.directory.is_dir() else f"no {TOKENIZER_JSON} in it"
            raise FileNotFoundError(f"{self.directory}: {what}, so not a MIO tokenizer directory "
                                    f"(tools/build_tokenizer.py builds one)")
        self._fast = Tokenizer.from_file(str(self.directory / TOKENIZER_JSON))
        self.vocab: dict[str, int] = self._fast.get_vocab(with_added_tokens=True)
        self.vocab_size = max(self.vocab.values()) + 1
        self._id_to_token = {i: t for t, i in self.vocab.items()}
        self._sp = self._load_sentencepiece()

        config_path = self.directory / TOKENIZER_CONFIG
        config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.exists() else {}
        self.bos_id = self._require(_config_token(config, "bos_token") or "<s>", "bos_token")
        self.eos_id = self._require(_config_token(config, "eos_token") or "</s>", "eos_token")
        pad = _config_token(config, "pad_token") or _config_token(config, "unk_token")
        self.pad_id = self._require(pad, "pad_token") if pad else self.eos_id
        self.im_start_id = self._require(V.IM_START, "ChatML")
        self.im_end_id = self._require(V.IM_END, "ChatML")
        self._build_code_tables()
        self._build_added_token_splitter()

    # ----------------------------------------------------------------------------- loading
    def _load_sentencepiece(self) -> spm.SentencePieceProcessor | None:
        path = self.directory / SENTENCEPIECE_MODEL
        if not path.exists():
            return None  # an HF directory without the .model: text goes through tokenizer.json
        sp = spm.SentencePieceProcessor(model_file=str(path))
        for i in range(sp.get_piece_size()):
            if self._id_to_token.get(i) != sp.id_to_piece(i):
                raise ValueError(f"{self.directory}: {SENTENCEPIECE_MODEL} and {TOKENIZER_JSON} "
                                 f"disagree on id {i}")
        return sp

    def _require(self, token: str, what: str) -> int:
        if token not in self.vocab:
            raise ValueError(f"{self.directory}: {what} {token!r} is not in the vocabulary")
        return self.vocab[token]

    def _build_code_tables(self) -> None:
        missing = [t for t in V.mio_tokens() if t not in self.vocab]
        if missing:
            raise ValueError(f"{self.directory}: {len(missing)} of the {V.NUM_MIO_TOKENS} MIO "
                             f"tokens are missing from the vocabulary, e.g. {missing[:5]}")
        self._image_lut = np.array([self.vocab[V.image_token(i)]
                                    for i in range(V.IMAGE_CODEBOOK_SIZE)], dtype=np.int32)
        self._speech_lut = np.array([self.vocab[V.speech_token(i)]
                                     for i in range(V.NUM_SPEECH_TOKENS)], dtype=np.int32)
        self.image_start_id, self.image_end_id = self.vocab[V.IMAGE_START], self.vocab[V.IMAGE_END]
        self.speech_start_id, self.speech_end_id = (self.vocab[V.SPEECH_START],
                                                    self.vocab[V.SPEECH_END])
        # Inverse tables: id -> code (or -1).
        self._id_to_image_code = np.full(self.vocab_size, -1, dtype=np.int64)
        self._id_to_image_code[self._image_lut] = np.arange(V.IMAGE_CODEBOOK_SIZE)
        self._id_to_speech_code = np.full(self.vocab_size, -1, dtype=np.int64)
        self._id_to_speech_code[self._speech_lut] = np.arange(V.NUM_SPEECH_TOKENS)

    def _build_added_token_splitter(self) -> None:
        added = {t.content: i for i, t in self._fast.get_added_tokens_decoder().items()}
        self._added = added
        self._added_ids = frozenset(added.values())
        odd = sorted((t for t in added if not re.fullmatch(_TOKEN_CANDIDATE, t)),
                     key=len, reverse=True)
        self._splitter = re.compile("|".join([re.escape(t) for t in odd] + [_TOKEN_CANDIDATE]))

    # ---------------------------------------------------------------------------- encoding
    def encode_text(self, text: str) -> list[int]:
        """Plain text -> ids (no bos); MIO token spellings inside are *not* interpreted."""
        if self._sp is not None:
            return self._sp.encode(text)
        return self._fast.encode(text, add_special_tokens=False).ids

    def encode_text_split(self, head: str, body: str) -> tuple[list[int], int]:
        """Encode ``head + body`` as one text run; also return how many leading tokens hold only
        ``head`` characters (a token that reaches into ``body`` counts as body).  Used for the
        SFT loss mask, where the role header and the content share one run."""
        text = head + body
        if self._sp is not None:
            boundary = len(head.encode("utf-8"))
            # The serialized proto carries byte offsets in every sentencepiece release.
            pieces = sentencepiece_pb2.SentencePieceText.FromString(
                self._sp.encode(text, out_type="serialized_proto")).pieces
            ids = [p.id for p in pieces]
            n_head = sum(1 for p in pieces if p.end <= boundary)
        else:
            encoding = self._fast.encode(text, add_special_tokens=False)
            ids = encoding.ids
            n_head = sum(1 for _, end in encoding.offsets if end <= len(head))
        return ids, n_head

    def image_ids(self, codes, wrap: bool = True) -> np.ndarray:
        """SEED-Tokenizer codes -> ids, wrapped in ``<image>`` ... ``</image>`` by default."""
        codes = np.asarray(codes, dtype=np.int64)
        _check_range(codes, V.IMAGE_CODEBOOK_SIZE, "image")
        ids = self._image_lut[codes]
        if wrap:
            return np.concatenate(([self.image_start_id], ids, [self.image_end_id])).astype(np.int32)
        return ids

    def speech_ids(self, content, timbre=None, wrap: bool = True) -> np.ndarray:
        """SpeechTokenizer codes -> ids.  Content only (speech as input), or with the three
        timbre codebooks the sequential layout a1..an b1..bn c1..cn d1..dn (speech as output)."""
        content = np.asarray(content, dtype=np.int64)
        _check_range(content, V.SPEECH_CODEBOOK_SIZE, "speech content")
        layers = [content]
        if timbre is not None:
            timbre = np.asarray(timbre, dtype=np.int64)
            if timbre.shape != (V.SPEECH_TIMBRE_CODEBOOKS, content.size):
                raise ValueError(f"timbre must have shape ({V.SPEECH_TIMBRE_CODEBOOKS}, "
                                 f"{content.size}), got {timbre.shape}")
            _check_range(timbre, V.SPEECH_CODEBOOK_SIZE, "speech timbre")
            layers += [timbre[k] + V.SPEECH_CODEBOOK_SIZE * (k + 1)
                       for k in range(V.SPEECH_TIMBRE_CODEBOOKS)]
        ids = self._speech_lut[np.concatenate(layers)]
        if wrap:
            return np.concatenate(([self.speech_start_id], ids, [self.speech_end_id])
                                  ).astype(np.int32)
        return ids

    def split_added_tokens(self, text: str) -> list[str | int]:
        """Split a string on the vocabulary's added tokens: text pieces and token ids."""
        parts: list[str | int] = []
        start = 0
        for match in self._splitter.finditer(text):
            token_id = self._added.get(match.group())
            if token_id is None:
                continue
            if match.start() > start:
                parts.append(text[start:match.start()])
            parts.append(token_id)
            start = match.end()
        if start < len(text):
            parts.append(text[start:])
        return parts

    def encode_mixed(self, text: str, add_bos: bool = False) -> list[int]:
        """A string with inline MIO/ChatML/special token spellings -> ids; each text piece between
        tokens is encoded on its own (as ``AutoTokenizer`` does with this directory)."""
        ids = [self.bos_id] if add_bos else []
        for part in self.split_added_tokens(text):
            if isinstance(part, int):
                ids.append(part)
            else:
                ids.extend(self.encode_text(part))
        return ids

    # ---------------------------------------------------------------------------- decoding
    def decode(self, ids) -> str:
        """Ids -> string; added tokens (MIO, ChatML, specials) are spelled out."""
        out, run = [], []
        for token_id in (int(i) for i in ids):
            token = self._id_to_token.get(token_id)
            if token is None:
                raise ValueError(f"id {token_id} is outside the vocabulary ({self.vocab_size})")
            if token_id in self._added_ids:
                if run:
                    out.append(self._decode_text(run))
                    run = []
                out.append(token)
            else:
                run.append(token_id)
        if run:
            out.append(self._decode_text(run))
        return "".join(out)

    def _decode_text(self, ids: list[int]) -> str:
        if self._sp is not None:
            return self._sp.decode(ids)
        return self._fast.decode(ids, skip_special_tokens=False)

    def decode_segments(self, ids, strict: bool = True) -> list[Segment]:
        """Ids -> text / image / speech segments.

        Speech must be content-only or the sequential four-codebook layout (four equal parts,
        codebooks in order), as the released MIO code requires before vocoding.  With
        ``strict`` a broken segment raises ``ValueError``; otherwise it comes back with
        ``complete=False`` (and its raw codes for speech).
        """
        ids = np.asarray(ids, dtype=np.int64)
        segments: list[Segment] = []
        text_run: list[int] = []
        i, n = 0, ids.size

        def flush_text():
            if text_run:
                segments.append(TextSegment(self.decode(text_run)))
                text_run.clear()

        while i < n:
            token_id = int(ids[i])
            if token_id in (self.image_start_id, self.speech_start_id):
                flush_text()
                is_image = token_id == self.image_start_id
                end_id = self.image_end_id if is_image else self.speech_end_id
                table = self._id_to_image_code if is_image else self._id_to_speech_code
                j = i + 1
                while j < n and table[ids[j]] >= 0:
                    j += 1
                codes = table[ids[i + 1:j]]
                closed = j < n and ids[j] == end_id
                if is_image:
                    segments.append(self._image_segment(codes, closed, strict, j))
                else:
                    segments.append(self._speech_segment(codes, closed, strict, j))
                i = j + 1 if closed else j
            else:
                text_run.append(token_id)
                i += 1
        flush_text()
        return segments

    @staticmethod
    def _image_segment(codes, closed, strict, position) -> ImageSegment:
        if not closed and strict:
            raise ValueError(f"image segment not closed by {V.IMAGE_END} at position {position}")
        return ImageSegment(codes=codes, complete=bool(closed))

    @staticmethod
    def _speech_segment(codes, closed, strict, position) -> SpeechSegment:
        layers = codes // V.SPEECH_CODEBOOK_SIZE
        local = codes % V.SPEECH_CODEBOOK_SIZE
        problem = None if bool(closed) else f"speech segment not closed by {V.SPEECH_END}"
        if problem is None and codes.size and np.all(layers == 0):
            return SpeechSegment(content=local)
        if problem is None:
            part = codes.size // V.SPEECH_CODEBOOKS
            expected = np.repeat(np.arange(V.SPEECH_CODEBOOKS), part)
            if part == 0 or codes.size % V.SPEECH_CODEBOOKS or not np.array_equal(layers, expected):
                problem = ("speech codes are neither content-only nor four equal parts of "
                           "codebooks 0, 1, 2, 3 in order")
            else:
                return SpeechSegment(content=local[:part],
                                     timbre=local[part:].reshape(V.SPEECH_TIMBRE_CODEBOOKS, part))
        if strict:
            raise ValueError(f"{problem} (position {position})")
        return SpeechSegment(content=local[layers == 0], complete=False, codes=codes)

    # ---------------------------------------------------------------------------- tables
    def image_code_ids(self) -> np.ndarray:
        """int32 [8192]: the id of every SEED-Tokenizer code ``<img0>``..``<img8191>``."""
        return self._image_lut.copy()

    def speech_code_ids(self, codebook: int) -> np.ndarray:
        """int32 [1024]: the ids of one SpeechTokenizer codebook (0 = content, 1..3 = timbre)."""
        if not 0 <= codebook < V.SPEECH_CODEBOOKS:
            raise ValueError(f"codebook {codebook} is outside 0..{V.SPEECH_CODEBOOKS - 1}")
        size = V.SPEECH_CODEBOOK_SIZE
        return self._speech_lut[codebook * size:(codebook + 1) * size].copy()

    def modality_table(self) -> np.ndarray:
        """uint8 [vocab_size]: the ``Modality`` of every id (IMAGE/SPEECH codes and wrappers)."""
        table = np.full(self.vocab_size, V.Modality.TEXT, dtype=np.uint8)
        table[self._image_lut] = V.Modality.IMAGE
        table[[self.image_start_id, self.image_end_id]] = V.Modality.IMAGE
        table[self._speech_lut] = V.Modality.SPEECH
        table[[self.speech_start_id, self.speech_end_id]] = V.Modality.SPEECH
        return table

    def __len__(self) -> int:
        return self.vocab_size


def _check_range(codes: np.ndarray, size: int, what: str) -> None:
    if codes.size and (codes.min() < 0 or codes.max() >= size):
        bad = codes[(codes < 0) | (codes >= size)].ravel()[0]
        raise ValueError(f"{what} code {int(bad)} is outside 0..{size - 1}")
