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

This module is the driver; the pieces are ``input_ranges`` (shards and tasks),
``line_processing`` (a line -> a typed result -> documents and report entries),
``preprocess_report`` (the typed report and its JSON file), ``prefix_lock`` (one writer per
prefix) and ``progress``.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import shutil
import signal
import time

from megatron_mio.data.input_ranges import (
    LineRange,
    shard_output_prefix,
    shard_ranges,
    task_ranges,
)
from megatron_mio.data.line_processing import (
    LineProcessor,
    LineRules,
    PreprocessError,
    RangeWriter,
)
from megatron_mio.data.prefix_lock import prefix_lock
from megatron_mio.data.preprocess_report import (
    PreprocessReport,
    ReportBody,
    ReportSettings,
    merge_reports,
    read_report,
)
from megatron_mio.data.progress import Progress
from megatron_mio.data.templates import STAGES

__all__ = ["EmptyInputError", "PreprocessConfig", "PreprocessError", "PreprocessResult",
           "merge_preprocessed", "preprocess", "shard_output_prefix"]


class EmptyInputError(ValueError):
    """The input holds no sample (empty files, blank lines only): nothing is written."""


@dataclasses.dataclass(frozen=True)
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
    progress: bool | None = None  # None: a bar on a terminal only; True: else lines in the log
    progress_interval: float = 30.0  # seconds between progress lines in a log

    def line_rules(self) -> LineRules:
        return LineRules(self.tokenizer, self.stage, self.seed, self.seq_length, self.append_eod,
                         self.max_speech_seconds, self.on_error)

    def report_settings(self) -> ReportSettings:
        return ReportSettings(list(self.inputs), self.stage, self.seed, self.seq_length,
                              self.append_eod, self.on_error, self.max_speech_seconds)

    def check(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"--stage must be one of {', '.join(STAGES)}, got {self.stage!r}")
        if self.on_error not in ("fail", "skip"):
            raise ValueError(f"--on-error must be fail or skip, got {self.on_error!r}")
        if self.workers < 1:
            raise ValueError("--workers must be at least 1")
        if self.seq_length < 2:
            raise ValueError(f"--seq-length must be at least 2, got {self.seq_length}")
        if not self.max_speech_seconds > 0:
            raise ValueError(f"--max-speech-seconds must be positive, got "
                             f"{self.max_speech_seconds} (it would filter out every speech "
                             "sample)")
        if self.num_shards < 1 or not 0 <= self.shard_index < self.num_shards:
            raise ValueError(f"--shard-index must be in 0..{self.num_shards - 1} and --num-shards "
                             f">= 1, got {self.shard_index} of {self.num_shards}")
        for path in self.inputs:
            if os.path.isdir(path):
                raise ValueError(f"--input {path} is a directory: pass its JSONL files "
                                 f"(e.g. {path.rstrip('/')}/*.jsonl)")
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{path}: no such input file")


@dataclasses.dataclass(frozen=True)
class MainProcessSeconds:
    """The main process' own work with workers, which bounds how far more workers can go."""

    plan: float = 0.0  # cutting the shard into tasks
    append: float = 0.0  # appending the workers' datasets
    finish: float = 0.0  # writing the index and the report


@dataclasses.dataclass(frozen=True)
class PreprocessResult:
    report: PreprocessReport  # also written to ``P.report.json``
    seconds: float  # end to end
    main_seconds: MainProcessSeconds


def preprocess(config: PreprocessConfig) -> PreprocessResult:
    """Run the whole conversion of this shard of the input."""
    config.check()
    start = time.perf_counter()
    output_prefix = shard_output_prefix(config.output_prefix, config.shard_index,
                                        config.num_shards)
    ranges = shard_ranges(config.inputs, config.num_shards, config.shard_index)
    with prefix_lock(output_prefix):
        # megatron-core (and torch with it) is imported before the workers fork, so they share it.
        from megatron_mio.data.indexed import AtomicDatasetWriter

        progress = Progress("preprocess", sum(r.size for r in ranges), enabled=config.progress,
                            interval=config.progress_interval)
        try:
            with AtomicDatasetWriter(output_prefix) as writer:
                if config.workers == 1:
                    body, seconds = _in_this_process(config, ranges, writer, progress)
                else:
                    body, seconds = _in_workers(config, ranges, writer, progress)
                if body.samples_read == 0 and config.num_shards == 1:
                    raise EmptyInputError(
                        f"--input {' '.join(config.inputs)}: no samples (empty, or blank lines "
                        "only): nothing written")
                began = time.perf_counter()
                report = PreprocessReport(config.report_settings(), output_prefix,
                                          {"index": config.shard_index,
                                           "count": config.num_shards}, body)
                writer.commit(report.json_text())
        finally:
            progress.close()
    seconds = dataclasses.replace(seconds, finish=time.perf_counter() - began)
    return PreprocessResult(report, time.perf_counter() - start, seconds)


