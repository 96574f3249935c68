"""JSONL samples -> MIO indexed datasets (tokens + loss masks + per-document modality counts).

The input is one ordered stream of lines: the files in ``--input`` order, each from line 1.  The
random template choices of a sample are seeded from (seed, file index, line number), so what a
sample becomes never depends on how the stream is divided:

- ``--num-shards N --shard-index i`` (defaults: Slurm's array variables) takes the i-th of N
  contiguous parts of the stream (whole files when there are at least N, else byte ranges cut at
  line starts) and writes ``PREFIX-0000i-of-0000N``.  Appended in order (``merge_datasets``),
  the shards are one run's files byte for byte.
- ``--workers W`` divides this shard's part into tasks of contiguous lines; each worker renders
  a task and writes it as its own temporary dataset, and the main process appends them in input
  order with megatron-core's ``IndexedDatasetBuilder.add_index``: byte-identical for any ``W``.

Samples longer than ``--seq-length`` are cut where they can be (``splitting``); what cannot be
kept is counted by reason and type in ``PREFIX.report.json`` and in a warning line.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Iterator

import numpy as np

from megatron_mio.data import schema as S
from megatron_mio.data.sample_types import parse_sample, render_units, speech_parts
from megatron_mio.data.splitting import split_sample
from megatron_mio.data.templates import STAGES, TemplateRenderer
from megatron_mio.tokenizer import vocab as V
from megatron_mio.tokenizer.mio_tokenizer import MIOTokenizer

MODALITY_NAMES = tuple(kind.label for kind in V.Modality)  # the report's keys, in table order
REPORT_LIST_LIMIT = 1000  # at most this many skipped/split/dropped items are listed one by one
COVERAGE_WARNING = 0.99  # warn when less of a corpus' tokens than this reach the files
# Settings a report records; shards merge only when these agree.
CONFIG_KEYS = ("inputs", "stage", "seed", "seq_length", "append_eod", "on_error",
               "max_speech_seconds")
FILTERED_REASON = "speech_over_max_seconds"


class PreprocessError(RuntimeError):
    """Bad input under ``--on-error fail``: ``file:line: field: what is wrong``."""


@dataclasses.dataclass
class PreprocessConfig:
    inputs: list[str]
    output_prefix: str
    tokenizer: str
    stage: str
    workers: int = 1
    seed: int = 0
    seq_length: int = 2800
    append_eod: bool = False  # an eos after each language document (Megatron-LM's --append-eod)
    on_error: str = "fail"  # or "skip"
    max_speech_seconds: float = 15.0  # the paper drops longer speech
    num_shards: int = 1
    shard_index: int = 0
    task_bytes: int = 0  # input bytes per worker task; 0: chosen from the input size
    progress: bool | None = None  # None: a progress bar when stderr is a terminal


def shard_output_prefix(prefix: str, shard_index: int, num_shards: int) -> str:
    """Where shard ``i`` of ``N`` is written (the prefix itself for one shard)."""
    if num_shards == 1:
        return prefix
    return f"{prefix}-{shard_index:05d}-of-{num_shards:05d}"


# ------------------------------------------------------------------------------ input ranges
@dataclasses.dataclass(frozen=True)
class LineRange:
    """Lines ``[start, stop)`` (byte offsets, both at line starts) of input file ``file_index``;
    ``first_line`` is the 1-based number of the line at ``start``."""

    file_index: int
    start: int
    stop: int
    first_line: int


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


def _lines(path: str, r: LineRange) -> Iterator[tuple[int, bytes]]:
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


# ------------------------------------------------------------------------------ one sample
_STATE: dict = {}


def _init_worker(config: PreprocessConfig) -> None:
    tokenizer = MIOTokenizer(config.tokenizer)
    _STATE.update(renderer=TemplateRenderer(tokenizer, config.stage), config=config,
                  modality=tokenizer.modality_table(),
                  max_speech_codes=int(config.max_speech_seconds * V.SPEECH_CODES_PER_SECOND))


def _process_line(file_index: int, line_number: int, raw: bytes) -> tuple:
    """One line -> ("error", field, message) | ("filtered", type, reason, tokens) |
    ("ok", type, pieces, dropped)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        return "error", "line", f"not valid UTF-8 (byte {error.start} is 0x{raw[error.start]:02x})"
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as error:
        return "error", "line", f"malformed JSON: {error.msg} (column {error.colno})"
    config = _STATE["config"]
    try:
        sample = parse_sample(obj)
        rng = np.random.default_rng([config.seed, file_index, line_number])
        rendered = render_units(_STATE["renderer"], sample, rng, config.append_eod)
    except S.SampleError as error:
        return "error", error.field, error.message
    longest = max((s.content.size for s in speech_parts(sample)), default=0)
    if longest > _STATE["max_speech_codes"]:
        tokens = sum(u.tokens.size for u in rendered.units)
        tokens += rendered.header.tokens.size if rendered.header else 0
        return "filtered", obj["type"], (f"speech longer than the limit ({longest} codes = "
                                         f"{longest / V.SPEECH_CODES_PER_SECOND:.1f} s)"), tokens
    pieces, dropped = split_sample(rendered, config.seq_length)
    return "ok", obj["type"], pieces, dropped


