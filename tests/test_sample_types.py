"""Every registered sample type implements all four rules (parse, render, units, speech), a
class missing one cannot be registered, and each type's rules agree on a real sample of it
from the synthetic corpus (units joined = the rendered document; speech = the speech in it)."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from megatron_mio.data import sample_types as ST
from megatron_mio.data import synthetic
from megatron_mio.data.templates import TemplateRenderer

RULES = ("parse", "render", "units", "speech")


def test_the_interface_declares_every_rule_abstract():
    assert sorted(ST.SampleType.__abstractmethods__) == sorted(RULES)


@pytest.mark.parametrize("name", list(ST.REGISTRY))
def test_every_registered_type_implements_every_rule(name):
    cls = type(ST.REGISTRY[name])
    assert cls.name == name and not inspect.isabstract(cls)
    for rule in RULES:
        implementation = inspect.getattr_static(cls, rule)
        assert implementation is not inspect.getattr_static(ST.SampleType, rule), (name, rule)
        assert not getattr(implementation, "__isabstractmethod__", False), (name, rule)
    assert ST.type_of(object.__new__(cls.sample_class)) is ST.REGISTRY[name]


@pytest.mark.parametrize("missing", RULES)
def test_a_type_missing_a_rule_is_refused(missing):
    rules = {rule: (lambda self, *args: None) for rule in RULES if rule != missing}
    incomplete = type("Incomplete", (ST.SampleType,),
                      {"name": "incomplete", "sample_class": type("X", (), {}), **rules})
    with pytest.raises(TypeError, match=missing):
        ST.register(incomplete)
    assert "incomplete" not in ST.REGISTRY


def _corpus_by_type() -> dict[str, list[dict]]:
    samples = synthetic.pretraining_samples(seed=1) + synthetic.chat_samples(seed=1, n=8)
    by_type: dict[str, list[dict]] = {}
    for obj in samples:
        by_type.setdefault(obj["type"], []).append(obj)
    return by_type


def test_the_synthetic_corpus_has_every_type():
    """So the next test runs each registered type's rules on a real sample of it."""
    assert set(_corpus_by_type()) == set(ST.REGISTRY)


@pytest.mark.parametrize("name", list(ST.REGISTRY))
def test_the_rules_of_each_type_agree_on_its_samples(mio_tokenizer, name):
    rules = ST.REGISTRY[name]
    renderer = TemplateRenderer(mio_tokenizer, "sft" if name == "chat" else "2")
    for i, obj in enumerate(_corpus_by_type()[name]):
        sample = rules.parse(obj)
        assert isinstance(sample, rules.sample_class)
        tokens, mask = ST.render_sample(renderer, sample, np.random.default_rng(i))
        rendered = rules.units(renderer, sample, np.random.default_rng(i), append_eod=False)
        pieces = ([rendered.header] if rendered.header else []) + rendered.units
        np.testing.assert_array_equal(np.concatenate([u.tokens for u in pieces]), tokens)
        np.testing.assert_array_equal(np.concatenate([u.loss_mask for u in pieces]), mask)
        # The speech filter sees every speech code the sample carries, in JSON order.
        expected = _speech_in_json(obj)
        assert [s.content.tolist() for s in rules.speech(sample)] == expected


def _speech_in_json(value) -> list[list[int]]:
    if isinstance(value, dict):
        if "speech" in value and isinstance(value["speech"], dict):
            return [value["speech"]["content"]]
        return [c for v in value.values() for c in _speech_in_json(v)]
    if isinstance(value, list):
        return [c for v in value for c in _speech_in_json(v)]
    return []
