"""ChatML has one definition (``megatron_mio.tokenizer.chatml``): the Jinja ``chat_template`` of
the built tokenizer, applied by ``transformers``, renders every chat exactly as the token-level
``TemplateRenderer.render_chat`` that MIO trains on (and prompts with)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from megatron_mio.data import schema as S
from megatron_mio.data import templates as T
from megatron_mio.tokenizer import vocab as V

IMAGE = list(range(200, 232))

# (mode, messages, add_generation_prompt); content is a string or a list of parts.
CHATS = {
    "no_system_one_turn": ("std", [("user", "What is a haiku?"), ("assistant", "A short poem.")], False),
    "own_system_multi_turn": ("std", [
        ("system", "You are a terse assistant."), ("user", "Hi there!"), ("assistant", "Hello."),
        ("user", "Count to three:\n  one, two..."), ("assistant", "one, two, three")], False),
    "voice_system_prompt": ("voice", [("user", "Say hello."), ("assistant", "Hello!")], False),
    "image_parts": ("std", [("user", [("text", "Describe this:"), ("image", IMAGE)]),
                            ("assistant", [("text", "A cat."), ("image", IMAGE[::-1])])], False),
    "generation_prompt_first_turn": ("std", [("user", "Draw a red bicycle.")], True),
    "generation_prompt_multi_turn": ("voice", [
        ("system", "Answer in speech."), ("user", "Hi."), ("assistant", "Hello."),
        ("user", "Tell me a joke.")], True),
    "opens_with_assistant": ("std", [("assistant", "How can I help?"), ("user", "Thanks.")], True),
}


def _parts(content) -> list:
    if isinstance(content, str):
        return [("text", content)]
    import numpy as np

    return [(kind, value if kind == "text" else np.asarray(value)) for kind, value in content]


def _as_string(content) -> str:
    """A message's content as the Jinja template takes it: text with inline token spellings."""
    if isinstance(content, str):
        return content
    spelled = [value if kind == "text" else
               V.IMAGE_START + "".join(V.image_token(c) for c in value) + V.IMAGE_END
               for kind, value in content]
    return T.PART_SEPARATOR.join(spelled)


@pytest.fixture(scope="module")
def auto(mio_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(mio_tokenizer_dir)


def test_built_tokenizer_carries_the_chatml_template(mio_tokenizer_dir):
    from megatron_mio.tokenizer.chatml import CHAT_TEMPLATE

    config = json.loads((Path(mio_tokenizer_dir) / "tokenizer_config.json").read_text())
    assert config["chat_template"] == CHAT_TEMPLATE


@pytest.mark.parametrize("name", sorted(CHATS))
def test_jinja_template_renders_as_render_chat(name, auto, mio_tokenizer):
    mode, messages, add_generation_prompt = CHATS[name]
    chat = S.Chat(mode=mode, messages=[S.Message(role, _parts(content)) for role, content in messages])
    document = T.TemplateRenderer(mio_tokenizer, "sft").render_chat(chat, add_generation_prompt)
    ids, _ = T.encode_document(document, mio_tokenizer)

    # The Jinja template knows no modes: the chat's system prompt is given as render_chat adds it.
    hf_messages = [{"role": role, "content": _as_string(content)} for role, content in messages]
    if hf_messages[0]["role"] != "system":
        hf_messages.insert(0, {"role": "system", "content": T.SYSTEM_PROMPTS[mode]})
    rendered = auto.apply_chat_template(hf_messages, tokenize=False,
                                        add_generation_prompt=add_generation_prompt)

    assert rendered == T.format_document(document, mio_tokenizer)
    assert auto(rendered)["input_ids"] == ids.tolist()
    assert rendered.endswith("<|im_start|>assistant\n" if add_generation_prompt else "<|im_end|>\n")
