"""Stage mixtures: which packed datasets a run reads, and in what proportion.

A mixture file (``examples/data/stage1.yaml`` ...) lists data types, each with a weight in packed
sequences per batch and its dataset prefixes::

    types:
      image_text_pair: {weight: 12, prefixes: [/data/laion_coco/pairs]}
      language:        {weight: 2,  prefixes: [/data/refinedweb/pages_00, /data/refinedweb/pages_01]}
      speech_text_pair: {weight: 2, prefixes: [/data/libriheavy/asr_tts]}

Relative prefixes are resolved against the directory of the YAML file.  A prefix may be a glob
(``/data/laion_coco/pairs-*``: the shards ``tools/preprocess_data.py`` writes per Slurm array
task): it stands for the datasets whose ``.idx`` it matches, in sorted order; a pattern that
matches none is an error naming it.  Weights must be > 0: a
type the stage does not use is left out (a zero weight is an error, so a typo cannot silently
drop data).  Inside a type, prefixes share the type's weight in proportion to their numbers of
packs, so every pack of the type is equally likely.  ``--data-path w1 p1 w2 p2 ...``
(Megatron-style; a single prefix needs no weight) maps to one type per prefix.

Mixing is exact, not random: with integer weights summing to ``T``, every run of ``T``
consecutive samples starting at a multiple of ``T`` holds exactly ``weight`` packs of each type
(when each type has one prefix), and every prefix of the sample order is within one pack per
dataset of its target (see ``packing.blend_indices``).
"""

from __future__ import annotations

import glob
import math
import os
from dataclasses import dataclass

import numpy as np
import yaml

from megatron_mio.data.packed_dataset import (
    BlendedPackedDataset,
    PackedDataset,
    PackingConfig,
)
from megatron_mio.data.preprocess_report import PreprocessReport, read_report
from megatron_mio.data.validate import LOSS_MASK_SUFFIX, validate_packed_source
from megatron_mio.tokenizer.vocab import Modality


class MixtureError(ValueError):
    """A mixture file or --data-path list is malformed."""


@dataclass(frozen=True)
class DataType:
    name: str
    weight: float
    prefixes: tuple[str, ...]


@dataclass(frozen=True)
class Mixture:
    types: tuple[DataType, ...]
    source: str  # the YAML path or "--data-path", for messages


def _line(node, path: tuple) -> int | None:
    """1-based line of the YAML node at ``path`` (mapping keys / sequence indices), if found."""
    line = node.start_mark.line + 1 if node is not None else None
    for key in path:
        if isinstance(node, yaml.MappingNode):
            match = [v for k, v in node.value if k.value == key]
            if not match:
                return line
            node = match[0]
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
        else:
            return line
        line = node.start_mark.line + 1
    return line