# ------------------------------------------------------------------------------ the report
class _Report:
    """What happened to every sample; ``as_dict`` is summable across tasks and shards."""

    def __init__(self, config: PreprocessConfig):
        self.config = config
        self.file_names = config.inputs
        self.report = _empty_report()

    def _listed(self, section: str, item: dict) -> None:
        items = self.report[section]["items"]
        if len(items) < REPORT_LIST_LIMIT:
            items.append(item)

    def blank_line(self) -> None:
        self.report["blank_lines"] += 1

    def add(self, result: tuple, file_index: int, line: int, writer, modality: np.ndarray) -> None:
        r = self.report
        status, *rest = result
        r["samples_read"] += 1
        where = {"file": self.file_names[file_index], "line": line}
        if status == "error":
            field, message = rest
            if self.config.on_error == "fail":
                raise PreprocessError(f"{where['file']}:{line}: {field}: {message}")
            r["skipped"]["count"] += 1
            self._listed("skipped", {**where, "field": field, "reason": message})
            return
        if status == "filtered":
            sample_type, reason, tokens = rest
            r["filtered"]["count"] += 1
            self._listed("filtered", {**where, "reason": reason})
            self._dropped(FILTERED_REASON, sample_type, tokens)
            return
        sample_type, pieces, dropped = rest
        for tokens, loss_mask in pieces:
            counts = np.bincount(modality[tokens], minlength=len(MODALITY_NAMES))
            writer.add(tokens, loss_mask, counts)
            for name, count in zip(MODALITY_NAMES, counts):
                r["tokens"][name] += int(count)
            r["tokens"]["total"] += int(tokens.size)
            r["tokens"]["supervised"] += int(loss_mask.sum())
        r["documents_written"] += len(pieces)
        if pieces:
            _bump(r["documents_by_type"], sample_type, len(pieces))
        if len(pieces) > 1:
            r["split"]["documents"] += 1
            r["split"]["pieces"] += len(pieces)
            self._listed("split", {**where, "type": sample_type, "pieces": len(pieces),
                                   "tokens": [int(t.size) for t, _ in pieces]})
        if dropped:
            r["dropped"]["documents"] += 1
            for d in dropped:
                self._dropped(d.reason, sample_type, d.tokens)
            self._listed("dropped", {**where, "type": sample_type, "pieces_kept": len(pieces),
                                     "dropped": [{"reason": d.reason, "segment": d.kind,
                                                  "tokens": d.tokens} for d in dropped]})

    def _dropped(self, reason: str, sample_type: str, tokens: int) -> None:
        by_type = self.report["dropped"]["by_reason"].setdefault(reason, {})
        entry = by_type.setdefault(sample_type, {"samples": 0, "tokens": 0})
        entry["samples"] += 1
        entry["tokens"] += tokens
        self.report["dropped"]["tokens"] += tokens


def _bump(counter: dict, key: str, value: int) -> None:
    counter[key] = counter.get(key, 0) + value


def _empty_report() -> dict:
    return {
        "samples_read": 0, "blank_lines": 0, "documents_written": 0, "documents_by_type": {},
        "tokens": {"total": 0, **{m: 0 for m in MODALITY_NAMES}, "supervised": 0},
        "split": {"documents": 0, "pieces": 0, "items": []},
        "dropped": {"documents": 0, "tokens": 0, "by_reason": {}, "items": []},
        "skipped": {"count": 0, "items": []},
        "filtered": {"count": 0, "items": []},
    }


