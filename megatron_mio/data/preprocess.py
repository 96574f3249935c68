"""JSONL samples -> MIO indexed datasets (tokens + loss masks + per-document modality counts).

Samples are read in order, rendered by ``--workers`` processes (``imap`` over chunks, so the
output order is the input order whatever the worker count) and written by the main process.
The random template choices of a sample are seeded from (seed, file index, line number): a
re-run writes byte-identical files, with any number of workers.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator

import numpy as np

from megatron_mio.data import schema as S
from megatron_mio.data.templates import STAGES, TemplateRenderer, render_sample
from megatron_mio.tokenizer import vocab as V
from megatron_mio.tokenizer.mio_tokenizer import MIOTokenizer

MODALITY_NAMES = ("text", "image", "speech")  # Modality TEXT, IMAGE, SPEECH
REPORT_LIST_LIMIT = 1000  # at most this many skipped/long items are listed one by one


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
    on_error: str = "fail"  # or "skip"
    max_speech_seconds: float = 15.0  # the paper drops longer speech
    chunk_size: int = 64
    progress: bool | None = None  # None: a progress bar when stderr is a terminal


# ------------------------------------------------------------------------------ worker side
_STATE: dict = {}


def _init_worker(tokenizer_dir: str, stage: str, seed: int, max_speech_codes: int) -> None:
    tokenizer = MIOTokenizer(tokenizer_dir)
    _STATE.update(renderer=TemplateRenderer(tokenizer, stage), seed=seed,
                  modality=tokenizer.modality_table(), max_speech_codes=max_speech_codes)


def _speech_parts(sample: S.Sample) -> Iterator[S.Speech]:
    if isinstance(sample, S.SpeechTextPair):
        yield sample.speech
    parts = sample.parts if isinstance(sample, S.Interleaved) else []
    if isinstance(sample, S.Chat):
        parts = [p for m in sample.messages for p in m.parts]
    yield from (value for kind, value in parts if kind == "speech")


def _process_line(file_index: int, line_number: int, raw: bytes) -> tuple:
    """One line -> ("ok", tokens, loss_mask, counts, type) | ("error", field, message) |
    ("filtered", reason)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        return "error", "line", f"not valid UTF-8 (byte {error.start} is 0x{raw[error.start]:02x})"
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as error:
        return "error", "line", f"malformed JSON: {error.msg} (column {error.colno})"
    try:
        sample = S.parse_sample(obj)
        longest = max((s.content.size for s in _speech_parts(sample)), default=0)
        if longest > _STATE["max_speech_codes"]:
            return "filtered", (f"speech longer than the limit ({longest} codes = "
                                f"{longest / V.SPEECH_CODES_PER_SECOND:.1f} s)")
        rng = np.random.default_rng([_STATE["seed"], file_index, line_number])
        tokens, loss_mask = render_sample(_STATE["renderer"], sample, rng)
    except S.SampleError as error:
        return "error", error.field, error.message
    counts = np.bincount(_STATE["modality"][tokens], minlength=len(MODALITY_NAMES))
    return "ok", tokens, loss_mask, counts, obj["type"]


def _process_chunk(chunk: list[tuple[int, int, bytes]]) -> list[tuple]:
    return [(f, n) + _process_line(f, n, raw) for f, n, raw in chunk]


# ------------------------------------------------------------------------------ main side
def _read_chunks(inputs: list[str], chunk_size: int, counters: Counter
                 ) -> Iterator[list[tuple[int, int, bytes]]]:
    chunk = []
    for file_index, path in enumerate(inputs):
        with open(path, "rb") as f:
            for line_number, raw in enumerate(f, start=1):
                if not raw.strip():
                    counters["blank_lines"] += 1
                    continue
                chunk.append((file_index, line_number, raw.rstrip(b"\r\n")))
                if len(chunk) == chunk_size:
                    yield chunk
                    chunk = []
    if chunk:
        yield chunk


