"""Packed dataset items against the batch contract, on every item of random corpora."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder

from megatron_mio.data.batch import BATCH_KEYS, document_ids
from megatron_mio.data.packed_dataset import BlendedPackedDataset, PackedDataset, PackingConfig
from megatron_mio.tokenizer.vocab import Modality
from megatron_mio.data.validate import DataFileError, validate_packed_source

VOCAB = 300


def write_indexed(prefix: str, arrays, dtype) -> None:
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=dtype)
    for array in arrays:
        builder.add_item(torch.from_numpy(np.asarray(array, dtype=dtype)))
        builder.end_document()
    builder.finalize(prefix + ".idx")


def write_corpus(prefix: str, lengths, seed: int = 0, masks: bool = True):
    """Random documents (ids in [1, VOCAB)) and random 0/1 loss masks at ``prefix``."""
    rng = np.random.default_rng(seed)
    docs = [rng.integers(1, VOCAB, size=n).astype(np.int32) for n in lengths]
    loss_masks = [rng.integers(0, 2, size=n).astype(np.uint8) for n in lengths]
    write_indexed(prefix, docs, np.int32)
    if masks:
        write_indexed(prefix + ".loss_mask", loss_masks, np.uint8)
    return docs, loss_masks


def modality_table() -> np.ndarray:
    table = np.zeros(VOCAB, dtype=np.uint8)
    table[100:200] = Modality.IMAGE
    table[200:] = Modality.SPEECH
    return table


def expected_row(docs, masks, doc_ids, s, pad_id, table):
    """The batch contract, written out one document at a time (independent of the dataset code)."""
    tokens, labels, loss, pos, mod, bounds = [], [], [], [], [], [0]
    for d in doc_ids:
        t, m = docs[d].astype(np.int64), masks[d].astype(np.float32)
        tokens += t.tolist()
        labels += t[1:].tolist() + [0]
        loss += m[1:].tolist() + [0.0]
        pos += list(range(len(t)))
        mod += table[t[1:]].tolist() + [0]
        bounds.append(bounds[-1] + len(t))
    pad = s - len(tokens)
    if pad:
        bounds.append(s)
    return dict(
        tokens=tokens + [pad_id] * pad, labels=labels + [0] * pad, loss_mask=loss + [0.0] * pad,
        position_ids=pos + list(range(pad)), modality=mod + [0] * pad, bounds=bounds,
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    lengths = np.random.default_rng(3).integers(1, 60, size=400)
    lengths[:5] = [64, 65, 200, 1, 64]  # == seq_length, too long, single token
    prefix = str(root / "mixed")
    docs, masks = write_corpus(prefix, lengths)
    return prefix, docs, masks, lengths


def test_every_item_follows_the_batch_contract(corpus):
    prefix, docs, masks, lengths = corpus
    s, pad_id, table = 64, 7, modality_table()
    ds = PackedDataset(prefix, PackingConfig(s, seed=1, window=50, pad_id=pad_id, modality_table=table))
    assert ds.meta["n_too_long"] == int((lengths > s).sum()) == 2
    seen = []
    for p in range(len(ds)):
        item = ds[p]
        assert set(item) == set(BATCH_KEYS)
        assert item["tokens"].dtype == torch.int64 and item["labels"].dtype == torch.int64
        assert item["loss_mask"].dtype == torch.float32 and item["position_ids"].dtype == torch.int64
        assert item["cu_seqlens"].dtype == torch.int32 and item["modality"].dtype == torch.uint8
        assert item["cu_seqlens"].shape == (ds.cu_seqlens_length,)
        doc_ids = ds.documents(p).tolist()
        seen += doc_ids
        want = expected_row(docs, masks, doc_ids, s, pad_id, table)
        for key in ("tokens", "labels", "loss_mask", "position_ids", "modality"):
            assert item[key].tolist() == want[key], (p, key)
        cu = item["cu_seqlens"]
        assert cu[: len(want["bounds"])].tolist() == want["bounds"]
        assert (cu[len(want["bounds"]):] == -1).all()
        # Labels never cross a document boundary: wherever there is a label, the next token is in
        # the same document (segments from cu_seqlens, as the attention backends see them).
        segment = document_ids(cu[None], s)[0]
        has_label = item["labels"] != 0
        j = torch.nonzero(has_label[:-1]).flatten()
        assert (segment[j] == segment[j + 1]).all()
        assert not has_label[-1]  # the last slot is a document end or padding
        assert (item["loss_mask"][~has_label] == 0).all()
    packable = np.flatnonzero(lengths <= s)
    assert sorted(seen) == packable.tolist()  # every document once, whole


def test_tokens_match_megatron_reader(corpus):
    prefix, *_ = corpus
    ds = PackedDataset(prefix, PackingConfig(64, seed=1, window=50))
    reference = IndexedDataset(prefix)
    for p in range(0, len(ds), 7):
        docs = ds.documents(p)
        expected = np.concatenate([reference[int(d)] for d in docs])
        np.testing.assert_array_equal(ds[p]["tokens"][: len(expected)].numpy(), expected)


def test_index_is_cached_atomically_and_keyed(corpus, tmp_path):
    prefix, *_ = corpus
    cache = tmp_path / "cache"
    a = PackedDataset(prefix, PackingConfig(64, seed=1, window=50, cache_dir=str(cache)))
    files = sorted(os.listdir(cache))
    assert len(files) == 3 and not any(".tmp-" in f for f in files)
    mtimes = {f: os.stat(cache / f).st_mtime_ns for f in files}
    b = PackedDataset(prefix, PackingConfig(64, seed=1, window=50, cache_dir=str(cache)))
    assert {f: os.stat(cache / f).st_mtime_ns for f in files} == mtimes  # reused, not rebuilt
    np.testing.assert_array_equal(a.index.doc_ids, b.index.doc_ids)
    assert isinstance(b.index.doc_ids, np.memmap)
    PackedDataset(prefix, PackingConfig(64, seed=2, window=50, cache_dir=str(cache)))
    PackedDataset(prefix, PackingConfig(32, seed=1, window=50, cache_dir=str(cache)))
    assert len(os.listdir(cache)) == 9  # seed and seq_length are part of the key


def test_fixed_cu_seqlens_length(corpus, tmp_path):
    prefix, *_ = corpus
    ds = PackedDataset(prefix, PackingConfig(64, seed=1, max_documents_per_pack=4, cu_seqlens_length=6,
                                             cache_dir=str(tmp_path)))
    assert all(len(ds.documents(p)) <= 4 for p in range(len(ds)))
    assert ds[0]["cu_seqlens"].shape == (6,)
    with pytest.raises(ValueError, match="cu_seqlens_length"):
        PackedDataset(prefix, PackingConfig(64, seed=1, cu_seqlens_length=3, cache_dir=str(tmp_path)))


def test_blended_dataset_mixes_at_weights_and_cycles_epochs(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    write_corpus(a, [30] * 20, seed=1)  # 10 packs of 2 documents
    write_corpus(b, [60] * 5, seed=2)  # 5 packs
    ds_a, ds_b = PackedDataset(a, PackingConfig(64, seed=0)), PackedDataset(b, PackingConfig(64, seed=0))
    blend = BlendedPackedDataset([ds_a, ds_b], [3, 1], 40, seed=0)
    located = [blend.locate(i) for i in range(40)]
    from_a = [p for d, p in located if d == 0]
    from_b = [p for d, p in located if d == 1]
    assert len(from_a) == 30 and len(from_b) == 10
    # Each epoch of a dataset visits each of its packs once, in a new order.
    assert sorted(from_a[:10]) == sorted(from_a[10:20]) == list(range(10))
    assert from_a[:10] != from_a[10:20]
    assert sorted(from_b[:5]) == sorted(from_b[5:]) == list(range(5))
    d, p = blend.locate(5)
    torch.testing.assert_close(blend[5], [ds_a, ds_b][d][p])
    with pytest.raises(IndexError):
        blend.locate(40)


# --- robustness: a clear error naming the file, before any C++ runs -------------------------


@pytest.fixture()
def small(tmp_path):
    prefix = str(tmp_path / "small")
    write_corpus(prefix, [5, 9, 3, 12])
    return prefix


def rewrite(path, mutate):
    data = bytearray(open(path, "rb").read())
    data = mutate(data)
    with open(path, "wb") as f:
        f.write(bytes(data))


@pytest.mark.parametrize(
    "case, file, match",
    [
        ("truncated idx", ".idx", "size"),
        ("bad magic", ".idx", "magic"),
        ("bad version", ".idx", "version"),
        ("corrupted pointer", ".idx", "sequence_pointers"),
        ("truncated bin", ".bin", "size"),
        ("missing bin", ".bin", "no such file"),
        ("missing loss mask", ".loss_mask.idx", "no such file"),
    ],
)
def test_broken_files_raise_naming_the_file(small, case, file, match):
    path = small + file
    if case == "truncated idx":
        rewrite(path, lambda d: d[:-5])
    elif case == "bad magic":
        rewrite(path, lambda d: b"NOTANIDX\x00" + d[9:])
    elif case == "bad version":
        rewrite(path, lambda d: d[:9] + (7).to_bytes(8, "little") + d[17:])
    elif case == "corrupted pointer":
        # pointer of document 1: after the header and 4 int32 lengths, the second int64
        rewrite(path, lambda d: d[: 34 + 16 + 8] + (999).to_bytes(8, "little") + d[34 + 16 + 16 :])
    elif case == "truncated bin":
        rewrite(path, lambda d: d[:-4])
    else:
        os.unlink(path)
    with pytest.raises(DataFileError, match=match) as err:
        PackedDataset(small, PackingConfig(16, seed=0))
    assert path in str(err.value)


def test_missing_prefix(tmp_path):
    with pytest.raises(DataFileError, match="no such file") as err:
        PackedDataset(str(tmp_path / "nowhere"), PackingConfig(16, seed=0))
    assert "nowhere.idx" in str(err.value)


def test_mismatched_loss_masks(tmp_path):
    prefix = str(tmp_path / "x")
    write_corpus(prefix, [5, 9, 3])
    write_indexed(prefix + ".loss_mask", [np.ones(n) for n in [5, 8, 3]], np.uint8)
    with pytest.raises(DataFileError, match="document 1 has 8 mask entries") as err:
        validate_packed_source(prefix)
    assert "x.loss_mask.idx" in str(err.value)
    write_indexed(prefix + ".loss_mask", [np.ones(n) for n in [5, 9]], np.uint8)
    with pytest.raises(DataFileError, match="2 documents"):
        validate_packed_source(prefix)
    write_indexed(prefix + ".loss_mask", [np.ones(n) for n in [5, 9, 3]], np.int32)
    with pytest.raises(DataFileError, match="uint8"):
        validate_packed_source(prefix)


def test_bad_modality_table(small):
    with pytest.raises(ValueError, match="uint8"):
        PackedDataset(small, PackingConfig(16, seed=0, modality_table=np.zeros(VOCAB, dtype=np.int64)))


def test_pickling_for_loader_workers_remaps_instead_of_copying(tmp_path):
    import pickle

    a = str(tmp_path / "a")
    write_corpus(a, [30] * 40, seed=1)
    blend = BlendedPackedDataset([PackedDataset(a, PackingConfig(64, seed=0))], [1], 100_000, seed=0)
    blob = pickle.dumps(blend)
    assert len(blob) < blend.dataset_sample_index.nbytes // 10  # 800 kB of index not shipped
    clone = pickle.loads(blob)
    assert isinstance(clone.dataset_sample_index, np.memmap)
    assert isinstance(clone.datasets[0].index.doc_ids, np.memmap)
    for i in (0, 17, 99_999):
        torch.testing.assert_close(clone[i], blend[i])
    np.testing.assert_array_equal(clone.datasets[0].lengths, blend.datasets[0].lengths)