def _sum_into(total, part):
    """Add a summable report (counts, and item lists in input order) into ``total``."""
    for key, value in part.items():
        if isinstance(value, dict):
            _sum_into(total.setdefault(key, {}), value)
        elif isinstance(value, list):
            items = total.setdefault(key, [])
            items.extend(value[: max(0, REPORT_LIST_LIMIT - len(items))])
        else:
            total[key] = total.get(key, 0) + value
    return total


def _sorted_keys(report: dict) -> dict:
    """Type and reason keys in sorted order, so the JSON does not depend on which task saw a
    key first."""
    report["documents_by_type"] = dict(sorted(report["documents_by_type"].items()))
    report["dropped"]["by_reason"] = {
        reason: dict(sorted(by_type.items()))
        for reason, by_type in sorted(report["dropped"]["by_reason"].items())}
    return report


def finish_report(settings: dict, body: dict, output_prefix: str, shard: dict) -> dict:
    """The report as written: settings, the summed body, and what follows from them."""
    body = _sorted_keys(body)
    written, dropped = body["tokens"]["total"], body["dropped"]["tokens"]
    corpus = written + dropped
    report = {**settings, "output_prefix": output_prefix, "shard": shard, **body,
              "coverage": written / corpus if corpus else 1.0}
    report["notes"] = _notes(report)
    return report


def _notes(report: dict) -> list[str]:
    notes = []
    speech = report["dropped"]["by_reason"].get("pair_too_long", {}).get("speech_text_pair")
    if speech:
        notes.append(
            f"{speech['samples']} speech_text_pair samples are longer than seq_length "
            f"{report['seq_length']} and were dropped: pairs cannot be split, and speech for TTS "
            f"is four codebooks of {V.SPEECH_CODES_PER_SECOND} codes/s (a 15 s sample is 3,000+ "
            "tokens); raise --seq-length or lower --max-speech-seconds to keep them")
    return notes


def merge_reports(reports: list[dict], output_prefix: str) -> dict:
    """One report for shards appended in order; their settings must agree."""
    if not reports:
        raise ValueError("no reports to merge")
    first = reports[0]
    for report in reports[1:]:
        for key in CONFIG_KEYS:
            if report.get(key) != first.get(key):
                raise ValueError(f"{report['output_prefix']}: {key} = {report.get(key)!r}, but "
                                 f"{first['output_prefix']} has {first.get(key)!r}: these "
                                 "shards were not made by one preprocessing run")
    body = _empty_report()
    body_keys = set(body)
    for report in reports:
        _sum_into(body, {k: v for k, v in report.items() if k in body_keys})
    return finish_report({k: first[k] for k in CONFIG_KEYS}, body, output_prefix,
                         {"merged_from": [r["output_prefix"] for r in reports]})


def drop_warnings(report: dict) -> list[str]:
    """Warning lines for the terminal: what was lost, by reason and type."""
    lines = []
    for reason, by_type in report["dropped"]["by_reason"].items():
        for sample_type, entry in by_type.items():
            lines.append(f"dropped {entry['tokens']:,} tokens of {entry['samples']:,} "
                         f"{sample_type} samples: {reason}")
    if report["coverage"] < COVERAGE_WARNING:
        lines.append(f"only {100 * report['coverage']:.1f}% of the corpus' tokens were written")
    return lines + report["notes"]


# ------------------------------------------------------------------------------ the run
def _check_config(config: PreprocessConfig) -> None:
    if config.stage not in STAGES:
        raise ValueError(f"--stage must be one of {', '.join(STAGES)}, got {config.stage!r}")
    if config.on_error not in ("fail", "skip"):
        raise ValueError(f"--on-error must be fail or skip, got {config.on_error!r}")
    if config.workers < 1:
        raise ValueError("--workers must be at least 1")
    if config.seq_length < 2:
        raise ValueError(f"--seq-length must be at least 2, got {config.seq_length}")
    if config.num_shards < 1 or not 0 <= config.shard_index < config.num_shards:
        raise ValueError(f"--shard-index must be in 0..{config.num_shards - 1} and --num-shards "
                         f">= 1, got {config.shard_index} of {config.num_shards}")
    for path in config.inputs:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such input file")


def _process_ranges(ranges: list[LineRange], report: _Report, writer) -> int:
    """Render and write every line of ``ranges``; returns the number of lines read."""
    config, modality, lines = _STATE["config"], _STATE["modality"], 0
    for r in ranges:
        for line, raw in _lines(config.inputs[r.file_index], r):
            lines += 1
            if not raw.strip():
                report.blank_line()
                continue
            result = _process_line(r.file_index, line, raw.rstrip(b"\r\n"))
            report.add(result, r.file_index, line, writer, modality)
    return lines


