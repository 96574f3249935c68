"""Splitting samples longer than the sequence length (megatron_mio/data/splitting.py): every
token of a page in exactly one piece, interleaved pages cut between segments and never inside an
image, frame or speech span, chats cut between exchanges with the system message in front of
every piece, pairs dropped and counted; the boundaries (a piece exactly the budget, a segment
exactly the budget, an image-only page)."""

from __future__ import annotations

import numpy as np
import pytest

from megatron_mio.data import synthetic
from megatron_mio.data import templates as T
from megatron_mio.data.sample_types import parse_sample, render_sample, render_units
from megatron_mio.data.splitting import split_sample

IMAGE = list(range(32))


@pytest.fixture(scope="module")
def renderer(mio_tokenizer):
    return T.TemplateRenderer(mio_tokenizer, "2")


@pytest.fixture(scope="module")
def chat_renderer(mio_tokenizer):
    return T.TemplateRenderer(mio_tokenizer, "sft")


def whole(renderer, obj, seed=0):
    """The sample as one document, by the unsplit path (templates.render_sample)."""
    return render_sample(renderer, parse_sample(obj), np.random.default_rng(seed))


def split(renderer, obj, budget, seed=0, append_eod=False):
    rendered = render_units(renderer, parse_sample(obj), np.random.default_rng(seed), append_eod)
    return split_sample(rendered, budget)


def spans_intact(tokens: np.ndarray, tok) -> bool:
    """Every image / speech code in ``tokens`` lies inside a complete ``<image>...</image>`` or
    ``<spch>...</spch>`` span of ``tokens``, and every span is complete."""
    table = tok.modality_table()
    opened = None
    for t in tokens.tolist():
        if t in (tok.image_start_id, tok.speech_start_id):
            if opened is not None:
                return False
            opened = tok.image_end_id if t == tok.image_start_id else tok.speech_end_id
        elif t in (tok.image_end_id, tok.speech_end_id):
            if opened != t:
                return False
            opened = None
        elif table[t] != 0 and opened is None:  # a code token outside any span
            return False
    return opened is None


def page(n_sentences: int, seed: int = 0) -> dict:
    import random

    rng = random.Random(seed)
    return {"type": "language", "text": " ".join(synthetic._sentence(rng) for _ in range(n_sentences))}


def test_language_pieces_hold_every_token_once(renderer, mio_tokenizer):
    obj = page(60)
    tokens, mask = whole(renderer, obj)
    assert tokens.size > 300
    for budget in (64, 100, 257):
        pieces, dropped = split(renderer, obj, budget)
        assert not dropped
        assert all(p.size <= budget for p, _ in pieces)
        assert [p.size for p, _ in pieces[:-1]] == [budget] * (len(pieces) - 1)
        np.testing.assert_array_equal(np.concatenate([p for p, _ in pieces]), tokens)
        np.testing.assert_array_equal(np.concatenate([m for _, m in pieces]), mask)
        assert pieces[0][0][0] == mio_tokenizer.bos_id
        assert all(mio_tokenizer.bos_id not in p[1:] for p, _ in pieces)
        assert all(p[0] != mio_tokenizer.bos_id for p, _ in pieces[1:])


def test_language_piece_exactly_the_budget(renderer):
    obj = page(20)
    tokens, _ = whole(renderer, obj)
    n = tokens.size
    pieces, _ = split(renderer, obj, n)  # exactly seq_length: one piece, untouched
    assert len(pieces) == 1 and np.array_equal(pieces[0][0], tokens)
    pieces, _ = split(renderer, obj, n - 1)  # one token over: a piece of n-1 and one of 1
    assert [p.size for p, _ in pieces] == [n - 1, 1]
    assert pieces[1][0][0] == tokens[-1]


