"""Yi-6B-Chat's ChatML, defined once: ``<|im_start|>{role}\\n{content}<|im_end|>\\n`` per message,
and ``<|im_start|>assistant\\n`` to prompt the answer.

Both renderers are built from these strings: ``TemplateRenderer.render_chat``
(``megatron_mio.data.templates``: token level, with the SFT loss mask; also the inference prompt)
and ``CHAT_TEMPLATE``, the Jinja template a tokenizer directory carries for ``transformers``'
``apply_chat_template``.  ``tests/test_chatml.py`` renders chats with both and compares them.
"""

from __future__ import annotations

from megatron_mio.tokenizer.vocab import IM_END, IM_START

ROLE_END = "\n"  # between the role and the content
MESSAGE_END = "\n"  # after <|im_end|>
ASSISTANT_ROLE = "assistant"  # the model's turns: trained on, opened by a generation prompt


def _jinja_string(text: str) -> str:
    """``text`` as a single-quoted Jinja string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


CHAT_TEMPLATE = (
    "{% for message in messages %}"
    f"{{{{ {_jinja_string(IM_START)} + message['role'] + {_jinja_string(ROLE_END)} + message['content']"
    f" + {_jinja_string(IM_END)} + {_jinja_string(MESSAGE_END)} }}}}"
    "{% endfor %}"
    f"{{% if add_generation_prompt %}}{{{{ {_jinja_string(IM_START + ASSISTANT_ROLE + ROLE_END)} }}}}{{% endif %}}"
)