def _run_task(task: tuple[int, LineRange, str]) -> tuple[str, dict, int]:
    """Worker side: one task written as its own dataset at ``prefix``."""
    from megatron_mio.data.indexed import AtomicDatasetWriter

    index, line_range, prefix = task
    report = _Report(_STATE["config"])
    with AtomicDatasetWriter(prefix) as writer:
        lines = _process_ranges([line_range], report, writer)
        writer.commit()
    return prefix, report.report, lines


def _task_bytes(config: PreprocessConfig, ranges: list[LineRange]) -> int:
    if config.task_bytes:
        return config.task_bytes
    total = sum(r.stop - r.start for r in ranges)
    # About 16 tasks per worker for balance, each large enough that its fixed cost is small.
    return int(min(64 << 20, max(256 << 10, total // (16 * config.workers) + 1)))


def preprocess(config: PreprocessConfig) -> dict:
    """Run the whole conversion; returns the report (also written to ``P.report.json``), plus
    ``seconds`` (end to end) and, with workers, ``main_seconds``: the main process' own work
    (planning the tasks, appending the workers' datasets, writing the index), which bounds how
    far more workers can go."""
    from tqdm import tqdm

    # megatron-core (and torch with it) is imported before the workers fork, so they share it.
    from megatron_mio.data.indexed import AtomicDatasetWriter

    _check_config(config)
    start = time.perf_counter()
    output_prefix = shard_output_prefix(config.output_prefix, config.shard_index,
                                        config.num_shards)
    ranges = shard_ranges(config.inputs, config.num_shards, config.shard_index)
    settings = {key: getattr(config, key) for key in CONFIG_KEYS}
    shard = {"index": config.shard_index, "count": config.num_shards}
    show = sys.stderr.isatty() if config.progress is None else config.progress
    main_seconds = {"plan": 0.0, "append": 0.0, "finish": 0.0}
    with AtomicDatasetWriter(output_prefix) as writer:
        if config.workers == 1:
            _init_worker(config)
            report = _Report(config)
            with tqdm(disable=not show, unit=" lines", desc="preprocess") as bar:
                _process_ranges(ranges, report, writer)
                bar.update(report.report["samples_read"])
            body = report.report
        else:
            began = time.perf_counter()
            tasks = task_ranges(config.inputs, ranges, _task_bytes(config, ranges))
            main_seconds["plan"] = time.perf_counter() - began
            shard_dir = writer.scratch_directory()
            body = _empty_report()
            context = multiprocessing.get_context(
                "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
            try:
                with context.Pool(config.workers, initializer=_init_worker,
                                  initargs=(config,)) as pool, \
                        tqdm(disable=not show, unit=" lines", desc="preprocess") as bar:
                    jobs = [(i, t, os.path.join(shard_dir, f"task{i:07d}"))
                            for i, t in enumerate(tasks)]
                    for prefix, part, lines in pool.imap(_run_task, jobs):
                        began = time.perf_counter()
                        writer.add_dataset(prefix)
                        _sum_into(body, part)
                        main_seconds["append"] += time.perf_counter() - began
                        _remove_dataset(prefix)
                        bar.update(lines)
            finally:
                shutil.rmtree(shard_dir, ignore_errors=True)
        began = time.perf_counter()
        report = finish_report(settings, body, output_prefix, shard)
        writer.commit(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        main_seconds["finish"] = time.perf_counter() - began
    return {**report, "seconds": time.perf_counter() - start, "main_seconds": main_seconds}


def _remove_dataset(prefix: str) -> None:
    from megatron_mio.data.indexed import dataset_files

    for path in dataset_files(prefix):
        if os.path.exists(path):
            os.remove(path)


def merge_preprocessed(prefixes: list[str], output_prefix: str) -> dict:
    """Shards of one preprocessing run -> one dataset at ``output_prefix`` (data byte-identical
    to a single run's; the report sums the shards' reports)."""
    from megatron_mio.data.indexed import REPORT_SUFFIX, merge_datasets

    reports = []
    for prefix in prefixes:
        path = prefix + REPORT_SUFFIX
        try:
            with open(path, encoding="utf-8") as f:
                reports.append(json.load(f))
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no such report (was {prefix} written by "
                                    "tools/preprocess_data.py?)") from None
    report = merge_reports(reports, output_prefix)
    merge_datasets(prefixes, output_prefix, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return report
