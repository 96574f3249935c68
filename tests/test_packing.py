"""The C++ packer and blender against their plain-Python references, plus their invariants."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from megatron_mio.data.packing import (
    blend_indices,
    pack_documents,
    reference_blend_indices,
    reference_pack_documents,
    reference_shuffle,
)

SETTINGS = settings(max_examples=60, deadline=None)


@st.composite
def packing_inputs(draw):
    seq_length = draw(st.integers(1, 64))
    # Lengths around seq_length on purpose: 0 (empty), == seq_length, > seq_length all occur.
    lengths = draw(st.lists(st.integers(0, seq_length + 8), max_size=120))
    window = draw(st.integers(1, 50))
    seed = draw(st.integers(0, 2**64 - 1))
    max_docs = draw(st.integers(0, 5))
    return np.array(lengths, dtype=np.int32), seq_length, window, seed, max_docs


def assert_same_index(a, b):
    np.testing.assert_array_equal(a.pack_offsets, b.pack_offsets)
    np.testing.assert_array_equal(a.doc_ids, b.doc_ids)
    assert (a.n_too_long, a.too_long_tokens, a.n_empty) == (b.n_too_long, b.too_long_tokens, b.n_empty)


@SETTINGS
@given(packing_inputs())
def test_cpp_packer_equals_python_reference(inputs):
    lengths, seq_length, window, seed, max_docs = inputs
    kwargs = dict(seed=seed, window=window, max_documents_per_pack=max_docs)
    assert_same_index(
        pack_documents(lengths, seq_length, **kwargs),
        reference_pack_documents(lengths, seq_length, **kwargs),
    )


@SETTINGS
@given(packing_inputs())
def test_packs_are_valid(inputs):
    lengths, seq_length, window, seed, max_docs = inputs
    index = pack_documents(lengths, seq_length, seed=seed, window=window, max_documents_per_pack=max_docs)
    packable = np.flatnonzero((lengths > 0) & (lengths <= seq_length))
    # Every packable document exactly once, whole; nothing else.
    np.testing.assert_array_equal(np.sort(index.doc_ids), packable)
    assert index.n_too_long == int((lengths > seq_length).sum())
    assert index.too_long_tokens == int(lengths[lengths > seq_length].sum())
    assert index.n_empty == int((lengths == 0).sum())
    assert index.pack_offsets[0] == 0 and index.pack_offsets[-1] == len(index.doc_ids)
    for p in range(index.n_packs):
        docs = index.pack(p)
        assert len(docs) >= 1
        assert lengths[docs].sum() <= seq_length
        if max_docs:
            assert len(docs) <= max_docs


@SETTINGS
@given(st.integers(1, 50), st.integers(0, 40), st.integers(0, 2**64 - 1))
def test_documents_of_exactly_seq_length_fill_one_pack_each(seq_length, n, seed):
    lengths = np.full(n, seq_length, dtype=np.int32)
    index = pack_documents(lengths, seq_length, seed=seed, window=7)
    assert index.n_packs == n and index.n_too_long == 0
    np.testing.assert_array_equal(index.documents_per_pack(), np.ones(n))


def test_empty_input():
    index = pack_documents(np.zeros(0, dtype=np.int32), 16, seed=0)
    assert index.n_packs == 0 and len(index.doc_ids) == 0
    np.testing.assert_array_equal(index.pack_offsets, [0])
    assert_same_index(index, reference_pack_documents([], 16, seed=0))


def test_deterministic_for_a_seed_and_shuffled_across_seeds():
    lengths = np.random.default_rng(0).integers(1, 200, size=5000).astype(np.int32)
    a = pack_documents(lengths, 512, seed=7, window=500)
    b = pack_documents(lengths, 512, seed=7, window=500)
    c = pack_documents(lengths, 512, seed=8, window=500)
    assert_same_index(a, b)
    assert not np.array_equal(a.doc_ids, c.doc_ids)
    # The shuffle mixes the corpus: the first pack's documents come from all over it.
    first_window = a.doc_ids[: a.pack_offsets[np.searchsorted(a.pack_offsets, 500)]]
    assert first_window.max() - first_window.min() > 4000
    assert sorted(reference_shuffle(list(range(10)), 3)) == list(range(10))
    assert reference_shuffle(list(range(10)), 3) != list(range(10))


def test_large_inputs_use_several_shuffle_buckets_and_still_match_the_reference():
    # > 16,384 packable documents: the shuffle spreads them over 4 buckets.
    lengths = np.random.default_rng(2).integers(0, 80, size=40_000).astype(np.int32)
    kwargs = dict(seed=123, window=16)
    assert_same_index(pack_documents(lengths, 64, **kwargs), reference_pack_documents(lengths, 64, **kwargs))


def test_best_fit_decreasing_fills_packs():
    # 300 documents of 1..100 tokens in one window: BFD leaves at most one pack not (nearly) full.
    lengths = np.random.default_rng(1).integers(1, 101, size=300).astype(np.int32)
    index = pack_documents(lengths, 256, seed=0, window=300)
    lower_bound = -(-int(lengths.sum()) // 256)
    assert index.n_packs <= lower_bound + 1


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="lengths"):
        pack_documents(np.array([3, -1]), 8, seed=0)
    with pytest.raises(ValueError, match="seq_length"):
        pack_documents(np.array([3]), 0, seed=0)
    with pytest.raises(ValueError, match="window"):
        pack_documents(np.array([3]), 8, seed=0, window=0)


@st.composite
def blend_inputs(draw):
    k = draw(st.integers(1, 8))
    integer = draw(st.booleans())
    if integer:  # stage-mixture style weights, e.g. 12:2:2
        weights = draw(st.lists(st.integers(1, 20), min_size=k, max_size=k))
    else:  # skewed real weights, the kind that break largest-deficit blending (Megatron-LM #705)
        weights = draw(st.lists(st.floats(1e-6, 1.0), min_size=k, max_size=k))
    return np.array(weights, dtype=np.float64), draw(st.integers(0, 400))


@SETTINGS
@given(blend_inputs())
def test_cpp_blend_equals_python_reference(inputs):
    weights, n = inputs
    dataset, sample = blend_indices(weights, n)
    ref_dataset, ref_sample = reference_blend_indices(weights, n)
    np.testing.assert_array_equal(dataset, ref_dataset)
    np.testing.assert_array_equal(sample, ref_sample)


@SETTINGS
@given(blend_inputs())
def test_every_prefix_within_one_sample_of_target(inputs):
    weights, n = inputs
    dataset, sample = blend_indices(weights, n)
    share = weights / weights.sum()
    t = np.arange(1, n + 1)
    for d in range(len(weights)):
        taken = np.cumsum(dataset == d)
        assert np.all(np.abs(taken - share[d] * t) < 1 + 1e-9)
        # The per-dataset sample number is the running count.
        np.testing.assert_array_equal(sample[dataset == d], np.arange((dataset == d).sum()))


def test_integer_weights_repeat_exactly_every_period():
    dataset, _ = blend_indices([12, 2, 2], 160)
    period = dataset[:16]
    assert np.bincount(period, minlength=3).tolist() == [12, 2, 2]
    np.testing.assert_array_equal(dataset.reshape(10, 16), np.tile(period, (10, 1)))


@pytest.mark.parametrize("weights", [[1, 0], [1, -2], [float("nan")], []])
def test_bad_weights_raise(weights):
    with pytest.raises(ValueError, match="weights"):
        blend_indices(weights, 10)
