"""Templates: exact token sequences for hand-written samples on every stage, SFT loss masks,
random directions, and parity of the direct path with AutoTokenizer on formatted strings."""

from __future__ import annotations

import numpy as np
import pytest
import sentencepiece as spm

from megatron_mio.data import sample_types as ST
from megatron_mio.data import schema as S
from megatron_mio.data import synthetic
from megatron_mio.data import templates as T

IMAGE = list(range(100, 132))
CONTENT = [5, 6, 7]
TIMBRE = [[1, 2, 3], [4, 5, 6], [7, 8, 9]]


@pytest.fixture(scope="module")
def sp(sentencepiece_model_path):
    return spm.SentencePieceProcessor(model_file=sentencepiece_model_path)


@pytest.fixture(scope="module")
def ids(sp):
    """Expected ids computed from the documented layout: base pieces, then the MIO tokens."""
    base = sp.get_piece_size()

    class Ids:
        bos = 1
        img_s, img_e, sp_s, sp_e = (base + 12288 + k for k in range(4))
        im_start, im_end = base + 12292, base + 12293

        @staticmethod
        def image(codes):
            return [Ids.img_s] + [base + c for c in codes] + [Ids.img_e]

        @staticmethod
        def speech(content, timbre=None):
            layers = [content] + ([[c + 1024 * (k + 1) for c in row]
                                   for k, row in enumerate(timbre)] if timbre else [])
            return [Ids.sp_s] + [base + 8192 + c for layer in layers for c in layer] + [Ids.sp_e]

    return Ids


def render(tokenizer, stage, obj, seed=0):
    renderer = T.TemplateRenderer(tokenizer, stage)
    tokens, mask = ST.render_sample(renderer, ST.parse_sample(obj), np.random.default_rng(seed))
    return tokens.tolist(), mask.tolist()


@pytest.mark.parametrize("stage", ["1", "2", "3"])
def test_image_text_pair(mio_tokenizer, sp, ids, stage):
    caption = "A red bicycle near the café."
    tokens, mask = render(mio_tokenizer, stage, {"type": "image_text_pair", "image": IMAGE,
                                                  "caption": caption, "direction": "caption"})
    assert tokens == [ids.bos] + ids.image(IMAGE) + sp.encode(
        f" The caption of this image is: {caption}")
    assert mask == [1] * len(tokens)
    tokens, _ = render(mio_tokenizer, stage, {"type": "image_text_pair", "image": IMAGE,
                                              "caption": caption, "direction": "generation"})
    assert tokens == [ids.bos] + sp.encode(
        f'Please generate an image of "{caption}": ') + ids.image(IMAGE)


@pytest.mark.parametrize("stage", ["1", "2", "3"])
def test_video_text_pair(mio_tokenizer, sp, ids, stage):
    frames = [IMAGE, IMAGE[::-1], [0] * 32, [8191] * 32]
    video = [t for f in frames for t in ids.image(f)]
    description = "Two children cross a wooden bridge at sunset."
    tokens, _ = render(mio_tokenizer, stage, {"type": "video_text_pair", "video": frames,
                                              "description": description, "direction": "to_text"})
    assert tokens == [ids.bos] + sp.encode("Please describe the following video: ") + video + \
        sp.encode(f" {description}")
    tokens, _ = render(mio_tokenizer, stage, {"type": "video_text_pair", "video": frames,
                                              "description": description, "direction": "to_video"})
    assert tokens == [ids.bos] + sp.encode(f'Please generate a video for "{description}": ') + video


@pytest.mark.parametrize("stage,prompt", [("1", "Transcribe this speech:"),
                                          ("2", "Transcribe this speech:"),
                                          ("3", "The transcription of this speech is:")])
