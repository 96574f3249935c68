"""MIO's output grammar: the state machine over crafted id sequences (every transition, the budget
edges, rows in different states, reordered beams), the logits processor on real scores, and a
random tiny transformers model that must produce well-formed images, videos and speech with it
(greedy, sampling, beam search, batches); without it, generation is what it was."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from megatron_mio.inference import Generator, MIOGrammar, MIOGrammarLogitsProcessor, well_formed
from megatron_mio.inference import grammar as G
from megatron_mio.inference.presets import decoding_preset
from megatron_mio.inference.prompt import chat_prompt_ids
from tests.distributed import REPO_ROOT, cpu_env
from tests.test_convert import save_random_llama, tiny_llama_config

BIG = 10_000  # a budget that never binds


@pytest.fixture(scope="module")
def grammar(mio_tokenizer):
    return MIOGrammar(mio_tokenizer)


class Ids:
    """Crafted answer ids for one tokenizer."""

    def __init__(self, tok):
        self.tok = tok
        self.text = tok.encode_text("Here it is:")

    def image(self, codes=None):
        return self.tok.image_ids(np.arange(32) if codes is None else codes).tolist()

    def speech(self, n):
        content = np.arange(n) % 1024
        return self.tok.speech_ids(content, np.stack([content] * 3)).tolist()


@pytest.fixture(scope="module")
def ids(mio_tokenizer):
    return Ids(mio_tokenizer)


def state_names(grammar, answer, max_new_tokens=BIG, modality="text"):
    """The state after every prefix of ``answer`` (the empty one first)."""
    names = []
    for n in range(len(answer) + 1):
        prefix = torch.tensor([answer[:n]], dtype=torch.long).reshape(1, n)
        names.append(G.STATES[int(grammar.states(prefix, max_new_tokens, modality)[0])])
    return names


def test_image_span_transitions(grammar, ids):
    answer = ids.text + ids.image() + ids.text
    names = state_names(grammar, answer)
    t = len(ids.text)
    assert names[: t + 1] == ["text"] * (t + 1)
    assert names[t + 1: t + 33] == ["image_code"] * 32  # after <image> and after codes 1..31
    assert names[t + 33] == "image_close"  # 32 codes: only </image>
    assert names[t + 34:] == ["text"] * (t + 1)  # closed: free text again


def test_speech_span_transitions(grammar, ids):
    answer = ids.speech(3)  # <spch> a1 a2 a3 b1 b2 b3 c1 c2 c3 d1 d2 d3 </spch>
    names = state_names(grammar, answer)
    assert names == ["text", "speech_content"] + ["speech_content_or_timbre1"] * 3 + \
        ["speech_timbre1"] * 2 + ["speech_timbre2"] * 3 + ["speech_timbre3"] * 3 + ["speech_close", "text"]


def test_requested_modality_opens_its_span(grammar, ids):
    assert state_names(grammar, [], modality="image") == ["open_image"]
    assert state_names(grammar, [], modality="video") == ["open_image"]
    assert state_names(grammar, [], modality="speech") == ["open_speech"]
    assert state_names(grammar, [], modality="text") == ["text"]
    # After the opening span the answer is free (only the first token is forced).
    assert state_names(grammar, ids.image(), modality="image")[-1] == "text"
    assert state_names(grammar, ids.speech(2), modality="speech")[-1] == "text"


def test_video_has_two_to_eight_frames(grammar, ids):
    frame = ids.image()
    after = [state_names(grammar, frame * k, modality="video")[-1] for k in range(1, 9)]
    assert after == ["open_image"] + ["text"] * 6 + ["text_no_image"]
    # Once the run of frames is over, a later image is the model's choice again.
    assert state_names(grammar, frame * 8 + ids.text, modality="video")[-1] == "text"
    assert state_names(grammar, frame * 2 + ids.text + frame, modality="video")[-1] == "text"


def test_budget_edges(grammar, ids):
    def outside(remaining):
        return state_names(grammar, ids.text, len(ids.text) + remaining)[-1]

    assert outside(G.IMAGE_SPAN_TOKENS) == "text"
    assert outside(G.IMAGE_SPAN_TOKENS - 1) == "text_no_image"
    assert outside(G.SPEECH_MIN_SPAN_TOKENS) == "text_no_image"
    assert outside(G.SPEECH_MIN_SPAN_TOKENS - 1) == "text_no_span"
    assert outside(0) == "text_no_span"

    # Speech content: one more code needs itself, 3 timbre codes and room for the closer.
    head = [ids.tok.speech_start_id] + ids.tok.speech_ids(np.arange(4), wrap=False).tolist()  # 4 content
    fits = len(head) + 1 + 3 * 5 + 1  # a 5th content code, 15 timbre codes, </spch>
    assert state_names(grammar, head, fits)[-1] == "speech_content_or_timbre1"
    assert state_names(grammar, head, fits - 1)[-1] == "speech_timbre1"
    # ...and a span planned that way closes exactly at the budget.
    full = ids.speech(4)
    assert len(full) == fits - 4  # <spch> 16 codes </spch>
    assert state_names(grammar, full[:-1], len(full))[-1] == "speech_close"
    # Video: a further frame only while it fits.
    two = ids.image() * 2
    assert state_names(grammar, two, len(two) + 34, "video")[-1] == "text"
    assert state_names(grammar, two, len(two) + 33, "video")[-1] == "text_no_image"


def test_processor_refuses_budgets_that_cannot_hold_the_answer(grammar):
    with pytest.raises(ValueError, match="cannot hold the requested video"):
        MIOGrammarLogitsProcessor(grammar, 5, 67, "video")
    MIOGrammarLogitsProcessor(grammar, 5, 68, "video")
    with pytest.raises(ValueError, match="cannot hold the requested speech"):
        MIOGrammarLogitsProcessor(grammar, 5, 5, "speech")


def test_rows_in_different_states_and_reordered_beams(grammar, ids, mio_tokenizer):
    tok = mio_tokenizer
    width = 40
    rows = {
        "image_code": (ids.text * 10)[: width - 5] + ids.image()[:5],
        "image_close": (ids.text * 10)[: width - 33] + ids.image()[:33],
        "speech_timbre2": (ids.text * 10)[: width - 8] + ids.speech(3)[:8],
        "speech_content_or_timbre1": (ids.text * 10)[: width - 3] + ids.speech(3)[:3],
        "text": (ids.text * 10)[:width],
        "speech_close": (ids.text * 10)[: width - 13] + ids.speech(3)[:13],
    }
    generated = torch.tensor(list(rows.values()))
    assert generated.shape == (len(rows), width)
    states = grammar.states(generated, BIG)
    assert [G.STATES[s] for s in states] == list(rows)
    order = torch.tensor([3, 0, 5, 1, 4, 2])  # beam search reorders rows between steps
    assert torch.equal(grammar.states(generated[order], BIG), states[order])

    prompt = torch.tensor([chat_prompt_ids(tok, "Hi.")] * len(rows))
    processor = MIOGrammarLogitsProcessor(grammar, prompt.shape[1], BIG)
    scores = torch.randn(len(rows), tok.vocab_size + 7)  # padded vocabulary rows at the end
    out = processor(torch.cat([prompt, generated], 1), scores.clone())
    allowed = torch.isfinite(out)
    assert torch.equal(out[allowed], scores[allowed])  # what is allowed keeps the model's score
    image_codes = torch.as_tensor(tok.image_code_ids(), dtype=torch.long)
    timbre2 = torch.as_tensor(tok.speech_code_ids(2), dtype=torch.long)
    assert allowed[0].sum() == 8192 and allowed[0, image_codes].all()
    assert allowed[1].sum() == 1 and allowed[1, tok.image_end_id]
    assert allowed[2].sum() == 1024 and allowed[2, timbre2].all()
    assert allowed[3].sum() == 2048
    assert allowed[5].sum() == 1 and allowed[5, tok.speech_end_id]
    # Text outside spans is untouched: every text token and padding row keeps its score; only
    # the MIO codes and the closing tokens are refused there.
    text_row = allowed[4]
    refused = (~text_row).nonzero().flatten()
    assert len(refused) == 8192 + 4096 + 2
    assert text_row[tok.image_start_id] and text_row[tok.speech_start_id] and text_row[tok.im_end_id]
    assert text_row[tok.vocab_size:].all()


def test_processor_follows_rows_across_steps(grammar, ids, mio_tokenizer):
    """Step by step, rows kept, reordered, repeated or replaced (as beam search does): the
    processor's incremental states equal the states replayed from scratch."""
    tok = mio_tokenizer
    answers = [ids.speech(3) + ids.text, ids.image()[:14], ids.text + ids.image()[:9], ids.text * 2]
    answers = [(a * 3)[:14] if len(a) < 14 else a[:14] for a in answers]
    prompt = chat_prompt_ids(tok, "Hi.")
    processor = MIOGrammarLogitsProcessor(grammar, len(prompt), 60)
    banned = grammar.banned(tok.vocab_size, "cpu")
    rng = np.random.default_rng(0)
    for n in range(15):
        picks = [0, 1, 2, 3] if n % 3 == 0 else rng.integers(0, 4, size=4).tolist()
        rows = torch.tensor([prompt + answers[i][:n] for i in picks])
        out = processor(rows, torch.zeros(4, tok.vocab_size))
        expected = banned[grammar.states(rows[:, len(prompt):], 60)]
        assert torch.equal(torch.isinf(out), expected), (n, picks)