def _in_this_process(config, ranges, writer, progress) -> tuple[ReportBody, MainProcessSeconds]:
    body = ReportBody()
    RangeWriter(LineProcessor(config.line_rules()), config.inputs, writer, body).write(
        ranges, progress.advance)
    return body, MainProcessSeconds()


# ------------------------------------------------------------------------------ the workers
# A pool hands its initializer's state to the tasks only through the worker process' globals:
# each worker builds its LineProcessor (tokenizer, renderer) once here.
_worker_processor: LineProcessor | None = None


def _init_worker(rules: LineRules) -> None:
    global _worker_processor
    # Ctrl-C reaches the whole process group: the main process stops the pool and cleans up;
    # the workers must not each print a KeyboardInterrupt traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _worker_processor = LineProcessor(rules)


@dataclasses.dataclass(frozen=True)
class _Task:
    line_range: LineRange
    prefix: str  # where the worker writes this task's dataset
    inputs: list[str]


@dataclasses.dataclass(frozen=True)
class _TaskResult:
    prefix: str
    body: ReportBody
    lines: int


def _run_task(task: _Task) -> _TaskResult:
    """Worker side: one task written as its own dataset."""
    from megatron_mio.data.indexed import AtomicDatasetWriter

    body = ReportBody()
    with AtomicDatasetWriter(task.prefix) as writer:
        lines = RangeWriter(_worker_processor, task.inputs, writer, body).write([task.line_range])
        writer.commit()
    return _TaskResult(task.prefix, body, lines)


def _task_bytes(config: PreprocessConfig, ranges: list[LineRange]) -> int:
    if config.task_bytes:
        return config.task_bytes
    total = sum(r.size for r in ranges)
    # About 16 tasks per worker for balance, each large enough that its fixed cost is small.
    return int(min(64 << 20, max(256 << 10, total // (16 * config.workers) + 1)))


def _in_workers(config, ranges, writer, progress) -> tuple[ReportBody, MainProcessSeconds]:
    began = time.perf_counter()
    tasks = task_ranges(config.inputs, ranges, _task_bytes(config, ranges))
    plan = time.perf_counter() - began
    append = 0.0
    scratch = writer.scratch_directory()
    body = ReportBody()
    context = multiprocessing.get_context(
        "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    jobs = [_Task(t, os.path.join(scratch, f"task{i:07d}"), list(config.inputs))
            for i, t in enumerate(tasks)]
    try:
        with context.Pool(config.workers, initializer=_init_worker,
                          initargs=(config.line_rules(),)) as pool:
            for task, done in zip(jobs, pool.imap(_run_task, jobs)):
                began = time.perf_counter()
                writer.add_dataset(done.prefix)
                body.add(done.body)
                append += time.perf_counter() - began
                _remove_dataset(done.prefix)
                progress.advance(done.body.samples_read, task.line_range.size,
                                 done.body.tokens.total)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return body, MainProcessSeconds(plan=plan, append=append)


def _remove_dataset(prefix: str) -> None:
    from megatron_mio.data.indexed import dataset_files

    for path in dataset_files(prefix):
        if os.path.exists(path):
            os.remove(path)


# ------------------------------------------------------------------------------ merging shards
def merge_preprocessed(prefixes: list[str], output_prefix: str) -> PreprocessReport:
    """Shards of one preprocessing run -> one dataset at ``output_prefix`` (data byte-identical
    to a single run's; the report sums the shards' reports)."""
    from megatron_mio.data.indexed import REPORT_SUFFIX, merge_datasets

    reports = []
    for prefix in prefixes:
        path = prefix + REPORT_SUFFIX
        try:
            reports.append(read_report(path))
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no such report (was {prefix} written by "
                                    "tools/preprocess_data.py?)") from None
    report = merge_reports(reports, output_prefix)
    with prefix_lock(output_prefix):
        merge_datasets(prefixes, output_prefix, report.json_text())
    return report