def test_append_eod(renderer, mio_tokenizer):
    obj = page(20)
    tokens, _ = whole(renderer, obj)
    assert tokens[-1] != mio_tokenizer.eos_id
    pieces, _ = split(renderer, obj, 10_000, append_eod=True)
    assert len(pieces) == 1
    np.testing.assert_array_equal(pieces[0][0], np.append(tokens, mio_tokenizer.eos_id))
    assert pieces[0][1][-1] == 1  # the eos is a target: the model learns where pages end
    pieces, _ = split(renderer, obj, 50, append_eod=True)
    assert np.concatenate([p for p, _ in pieces])[-1] == mio_tokenizer.eos_id
    assert sum(p.size for p, _ in pieces) == tokens.size + 1
    # Only language pages get one.
    pair = {"type": "image_text_pair", "image": IMAGE, "caption": "A dog."}
    assert split(renderer, pair, 100, append_eod=True)[0][0][0][-1] != mio_tokenizer.eos_id


def test_interleaved_random_corpus_never_cuts_a_span(renderer, mio_tokenizer):
    """Every long page of a random corpus at several budgets: pieces within the budget, spans
    intact, and the pieces plus the dropped segments are the whole page, in order."""
    samples = synthetic.long_tail_samples(seed=7, n_pages=0, n_interleaved=12,
                                          median_sentences=25)
    n_split = 0
    for i, obj in enumerate(samples):
        tokens, mask = whole(renderer, obj, seed=i)
        for budget in (40, 97, 300):
            pieces, dropped = split(renderer, obj, budget, seed=i)
            n_split += len(pieces) > 1
            assert all(p.size <= budget for p, _ in pieces)
            assert all(spans_intact(p, mio_tokenizer) for p, _ in pieces), (i, budget)
            assert sum(p.size for p, _ in pieces) + sum(d.tokens for d in dropped) == tokens.size
            # Pieces are the page's tokens in order with whole segments left out.
            kept = np.concatenate([p for p, _ in pieces])
            position = 0
            for value in kept.tolist():
                while tokens[position] != value:
                    position += 1
                position += 1
            assert all(d.reason == "segment_too_long" and d.kind in ("video", "speech", "image")
                       for d in dropped)
            if budget >= 300:  # no image, frame or speech clip of this corpus is that long
                assert not any(d.kind == "image" for d in dropped)
    assert n_split > 12


def test_interleaved_segment_exactly_the_budget(renderer, mio_tokenizer):
    tok = mio_tokenizer
    image_only = {"type": "interleaved", "segments": [{"image": IMAGE}, {"text": "A dog runs."}]}
    tokens, _ = whole(renderer, image_only)
    image_end = 1 + 34  # bos + <image> 32 codes </image>
    pieces, dropped = split(renderer, image_only, image_end)
    assert not dropped and [p.size for p, _ in pieces] == [image_end, tokens.size - image_end]
    assert pieces[0][0][-1] == tok.image_end_id
    # A speech segment exactly as long as a piece gets a piece of its own; one code longer and
    # it is dropped (counted) while the text around it is kept.
    speech_tokens = 2 + 40  # <spch> 40 codes </spch>
    sample = {"type": "interleaved", "segments": [
        {"text": "Before the clip."}, {"speech": {"content": [5] * 40}}, {"text": "After it."}]}
    pieces, dropped = split(renderer, sample, speech_tokens)
    assert not dropped
    assert any(p.size == speech_tokens and p[0] == tok.speech_start_id for p, _ in pieces)
    pieces, dropped = split(renderer, sample, speech_tokens - 1)
    assert [(d.reason, d.kind, d.tokens) for d in dropped] == [
        ("segment_too_long", "speech", speech_tokens)]
    assert all(spans_intact(p, tok) for p, _ in pieces)
    assert tok.speech_start_id not in np.concatenate([p for p, _ in pieces])


def test_long_text_segment_is_cut_shorter_ones_are_not(renderer, mio_tokenizer):
    long_text = page(30)["text"]
    sample = {"type": "interleaved", "segments": [
        {"text": "Intro."}, {"image": IMAGE}, {"text": long_text}, {"image": IMAGE}]}
    tokens, _ = whole(renderer, sample)
    pieces, dropped = split(renderer, sample, 64)
    assert not dropped and all(p.size <= 64 for p, _ in pieces)
    np.testing.assert_array_equal(np.concatenate([p for p, _ in pieces]), tokens)
    # A text segment that fits a piece moves whole to the next piece instead of being cut.
    short = {"type": "interleaved", "segments": [
        {"image": IMAGE}, {"text": page(2)["text"]}]}
    tokens, _ = whole(renderer, short)
    budget = tokens.size - 2
    pieces, _ = split(renderer, short, budget)
    assert [p.size for p, _ in pieces] == [35, tokens.size - 35]