# ------------------------------------------------------------------------- with a real model
@pytest.fixture(scope="module")
def random_model_dir(tmp_path_factory, mio_tokenizer_dir, mio_tokenizer):
    """A randomly initialised 2-layer Llama over the MIO vocabulary, with the tokenizer."""
    directory = tmp_path_factory.mktemp("random_mio")
    save_random_llama(directory, tiny_llama_config(len(mio_tokenizer), num_hidden_layers=2))
    for item in (p for p in Path(mio_tokenizer_dir).iterdir() if p.is_file()):
        shutil.copy(item, directory / item.name)
    return directory


@pytest.fixture(scope="module")
def generator(random_model_dir):
    return Generator(str(random_model_dir), device="cpu")


BUDGET = {"image": 40, "video": 80, "speech": 40}


@pytest.mark.parametrize("modality", ["image", "video", "speech"])
def test_random_model_is_always_well_formed(generator, modality):
    tok = generator.tokenizer
    good = []
    for seed in range(20):
        [result] = generator.generate("Show me.", modality=modality, max_new_tokens=BUDGET[modality], seed=seed)
        good.append(well_formed(tok, result["generated_ids"], modality) and result["valid"])
    assert all(good), f"{good.count(False)} of 20 seeds ill-formed"


def test_voice_mode_answers_in_speech(generator):
    [result] = generator.generate("Say hi.", mode="voice", max_new_tokens=30)
    assert result["modality"] == "speech" and result["generated_ids"][0] == generator.tokenizer.speech_start_id
    assert well_formed(generator.tokenizer, result["generated_ids"], "speech")
    with pytest.raises(ValueError, match="voice mode"):
        generator.generate("Say hi.", mode="voice", modality="image")


