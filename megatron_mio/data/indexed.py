"""Writing MIO datasets as megatron-core indexed datasets, atomically.

A dataset at prefix ``P`` is ``P.bin``/``P.idx`` (int32 tokens, one document per sample),
``P.loss_mask.bin``/``P.loss_mask.idx`` (uint8, same document sizes) and
``P.modality_counts.npy`` (int64 [documents, 3]: text, image and speech tokens per document).
Datasets written apart (per-worker or per-node shards) are appended in order with
``AtomicDatasetWriter.add_dataset`` (``merge_datasets``), byte-identical to one run.
Everything is written under hidden temporary names beside ``P`` and renamed into place only
when complete; on failure the temporaries are removed and nothing named ``P.*`` appears.
"""

from __future__ import annotations

import gc
import os
import shutil
import uuid

import numpy as np
from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder

from megatron_mio.data.validate import LOSS_MASK_SUFFIX, loss_mask_prefix

TOKEN_DTYPE = np.int32  # 76,292 ids do not fit uint16
LOSS_MASK_DTYPE = np.uint8
MODALITY_COUNTS_SUFFIX = ".modality_counts.npy"
REPORT_SUFFIX = ".report.json"


def dataset_files(prefix: str) -> list[str]:
    """The files of a dataset at ``prefix``."""
    return [prefix + suffix for suffix in (".bin", ".idx", LOSS_MASK_SUFFIX + ".bin",
                                           LOSS_MASK_SUFFIX + ".idx", MODALITY_COUNTS_SUFFIX,
                                           REPORT_SUFFIX)]


def open_dataset(prefix: str) -> tuple[IndexedDataset, IndexedDataset]:
    """(tokens, loss masks) of a dataset, read with megatron-core's own reader."""
    return IndexedDataset(prefix), IndexedDataset(loss_mask_prefix(prefix))


class AtomicDatasetWriter:
    """Collects documents into temporary files; ``commit`` renames them to ``prefix``.

    Use as a context manager: leaving the block with an exception removes the temporaries.
    A dataset is six files renamed in a fixed order, the report last, so this is its own staged
    commit rather than ``megatron_mio.atomic.atomic_file`` (one file each, renamed on exit).
    """

    def __init__(self, prefix: str):
        self.prefix = os.fspath(prefix)
        directory, name = os.path.split(os.path.abspath(self.prefix))
        os.makedirs(directory, exist_ok=True)
        self._tmp = os.path.join(directory, f".{name}.{uuid.uuid4().hex[:12]}.tmp")
        self._tokens = IndexedDatasetBuilder(self._tmp + ".bin", dtype=TOKEN_DTYPE)
        self._loss_mask = IndexedDatasetBuilder(self._tmp + LOSS_MASK_SUFFIX + ".bin",
                                                dtype=LOSS_MASK_DTYPE)
        self._counts: list[np.ndarray] = []
        self._suffixes = [".bin", LOSS_MASK_SUFFIX + ".bin"]
        self.documents = 0

    def add(self, tokens: np.ndarray, loss_mask: np.ndarray, modality_counts: np.ndarray) -> None:
        if tokens.shape != loss_mask.shape:
            raise ValueError(f"tokens {tokens.shape} and loss mask {loss_mask.shape} differ")
        self._tokens.add_document(tokens.astype(TOKEN_DTYPE, copy=False), [tokens.size])
        self._loss_mask.add_document(loss_mask.astype(LOSS_MASK_DTYPE, copy=False), [tokens.size])
        self._counts.append(np.asarray(modality_counts, dtype=np.int64)[None])
        self.documents += 1

    def scratch_directory(self) -> str:
        """A temporary directory beside the output for partial datasets (removed on abort)."""
        os.makedirs(self._tmp + ".parts", exist_ok=True)
        return self._tmp + ".parts"

    def add_dataset(self, prefix: str) -> int:
        """Append a whole dataset (tokens, loss masks, modality counts) written by another
        writer, with megatron-core's ``IndexedDatasetBuilder.add_index``: the result is byte for
        byte what adding its documents one by one gives.  Returns its number of documents."""
        counts = np.load(prefix + MODALITY_COUNTS_SUFFIX)
        if len(counts) == 0:  # nothing to add (and megatron's reader wants documents)
            return 0
        # add_index calls gc.collect(), which walks every tracked object: 0.6 s with torch
        # imported, and more as the index lists grow.  Frozen objects are not walked.
        gc.freeze()
        self._tokens.add_index(prefix)
        self._loss_mask.add_index(loss_mask_prefix(prefix))
        self._counts.append(counts)
        self.documents += len(counts)
        return len(counts)

    def commit(self, report_json: str | None = None) -> None:
        """Finish the index files, then rename everything into place (the report last)."""
        self._tokens.finalize(self._tmp + ".idx")
        self._loss_mask.finalize(self._tmp + LOSS_MASK_SUFFIX + ".idx")
        self._suffixes += [".idx", LOSS_MASK_SUFFIX + ".idx"]
        counts = (np.concatenate(self._counts) if self._counts else np.zeros((0, 3))).astype(np.int64)
        with open(self._tmp + MODALITY_COUNTS_SUFFIX, "wb") as f:
            np.save(f, counts)
        self._suffixes.append(MODALITY_COUNTS_SUFFIX)
        if report_json is not None:
            with open(self._tmp + REPORT_SUFFIX, "w", encoding="utf-8") as f:
                f.write(report_json)
            self._suffixes.append(REPORT_SUFFIX)
        for suffix in self._suffixes:
            os.replace(self._tmp + suffix, self.prefix + suffix)
        self._suffixes = []

    def abort(self) -> None:
        for builder in (self._tokens, self._loss_mask):
            builder.data_file.close()
        for suffix in self._suffixes:
            try:
                os.remove(self._tmp + suffix)
            except FileNotFoundError:
                pass
        self._suffixes = []
        shutil.rmtree(self._tmp + ".parts", ignore_errors=True)

    def __enter__(self) -> "AtomicDatasetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


def merge_datasets(prefixes: list[str], output_prefix: str, report_json: str | None = None) -> int:
    """Concatenate datasets, in the given order, into one prefix (atomically); returns the
    number of documents."""
    with AtomicDatasetWriter(output_prefix) as writer:
        for prefix in prefixes:
            writer.add_dataset(prefix)
        writer.commit(report_json)
    return writer.documents
