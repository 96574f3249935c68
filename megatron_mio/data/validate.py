"""Checks of megatron-core IndexedDataset files before anything (C++ included) touches them.

megatron-core's reader trusts its input: a truncated ``.idx`` raises a bare ``AssertionError`` or
reads garbage, and a short ``.bin`` surfaces later as a crash deep inside a data loader worker.
Here every field of the ``.idx`` (layout of megatron/core/datasets/indexed_dataset.py: magic,
version, dtype code, counts, int32 lengths, int64 byte pointers, int64 document indices) is
checked against the file sizes, and a token prefix is checked against its loss-mask prefix
(``P.loss_mask``, uint8, same document sizes).  Errors name the file and the field.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

import numpy as np

from megatron_mio import _C

INDEX_MAGIC = b"MMIDIDX\x00\x00"
HEADER_BYTES = 34  # magic 9 + version 8 + dtype code 1 + sequence count 8 + document count 8
DTYPE_CODES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64,
               7: np.float32, 8: np.uint16}
TOKEN_DTYPES = (np.int32, np.uint16, np.int64)
LOSS_MASK_SUFFIX = ".loss_mask"  # P.loss_mask.{bin,idx}: the loss masks of dataset P
CHUNK = 1 << 22  # documents per vectorised check, so validation memory stays bounded


class DataFileError(ValueError):
    """An indexed dataset file is missing, truncated, corrupted or inconsistent."""


@dataclass(frozen=True)
class IndexInfo:
    prefix: str
    dtype: type
    sequence_lengths: np.ndarray  # int32, memory-mapped
    n_tokens: int

    @property
    def n_documents(self) -> int:
        return len(self.sequence_lengths)


def loss_mask_prefix(prefix: str) -> str:
    return prefix + LOSS_MASK_SUFFIX


def read_index(prefix: str) -> IndexInfo:
    """Validate ``prefix.idx`` / ``prefix.bin`` and return the document lengths (memory-mapped)."""
    idx_path, bin_path = prefix + ".idx", prefix + ".bin"
    for path in (idx_path, bin_path):
        if not os.path.isfile(path):
            raise DataFileError(f"{path}: no such file (dataset prefix {prefix!r})")
    idx_size = os.path.getsize(idx_path)
    with open(idx_path, "rb") as f:
        header = f.read(HEADER_BYTES)
    if len(header) < HEADER_BYTES:
        raise DataFileError(f"{idx_path}: truncated header ({idx_size} bytes, need {HEADER_BYTES})")
    if header[:9] != INDEX_MAGIC:
        raise DataFileError(f"{idx_path}: bad magic {header[:9]!r}, not a megatron IndexedDataset index")
    (version,) = struct.unpack("<Q", header[9:17])
    if version != 1:
        raise DataFileError(f"{idx_path}: field version = {version}, expected 1")
    code = header[17]
    if code not in DTYPE_CODES:
        raise DataFileError(f"{idx_path}: field dtype code = {code} is not a known dtype")
    dtype = DTYPE_CODES[code]
    n_seq, n_doc = struct.unpack("<QQ", header[18:34])
    body = 4 * n_seq + 8 * n_seq + 8 * n_doc
    if idx_size not in (HEADER_BYTES + body, HEADER_BYTES + body + n_seq):  # + optional int8 modes
        raise DataFileError(
            f"{idx_path}: size {idx_size} bytes does not match sequence count {n_seq} and "
            f"document count {n_doc} (expected {HEADER_BYTES + body}): truncated or corrupted"
        )
    mm = np.memmap(idx_path, mode="r", dtype=np.uint8)
    lengths = np.frombuffer(mm, dtype=np.int32, count=n_seq, offset=HEADER_BYTES)
    pointers = np.frombuffer(mm, dtype=np.int64, count=n_seq, offset=HEADER_BYTES + 4 * n_seq)
    documents = np.frombuffer(mm, dtype=np.int64, count=n_doc, offset=HEADER_BYTES + 12 * n_seq)
    if n_doc == 0 or documents[0] != 0 or documents[-1] != n_seq or np.any(np.diff(documents) < 0):
        raise DataFileError(
            f"{idx_path}: field document_indices must rise from 0 to the sequence count {n_seq}"
        )
    itemsize = np.dtype(dtype).itemsize
    total = 0
    for start in range(0, n_seq, CHUNK):
        chunk = lengths[start : start + CHUNK]
        if chunk.size and chunk.min() < 0:
            bad = start + int(np.argmin(chunk))
            raise DataFileError(f"{idx_path}: field sequence_lengths[{bad}] = {lengths[bad]} < 0")
        offsets = _C.document_offsets(chunk)  # token offset of each document in the chunk, + end
        expected = total + itemsize * offsets[:-1]
        wrong = np.flatnonzero(pointers[start : start + CHUNK] != expected)
        if wrong.size:
            bad = start + int(wrong[0])
            raise DataFileError(
                f"{idx_path}: field sequence_pointers[{bad}] = {pointers[bad]}, expected "
                f"{expected[wrong[0]]} from the lengths: corrupted"
            )
        total += itemsize * int(offsets[-1])
    bin_size = os.path.getsize(bin_path)
    if bin_size != total:
        raise DataFileError(
            f"{bin_path}: size {bin_size} bytes, but {idx_path} describes {total} bytes of "
            f"{np.dtype(dtype).name}: truncated or not the matching .bin"
        )
    return IndexInfo(prefix=prefix, dtype=dtype, sequence_lengths=lengths, n_tokens=total // itemsize)


def validate_packed_source(prefix: str) -> IndexInfo:
    """Check a token prefix and its loss masks; return the token index."""
    tokens = read_index(prefix)
    if tokens.dtype not in TOKEN_DTYPES:
        raise DataFileError(
            f"{prefix}.idx: field dtype = {np.dtype(tokens.dtype).name}, token ids need an integer "
            f"type ({', '.join(np.dtype(d).name for d in TOKEN_DTYPES)})"
        )
    mask_prefix = loss_mask_prefix(prefix)
    masks = read_index(mask_prefix)
    if masks.dtype is not np.uint8:
        raise DataFileError(
            f"{mask_prefix}.idx: field dtype = {np.dtype(masks.dtype).name}, loss masks are uint8"
        )
    if masks.n_documents != tokens.n_documents:
        raise DataFileError(
            f"{mask_prefix}.idx: {masks.n_documents} documents, but {prefix}.idx has "
            f"{tokens.n_documents}: the loss masks do not belong to these tokens"
        )
    for start in range(0, tokens.n_documents, CHUNK):
        wrong = np.flatnonzero(
            tokens.sequence_lengths[start : start + CHUNK] != masks.sequence_lengths[start : start + CHUNK]
        )
        if wrong.size:
            bad = start + int(wrong[0])
            raise DataFileError(
                f"{mask_prefix}.idx: document {bad} has {masks.sequence_lengths[bad]} mask entries "
                f"but {prefix}.idx gives it {tokens.sequence_lengths[bad]} tokens"
            )
    return tokens