def test_batch_of_prompts_and_return_sequences(generator):
    prompts = ["Draw a cat.", "Draw a very large and friendly dog, please."]
    results = generator.generate(prompts, modality="image", max_new_tokens=36, num_return_sequences=3)
    assert [(r["prompt"], r["sequence"]) for r in results] == [(p, i) for p in prompts for i in range(3)]
    assert results[0]["prompt_tokens"] < results[3]["prompt_tokens"]
    for r in results:
        assert r["valid"] and len(r["images"]) == 1 and r["images"][0]["complete"]
    assert len({tuple(r["generated_ids"]) for r in results}) > 1  # sampled, not copies


def test_greedy_and_beam_search_with_the_processor(generator):
    tok, model = generator.tokenizer, generator.model
    prompt = torch.tensor([chat_prompt_ids(tok, "Speak.")] * 2)
    for kwargs in ({"do_sample": False}, {"do_sample": False, "num_beams": 3, "num_return_sequences": 3}):
        for modality, budget in (("speech", 30), ("video", 70)):
            processor = MIOGrammarLogitsProcessor(generator.grammar, prompt.shape[1], budget, modality)
            out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=budget,
                                 logits_processor=[processor], pad_token_id=tok.pad_id,
                                 eos_token_id=[tok.im_end_id], **kwargs)
            for row in out[:, prompt.shape[1]:].tolist():
                assert well_formed(tok, row, modality), (kwargs, modality)


def test_grammar_off_is_plain_generate(generator):
    """``grammar=False`` is the old path: the preset's ``model.generate`` and nothing else."""
    tok, model = generator.tokenizer, generator.model
    [result] = generator.generate("Draw.", modality="image", max_new_tokens=20, grammar=False, seed=3)
    prompt = torch.tensor([chat_prompt_ids(tok, "Draw.")])
    kwargs = {**decoding_preset("image").generate_kwargs(), "max_new_tokens": 20}
    torch.manual_seed(3)
    out = model.generate(prompt, attention_mask=torch.ones_like(prompt), eos_token_id=[tok.im_end_id, tok.eos_id],
                         pad_token_id=tok.pad_id, **kwargs)
    assert result["generated_ids"] == out[0, prompt.shape[1]:].tolist()
    assert result["grammar"] is False


def test_inference_does_not_load_megatron(random_model_dir, tmp_path):
    """Importing the package, and a whole tools/generate.py run, load neither megatron-core nor
    the trainer; the tool says in one line what it runs on."""
    out = tmp_path / "gen.json"
    probe = (
        "import json, runpy, sys\n"
        "import megatron_mio.inference\n"
        "sys.argv = ['generate.py'] + sys.argv[1:]\n"
        "try:\n"
        "    runpy.run_path('tools/generate.py', run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "bad = [m for m in sys.modules if m.split('.')[0] == 'megatron' or m.startswith('megatron_mio.training')\n"
        "       or m.startswith('megatron_mio.convert') or m.startswith('megatron_mio.model')]\n"
        "print('LOADED', json.dumps(bad))\n"
    )
    env = {k: v for k, v in cpu_env().items() if k != "PYTHONWARNINGS"}
    proc = subprocess.run([sys.executable, "-c", probe, "--hf-dir", str(random_model_dir), "--prompt", "Draw.",
                           "--modality", "image", "--output", str(out)],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.split("LOADED", 1)[1]) == []
    assert json.loads(out.read_text())["valid"]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("generate:")]
    assert len(lines) == 1 and " on cpu " in lines[0] and "attention sdpa" in lines[0], proc.stderr
    assert "Transformer Engine" not in proc.stderr and "Apex" not in proc.stderr
