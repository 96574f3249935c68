"""What preprocessing did with every sample: the typed report behind ``P.report.json``.

``ReportBody`` holds the counts (and the first ``REPORT_LIST_LIMIT`` items of each list); it is
summable, so workers' tasks and Slurm shards add up to one run's body.  ``PreprocessReport`` is
the file: the run's settings, where it was written, the body and what follows from them
(coverage, notes).  ``to_json`` / ``from_json`` keep the file's layout (``docs/data_format.md``),
which ``pack_stats``, mixtures and ``merge_datasets`` read.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from megatron_mio.tokenizer import vocab as V

MODALITY_NAMES = tuple(kind.label for kind in V.Modality)  # the report's keys, in table order
REPORT_LIST_LIMIT = 1000  # at most this many skipped/split/dropped items are listed one by one
COVERAGE_WARNING = 0.99  # warn when less of a corpus' tokens than this reach the files
FILTERED_REASON = "speech_over_max_seconds"


# ------------------------------------------------------------------------------ listed items
@dataclasses.dataclass(frozen=True)
class SkippedLine:
    file: str
    line: int
    field: str
    reason: str


@dataclasses.dataclass(frozen=True)
class FilteredLine:
    file: str
    line: int
    reason: str


@dataclasses.dataclass(frozen=True)
class SplitLine:
    file: str
    line: int
    type: str
    pieces: int
    tokens: list[int]


@dataclasses.dataclass(frozen=True)
class DroppedSegment:
    reason: str
    segment: str
    tokens: int


@dataclasses.dataclass(frozen=True)
class DroppedLine:
    file: str
    line: int
    type: str
    pieces_kept: int
    dropped: list[DroppedSegment]

    @classmethod
    def from_json(cls, item: dict) -> DroppedLine:
        return cls(**{**item, "dropped": [DroppedSegment(**d) for d in item["dropped"]]})


def _append_listed(items: list, new: list) -> None:
    items.extend(new[: max(0, REPORT_LIST_LIMIT - len(items))])


# ------------------------------------------------------------------------------ sections
@dataclasses.dataclass
class TokenCounts:
    total: int = 0
    by_modality: dict[str, int] = dataclasses.field(
        default_factory=lambda: dict.fromkeys(MODALITY_NAMES, 0))
    supervised: int = 0

    def add(self, other: TokenCounts) -> None:
        self.total += other.total
        self.supervised += other.supervised
        for name, count in other.by_modality.items():
            self.by_modality[name] = self.by_modality.get(name, 0) + count

    def to_json(self) -> dict:
        return {"total": self.total, **self.by_modality, "supervised": self.supervised}

    @classmethod
    def from_json(cls, data: dict) -> TokenCounts:
        return cls(data["total"], {m: data[m] for m in MODALITY_NAMES}, data["supervised"])


@dataclasses.dataclass
class DropTotals:
    samples: int = 0
    tokens: int = 0


@dataclasses.dataclass
class SplitSection:
    documents: int = 0  # samples cut
    pieces: int = 0  # pieces written from them
    items: list[SplitLine] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class DroppedSection:
    documents: int = 0  # samples that lost tokens
    tokens: int = 0
    by_reason: dict[str, dict[str, DropTotals]] = dataclasses.field(default_factory=dict)
    items: list[DroppedLine] = dataclasses.field(default_factory=list)

    def count(self, reason: str, sample_type: str, samples: int, tokens: int) -> None:
        entry = self.by_reason.setdefault(reason, {}).setdefault(sample_type, DropTotals())
        entry.samples += samples
        entry.tokens += tokens
        self.tokens += tokens


@dataclasses.dataclass
class ListedSection:
    count: int = 0
    items: list = dataclasses.field(default_factory=list)


# ------------------------------------------------------------------------------ the body
@dataclasses.dataclass
class ReportBody:
    """The summable part of a report."""

    samples_read: int = 0
    blank_lines: int = 0
    documents_written: int = 0
    documents_by_type: dict[str, int] = dataclasses.field(default_factory=dict)
    tokens: TokenCounts = dataclasses.field(default_factory=TokenCounts)
    split: SplitSection = dataclasses.field(default_factory=SplitSection)
    dropped: DroppedSection = dataclasses.field(default_factory=DroppedSection)
    skipped: ListedSection = dataclasses.field(default_factory=ListedSection)  # of SkippedLine
    filtered: ListedSection = dataclasses.field(default_factory=ListedSection)  # of FilteredLine

    def add(self, other: ReportBody) -> None:
        """Add ``other`` (the part that follows this one in input order)."""
        self.samples_read += other.samples_read
        self.blank_lines += other.blank_lines
        self.documents_written += other.documents_written
        for name, count in other.documents_by_type.items():
            self.documents_by_type[name] = self.documents_by_type.get(name, 0) + count
        self.tokens.add(other.tokens)
        self.split.documents += other.split.documents
        self.split.pieces += other.split.pieces
        _append_listed(self.split.items, other.split.items)
        self.dropped.documents += other.dropped.documents
        for reason, by_type in other.dropped.by_reason.items():
            for sample_type, totals in by_type.items():
                self.dropped.count(reason, sample_type, totals.samples, totals.tokens)
        _append_listed(self.dropped.items, other.dropped.items)
        for mine, theirs in ((self.skipped, other.skipped), (self.filtered, other.filtered)):
            mine.count += theirs.count
            _append_listed(mine.items, theirs.items)

    def listed(self, items: list, item) -> None:
        _append_listed(items, [item])

    def to_json(self) -> dict:
        """The file's layout; type and reason keys sorted, so the JSON does not depend on which
        task saw a key first."""
        return {
            "samples_read": self.samples_read, "blank_lines": self.blank_lines,
            "documents_written": self.documents_written,
            "documents_by_type": dict(sorted(self.documents_by_type.items())),
            "tokens": self.tokens.to_json(),
            "split": {"documents": self.split.documents, "pieces": self.split.pieces,
                      "items": [dataclasses.asdict(i) for i in self.split.items]},
            "dropped": {"documents": self.dropped.documents, "tokens": self.dropped.tokens,
                        "by_reason": {reason: {t: dataclasses.asdict(totals)
                                               for t, totals in sorted(by_type.items())}
                                      for reason, by_type in sorted(self.dropped.by_reason.items())},
                        "items": [dataclasses.asdict(i) for i in self.dropped.items]},
            "skipped": {"count": self.skipped.count,
                        "items": [dataclasses.asdict(i) for i in self.skipped.items]},
            "filtered": {"count": self.filtered.count,
                         "items": [dataclasses.asdict(i) for i in self.filtered.items]},
        }

    @classmethod
    def from_json(cls, data: dict) -> ReportBody:
        dropped = data["dropped"]
        return cls(
            samples_read=data["samples_read"], blank_lines=data["blank_lines"],
            documents_written=data["documents_written"],
            documents_by_type=dict(data["documents_by_type"]),
            tokens=TokenCounts.from_json(data["tokens"]),
            split=SplitSection(data["split"]["documents"], data["split"]["pieces"],
                               [SplitLine(**i) for i in data["split"]["items"]]),
            dropped=DroppedSection(
                dropped["documents"], dropped["tokens"],
                {reason: {t: DropTotals(**totals) for t, totals in by_type.items()}
                 for reason, by_type in dropped["by_reason"].items()},
                [DroppedLine.from_json(i) for i in dropped["items"]]),
            skipped=ListedSection(data["skipped"]["count"],
                                  [SkippedLine(**i) for i in data["skipped"]["items"]]),
            filtered=ListedSection(data["filtered"]["count"],
                                   [FilteredLine(**i) for i in data["filtered"]["items"]]),
        )


# ------------------------------------------------------------------------------ the file
@dataclasses.dataclass(frozen=True)
class ReportSettings:
    """The settings a report records; shards merge only when these agree."""

    inputs: list[str]
    stage: str
    seed: int
    seq_length: int
    append_eod: bool
    on_error: str
    max_speech_seconds: float


SETTINGS_KEYS = tuple(f.name for f in dataclasses.fields(ReportSettings))


@dataclasses.dataclass(frozen=True)
class PreprocessReport:
    settings: ReportSettings
    output_prefix: str
    shard: dict[str, Any]  # {"index", "count"} of a shard, or {"merged_from": [prefixes]}
    body: ReportBody

    @property
    def corpus_tokens(self) -> int:
        """What the templates made of the samples read: written plus dropped."""
        return self.body.tokens.total + self.body.dropped.tokens

    @property
    def coverage(self) -> float:
        """The share of the corpus' tokens that were written."""
        corpus = self.corpus_tokens
        return self.body.tokens.total / corpus if corpus else 1.0

    def notes(self) -> list[str]:
        notes = []
        speech = self.body.dropped.by_reason.get("pair_too_long", {}).get("speech_text_pair")
        if speech:
            notes.append(
                f"{speech.samples} speech_text_pair samples are longer than seq_length "
                f"{self.settings.seq_length} and were dropped: pairs cannot be split, and speech "
                f"for TTS is four codebooks of {V.SPEECH_CODES_PER_SECOND} codes/s (a 15 s "
                "sample is 3,000+ tokens); raise --seq-length or lower --max-speech-seconds to "
                "keep them")
        return notes

    def warnings(self) -> list[str]:
        """Warning lines for the terminal: what was lost, by reason and type."""
        lines = [f"dropped {totals.tokens:,} tokens of {totals.samples:,} {sample_type} samples: "
                 f"{reason}"
                 for reason, by_type in sorted(self.body.dropped.by_reason.items())
                 for sample_type, totals in sorted(by_type.items())]
        if self.body.samples_read == 0:
            lines.append("no samples in this shard's part of the input")
        if self.coverage < COVERAGE_WARNING:
            lines.append(f"only {100 * self.coverage:.1f}% of the corpus' tokens were written")
        return lines + self.notes()

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self.settings), "output_prefix": self.output_prefix,
                "shard": self.shard, **self.body.to_json(), "coverage": self.coverage,
                "notes": self.notes()}

    def json_text(self) -> str:
        return json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, data: dict) -> PreprocessReport:
        return cls(ReportSettings(**{k: data[k] for k in SETTINGS_KEYS}), data["output_prefix"],
                   data["shard"], ReportBody.from_json(data))


def read_report(path: str) -> PreprocessReport:
    with open(path, encoding="utf-8") as f:
        return PreprocessReport.from_json(json.load(f))


def merge_reports(reports: list[PreprocessReport], output_prefix: str) -> PreprocessReport:
    """One report for shards appended in order; their settings must agree."""
    if not reports:
        raise ValueError("no reports to merge")
    first = reports[0]
    for report in reports[1:]:
        for key in SETTINGS_KEYS:
            theirs, ours = getattr(report.settings, key), getattr(first.settings, key)
            if theirs != ours:
                raise ValueError(f"{report.output_prefix}: {key} = {theirs!r}, but "
                                 f"{first.output_prefix} has {ours!r}: these shards were not "
                                 "made by one preprocessing run")
    body = ReportBody()
    for report in reports:
        body.add(report.body)
    return PreprocessReport(first.settings, output_prefix,
                            {"merged_from": [r.output_prefix for r in reports]}, body)