def test_speech_text_pair(mio_tokenizer, sp, ids, stage, prompt):
    text = "The pilot waits near the harbour."
    with_timbre = {"content": CONTENT, "timbre": TIMBRE}
    asr, mask = render(mio_tokenizer, stage, {"type": "speech_text_pair", "speech": with_timbre,
                                              "transcription": text, "direction": "asr"})
    # Speech as input: content codes only, even when timbre is given.
    assert asr == [ids.bos] + ids.speech(CONTENT) + sp.encode(f" {prompt} {text}")
    assert mask == [1] * len(asr)
    tts, _ = render(mio_tokenizer, stage, {"type": "speech_text_pair", "speech": with_timbre,
                                           "transcription": text, "direction": "tts"})
    # Speech as output: a1 a2 a3 b1 b2 b3 c1 c2 c3 d1 d2 d3.
    assert tts == [ids.bos] + sp.encode(f'Please generate a speech of "{text}": ') + \
        ids.speech(CONTENT, TIMBRE)


def test_language_and_interleaved(mio_tokenizer, sp, ids):
    text = "First line.\nSecond   line with ｆｕｌｌ width."
    tokens, _ = render(mio_tokenizer, "2", {"type": "language", "text": text})
    assert tokens == [ids.bos] + sp.encode(text)
    segments = [{"text": "A page about dogs."}, {"image": IMAGE}, {"text": "It barks."},
                {"text": "Loudly."}, {"speech": {"content": CONTENT}},
                {"speech": {"content": CONTENT, "timbre": TIMBRE}}, {"video": [IMAGE]}]
    tokens, mask = render(mio_tokenizer, "2", {"type": "interleaved", "segments": segments})
    # Parts are joined by one space; speech with timbre is the four-codebook layout.
    assert tokens == ([ids.bos] + sp.encode("A page about dogs. ") + ids.image(IMAGE)
                      + sp.encode(" It barks. Loudly. ") + ids.speech(CONTENT) + sp.encode(" ")
                      + ids.speech(CONTENT, TIMBRE) + sp.encode(" ") + ids.image(IMAGE))
    assert mask == [1] * len(tokens)


def _chatml(sp, ids, role, text):
    return [ids.im_start] + sp.encode(f"{role}\n{text}")


def _split_header(sp, role, body):
    """Ids of ``role\n + body`` as one run, split after the tokens that hold only header text
    (the role and the newline, which SentencePiece writes as ``▁``)."""
    run = sp.encode(f"{role}\n{body}")
    header_text, pieces, n = f"▁{role}▁", "", 0
    while n < len(run) and header_text.startswith(pieces + sp.id_to_piece(run[n])):
        pieces += sp.id_to_piece(run[n])
        n += 1
    return run[:n], run[n:]


def test_sft_std_chat(mio_tokenizer, sp, ids):
    chat = {"type": "chat", "mode": "std", "messages": [
        {"role": "user", "content": "What is in the picture?"},
        {"role": "assistant", "content": "A small dog."},
        {"role": "user", "content": [{"text": "Now draw a cat."}]},
        {"role": "assistant", "content": [{"text": "Here it is:"}, {"image": IMAGE}]}]}
    tokens, mask = render(mio_tokenizer, "sft", chat)
    nl = sp.encode("\n")
    system = _chatml(sp, ids, "system", T.SYSTEM_PROMPT_STD) + [ids.im_end] + nl
    user1 = _chatml(sp, ids, "user", "What is in the picture?") + [ids.im_end] + nl
    head1, body1 = _split_header(sp, "assistant", "A small dog.")
    answer1 = body1 + [ids.im_end]
    user2 = _chatml(sp, ids, "user", "Now draw a cat.") + [ids.im_end] + nl
    head2, body2 = _split_header(sp, "assistant", "Here it is: ")
    answer2 = body2 + ids.image(IMAGE) + [ids.im_end]
    head1, head2 = [ids.im_start] + head1, [ids.im_start] + head2
    assert tokens == [ids.bos] + system + user1 + head1 + answer1 + nl + user2 + head2 + answer2 + nl
    expected_mask = ([0] * (1 + len(system) + len(user1) + len(head1)) + [1] * len(answer1)
                     + [0] * (len(nl) + len(user2) + len(head2)) + [1] * len(answer2)
                     + [0] * len(nl))
    assert mask == expected_mask
    assert sum(mask) > len(ids.image(IMAGE)) + 2


