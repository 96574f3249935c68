"""Dividing the input stream (the files in order, each from line 1) into contiguous line ranges:
a Slurm shard's part (whole files, or byte ranges cut at line starts) and the workers' tasks.
A range knows the number of its first line, so a sample's line number (and with it its random
template choices) never depends on how the stream was divided.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator


def shard_output_prefix(prefix: str, shard_index: int, num_shards: int) -> str:
    """Where shard ``i`` of ``N`` is written (the prefix itself for one shard)."""
    if num_shards == 1:
        return prefix
    return f"{prefix}-{shard_index:05d}-of-{num_shards:05d}"


@dataclasses.dataclass(frozen=True)
class LineRange:
    """Lines ``[start, stop)`` (byte offsets, both at line starts) of input file ``file_index``;
    ``first_line`` is the 1-based number of the line at ``start``."""

    file_index: int
    start: int
    stop: int
    first_line: int

    @property
    def size(self) -> int:
        return self.stop - self.start


def _line_start(f, offset: int, size: int) -> int:
    """The first line start at or after ``offset``."""
    if offset <= 0:
        return 0
    if offset >= size:
        return size
    f.seek(offset - 1)
    position = offset - 1
    while True:
        block = f.read(1 << 16)
        if not block:
            return size
        newline = block.find(b"\n")
        if newline >= 0:
            return position + newline + 1
        position += len(block)


def _count_newlines(f, start: int, stop: int) -> int:
    f.seek(start)
    count, remaining = 0, stop - start
    while remaining > 0:
        block = f.read(min(remaining, 1 << 24))
        if not block:
            break
        count += block.count(b"\n")
        remaining -= len(block)
    return count


def shard_ranges(inputs: list[str], num_shards: int, shard_index: int) -> list[LineRange]:
    """Shard ``shard_index`` of ``num_shards`` of the input stream: whole files when there are
    at least as many files as shards (``F * i // N`` to ``F * (i + 1) // N``), otherwise the
    i-th ``1/N`` of all input bytes, its ends moved to the next line start.  The shards are
    disjoint, contiguous and in order, and together they are the whole stream."""
    sizes = [os.path.getsize(path) for path in inputs]
    if len(inputs) >= num_shards:
        files = range(len(inputs) * shard_index // num_shards,
                      len(inputs) * (shard_index + 1) // num_shards)
        return [LineRange(f, 0, sizes[f], 1) for f in files]
    total = sum(sizes)
    low, high = total * shard_index // num_shards, total * (shard_index + 1) // num_shards
    ranges, base = [], 0
    for file_index, (path, size) in enumerate(zip(inputs, sizes)):
        start, stop = max(low - base, 0), min(high - base, size)
        if start < stop:
            with open(path, "rb") as f:
                start, stop = _line_start(f, start, size), _line_start(f, stop, size)
                if start < stop:
                    ranges.append(LineRange(file_index, start, stop,
                                            1 + _count_newlines(f, 0, start)))
        base += size
    return ranges


def task_ranges(inputs: list[str], ranges: list[LineRange], task_bytes: int) -> list[LineRange]:
    """``ranges`` cut into tasks of about ``task_bytes`` each, at line starts, in order."""
    tasks = []
    for r in ranges:
        path = inputs[r.file_index]
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            start, line = r.start, r.first_line
            while start < r.stop:
                stop = min(_line_start(f, start + task_bytes, size), r.stop)
                tasks.append(LineRange(r.file_index, start, stop, line))
                line += _count_newlines(f, start, stop)
                start = stop
    return tasks


def read_lines(path: str, r: LineRange) -> Iterator[tuple[int, bytes]]:
    """``(line number, raw line with its newline)`` for each line of ``r`` in ``path``."""
    with open(path, "rb") as f:
        f.seek(r.start)
        position, line = r.start, r.first_line
        while position < r.stop:
            raw = f.readline()
            if not raw:
                break
            position += len(raw)
            yield line, raw
            line += 1