def test_over_long_image_only_page(renderer, mio_tokenizer):
    sample = {"type": "interleaved", "segments": [{"image": IMAGE}] * 100}
    tokens, _ = whole(renderer, sample)
    pieces, dropped = split(renderer, sample, 2800)
    assert tokens.size > 2800 and not dropped and len(pieces) == 2
    assert sum(p.size for p, _ in pieces) == tokens.size
    assert all(spans_intact(p, mio_tokenizer) for p, _ in pieces)
    # Shorter than one image: nothing can be kept, all counted.
    pieces, dropped = split(renderer, sample, 30)
    assert pieces == [] and sum(d.tokens for d in dropped) == tokens.size
    assert {d.reason for d in dropped} == {"segment_too_long"}


def _chat(n_exchanges: int) -> dict:
    messages = [{"role": "system", "content": "You are a careful assistant."}]
    for k in range(n_exchanges):
        messages.append({"role": "user", "content": f"Question number {k}: what is {k} plus {k}?"})
        messages.append({"role": "assistant", "content": page(1 + k % 3, seed=k)["text"]})
        if k % 4 == 3:  # a second assistant turn answering the same user turn
            messages.append({"role": "assistant", "content": [{"image": IMAGE}]})
    return {"type": "chat", "messages": messages}


def test_chat_split_between_exchanges_keeps_system_and_masks(chat_renderer, mio_tokenizer):
    tok = mio_tokenizer
    obj = _chat(12)
    tokens, mask = whole(chat_renderer, obj)
    im_starts = np.flatnonzero(tokens == tok.im_start_id)
    header = int(im_starts[1])  # bos + the system message
    user_starts = [int(s) for s in im_starts if tok.decode(tokens[s + 1:s + 4]).startswith("user")]
    budget = 250
    pieces, dropped = split(chat_renderer, obj, budget)
    assert not dropped and len(pieces) > 3 and all(p.size <= budget for p, _ in pieces)
    position = header
    for p, m in pieces:
        np.testing.assert_array_equal(p[:header], tokens[:header])  # the same system message
        np.testing.assert_array_equal(m[:header], mask[:header])
        assert position in user_starts  # each piece resumes at a user turn
        body = p.size - header
        np.testing.assert_array_equal(p[header:], tokens[position:position + body])
        np.testing.assert_array_equal(m[header:], mask[position:position + body])
        position += body
        assert position in user_starts or position == tokens.size  # ... and ends before one
    assert position == tokens.size


def test_chat_exchange_that_does_not_fit_is_dropped(chat_renderer):
    big = {"type": "chat", "messages": [
        {"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Long?"}, {"role": "assistant", "content": page(30)["text"]},
        {"role": "user", "content": "Bye."}, {"role": "assistant", "content": "Goodbye."}]}
    tokens, _ = whole(chat_renderer, big)
    pieces, dropped = split(chat_renderer, big, 120)
    assert len(pieces) >= 1 and len(dropped) == 1
    assert dropped[0].reason == "exchange_too_long" and dropped[0].kind == "exchange"
    assert all(p.size <= 120 for p, _ in pieces)


@pytest.mark.parametrize("obj", [
    {"type": "image_text_pair", "image": IMAGE, "caption": "A dog " * 40},
    {"type": "video_text_pair", "video": [IMAGE] * 4, "description": "A dog."},
    {"type": "speech_text_pair", "speech": {"content": [1] * 300}, "transcription": "x"},
])
def test_pairs_cannot_be_split(renderer, obj):
    tokens, _ = whole(renderer, obj)
    pieces, dropped = split(renderer, obj, tokens.size)
    assert len(pieces) == 1 and not dropped
    pieces, dropped = split(renderer, obj, tokens.size - 1)
    assert pieces == [] and [(d.reason, d.tokens) for d in dropped] == [("pair_too_long", tokens.size)]
