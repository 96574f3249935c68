"""Streaming writes and reads of megatron-core torch_dist checkpoints, from a single process.

Which directories and common-state entries make up a checkpoint: ``megatron_mio.checkpoint``.

Writing: a torch_dist checkpoint is a ``torch.distributed.checkpoint`` (DCP) directory whose keys
are the global ShardedTensor keys, plus ``metadata.json``.  Because those global tensors do not
depend on TP/PP, one process can write a checkpoint that any layout loads.  We hand DCP's own
``FileSystemWriter`` a plan of chunks (one per layer and tensor) and produce each chunk only when
the writer asks for it (``resolve_data``), so memory holds one chunk at a time, never the model.
One file per chunk: with ``single_file_per_rank`` DCP keeps every tensor it wrote to a file
referenced until that file is closed (torch 2.13 collects them for its safetensors format), so a
single file would hold the whole model in memory by the end.
DCP's global-plan validation checks that the chunks of every tensor tile it exactly.

Reading: DCP's loader with a planner that requests one layer's slice of each global tensor into
a buffer we own; DCP reads only the stored chunks that overlap.  Works for checkpoints saved at any
TP / PP / virtual-PP layout, with or without optimizer state, and needs no process group
(megatron-core's own ``load`` would, and in a world of one it cannot request a partial tensor).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing import ShardedObject
from megatron.core.dist_checkpointing.core import CheckpointingConfig, save_config
from torch.distributed import checkpoint as dcp
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner, DefaultSavePlanner
from torch.distributed.checkpoint.metadata import (
    ChunkStorageMetadata, MetadataIndex, TensorProperties, TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import LoadPlan, SavePlan, TensorWriteData, WriteItem, WriteItemType
from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

from megatron_mio.checkpoint.discovery import DamagedFilesError, read_checked_metadata

# Where megatron-core's torch_dist strategy keeps the common state: one ShardedObject.
COMMON_STATE_KEY = ShardedObject("common_state", None, (1,), (0,)).unique_key


@dataclass(frozen=True)
class Chunk:
    """One rectangular piece of a global tensor, produced on demand."""

    key: str
    global_shape: tuple[int, ...]
    offset: tuple[int, ...]
    shape: tuple[int, ...]
    dtype: torch.dtype
    produce: Callable[[], torch.Tensor]


class _ChunkPlanner(DefaultSavePlanner):
    """A DCP save planner over lazily produced chunks and small pickled objects."""

    def __init__(self, chunks: list[Chunk], objects: dict[str, object], on_chunk: Callable[[Chunk], None]):
        super().__init__(flatten_state_dict=False, flatten_sharded_tensors=False)
        self._chunks = {(c.key, tuple(c.offset)): c for c in chunks}
        if len(self._chunks) != len(chunks):
            raise ValueError("two chunks share a key and offset")
        self._objects = objects
        self._on_chunk = on_chunk

    def create_local_plan(self) -> SavePlan:
        items = [
            WriteItem(
                index=MetadataIndex(c.key, torch.Size(c.offset)),
                type=WriteItemType.SHARD,
                tensor_data=TensorWriteData(
                    chunk=ChunkStorageMetadata(offsets=torch.Size(c.offset), sizes=torch.Size(c.shape)),
                    properties=TensorProperties(dtype=c.dtype),
                    size=torch.Size(c.global_shape),
                ),
            )
            for c in self._chunks.values()
        ]
        items += [WriteItem(index=MetadataIndex(key), type=WriteItemType.BYTE_IO) for key in self._objects]
        self.plan = SavePlan(items)
        return self.plan

    def resolve_data(self, write_item: WriteItem):
        if write_item.type == WriteItemType.BYTE_IO:
            buffer = io.BytesIO()
            # megatron-core stores a ShardedObject as the list of its local shards' data.
            torch.save([self._objects[write_item.index.fqn]], buffer)
            buffer.seek(0)
            return buffer
        chunk = self._chunks[(write_item.index.fqn, tuple(write_item.index.offset))]
        tensor = chunk.produce()
        if tuple(tensor.shape) != tuple(chunk.shape) or tensor.dtype != chunk.dtype:
            raise RuntimeError(
                f"{chunk.key} at {chunk.offset}: produced {tuple(tensor.shape)} {tensor.dtype}, "
                f"planned {chunk.shape} {chunk.dtype}"
            )
        self._on_chunk(chunk)
        return tensor.contiguous()


def layer_chunk(key: str, num_layers: int, layer: int, shape: tuple[int, ...], dtype, produce,
                row_offset: int = 0, rows_total: int | None = None) -> Chunk:
    """The chunk of layer ``layer`` of a layer-stacked tensor (optionally a row range of it)."""
    rows_total = shape[0] if rows_total is None else rows_total
    return Chunk(
        key=key,
        global_shape=(num_layers, rows_total, *shape[1:]),
        offset=(layer, row_offset) + (0,) * (len(shape) - 1),
        shape=(1, *shape),
        dtype=dtype,
        produce=lambda: produce().unsqueeze(0),
    )


def whole_chunk(key: str, shape: tuple[int, ...], dtype, produce) -> Chunk:
    return Chunk(key, tuple(shape), (0,) * len(shape), tuple(shape), dtype, produce)


def layer_objects(keys: tuple[str, ...], num_layers: int) -> dict[str, object]:
    """Per-layer ShardedObjects (``_extra_state``) the model lists; empty for non-TE layers."""
    return {
        ShardedObject(key, None, (num_layers,), (layer,)).unique_key: None
        for key in keys
        for layer in range(num_layers)
    }


def write_checkpoint(directory: Path, chunks: list[Chunk], objects: dict[str, object], common: dict,
                     on_chunk: Callable[[Chunk], None] = lambda chunk: None) -> None:
    """Write a torch_dist checkpoint directory that megatron-core's ``load`` reads."""
    directory.mkdir(parents=True, exist_ok=True)
    objects = {**objects, COMMON_STATE_KEY: common}
    # One file per chunk, not per rank: see the module docstring.
    writer = dcp.FileSystemWriter(directory, single_file_per_rank=False, thread_count=1)
    dcp.save({}, storage_writer=writer, planner=_ChunkPlanner(chunks, objects, on_chunk), no_dist=True)
    save_config(CheckpointingConfig(sharded_backend="torch_dist"), str(directory))


