"""Build the MIO Hugging Face tokenizer directory from a SentencePiece model or an HF directory.

The output directory holds:

* ``tokenizer.json``: a ``tokenizers`` fast tokenizer built *directly* from the SentencePiece
  model (Unigram or BPE, the model's own normalisation, dummy prefix and byte fallback), with the
  base's control/user-defined pieces, the 12,292 MIO tokens and ChatML registered as special,
  non-normalized added tokens, and a post-processor that puts one ``bos`` in front of a sequence;
* ``tokenizer.model``: the base SentencePiece model, the reference that ``MIOTokenizer`` uses for
  text (it is what MIO trained with);
* ``tokenizer_config.json`` / ``special_tokens_map.json``: ``PreTrainedTokenizerFast``, which
  loads ``tokenizer.json`` unchanged in transformers 4.x and 5.x alike, with Yi-6B-Chat's ChatML
  ``chat_template`` (``megatron_mio.tokenizer.chatml``).

We do not go through ``transformers.LlamaTokenizer``: in transformers 5.x it has no
sentencepiece-based slow tokenizer; ``LlamaTokenizer(vocab_file=...)`` converts a Unigram model to
BPE and silently changes ids (and can encode text to nothing).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
from pathlib import Path

from google.protobuf.message import DecodeError
from sentencepiece import sentencepiece_model_pb2
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, processors

from megatron_mio.atomic import atomic_file
from megatron_mio.tokenizer import vocab as V
from megatron_mio.tokenizer.chatml import CHAT_TEMPLATE

TOKENIZER_JSON = "tokenizer.json"
SENTENCEPIECE_MODEL = "tokenizer.model"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"

_PIECE_UNKNOWN = sentencepiece_model_pb2.ModelProto.SentencePiece.UNKNOWN
_PIECE_CONTROL = sentencepiece_model_pb2.ModelProto.SentencePiece.CONTROL
_PIECE_USER_DEFINED = sentencepiece_model_pb2.ModelProto.SentencePiece.USER_DEFINED
_MODEL_UNIGRAM = sentencepiece_model_pb2.TrainerSpec.UNIGRAM
_MODEL_BPE = sentencepiece_model_pb2.TrainerSpec.BPE


class BaseTokenizerError(ValueError):
    """The base given to :func:`build_mio_tokenizer` is not a tokenizer it can extend."""


@dataclasses.dataclass
class SpecialTokens:
    bos: str
    eos: str
    unk: str
    pad: str


@dataclasses.dataclass
class BuildResult:
    output: str
    base_vocab_size: int
    vocab_size: int
    added_mio_tokens: int  # 12,292 on a fresh base, 0 when the base already had them all
    added_chatml_tokens: list[str]


def load_sentencepiece_proto(model_path: str | os.PathLike) -> sentencepiece_model_pb2.ModelProto:
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(Path(model_path).read_bytes())
    except DecodeError:
        proto.Clear()
    # Protobuf parses some foreign bytes (an empty file, a few text lines) into a model with no
    # pieces: that is no SentencePiece model either.
    if not proto.pieces:
        raise BaseTokenizerError(f"{model_path}: not a SentencePiece .model file (give the .model "
                                 "file sentencepiece wrote, or a Hugging Face tokenizer directory)")
    return proto


def _bpe_merges(piece_ids: dict[str, int]) -> list[tuple[str, str]]:
    """Merges of a SentencePiece BPE model: every split of a piece into two pieces, ranked by
    the merged piece's id (SentencePiece orders BPE pieces by merge order)."""
    ranked = []
    for piece, piece_id in piece_ids.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in piece_ids and right in piece_ids:
                ranked.append((piece_id, piece_ids[left], piece_ids[right], left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def fast_tokenizer_from_sentencepiece(proto: sentencepiece_model_pb2.ModelProto) -> Tokenizer:
    """A ``tokenizers.Tokenizer`` that encodes each text segment as SentencePiece does."""
    trainer, norm = proto.trainer_spec, proto.normalizer_spec
    pieces = list(proto.pieces)
    if trainer.model_type == _MODEL_UNIGRAM:
        model = models.Unigram(
            [(p.piece, p.score) for p in pieces], unk_id=trainer.unk_id,
            byte_fallback=trainer.byte_fallback,
        )
    elif trainer.model_type == _MODEL_BPE:
        piece_ids = {p.piece: i for i, p in enumerate(pieces)}
        model = models.BPE(
            piece_ids, _bpe_merges(piece_ids), unk_token=pieces[trainer.unk_id].piece,
            fuse_unk=True, byte_fallback=trainer.byte_fallback,
        )
    else:
        raise BaseTokenizerError(f"unsupported SentencePiece model type {trainer.model_type} "
                         "(only Unigram and BPE models are supported)")
    tokenizer = Tokenizer(model)

    # SentencePiece's normaliser, in its order: the rule's character map (NFKC for nmt_nfkc),
    # then whitespace clean-up, then the dummy prefix and the visible-space escape.
    steps = []
    if norm.precompiled_charsmap:
        steps.append(normalizers.Precompiled(norm.precompiled_charsmap))
    if norm.remove_extra_whitespaces:
        steps += [normalizers.Replace(Regex(r"\A +| +\z"), ""),
                  normalizers.Replace(Regex(" {2,}"), " ")]
    if norm.add_dummy_prefix:
        steps.append(normalizers.Prepend(" "))
    if norm.escape_whitespaces:
        steps.append(normalizers.Replace(" ", "▁"))
    tokenizer.normalizer = normalizers.Sequence(steps)

    decode_steps = [decoders.Replace("▁", " ")]
    if trainer.byte_fallback:
        decode_steps.append(decoders.ByteFallback())
    decode_steps.append(decoders.Fuse())
    if norm.add_dummy_prefix:
        decode_steps.append(decoders.Strip(" ", 1, 0))
    tokenizer.decoder = decoders.Sequence(decode_steps)

    # Control and unknown pieces are special tokens; user-defined pieces are always whole tokens.
    tokenizer.add_special_tokens([
        AddedToken(p.piece, special=True, normalized=False)
        for p in pieces if p.type in (_PIECE_CONTROL, _PIECE_UNKNOWN)
    ])
    tokenizer.add_tokens([
        AddedToken(p.piece, special=False, normalized=False)
        for p in pieces if p.type == _PIECE_USER_DEFINED
    ])
    return tokenizer


def _token_name(value) -> str | None:
    """A special token as written in tokenizer_config.json: a string or an AddedToken dict."""
    if isinstance(value, dict):
        return value.get("content")
    return value


def _special_tokens(proto, config: dict) -> SpecialTokens:
    def piece(index: int) -> str | None:
        return proto.pieces[index].piece if 0 <= index < len(proto.pieces) else None

    trainer = proto.trainer_spec
    unk = _token_name(config.get("unk_token")) or piece(trainer.unk_id)
    bos = _token_name(config.get("bos_token")) or piece(trainer.bos_id)
    eos = _token_name(config.get("eos_token")) or piece(trainer.eos_id)
    pad = _token_name(config.get("pad_token")) or piece(trainer.pad_id) or unk
    if bos is None or eos is None:
        raise BaseTokenizerError("the base SentencePiece model has no bos/eos piece and no "
                         "tokenizer_config.json names one")
    return SpecialTokens(bos=bos, eos=eos, unk=unk, pad=pad)


def _existing_added_tokens(base_dir: Path) -> list[tuple[int, str]]:
    """(id, content) of tokens an HF directory added on top of its SentencePiece model."""
    tokenizer_json = base_dir / TOKENIZER_JSON
    if tokenizer_json.exists():
        added = json.loads(tokenizer_json.read_text(encoding="utf-8")).get("added_tokens", [])
        return sorted((t["id"], t["content"]) for t in added)
    added_json = base_dir / "added_tokens.json"
    if added_json.exists():
        return sorted((i, s) for s, i in json.loads(added_json.read_text(encoding="utf-8")).items())
    return []


def _extend(tokenizer: Tokenizer, tokens: list[str], special: bool = True) -> list[str]:
    """Append the tokens the vocabulary lacks, in the given order; return those appended."""
    present = tokenizer.get_vocab(with_added_tokens=True)
    missing = [t for t in dict.fromkeys(tokens) if t not in present]
    if missing:
        first = tokenizer.get_vocab_size(with_added_tokens=True)
        tokenizer.add_special_tokens([AddedToken(t, special=special, normalized=False)
                                      for t in missing])
        if tokenizer.token_to_id(missing[-1]) != first + len(missing) - 1:
            raise RuntimeError("added tokens did not receive consecutive ids")
    return missing


def _keep_added_tokens(tokenizer: Tokenizer, base_dir: Path, base_vocab_size: int) -> None:
    """Re-add the tokens an HF directory had beyond its SentencePiece model, with their ids."""
    extra = [(i, t) for i, t in _existing_added_tokens(base_dir) if i >= base_vocab_size]
    if [i for i, _ in extra] != list(range(base_vocab_size, base_vocab_size + len(extra))):
        raise BaseTokenizerError(f"{base_dir}: the added tokens do not have consecutive ids after the "
                         f"{base_vocab_size} SentencePiece pieces")
    _extend(tokenizer, [t for _, t in extra])
    if extra and tokenizer.token_to_id(extra[-1][1]) != extra[-1][0]:
        raise BaseTokenizerError(f"{base_dir}: added tokens repeat or collide with SentencePiece pieces")


def _locate_base(base: str | os.PathLike) -> tuple[Path, Path | None, dict]:
    """(sentencepiece model or None, HF directory or None, its tokenizer_config)."""
    base = Path(base)
    if base.is_file():
        return base, None, {}
    if not base.is_dir():
        raise FileNotFoundError(f"{base}: no such file or directory (give a SentencePiece .model "
                                "file or a Hugging Face tokenizer directory)")
    model = base / SENTENCEPIECE_MODEL
    if not model.exists() and not (base / TOKENIZER_JSON).exists():
        raise BaseTokenizerError(f"{base}: not a tokenizer directory (it holds neither "
                                 f"{SENTENCEPIECE_MODEL} nor {TOKENIZER_JSON})")
    config_path = base / TOKENIZER_CONFIG
    try:
        config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.exists() else {}
    except json.JSONDecodeError as error:
        raise BaseTokenizerError(f"{config_path}: not valid JSON ({error})") from None
    return (model if model.exists() else None), base, config


def _read_tokenizer_json(path: Path) -> Tokenizer:
    try:
        return Tokenizer.from_file(str(path))
    except Exception as error:  # tokenizers raises plain Exception for unreadable files
        raise BaseTokenizerError(f"{path}: not a tokenizers file ({error})") from None


def build_mio_tokenizer(base: str | os.PathLike, output: str | os.PathLike,
                        model_max_length: int | None = None) -> BuildResult:
    """Write the MIO tokenizer directory for ``base`` into ``output`` (atomically).

    ``base`` is a SentencePiece ``.model`` file or a Hugging Face tokenizer directory (with a
    ``tokenizer.model``, whose added tokens are kept with their ids, or only a
    ``tokenizer.json``).  Running it on its own output reproduces the same files.
    """
    model_path, base_dir, config = _locate_base(base)
    if model_path is not None:
        proto = load_sentencepiece_proto(model_path)
        tokenizer = fast_tokenizer_from_sentencepiece(proto)
        base_vocab_size = len(proto.pieces)
        specials = _special_tokens(proto, config)
        if base_dir is not None:
            _keep_added_tokens(tokenizer, base_dir, base_vocab_size)
    else:
        tokenizer = _read_tokenizer_json(base_dir / TOKENIZER_JSON)
        base_vocab_size = tokenizer.get_vocab_size(with_added_tokens=False)
        specials = SpecialTokens(*(_token_name(config.get(k)) for k in
                                   ("bos_token", "eos_token", "unk_token", "pad_token")))
        if specials.bos is None or specials.eos is None:
            raise BaseTokenizerError(f"{base_dir}: tokenizer_config.json names no bos_token/eos_token")
        specials.pad = specials.pad or specials.unk or specials.eos

    added_mio = _extend(tokenizer, V.mio_tokens())
    added_chatml = _extend(tokenizer, list(V.CHATML_TOKENS))
    bos_id = tokenizer.token_to_id(specials.bos)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{specials.bos} $A", pair=f"{specials.bos} $A {specials.bos} $B",
        special_tokens=[(specials.bos, bos_id)],
    )
    max_length = model_max_length or config.get("model_max_length") or 4096
    _write_directory(Path(output), tokenizer, specials, model_path, int(max_length))
    return BuildResult(output=str(output), base_vocab_size=base_vocab_size,
                       vocab_size=tokenizer.get_vocab_size(with_added_tokens=True),
                       added_mio_tokens=len(added_mio), added_chatml_tokens=added_chatml)


def _write_directory(output: Path, tokenizer: Tokenizer, specials: SpecialTokens,
                     model_path: Path | None, model_max_length: int) -> None:
    names = {"bos_token": specials.bos, "eos_token": specials.eos,
             "unk_token": specials.unk, "pad_token": specials.pad}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **names,
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        "chat_template": CHAT_TEMPLATE,
    }
    files = {TOKENIZER_JSON: lambda tmp: tokenizer.save(str(tmp)),
             TOKENIZER_CONFIG: lambda tmp: tmp.write_text(_json_text(config), encoding="utf-8"),
             SPECIAL_TOKENS_MAP: lambda tmp: tmp.write_text(_json_text(names), encoding="utf-8")}
    if model_path is not None:
        files[SENTENCEPIECE_MODEL] = lambda tmp: shutil.copyfile(model_path, tmp)
    # File by file, not the whole directory: ``output`` may be the base just read (an idempotent
    # rebuild) or hold other files.  Every file is written before the first is renamed into place.
    with contextlib.ExitStack() as stack:
        for name, write in sorted(files.items()):
            write(stack.enter_context(atomic_file(output / name)))


def _json_text(value: dict) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False) + "\n"