def test_sft_voice_chat(mio_tokenizer, sp, ids):
    chat = {"type": "chat", "mode": "voice", "messages": [
        {"role": "user", "content": [{"speech": {"content": CONTENT, "timbre": TIMBRE}}]},
        {"role": "assistant", "content": [{"speech": {"content": CONTENT, "timbre": TIMBRE}}]}]}
    tokens, mask = render(mio_tokenizer, "sft", chat)
    nl = sp.encode("\n")
    head, rest = T.SYSTEM_PROMPT_VOICE.split("<spch>")
    middle, tail = rest.split("</spch>")
    # The voice prompt names <spch> and </spch>: they are the tokens there.
    system = (_chatml(sp, ids, "system", head) + [ids.sp_s] + sp.encode(middle) + [ids.sp_e]
              + sp.encode(tail) + [ids.im_end] + nl)
    user = [ids.im_start] + sp.encode("user\n") + ids.speech(CONTENT) + [ids.im_end] + nl
    header = [ids.im_start] + sp.encode("assistant\n")
    answer = ids.speech(CONTENT, TIMBRE) + [ids.im_end]
    assert tokens == [ids.bos] + system + user + header + answer + nl
    assert mask == [0] * (len(tokens) - len(answer) - len(nl)) + [1] * len(answer) + [0] * len(nl)


def test_stage_and_type_must_agree(mio_tokenizer):
    chat = {"type": "chat", "messages": [{"role": "assistant", "content": "Hi."}]}
    with pytest.raises(S.SampleError, match="need --stage sft"):
        render(mio_tokenizer, "1", chat)
    with pytest.raises(S.SampleError, match="chat samples only"):
        render(mio_tokenizer, "sft", {"type": "language", "text": "Hello."})


def test_random_directions_follow_the_paper(mio_tokenizer, ids):
    video = {"type": "video_text_pair", "video": [IMAGE] * 4, "description": "A river."}
    image = {"type": "image_text_pair", "image": IMAGE, "caption": "A river."}
    speech = {"type": "speech_text_pair", "speech": {"content": CONTENT, "timbre": TIMBRE},
              "transcription": "A river."}
    n = 400
    to_video = sum(render(mio_tokenizer, "2", video, seed)[0][-1] == ids.img_e for seed in range(n))
    generation = sum(render(mio_tokenizer, "2", image, seed)[0][1] != ids.img_s
                     for seed in range(n))
    tts = sum(render(mio_tokenizer, "2", speech, seed)[0][1] != ids.sp_s for seed in range(n))
    assert 0.53 < to_video / n < 0.67  # 60% text-to-video
    assert 0.42 < generation / n < 0.58 and 0.42 < tts / n < 0.58
    # Deterministic for a given generator state; content-only speech is always ASR.
    assert render(mio_tokenizer, "2", video, 5) == render(mio_tokenizer, "2", video, 5)
    asr_only = {**speech, "speech": {"content": CONTENT}}
    assert all(render(mio_tokenizer, "2", asr_only, s)[0][1] == ids.sp_s for s in range(20))


def test_direct_path_matches_auto_tokenizer_on_formatted_strings(mio_tokenizer, mio_tokenizer_dir):
    from transformers import AutoTokenizer

    auto = AutoTokenizer.from_pretrained(mio_tokenizer_dir)
    cases = [(stage, synthetic.pretraining_samples(seed=int(stage), speech_seconds=(0.5, 2)))
             for stage in ("1", "2", "3")]
    cases.append(("sft", synthetic.chat_samples(seed=4, n=24, speech_seconds=(0.5, 2))))
    for stage, samples in cases:
        renderer = T.TemplateRenderer(mio_tokenizer, stage)
        for i, obj in enumerate(samples):
            doc = ST.render(renderer, ST.parse_sample(obj), np.random.default_rng(i))
            tokens, _ = T.encode_document(doc, mio_tokenizer)
            formatted = T.format_document(doc, mio_tokenizer)
            assert auto(formatted)["input_ids"] == tokens.tolist(), (stage, i, formatted[:200])