def _positive_weight(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MixtureError(f"{where}: weight must be a number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise MixtureError(f"{where}: weight must be > 0 (leave out a type the stage does not "
                           f"use), got {value!r}")
    return float(value)


def load_mixture(path: str | os.PathLike) -> Mixture:
    """Parse a stage mixture YAML; errors name the file, line and field."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        root_node = yaml.compose(text)
        data = yaml.safe_load(text)
    except FileNotFoundError:
        raise MixtureError(f"{path}: no such mixture file") from None
    except yaml.YAMLError as err:
        raise MixtureError(f"{path}: not valid YAML: {err}") from None

    def where(*field) -> str:
        line = _line(root_node, field)
        return f"{path}{f':{line}' if line else ''}: {'.'.join(map(str, field))}"

    if not isinstance(data, dict) or not isinstance(data.get("types"), dict) or not data["types"]:
        raise MixtureError(f"{where('types')}: expected a non-empty mapping of data types")
    unknown = set(data) - {"types", "description"}
    if unknown:
        raise MixtureError(f"{where(sorted(unknown)[0])}: unknown field")
    base = os.path.dirname(os.path.abspath(path))
    types = []
    for name, entry in data["types"].items():
        if not isinstance(entry, dict):
            raise MixtureError(f"{where('types', name)}: expected {{weight: N, prefixes: [...]}}")
        unknown = set(entry) - {"weight", "prefixes", "description"}
        if unknown:
            raise MixtureError(f"{where('types', name, sorted(unknown)[0])}: unknown field")
        if "weight" not in entry:
            raise MixtureError(f"{where('types', name)}: missing field weight")
        weight = _positive_weight(entry["weight"], where("types", name, "weight"))
        prefixes = entry.get("prefixes")
        if not isinstance(prefixes, list) or not prefixes or not all(isinstance(p, str) for p in prefixes):
            raise MixtureError(f"{where('types', name, 'prefixes')}: expected a non-empty list of "
                               "dataset prefixes")
        resolved = []
        for i, prefix in enumerate(prefixes):
            prefix = prefix if os.path.isabs(prefix) else os.path.join(base, prefix)
            matches = expand_prefix(prefix)
            if not matches:
                raise MixtureError(f"{where('types', name, 'prefixes', i)}: the pattern {prefix!r} "
                                   f"matches no dataset (no file {prefix}.idx)")
            resolved += matches
        resolved = tuple(resolved)
        types.append(DataType(name=str(name), weight=weight, prefixes=resolved))
    return Mixture(types=tuple(types), source=path)


def expand_prefix(prefix: str) -> list[str]:
    """A dataset prefix, or the sorted prefixes of the datasets a glob pattern matches (by their
    token ``.idx``; loss-mask indices are not datasets of their own)."""
    if not glob.has_magic(prefix):
        return [prefix]
    found = (path[: -len(".idx")] for path in glob.glob(prefix + ".idx"))
    return sorted(p for p in found if not p.endswith(LOSS_MASK_SUFFIX))


def parse_data_path(values: list[str]) -> Mixture:
    """Megatron's ``--data-path``: ``PREFIX`` or ``W1 PREFIX1 W2 PREFIX2 ...``."""
    values = [str(v) for v in values]
    if len(values) == 1:
        return Mixture(types=(DataType(values[0], 1.0, (values[0],)),), source="--data-path")
    if not values or len(values) % 2:
        raise MixtureError(f"--data-path: expected PREFIX or pairs 'WEIGHT PREFIX ...', got {values}")
    types = []
    for i in range(0, len(values), 2):
        try:
            weight = float(values[i])
        except ValueError:
            raise MixtureError(f"--data-path: item {i + 1} {values[i]!r} is not a weight "
                               "(expected 'WEIGHT PREFIX' pairs)") from None
        weight = _positive_weight(weight, f"--data-path item {i + 1}")
        types.append(DataType(values[i + 1], weight, (values[i + 1],)))
    return Mixture(types=tuple(types), source="--data-path")


def read_mixture(data_config: str | os.PathLike | None = None,
                 data_path: list[str] | None = None) -> Mixture:
    """The checked mixture of a run: from a YAML file or ``--data-path`` values (exactly one)."""
    if (data_config is None) == (not data_path):
        raise ValueError("give exactly one of data_config (YAML) and data_path")
    return load_mixture(data_config) if data_config is not None else parse_data_path(data_path)


def build_mixture_dataset(mixture: Mixture, config: PackingConfig,
                          num_samples: int) -> BlendedPackedDataset:
    """All datasets of a mixture, packed and blended into ``num_samples`` sequences."""
    for data_type in mixture.types:  # every file checked before any packing runs
        for prefix in data_type.prefixes:
            validate_packed_source(prefix)
    datasets, weights, names = [], [], []
    for data_type in mixture.types:
        members = [PackedDataset(prefix, config) for prefix in data_type.prefixes]
        total_packs = sum(len(ds) for ds in members)
        if total_packs == 0:
            shortest = min((int(ds.lengths.min()) for ds in members if len(ds.lengths)), default=0)
            raise MixtureError(
                f"{mixture.source}: type {data_type.name!r} has no packs: none of its documents fits "
                f"seq_length {config.seq_length}" + (
                    f" (the shortest has {shortest} tokens); raise --seq-length to at least "
                    f"{shortest}, or preprocess with --seq-length {config.seq_length} so that long "
                    "samples are split" if shortest else " (it holds no documents)"))
        for ds in members:
            if len(ds):  # an empty member of a non-empty type just gets no share
                datasets.append(ds)
                weights.append(data_type.weight * len(ds) / total_packs)
                names.append(data_type.name)
    return BlendedPackedDataset(datasets, weights, num_samples, seed=config.seed,
                                cache_dir=config.cache_dir, names=names)


def modality_token_counts(ds: PackedDataset, table: np.ndarray | None) -> np.ndarray:
    """Tokens per ``Modality`` over the documents the packs hold (dropped documents excluded)."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    counts = np.zeros(len(Modality), dtype=np.int64)
    reader = IndexedDataset(ds.prefix)
    n_docs = len(ds.lengths)
    kept = np.zeros(n_docs, dtype=bool)
    kept[np.asarray(ds.index.doc_ids)] = True
    chunk = 4096  # documents per read: at most ~11M tokens at seq_length 2,800
    for start in range(0, n_docs, chunk):
        stop = min(n_docs, start + chunk)
        lengths = ds.lengths[start:stop].astype(np.int64)
        tokens = reader.bin_reader.read(reader.index.dtype, int(lengths.sum()),
                                        int(reader.index.sequence_pointers[start]))
        modality = table[tokens] if table is not None else np.zeros(len(tokens), dtype=np.uint8)
        weight = np.repeat(kept[start:stop], lengths)
        counts += np.bincount(modality[weight], minlength=len(Modality))[: len(Modality)]
    return counts


COVERAGE_WARNING = 0.99  # warn when less of a dataset's tokens than this reach the packs


def preprocessing_report(prefix: str) -> PreprocessReport | None:
    """``P.report.json`` of a dataset written by tools/preprocess_data.py, if there is one."""
    from megatron_mio.data.indexed import REPORT_SUFFIX

    try:
        return read_report(prefix + REPORT_SUFFIX)
    except FileNotFoundError:
        return None


def _coverage(ds: PackedDataset, seq_length: int) -> tuple[dict, list[str]]:
    """Packed tokens against the tokens preprocessing wrote (and the corpus it read)."""
    meta, report = ds.meta, preprocessing_report(ds.prefix)
    if report is None:
        return {"written_tokens": None, "coverage": None}, []
    written = report.body.tokens.total
    corpus = report.corpus_tokens
    coverage = meta["packed_tokens"] / written if written else 1.0
    warnings = []
    if coverage < COVERAGE_WARNING:
        warnings.append(
            f"only {100 * coverage:.1f}% of the tokens preprocessing wrote reach the "
            f"packs ({meta['packed_tokens']:,} of {written:,}): {meta['n_too_long']:,} documents "
            f"are longer than seq_length {seq_length} (preprocessed with --seq-length "
            f"{report.settings.seq_length}; use the training seq_length there so they are split)")
    if corpus and written / corpus < COVERAGE_WARNING:
        warnings.append(
            f"preprocessing wrote {100 * written / corpus:.1f}% of its corpus' "
            f"tokens ({report.body.dropped.tokens:,} dropped: see {ds.prefix}.report.json)")
    return {"written_tokens": written, "coverage": coverage,
            "corpus_tokens": corpus, "corpus_coverage": meta["packed_tokens"] / corpus
            if corpus else 1.0}, warnings


def mixture_statistics(blend: BlendedPackedDataset, modality_table: np.ndarray | None) -> dict:
    """What an operator checks before launching: packs, fill, drops, modality shares of tokens,
    and how much of what preprocessing wrote reaches the packs (``warnings`` below 99%)."""
    s = blend.datasets[0].seq_length
    per_dataset, expected_tokens, expected_modality = [], 0.0, np.zeros(len(Modality))
    warnings = []
    for ds, name, weight in zip(blend.datasets, blend.names, blend.weights):
        meta = ds.meta
        counts = modality_token_counts(ds, modality_table)
        coverage, dataset_warnings = _coverage(ds, s)
        label = ds.prefix if name == ds.prefix else f"{name} ({ds.prefix})"
        warnings += [f"{label}: {w}" for w in dataset_warnings]
        per_dataset.append(dict(
            type=name, prefix=ds.prefix, weight=float(weight), documents=meta["n_documents"],
            packs=meta["n_packs"], packed_tokens=meta["packed_tokens"],
            efficiency=meta["packed_tokens"] / (meta["n_packs"] * s),
            dropped_too_long=meta["n_too_long"], dropped_too_long_tokens=meta["too_long_tokens"],
            dropped_empty=meta["n_empty"],
            mean_documents_per_pack=(meta["n_documents"] - meta["n_too_long"] - meta["n_empty"])
            / meta["n_packs"],
            max_documents_per_pack=meta["max_documents_in_a_pack"],
            **coverage,
        ))
        # Each draw from this dataset yields packed_tokens / packs tokens on average.
        expected_tokens += weight * meta["packed_tokens"] / meta["n_packs"]
        expected_modality += weight * counts / meta["n_packs"]
    share = expected_modality / expected_modality.sum() if expected_modality.sum() else expected_modality
    return dict(
        seq_length=s,
        packs=sum(d["packs"] for d in per_dataset),
        efficiency=expected_tokens / s,  # real tokens per slot in the mixture's samples
        dropped_too_long=sum(d["dropped_too_long"] for d in per_dataset),
        mean_documents_per_pack=float(np.average([d["mean_documents_per_pack"] for d in per_dataset],
                                                 weights=blend.weights)),
        cu_seqlens_length=blend.cu_seqlens_length,
        token_share={m.label: float(share[m]) for m in Modality},
        datasets=per_dataset,
        warnings=warnings,
    )
