"""One JSONL line -> a typed result, and a range of lines -> documents in a dataset writer plus
the report of what happened to each line.

``LineProcessor.process`` decodes, parses (``sample_types``), renders with the sample's random
template choices seeded from (seed, file index, line number), filters speech over the limit and
splits what is longer than the sequence length.  ``write_ranges`` writes the pieces and records
every line in a ``ReportBody``; under ``on_error="fail"`` the first bad line raises
``PreprocessError`` naming ``file:line: field``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable

import numpy as np

from megatron_mio.data import schema as S
from megatron_mio.data.input_ranges import LineRange, read_lines
from megatron_mio.data.preprocess_report import (
    FILTERED_REASON,
    MODALITY_NAMES,
    DroppedLine,
    DroppedSegment,
    FilteredLine,
    ReportBody,
    SkippedLine,
    SplitLine,
)
from megatron_mio.data.sample_types import (
    REGISTRY,
    parse_sample,
    render_units,
    speech_parts,
)
from megatron_mio.data.splitting import Dropped, split_sample
from megatron_mio.data.templates import TemplateRenderer
from megatron_mio.tokenizer import vocab as V
from megatron_mio.tokenizer.mio_tokenizer import MIOTokenizer

PROGRESS_EVERY_LINES = 256  # how often write_ranges reports progress


class PreprocessError(RuntimeError):
    """Bad input under ``--on-error fail``: ``file:line: field: what is wrong``."""


@dataclasses.dataclass(frozen=True)
class BadLine:
    field: str
    message: str


@dataclasses.dataclass(frozen=True)
class FilteredSample:
    """A sample whose speech is over ``--max-speech-seconds``."""

    sample_type: str
    reason: str
    tokens: int  # what its rendering would have written


@dataclasses.dataclass(frozen=True)
class KeptSample:
    """A sample as the pieces written (one unless it was split) and what had to be dropped."""

    sample_type: str
    pieces: list[tuple[np.ndarray, np.ndarray]]
    dropped: list[Dropped]


LineResult = BadLine | FilteredSample | KeptSample


@dataclasses.dataclass(frozen=True)
class LineRules:
    """How lines become documents (the preprocessing settings a worker needs)."""

    tokenizer: str  # MIO tokenizer directory
    stage: str
    seed: int
    seq_length: int
    append_eod: bool
    max_speech_seconds: float
    on_error: str  # "fail" or "skip"


class LineProcessor:
    def __init__(self, rules: LineRules):
        tokenizer = MIOTokenizer(rules.tokenizer)
        self.rules = rules
        self.renderer = TemplateRenderer(tokenizer, rules.stage)
        self.modality_table = tokenizer.modality_table()
        self.max_speech_codes = int(rules.max_speech_seconds * V.SPEECH_CODES_PER_SECOND)

    def process(self, file_index: int, line_number: int, raw: bytes) -> LineResult:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            return BadLine("line", f"not valid UTF-8 (byte {error.start} is "
                                   f"0x{raw[error.start]:02x})")
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as error:
            return BadLine("line", f"malformed JSON: {error.msg} (column {error.colno})")
        try:
            sample = parse_sample(obj)
            rng = np.random.default_rng([self.rules.seed, file_index, line_number])
            rendered = render_units(self.renderer, sample, rng, self.rules.append_eod)
        except S.SampleError as error:
            return BadLine(error.field, error.message)
        sample_type = REGISTRY[obj["type"]].name
        longest = max((s.content.size for s in speech_parts(sample)), default=0)
        if longest > self.max_speech_codes:
            tokens = sum(u.tokens.size for u in rendered.units)
            tokens += rendered.header.tokens.size if rendered.header else 0
            return FilteredSample(sample_type, f"speech longer than the limit ({longest} codes = "
                                               f"{longest / V.SPEECH_CODES_PER_SECOND:.1f} s)",
                                  tokens)
        pieces, dropped = split_sample(rendered, self.rules.seq_length)
        return KeptSample(sample_type, pieces, dropped)


# Called with (samples, input bytes, tokens written) since the last call.
ProgressCallback = Callable[[int, int, int], None]


class RangeWriter:
    """Lines of input ranges -> documents in ``writer`` and their record in ``body``."""

    def __init__(self, processor: LineProcessor, inputs: list[str], writer, body: ReportBody):
        self.processor = processor
        self.inputs = inputs
        self.writer = writer
        self.body = body

    def write(self, ranges: list[LineRange], progress: ProgressCallback | None = None) -> int:
        """Render and write every line of ``ranges``; returns the number of lines read."""
        lines = 0
        samples, bytes_read, tokens = self.body.samples_read, 0, 0  # reported so far
        for r in ranges:
            for line, raw in read_lines(self.inputs[r.file_index], r):
                lines += 1
                bytes_read += len(raw)
                tokens += self._line(r.file_index, line, raw)
                if progress is not None and lines % PROGRESS_EVERY_LINES == 0:
                    progress(self.body.samples_read - samples, bytes_read, tokens)
                    samples, bytes_read, tokens = self.body.samples_read, 0, 0
        if progress is not None and bytes_read:
            progress(self.body.samples_read - samples, bytes_read, tokens)
        return lines

    def _line(self, file_index: int, line: int, raw: bytes) -> int:
        """One line written and recorded; returns the tokens written."""
        if not raw.strip():
            self.body.blank_lines += 1
            return 0
        result = self.processor.process(file_index, line, raw.rstrip(b"\r\n"))
        self.body.samples_read += 1
        file = self.inputs[file_index]
        if isinstance(result, BadLine):
            self._bad(file, line, result)
            return 0
        if isinstance(result, FilteredSample):
            self.body.filtered.count += 1
            self.body.listed(self.body.filtered.items, FilteredLine(file, line, result.reason))
            self.body.dropped.count(FILTERED_REASON, result.sample_type, 1, result.tokens)
            return 0
        return self._kept(file, line, result)

    def _bad(self, file: str, line: int, result: BadLine) -> None:
        if self.processor.rules.on_error == "fail":
            raise PreprocessError(f"{file}:{line}: {result.field}: {result.message}")
        self.body.skipped.count += 1
        self.body.listed(self.body.skipped.items,
                         SkippedLine(file, line, result.field, result.message))

    def _kept(self, file: str, line: int, result: KeptSample) -> int:
        body, table, written = self.body, self.processor.modality_table, 0
        for tokens, loss_mask in result.pieces:
            counts = np.bincount(table[tokens], minlength=len(MODALITY_NAMES))
            self.writer.add(tokens, loss_mask, counts)
            for name, count in zip(MODALITY_NAMES, counts):
                body.tokens.by_modality[name] += int(count)
            body.tokens.total += int(tokens.size)
            body.tokens.supervised += int(loss_mask.sum())
            written += int(tokens.size)
        body.documents_written += len(result.pieces)
        if result.pieces:
            body.documents_by_type[result.sample_type] = (
                body.documents_by_type.get(result.sample_type, 0) + len(result.pieces))
        if len(result.pieces) > 1:
            body.split.documents += 1
            body.split.pieces += len(result.pieces)
            body.listed(body.split.items, SplitLine(file, line, result.sample_type,
                                                    len(result.pieces),
                                                    [int(t.size) for t, _ in result.pieces]))
        if result.dropped:
            body.dropped.documents += 1
            for d in result.dropped:
                body.dropped.count(d.reason, result.sample_type, 1, d.tokens)
            body.listed(body.dropped.items, DroppedLine(
                file, line, result.sample_type, len(result.pieces),
                [DroppedSegment(d.reason, d.kind, d.tokens) for d in result.dropped]))
        return written
