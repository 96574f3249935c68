"""Streaming access to Hugging Face safetensors checkpoints.

``HFCheckpointReader`` returns one tensor (or a block of its rows) at a time.
``HFCheckpointWriter`` writes each tensor's bytes into its shard file as they come (shards of at
most ``max_shard_bytes``), then ``model.safetensors.index.json``; it holds no tensor data itself.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors import safe_open

from megatron_mio.atomic import write_text

_SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}
_SAFETENSORS_NAMES = {dtype: name for name, dtype in _SAFETENSORS_DTYPES.items()}
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


class DamagedSafetensorsError(ValueError):
    """A safetensors file (or the index) cannot be read: truncated, not safetensors, bad JSON."""


def _open_safetensors(path: Path):
    try:
        return safe_open(path, framework="pt")
    except Exception as err:  # noqa: BLE001 - SafetensorError and friends: the file is unusable
        raise DamagedSafetensorsError(f"{path}: not a readable safetensors file ({err}); "
                                      "re-download or re-export it") from None


class HFCheckpointReader:
    """Tensor-by-tensor reads from ``model.safetensors`` or a sharded index."""

    def __init__(self, hf_dir: str | Path):
        self.dir = Path(hf_dir)
        index = self.dir / INDEX_NAME
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise DamagedSafetensorsError(f"{index}: not a safetensors index with a weight_map "
                                              f"({type(err).__name__}: {err})") from None
        elif (self.dir / SINGLE_NAME).is_file():
            with _open_safetensors(self.dir / SINGLE_NAME) as f:
                weight_map = {name: SINGLE_NAME for name in f.keys()}
        else:
            raise FileNotFoundError(
                f"{self.dir}: neither {INDEX_NAME} nor {SINGLE_NAME} (only safetensors are read)"
            )
        self.weight_map: dict[str, str] = weight_map
        self._files: dict[str, object] = {}
        self._headers: dict[str, tuple[dict, int]] = {}
        for file in sorted(set(weight_map.values())):  # headers only: a bad shard fails up front
            if not (self.dir / file).is_file():
                raise FileNotFoundError(f"{self.dir / file}: missing (the index {INDEX_NAME} lists it)")
            self._file_of_shard(file)

    def __contains__(self, name: str) -> bool:
        return name in self.weight_map

    def names(self) -> list[str]:
        return list(self.weight_map)

    def _shard_name(self, name: str) -> str:
        if name not in self.weight_map:
            raise KeyError(f"{self.dir}: tensor {name!r} is missing from the checkpoint")
        return self.weight_map[name]

    def _file(self, name: str):
        return self._file_of_shard(self._shard_name(name))

    def _file_of_shard(self, file: str):
        if file not in self._files:
            self._files[file] = _open_safetensors(self.dir / file)
        return self._files[file]

    def get(self, name: str) -> torch.Tensor:
        return self.get_rows(name, 0, None)

    def get_rows(self, name: str, start: int, stop: int | None) -> torch.Tensor:
        """Rows ``[start, stop)`` of one tensor (all of it: 0, None), read with plain file reads
        into fresh memory.

        (``safe_open.get_tensor`` maps the file: every tensor read would stay resident as mapped
        file pages for the life of the reader, and memory would grow with the model after all.)
        """
        file = self._shard_name(name)
        header, data_start = self._header(file)
        entry = header[name]
        begin, end = entry["data_offsets"]
        shape, dtype = entry["shape"], _SAFETENSORS_DTYPES[entry["dtype"]]
        if end - begin != math.prod(shape) * dtype.itemsize:
            raise ValueError(f"{self.dir / file}: tensor {name!r} has a corrupt header entry")
        rows = shape[0] if shape else 1
        stop = rows if stop is None else stop
        if not 0 <= start <= stop <= rows:
            raise IndexError(f"{self.dir}: rows [{start}, {stop}) of {name!r}, which has {rows}")
        row_bytes = (end - begin) // rows if rows else 0
        tensor = torch.empty([stop - start, *shape[1:]] if shape else [], dtype=dtype)
        with open(self.dir / file, "rb") as f:
            f.seek(data_start + begin + start * row_bytes)
            if tensor.numel():
                wanted = tensor.numel() * tensor.element_size()
                got = f.readinto(memoryview(tensor.view(-1).view(torch.uint8).numpy()))
                if got != wanted:
                    raise DamagedSafetensorsError(f"{self.dir / file}: truncated ({name!r} needs {wanted} "
                                                  f"bytes at offset {f.tell() - got}, found {got}); "
                                                  "re-download or re-export it")
        return tensor

    def _header(self, file: str) -> tuple[dict, int]:
        if file not in self._headers:
            # Opening with safetensors first checks the header: a truncated or foreign file is
            # named here rather than failing as a JSON error below.
            self._file_of_shard(file)
            with open(self.dir / file, "rb") as f:
                size = int.from_bytes(f.read(8), "little")
                self._headers[file] = (json.loads(f.read(size)), 8 + size)
        return self._headers[file]

    def shape_and_dtype(self, name: str) -> tuple[tuple[int, ...], torch.dtype]:
        """Header information only: nothing is read into memory."""
        view = self._file(name).get_slice(name)
        return tuple(view.get_shape()), _SAFETENSORS_DTYPES[view.get_dtype()]


class HFCheckpointWriter:
    """Writes ``model-0000i-of-0000n.safetensors`` shards and their index, streaming.

    The tensors (names, shapes, dtypes, in writing order) are known up front, so every shard's
    header is written before its data and each tensor's bytes go straight to the file as they
    come, in as many row blocks as the caller likes: nothing is buffered here (safetensors'
    ``save_file`` would hold the whole shard, and then a serialised copy of it).

    Shards get their final names as they are written: the callers write into a directory that
    becomes the output only when complete (``atomic_directory``), and the index, written last,
    is what makes the shards a model.
    """

    def __init__(self, out_dir: str | Path, tensors: list[tuple[str, tuple[int, ...], torch.dtype]],
                 max_shard_bytes: int):
        self.dir = Path(out_dir)
        self._specs = {name: (tuple(shape), dtype) for name, shape, dtype in tensors}
        if len(self._specs) != len(tensors):
            raise ValueError("a tensor name is listed twice")
        self._shards = _plan_shards(tensors, max_shard_bytes)
        self._order = [name for names in self._shards for name in names]
        self._shard_of = {name: i for i, names in enumerate(self._shards) for name in names}
        self._next = 0  # index in _order of the tensor being written
        self._written = 0  # bytes of it written so far
        self._file = None
        self._total_bytes = sum(_nbytes(*spec) for spec in self._specs.values())

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Append ``tensor`` as the next rows of ``name`` (all of it, or a block of rows)."""
        if self._next >= len(self._order) or name != self._order[self._next]:
            expected = self._order[self._next] if self._next < len(self._order) else "nothing"
            raise RuntimeError(f"writing {name!r} out of order: expected {expected}")
        shape, dtype = self._specs[name]
        size = _nbytes(shape, dtype)
        if tensor.dtype != dtype or tuple(tensor.shape[1:]) != shape[1:]:
            raise ValueError(f"{name}: got {tuple(tensor.shape)} {tensor.dtype}, planned {shape} {dtype}")
        data = tensor.contiguous().reshape(-1).view(torch.uint8)
        if self._written + data.numel() > size:
            raise ValueError(f"{name}: more rows than its planned shape {shape}")
        if self._file is None:
            self._open(self._shard_of[name])
        if data.numel():
            self._file.write(memoryview(data.numpy()))
        self._written += data.numel()
        if self._written == size:
            self._next, self._written = self._next + 1, 0
            if self._next == len(self._order) or self._shard_of[self._order[self._next]] != self._shard_of[name]:
                self._file.close()
                self._file = None

    def _open(self, shard: int) -> None:
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for name in self._shards[shard]:
            shape, dtype = self._specs[name]
            size = _nbytes(shape, dtype)
            header[name] = {"dtype": _SAFETENSORS_NAMES[dtype], "shape": list(shape),
                            "data_offsets": [offset, offset + size]}
            offset += size
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)  # the format's padding: data starts 8-byte aligned
        self._file = open(self.dir / self._shard_name(shard), "wb")
        self._file.write(len(encoded).to_bytes(8, "little") + encoded)

    def _shard_name(self, shard: int) -> str:
        return f"model-{shard + 1:05d}-of-{len(self._shards):05d}.safetensors"

    def finish(self) -> None:
        """Write the index, once every tensor is in its shard."""
        if self._next != len(self._order):
            raise RuntimeError(f"{self._order[self._next]} and {len(self._order) - self._next - 1} more were never written")
        weight_map = {name: self._shard_name(shard) for shard, names in enumerate(self._shards) for name in names}
        index = {"metadata": {"total_size": self._total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
        write_text(self.dir / INDEX_NAME, json.dumps(index, indent=2) + "\n")


def _nbytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    return math.prod(shape) * dtype.itemsize


def _plan_shards(tensors: list[tuple[str, tuple[int, ...], torch.dtype]], max_shard_bytes: int) -> list[list[str]]:
    """Consecutive tensors, a new shard whenever the next would pass the limit (a tensor larger
    than the limit gets a shard of its own)."""
    shards: list[list[str]] = []
    filled = 0
    for name, shape, dtype in tensors:
        size = _nbytes(shape, dtype)
        if not shards or (shards[-1] and filled + size > max_shard_bytes):
            shards.append([])
            filled = 0
        shards[-1].append(name)
        filled += size
    return shards