class _SliceLoadPlanner(DefaultLoadPlanner):
    """A DCP load planner that fills caller-owned buffers with rectangular slices of global tensors."""

    def __init__(self, requests: dict[str, tuple[tuple[int, ...], torch.Tensor]]):
        super().__init__(flatten_state_dict=False, flatten_sharded_tensors=False)
        self._requests = requests

    def create_local_plan(self) -> LoadPlan:
        items = []
        for key, (offset, buffer) in self._requests.items():
            chunk = ChunkStorageMetadata(offsets=torch.Size(offset), sizes=buffer.shape)
            items += create_read_items_for_chunk_list(key, self.metadata.state_dict_metadata[key], [chunk])
        return LoadPlan(items)

    def lookup_tensor(self, index: MetadataIndex) -> torch.Tensor:
        return self._requests[index.fqn][1]


class DamagedCheckpointError(ValueError):
    """A checkpoint file is missing, truncated or unreadable (the message names it)."""


def _read_whole_checkpoint_metadata(directory: Path):
    """The checkpoint's index, its files checked whole (``checkpoint.discovery``, as a resume does)."""
    try:
        return read_checked_metadata(directory)
    except DamagedFilesError as err:
        raise DamagedCheckpointError(f"checkpoint {directory} is damaged: {err}; "
                                     "choose another with --iteration") from None


class CheckpointReader:
    """Reads global tensors (or one layer of a layer-stacked tensor) from a torch_dist checkpoint.

    DCP reads only the stored chunks that overlap a request, whatever TP/PP wrote them.
    """

    def __init__(self, directory: Path):
        self.dir = Path(directory)
        metadata = _read_whole_checkpoint_metadata(self.dir)
        try:
            self.common = dist_checkpointing.load_common_state_dict(str(directory))
        except Exception as err:  # noqa: BLE001 - any failure to read it means the same to the user
            raise DamagedCheckpointError(f"{self.dir}: its common state cannot be read "
                                         f"({type(err).__name__}: {err})") from None
        self._tensors = {key: md for key, md in metadata.state_dict_metadata.items()
                         if isinstance(md, TensorStorageMetadata)}

    def global_shape(self, key: str) -> tuple[int, ...]:
        if key not in self._tensors:
            raise KeyError(f"{self.dir}: checkpoint has no tensor {key!r}")
        return tuple(self._tensors[key].size)

    def dtype(self, key: str) -> torch.dtype:
        self.global_shape(key)
        return self._tensors[key].properties.dtype

    def read(self, requests: dict[str, int | None]) -> dict[str, torch.Tensor]:
        """``{key: layer or None}`` -> ``{key: that layer's slice, or the whole tensor}``."""
        slices = {}
        for key, layer in requests.items():
            shape = self.global_shape(key)
            if layer is None:
                slices[key] = ((0,) * len(shape), shape)
            else:
                if not 0 <= layer < shape[0]:
                    raise IndexError(f"{self.dir}: {key} has {shape[0]} layers, asked for layer {layer}")
                slices[key] = ((layer,) + (0,) * (len(shape) - 1), (1, *shape[1:]))
        read = self.read_slices(slices)
        return {key: read[key] if requests[key] is None else read[key][0] for key in requests}

    def read_slices(self, slices: dict[str, tuple[tuple[int, ...], tuple[int, ...]]]) -> dict[str, torch.Tensor]:
        """``{key: (offset, shape)}`` -> ``{key: that rectangle of the global tensor}``."""
        buffers = {key: (tuple(offset), torch.empty(shape, dtype=self.dtype(key)))
                   for key, (offset, shape) in slices.items()}
        dcp.load({}, storage_reader=dcp.FileSystemReader(str(self.dir)),
                 planner=_SliceLoadPlanner(buffers), no_dist=True)
        return {key: buffer for key, (_, buffer) in buffers.items()}

    def read_rows(self, key: str, start: int, stop: int) -> torch.Tensor:
        """Rows ``[start, stop)`` of a global tensor."""
        shape = self.global_shape(key)
        if not 0 <= start <= stop <= shape[0]:
            raise IndexError(f"{self.dir}: rows [{start}, {stop}) of {key}, which has {shape[0]}")
        offset = (start,) + (0,) * (len(shape) - 1)
        return self.read_slices({key: (offset, (stop - start, *shape[1:]))})[key]

    def row_blocks(self, key: str, stop: int) -> list[tuple[int, int]]:
        """Row ranges below ``stop`` that follow the stored chunks' row boundaries.

        DCP loads a stored chunk whole before copying the requested part out of it, so reading
        along the stored boundaries reads every stored chunk once and holds one at a time.
        """
        self.global_shape(key)
        bounds = {0, stop}
        for chunk in self._tensors[key].chunks:
            bounds |= {b for b in (chunk.offsets[0], chunk.offsets[0] + chunk.sizes[0]) if b < stop}
        ordered = sorted(bounds)
        return list(zip(ordered[:-1], ordered[1:]))
