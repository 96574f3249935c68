"""Streaming access to Hugging Face safetensors checkpoints, and safe output directories.

``HFCheckpointReader`` opens every shard lazily and returns one tensor at a time.
``HFCheckpointWriter`` buffers tensors only up to ``max_shard_bytes`` before writing a shard, then
writes ``model.safetensors.index.json``; the largest thing ever held is one shard (or one tensor
larger than a shard).  ``staged_output`` makes every tool's output appear complete or not at all.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

_SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


class HFCheckpointReader:
    """Tensor-by-tensor reads from ``model.safetensors`` or a sharded index."""

    def __init__(self, hf_dir: str | Path):
        self.dir = Path(hf_dir)
        index = self.dir / INDEX_NAME
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
        elif (self.dir / SINGLE_NAME).is_file():
            with safe_open(self.dir / SINGLE_NAME, framework="pt") as f:
                weight_map = {name: SINGLE_NAME for name in f.keys()}
        else:
            raise FileNotFoundError(
                f"{self.dir}: neither {INDEX_NAME} nor {SINGLE_NAME} (only safetensors are read)"
            )
        self.weight_map: dict[str, str] = weight_map
        self._files: dict[str, object] = {}
        self._headers: dict[str, tuple[dict, int]] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.weight_map

    def names(self) -> list[str]:
        return list(self.weight_map)

    def _file(self, name: str):
        if name not in self.weight_map:
            raise KeyError(f"{self.dir}: tensor {name!r} is missing from the checkpoint")
        file = self.weight_map[name]
        if file not in self._files:
            self._files[file] = safe_open(self.dir / file, framework="pt")
        return self._files[file]

    def get(self, name: str) -> torch.Tensor:
        """One tensor, read with plain file reads into fresh memory.

        (``safe_open.get_tensor`` maps the file: every tensor read would stay resident as mapped
        file pages for the life of the reader, and memory would grow with the model after all.)
        """
        header, data_start = self._header(self.weight_map[name])
        entry = header[name]
        begin, end = entry["data_offsets"]
        tensor = torch.empty(entry["shape"], dtype=_SAFETENSORS_DTYPES[entry["dtype"]])
        with open(self.dir / self.weight_map[name], "rb") as f:
            f.seek(data_start + begin)
            f.readinto(memoryview(tensor.view(-1).view(torch.uint8).numpy()) if tensor.numel() else bytearray())
        if end - begin != tensor.numel() * tensor.element_size():
            raise ValueError(f"{self.dir / self.weight_map[name]}: tensor {name!r} has a corrupt header entry")
        return tensor

    def _header(self, file: str) -> tuple[dict, int]:
        if file not in self._headers:
            with open(self.dir / file, "rb") as f:
                size = int.from_bytes(f.read(8), "little")
                self._headers[file] = (json.loads(f.read(size)), 8 + size)
        return self._headers[file]

    def shape_and_dtype(self, name: str) -> tuple[tuple[int, ...], torch.dtype]:
        """Header information only: nothing is read into memory."""
        view = self._file(name).get_slice(name)
        return tuple(view.get_shape()), _SAFETENSORS_DTYPES[view.get_dtype()]


class HFCheckpointWriter:
    """Writes tensors into ``model-0000i-of-0000n.safetensors`` shards as they come."""

    def __init__(self, out_dir: str | Path, max_shard_bytes: int):
        self.dir = Path(out_dir)
        self.max_shard_bytes = max_shard_bytes
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._shards: list[list[str]] = []
        self._total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self._pending and self._pending_bytes + size > self.max_shard_bytes:
            self._flush()
        self._pending[name] = tensor.contiguous()
        self._pending_bytes += size
        self._total_bytes += size

    def _flush(self) -> None:
        number = len(self._shards) + 1
        save_file(self._pending, self.dir / f"shard-{number:05d}.tmp", metadata={"format": "pt"})
        self._shards.append(list(self._pending))
        self._pending, self._pending_bytes = {}, 0

    def finish(self) -> None:
        """Write the last shard, give shards their final names and write the index."""
        if self._pending:
            self._flush()
        total = len(self._shards)
        weight_map = {}
        for number, names in enumerate(self._shards, start=1):
            final = f"model-{number:05d}-of-{total:05d}.safetensors"
            os.replace(self.dir / f"shard-{number:05d}.tmp", self.dir / final)
            weight_map.update({name: final for name in names})
        index = {"metadata": {"total_size": self._total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
        (self.dir / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")


@contextlib.contextmanager
def staged_output(output: str | Path, force: bool):
    """Yield a temporary sibling directory that becomes ``output`` only if the block succeeds."""
    output = Path(output)
    if output.exists() and not force:
        raise FileExistsError(f"{output} already exists; pass --force to replace it")
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if output.exists():
        shutil.rmtree(output) if output.is_dir() else output.unlink()
    os.replace(staging, output)


def parse_size(text: str) -> int:
    """'2GB', '500MB', '1GiB' or a byte count -> bytes."""
    units = {"kib": 2**10, "mib": 2**20, "gib": 2**30, "kb": 10**3, "mb": 10**6, "gb": 10**9, "b": 1}
    lowered = text.strip().lower()
    for suffix, factor in units.items():
        if lowered.endswith(suffix):
            return int(float(lowered[: -len(suffix)]) * factor)
    return int(lowered)