class _Report:
    def __init__(self, config: PreprocessConfig):
        self.config = config
        self.counters = Counter()
        self.tokens = Counter()
        self.documents_by_type = Counter()
        self.skipped: list[dict] = []
        self.filtered: list[dict] = []
        self.long_documents: list[dict] = []

    def _listed(self, items: list, item: dict) -> None:
        if len(items) < REPORT_LIST_LIMIT:
            items.append(item)

    def where(self, file_index: int, line: int) -> dict:
        return {"file": self.config.inputs[file_index], "line": line}

    def as_json(self) -> str:
        c = self.config
        report = {
            "inputs": list(c.inputs), "output_prefix": c.output_prefix, "stage": c.stage,
            "seed": c.seed, "seq_length": c.seq_length, "on_error": c.on_error,
            "max_speech_seconds": c.max_speech_seconds,
            "samples_read": self.counters["read"], "blank_lines": self.counters["blank_lines"],
            "documents_written": self.counters["written"],
            "documents_by_type": dict(sorted(self.documents_by_type.items())),
            "tokens": {"total": sum(self.tokens[m] for m in MODALITY_NAMES),
                       **{m: self.tokens[m] for m in MODALITY_NAMES},
                       "supervised": self.tokens["supervised"]},
            "skipped": {"count": self.counters["skipped"], "items": self.skipped},
            "filtered": {"count": self.counters["filtered"], "items": self.filtered},
            "long_documents": {"kept": self.counters["long_kept"],
                               "dropped": self.counters["long_dropped"],
                               "items": self.long_documents},
        }
        return json.dumps(report, indent=2, ensure_ascii=False) + "\n"


def _long_document_action(sample_type: str) -> tuple[bool, str]:
    if sample_type == "language":
        return True, "kept: text-only, the packer may split it"
    return False, "dropped: a multimodal document cannot be split without cutting a segment"


def _handle(result: tuple, report: _Report, writer, config: PreprocessConfig) -> None:
    file_index, line, status, *rest = result
    report.counters["read"] += 1
    where = report.where(file_index, line)
    if status == "error":
        field, message = rest
        if config.on_error == "fail":
            raise PreprocessError(f"{where['file']}:{line}: {field}: {message}")
        report.counters["skipped"] += 1
        report._listed(report.skipped, {**where, "field": field, "reason": message})
        return
    if status == "filtered":
        report.counters["filtered"] += 1
        report._listed(report.filtered, {**where, "reason": rest[0]})
        return
    tokens, loss_mask, counts, sample_type = rest
    if tokens.size > config.seq_length:
        keep, reason = _long_document_action(sample_type)
        report.counters["long_kept" if keep else "long_dropped"] += 1
        report._listed(report.long_documents, {**where, "tokens": int(tokens.size),
                                               "action": reason})
        if not keep:
            return
    writer.add(tokens, loss_mask, counts)
    report.counters["written"] += 1
    report.documents_by_type[sample_type] += 1
    for name, count in zip(MODALITY_NAMES, counts):
        report.tokens[name] += int(count)
    report.tokens["supervised"] += int(loss_mask.sum())


def _check_config(config: PreprocessConfig) -> None:
    if config.stage not in STAGES:
        raise ValueError(f"--stage must be one of {', '.join(STAGES)}, got {config.stage!r}")
    if config.on_error not in ("fail", "skip"):
        raise ValueError(f"--on-error must be fail or skip, got {config.on_error!r}")
    if config.workers < 1:
        raise ValueError("--workers must be at least 1")
    for path in config.inputs:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such input file")


def preprocess(config: PreprocessConfig) -> dict:
    """Run the whole conversion; returns the report (also written to ``P.report.json``)."""
    from tqdm import tqdm

    # megatron-core (and torch with it) is needed by the writer only, not by the workers.
    from megatron_mio.data.indexed import AtomicDatasetWriter

    _check_config(config)
    max_speech_codes = int(config.max_speech_seconds * V.SPEECH_CODES_PER_SECOND)
    init_args = (config.tokenizer, config.stage, config.seed, max_speech_codes)
    report = _Report(config)
    show = sys.stderr.isatty() if config.progress is None else config.progress
    chunks = _read_chunks(config.inputs, config.chunk_size, report.counters)
    start = time.perf_counter()
    with AtomicDatasetWriter(config.output_prefix) as writer, \
            tqdm(disable=not show, unit=" samples", desc="preprocess") as bar:
        if config.workers == 1:
            _init_worker(*init_args)
            results = map(_process_chunk, chunks)
            _consume(results, report, writer, config, bar)
        else:
            context = multiprocessing.get_context("spawn")
            with context.Pool(config.workers, initializer=_init_worker, initargs=init_args) as pool:
                _consume(pool.imap(_process_chunk, chunks), report, writer, config, bar)
        writer.commit(report.as_json())
    result = json.loads(report.as_json())
    result["seconds"] = time.perf_counter() - start
    return result


def _consume(results, report: _Report, writer, config: PreprocessConfig, bar) -> None:
    for chunk in results:
        for result in chunk:
            _handle(result, report, writer, config)
        bar.update(len(chunk))
