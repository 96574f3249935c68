"""Packed datasets: whole documents concatenated into fixed-length sequences with exact boundaries.

``PackedDataset`` serves one indexed dataset (tokens ``P`` + loss masks ``P.loss_mask``) as
packed sequences; ``BlendedPackedDataset`` interleaves several of them at given weights.  Items
follow the contract in ``megatron_mio/data/batch.py`` exactly (one item = one row of a batch).
Every dataset of a run shares one frozen ``PackingConfig``, built once where the flags enter.

The pack index (``packing.pack_documents``, C++) is built once, by global rank 0 when
torch.distributed is initialised, and cached next to the data as
``P.packs-<key>.{offsets,doc_ids}.npy`` plus ``P.packs-<key>.json`` (written last; its presence
means the cache is complete).  ``<key>`` hashes everything that changes the packs: the document
lengths, ``seq_length``, seed, window, document limit and the algorithm version.  Every file is
written under a temporary name and renamed, so concurrent builders and crashes leave no
half-written cache.  All ranks memory-map the arrays.  The same applies to the blending index of
a mixture (data-independent: keyed by weights and sample count).

``cu_seqlens`` has a fixed length ``L`` so that items collate: ``0, end_1, ..., end_m`` then, if
the pack is not full, ``s`` (the padding is one more segment), then ``-1`` up to ``L``.  The
default ``L`` is the exact worst case of the built indices, ``max documents in any pack + 2``
(of a blend: the largest of its datasets', which it asks each of them to pad its rows to); set
``cu_seqlens_length`` (and ``max_documents_per_pack`` to bound the packer) in the config for a
fixed, data-independent shape, e.g. for CUDA graphs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections import OrderedDict

import numpy as np
import torch

from megatron_mio.atomic import atomic_file, write_text
from megatron_mio.data.packing import DEFAULT_WINDOW, PackIndex, blend_indices, pack_documents
from megatron_mio.data.validate import IndexInfo, read_index, validate_packed_source
from megatron_mio.tokenizer.vocab import Modality

PACKING_VERSION = 1  # bump when the packing or blending algorithm changes: invalidates caches


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def build_once(done_path: str, build) -> None:
    """Run ``build()`` on global rank 0 only (if ``done_path`` is missing); everyone else waits."""
    if _distributed():
        failure = None
        if torch.distributed.get_rank() == 0 and not os.path.exists(done_path):
            try:
                build()
            except Exception as err:  # reach the barrier anyway, so other ranks fail fast too
                failure = err
        torch.distributed.barrier()
        if failure is not None:
            raise failure
    elif not os.path.exists(done_path):
        build()
    if not os.path.exists(done_path):
        raise FileNotFoundError(f"{done_path}: index cache missing after rank 0 built it "
                                "(is the data directory shared between nodes?)")


def save_array(path: str, array: np.ndarray) -> None:
    """``np.save`` under a temporary name, renamed when complete (``megatron_mio.atomic``)."""
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def check_modality_table(table, source: str = "modality table") -> np.ndarray | None:
    """The per-token ``Modality`` lookup (``uint8 [vocab]``), or an error naming ``source``."""
    if table is None:
        return None
    table = np.asarray(table)
    if table.ndim != 1 or table.dtype != np.uint8:
        raise ValueError(f"{source}: modality table must be a 1-D uint8 array per vocab id, got "
                         f"{table.dtype} {table.shape}")
    if table.size and table.max() > max(Modality):
        raise ValueError(f"{source}: modality table holds {table.max()}, not a Modality value")
    return table


@dataclasses.dataclass(frozen=True)
class PackingConfig:
    """How every dataset of a run is packed and served: built once, where the flags enter.

    ``seq_length``, ``seed``, ``window`` and ``max_documents_per_pack`` decide the packs (they key
    the index cache); ``pad_id``, ``modality_table`` and ``cu_seqlens_length`` (``None``: the
    worst case of the built indices) decide how a pack becomes a batch row; ``cache_dir`` is where
    the indices go (``None``: next to the data).  ``seed`` also seeds the blend's epoch order.
    """

    seq_length: int
    seed: int
    window: int = DEFAULT_WINDOW
    max_documents_per_pack: int = 0
    pad_id: int = 0
    modality_table: np.ndarray | None = dataclasses.field(default=None, compare=False, repr=False)
    cu_seqlens_length: int | None = None
    cache_dir: str | None = None

    def __post_init__(self):
        if self.seq_length < 2:
            raise ValueError(f"seq_length must be >= 2, got {self.seq_length}")
        object.__setattr__(self, "modality_table", check_modality_table(self.modality_table))

    def cache_base(self, prefix: str) -> str:
        """Where the caches of dataset ``prefix`` go, less their suffixes."""
        if self.cache_dir is None:
            return prefix
        os.makedirs(self.cache_dir, exist_ok=True)
        return os.path.join(self.cache_dir, os.path.basename(prefix))


def pack_index_key(info: IndexInfo, config: PackingConfig) -> str:
    digest = hashlib.blake2b(digest_size=8)
    digest.update(json.dumps([PACKING_VERSION, config.seq_length, config.seed, config.window,
                              config.max_documents_per_pack]).encode())
    digest.update(np.ascontiguousarray(info.sequence_lengths).view(np.uint8))
    return digest.hexdigest()


def load_or_build_pack_index(info: IndexInfo, config: PackingConfig) -> tuple[PackIndex, dict]:
    """The pack index of a validated dataset, from its cache (built by rank 0 when missing)."""
    base = f"{config.cache_base(info.prefix)}.packs-{pack_index_key(info, config)}"
    meta_path = f"{base}.json"

    def build():
        index = pack_documents(info.sequence_lengths, config.seq_length, seed=config.seed,
                               window=config.window,
                               max_documents_per_pack=config.max_documents_per_pack)
        save_array(f"{base}.offsets.npy", index.pack_offsets)
        save_array(f"{base}.doc_ids.npy", index.doc_ids)
        lengths = info.sequence_lengths
        packed_tokens = int(lengths[index.doc_ids].sum(dtype=np.int64)) if index.doc_ids.size else 0
        meta = dict(
            prefix=info.prefix, seq_length=config.seq_length, seed=config.seed,
            window=config.window, max_documents_per_pack=config.max_documents_per_pack,
            version=PACKING_VERSION, n_documents=info.n_documents, n_packs=index.n_packs,
            packed_tokens=packed_tokens, n_too_long=index.n_too_long,
            too_long_tokens=index.too_long_tokens, n_empty=index.n_empty,
            max_documents_in_a_pack=int(index.documents_per_pack().max()) if index.n_packs else 0,
        )
        write_text(meta_path, json.dumps(meta, indent=1))  # last: marks the cache complete

    build_once(meta_path, build)
    return open_pack_index(base)


def open_pack_index(base: str) -> tuple[PackIndex, dict]:
    """Memory-map a cached pack index (``base`` = the cache files' common prefix)."""
    with open(f"{base}.json") as f:
        meta = json.load(f)
    meta["cache_base"] = base
    index = PackIndex(
        pack_offsets=np.load(f"{base}.offsets.npy", mmap_mode="r"),
        doc_ids=np.load(f"{base}.doc_ids.npy", mmap_mode="r"),
        n_too_long=meta["n_too_long"], too_long_tokens=meta["too_long_tokens"], n_empty=meta["n_empty"],
    )
    return index, meta


class PackedDataset(torch.utils.data.Dataset):
    """One indexed dataset as packed sequences of ``config.seq_length`` tokens (``len`` = packs).

    Item ``p`` is pack ``p`` of the index, in the packer's order; ``BlendedPackedDataset`` adds
    per-epoch shuffling and mixing.  Files are validated (``validate.py``) before any C++ runs.
    """

    def __init__(self, prefix: str, config: PackingConfig):
        self.prefix = prefix
        self.config = config
        info = validate_packed_source(prefix)
        self._lengths = info.sequence_lengths
        self.n_tokens = info.n_tokens
        self.index, self.meta = load_or_build_pack_index(info, config)
        needed = self.meta["max_documents_in_a_pack"] + 2
        fixed = config.cu_seqlens_length
        self.cu_seqlens_length = needed if fixed is None else fixed
        if self.cu_seqlens_length < needed:
            raise ValueError(
                f"cu_seqlens_length {fixed} < {needed} needed by {prefix} (a pack holds "
                f"{needed - 2} documents); raise it or set max_documents_per_pack"
            )
        self._readers = None  # opened lazily, so the dataset pickles cheaply into loader workers

    @property
    def seq_length(self) -> int:
        return self.config.seq_length

    def __len__(self) -> int:
        return self.index.n_packs

    def _open(self):
        from megatron_mio.data.indexed import open_dataset  # megatron-core's reader: imported late

        if self._readers is None:
            self._readers = open_dataset(self.prefix)
        return self._readers

    @property
    def lengths(self) -> np.ndarray:
        """Document lengths (int32, memory-mapped from the .idx)."""
        if self._lengths is None:
            self._lengths = read_index(self.prefix).sequence_lengths
        return self._lengths

    # Pickling (DataLoader workers under spawn/forkserver) must not copy memory-mapped arrays
    # into every worker: ship the cache's path and re-map it on the other side.
    def __getstate__(self):
        state = dict(self.__dict__)
        state.update(_readers=None, _lengths=None, index=None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.index, _ = open_pack_index(self.meta["cache_base"])

    def documents(self, p: int) -> np.ndarray:
        return np.asarray(self.index.pack(p))

    def __getitem__(self, p: int) -> dict[str, torch.Tensor]:
        return self.item(p)

    def item(self, p: int, cu_seqlens_length: int | None = None) -> dict[str, torch.Tensor]:
        """Pack ``p`` as a batch row, its ``cu_seqlens`` padded to ``cu_seqlens_length`` (default:
        this dataset's own), so that rows of datasets with different worst cases collate."""
        width = self.cu_seqlens_length if cu_seqlens_length is None else cu_seqlens_length
        if width < self.cu_seqlens_length:
            raise ValueError(f"cu_seqlens_length {width} < {self.cu_seqlens_length} of {self.prefix}")
        tokens_ds, masks_ds = self._open()
        docs = self.documents(p)
        return build_packed_item(
            [tokens_ds[int(d)] for d in docs], [masks_ds[int(d)] for d in docs],
            seq_length=self.config.seq_length, pad_id=self.config.pad_id,
            cu_seqlens_length=width, modality_table=self.config.modality_table,
        )


def build_packed_item(
    doc_tokens: list[np.ndarray], doc_masks: list[np.ndarray], *, seq_length: int, pad_id: int,
    cu_seqlens_length: int, modality_table: np.ndarray | None,
) -> dict[str, torch.Tensor]:
    """One row of the batch contract from the documents of a pack (see batch.py)."""
    s = seq_length
    lengths = np.array([len(t) for t in doc_tokens], dtype=np.int64)
    ends = np.cumsum(lengths)
    used = int(ends[-1]) if len(ends) else 0
    if used > s:
        raise ValueError(f"pack of {used} tokens exceeds seq_length {s}")
    tokens = np.full(s, pad_id, dtype=np.int64)
    labels = np.zeros(s, dtype=np.int64)
    loss_mask = np.zeros(s, dtype=np.float32)
    if used:
        tokens[:used] = np.concatenate(doc_tokens)
        masks = np.concatenate(doc_masks)
        # Position j predicts token j + 1 of the same document, under that target token's mask.
        labels[: used - 1] = tokens[1:used]
        loss_mask[: used - 1] = masks[1:used]
        labels[ends - 1] = 0  # a document's last token has no next token in its document
        loss_mask[ends - 1] = 0.0
    starts = ends - lengths
    position_ids = np.arange(s, dtype=np.int64)
    position_ids[:used] -= np.repeat(starts, lengths)
    position_ids[used:] -= used  # the padding segment restarts too
    bounds = [0, *ends.tolist()] + ([s] if used < s else [])
    cu_seqlens = np.full(cu_seqlens_length, -1, dtype=np.int32)
    cu_seqlens[: len(bounds)] = bounds
    modality = np.zeros(s, dtype=np.uint8)
    if modality_table is not None and used:
        # Positions without a label (document ends, padding) stay TEXT; they carry no loss.
        has_label = np.zeros(s, dtype=bool)
        has_label[: used - 1] = True
        has_label[ends - 1] = False
        modality[has_label] = modality_table[labels[has_label]]
    return dict(
        tokens=torch.from_numpy(tokens), labels=torch.from_numpy(labels),
        loss_mask=torch.from_numpy(loss_mask), position_ids=torch.from_numpy(position_ids),
        cu_seqlens=torch.from_numpy(cu_seqlens), modality=torch.from_numpy(modality),
    )


def load_or_build_blend(weights: np.ndarray, num_samples: int, cache_dir: str) -> str:
    """The cache base of the blending index (built by rank 0 when missing)."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(json.dumps([PACKING_VERSION, np.asarray(weights, dtype=np.float64).tolist(),
                              int(num_samples)]).encode())
    base = os.path.join(cache_dir, f"blend-{digest.hexdigest()}")

    def build():
        dataset, sample = blend_indices(weights, num_samples)
        save_array(f"{base}.dataset.npy", dataset)
        save_array(f"{base}.sample.npy", sample)
        write_text(f"{base}.json", json.dumps(dict(weights=list(map(float, weights)),
                                                          num_samples=int(num_samples))))

    os.makedirs(cache_dir, exist_ok=True)
    build_once(f"{base}.json", build)
    return base


def open_blend(base: str) -> tuple[np.ndarray, np.ndarray]:
    return np.load(f"{base}.dataset.npy", mmap_mode="r"), np.load(f"{base}.sample.npy", mmap_mode="r")


class BlendedPackedDataset(torch.utils.data.Dataset):
    """``num_samples`` packed sequences drawn from several ``PackedDataset`` at given weights.

    Sample ``i`` comes from dataset ``d = dataset_index[i]`` as its ``k``-th draw
    (``k = dataset_sample_index[i]``); draw ``k`` is pack ``perm_e[k % n]`` of epoch
    ``e = k // n``, where ``perm_e`` is a seeded permutation of that dataset's ``n`` packs, new
    every epoch.  So the whole sample order is a pure function of (data, seed, weights,
    num_samples): resuming needs nothing but the number of consumed samples.
    """

    def __init__(self, datasets: list[PackedDataset], weights, num_samples: int, *, seed: int,
                 cache_dir: str | None = None, names: list[str] | None = None):
        # Weights were checked where they entered (mixture.py; the C++ blend refuses bad ones).
        weights = np.asarray(weights, dtype=np.float64)
        if len(datasets) != len(weights) or not datasets:
            raise ValueError("need one weight per dataset and at least one dataset")
        for ds in datasets:
            if len(ds) == 0:
                raise ValueError(f"{ds.prefix}: no packs (no document fits seq_length "
                                 f"{ds.seq_length}); remove it from the mixture")
        if len({ds.seq_length for ds in datasets}) != 1:
            raise ValueError("all datasets of a mixture need the same seq_length")
        self.datasets = datasets
        self.names = names or [ds.prefix for ds in datasets]
        self.weights = weights / weights.sum()
        self.seed = seed
        self.num_samples = int(num_samples)
        # One cu_seqlens length for all rows, so that items from different datasets collate.
        self.cu_seqlens_length = max(ds.cu_seqlens_length for ds in datasets)
        cache_dir = cache_dir or os.path.dirname(os.path.abspath(datasets[0].prefix))
        self._blend_base = load_or_build_blend(self.weights, self.num_samples, cache_dir)
        self.dataset_index, self.dataset_sample_index = open_blend(self._blend_base)
        self._perms: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return self.num_samples

    def __getstate__(self):  # re-map the blend in workers instead of copying it (see PackedDataset)
        state = dict(self.__dict__)
        state.update(dataset_index=None, dataset_sample_index=None, _perms=OrderedDict())
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.dataset_index, self.dataset_sample_index = open_blend(self._blend_base)

    def _epoch_permutation(self, d: int, epoch: int) -> np.ndarray:
        key = (d, epoch)
        if key not in self._perms:
            rng = np.random.Generator(np.random.PCG64([self.seed, d, epoch]))
            self._perms[key] = rng.permutation(len(self.datasets[d])).astype(np.int64)
            while len(self._perms) > 2 * len(self.datasets):
                self._perms.popitem(last=False)
        return self._perms[key]

    def locate(self, i: int) -> tuple[int, int]:
        """(dataset, pack) of sample ``i``."""
        if not 0 <= i < self.num_samples:
            raise IndexError(f"sample {i} out of range [0, {self.num_samples})")
        d = int(self.dataset_index[i])
        k = int(self.dataset_sample_index[i])
        n = len(self.datasets[d])
        return d, int(self._epoch_permutation(d, k // n)[k % n])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        d, p = self.locate(i)
        return self.datasets[d].item(p, self.cu_seqlens_length)
