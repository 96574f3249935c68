"""Stage mixtures, --data-path, pack_stats, and exact resume across data-parallel ranks."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from megatron_mio.data.mixture import (
    MixtureError, build_mixture_dataset, load_mixture, mixture_statistics, parse_data_path,
)
from megatron_mio.data.packed_dataset import PackingConfig
from megatron_mio.data.sampler import DataParallelBatchSampler, build_dataloader
from megatron_mio.tokenizer.vocab import Modality
from tests.distributed import REPO_ROOT, read_rank_results, run_torchrun
from tests.test_packed_dataset import modality_table, write_corpus

EXAMPLES = REPO_ROOT / "examples" / "data"
PAPER_RATIOS = {  # pair : language : interleaved+video : speech
    "stage1": {"image_text_pair": 12, "language": 2, "speech_text_pair": 2},
    "stage2": {"image_text_pair": 2, "language": 2, "interleaved_video": 6, "speech_text_pair": 6},
    "stage3": {"image_text_pair": 2, "language": 1, "interleaved_video": 1, "speech_text_pair": 12},
}


@pytest.mark.parametrize("stage", sorted(PAPER_RATIOS))
def test_shipped_stage_mixtures_have_the_paper_ratios(stage):
    mixture = load_mixture(EXAMPLES / f"{stage}.yaml")
    assert {t.name: t.weight for t in mixture.types} == PAPER_RATIOS[stage]
    assert all(t.prefixes for t in mixture.types)


def test_sft_template_parses():
    mixture = load_mixture(EXAMPLES / "sft.yaml")
    assert len(mixture.types) >= 3 and all(t.weight > 0 for t in mixture.types)


def write_yaml(tmp_path, text):
    path = tmp_path / "mix.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "body, match",
    [
        ("types:\n  a:\n    weight: 0\n    prefixes: [x]\n", r"mix.yaml:3: types.a.weight: weight must be > 0"),
        ("types:\n  a:\n    weight: -2\n    prefixes: [x]\n", r"mix.yaml:3: types.a.weight"),
        ("types:\n  a:\n    weight: two\n    prefixes: [x]\n", r"must be a number"),
        ("types:\n  a:\n    weight: 1\n", r"mix.yaml:3: types.a.prefixes"),
        ("types:\n  a:\n    weight: 1\n    prefix: [x]\n", r"mix.yaml:4: types.a.prefix: unknown field"),
        ("types: {}\n", r"non-empty mapping"),
        ("types: [\n", r"not valid YAML"),
        ("", r"mix.yaml: types: expected a non-empty mapping"),
    ],
)
def test_bad_mixture_files_name_file_line_and_field(tmp_path, body, match):
    with pytest.raises(MixtureError, match=match):
        load_mixture(write_yaml(tmp_path, body))


def test_relative_prefixes_resolve_against_the_yaml(tmp_path):
    mixture = load_mixture(write_yaml(tmp_path, "types:\n  a: {weight: 1, prefixes: [d/x, /abs/y]}\n"))
    assert mixture.types[0].prefixes == (str(tmp_path / "d" / "x"), "/abs/y")


def test_data_path_parsing():
    assert parse_data_path(["/d/x"]).types[0].prefixes == ("/d/x",)
    mixture = parse_data_path(["0.7", "/d/x", "0.3", "/d/y"])
    assert [(t.weight, t.prefixes) for t in mixture.types] == [(0.7, ("/d/x",)), (0.3, ("/d/y",))]
    for bad, match in [(["1", "/d/x", "2"], "pairs"), (["/d/x", "/d/y"], "not a weight"),
                       (["0", "/d/x"], "> 0"), (["-1", "/d/x"], "> 0")]:
        with pytest.raises(MixtureError, match=match):
            parse_data_path(bad)


@pytest.fixture(scope="module")
def three_types(tmp_path_factory):
    """pair (two prefixes), language, speech: lengths chosen so packs per prefix differ."""
    root = tmp_path_factory.mktemp("mix")
    rng = np.random.default_rng(0)
    write_corpus(str(root / "pair_a"), rng.integers(5, 20, size=120), seed=1)
    write_corpus(str(root / "pair_b"), rng.integers(5, 20, size=60), seed=2)
    write_corpus(str(root / "lang"), rng.integers(20, 64, size=40), seed=3)
    write_corpus(str(root / "speech"), rng.integers(30, 64, size=30), seed=4)
    (root / "stage.yaml").write_text(
        "types:\n"
        "  pair: {weight: 12, prefixes: [pair_a, pair_b]}\n"
        "  language: {weight: 2, prefixes: [lang]}\n"
        "  speech: {weight: 2, prefixes: [speech]}\n"
    )
    return root


def test_mixture_hits_its_ratios_at_every_prefix(three_types):
    blend = build_mixture_dataset(load_mixture(three_types / "stage.yaml"), PackingConfig(64, seed=5),
                                  num_samples=800)
    assert blend.names == ["pair", "pair", "language", "speech"]
    packs = [len(ds) for ds in blend.datasets]
    # The pair weight is split over its prefixes by their numbers of packs.
    np.testing.assert_allclose(blend.weights[:2] * 16, 12 * np.array(packs[:2]) / sum(packs[:2]))
    dataset = np.asarray(blend.dataset_index)
    t = np.arange(1, 801)
    for d in range(4):
        assert np.all(np.abs(np.cumsum(dataset == d) - blend.weights[d] * t) < 1 + 1e-9)
    by_type = {"pair": 12 / 16, "language": 2 / 16, "speech": 2 / 16}
    for name, share in by_type.items():
        members = [d for d, n in enumerate(blend.names) if n == name]
        taken = np.cumsum(np.isin(dataset, members))
        assert np.all(np.abs(taken - share * t) < len(members) + 1e-9)


def test_statistics_predict_the_modality_share_of_the_samples(three_types, tmp_path):
    blend = build_mixture_dataset(load_mixture(three_types / "stage.yaml"), PackingConfig(64, seed=5),
                                  num_samples=1600)
    table = modality_table()
    stats = mixture_statistics(blend, table)
    assert stats["dropped_too_long"] == 0 and 0.5 < stats["efficiency"] <= 1
    # Count what the samples really contain: tokens by modality over the real (non-pad) slots.
    counts = np.zeros(3)
    for i in range(len(blend)):
        item = blend[i]
        d, p = blend.locate(i)
        n_tokens = int(blend.datasets[d].lengths[blend.datasets[d].documents(p)].sum())
        counts += np.bincount(table[item["tokens"][:n_tokens].numpy()], minlength=3)
    observed = counts / counts.sum()
    predicted = np.array([stats["token_share"][m.name.lower()] for m in Modality])
    np.testing.assert_allclose(observed, predicted, atol=0.02)
    # Real tokens per slot over the samples matches the reported efficiency.
    assert abs(counts.sum() / (len(blend) * 64) - stats["efficiency"]) < 0.02


def load_tool(name):
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pack_stats_tool(three_types, tmp_path, capsys):
    pack_stats = load_tool("pack_stats")  # in-process: the tool is a thin main() over the package
    table_path = tmp_path / "table.npy"
    np.save(table_path, modality_table())
    argv = ["--data-config", str(three_types / "stage.yaml"), "--seq-length", "64",
            "--modality-table", str(table_path)]
    assert pack_stats.main(argv + ["--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["seq_length"] == 64 and len(report["datasets"]) == 4
    assert report["packs"] == sum(d["packs"] for d in report["datasets"])
    assert abs(sum(report["token_share"].values()) - 1) < 1e-9
    assert pack_stats.main(argv) == 0
    text = capsys.readouterr().out
    assert "efficiency" in text and "speech" in text
    assert pack_stats.main(["--data-path", str(tmp_path / "missing"), "--seq-length", "64"]) == 2
    assert "missing.idx: no such file" in capsys.readouterr().err


def sample_ids(loader_or_sampler):
    return [list(batch) for batch in loader_or_sampler]


def test_sampler_splits_each_step_across_ranks_and_resumes_at_any_dp_size():
    total, mbs = 60, 3
    ranks = [DataParallelBatchSampler(total, 0, mbs, r, 2) for r in range(2)]
    steps = list(zip(*(sample_ids(s) for s in ranks)))
    # Step t of DP=2 is exactly global samples [6t, 6t + 6): rank r holds block r.
    for t, (r0, r1) in enumerate(steps):
        assert r0 + r1 == list(range(6 * t, 6 * t + 6))
    # Stop after 4 steps (24 samples) and resume with DP=3: the global order continues.
    resumed = [sample_ids(DataParallelBatchSampler(total, 24, mbs, r, 3)) for r in range(3)]
    flat = [i for step in zip(*resumed) for block in step for i in block]
    assert flat == list(range(24, 24 + len(flat)))
    with pytest.raises(ValueError, match="consumed_samples"):
        DataParallelBatchSampler(total, total + 1, mbs, 0, 2)


def test_dataloader_batches_collate_to_the_contract(three_types):
    blend = build_mixture_dataset(load_mixture(three_types / "stage.yaml"), PackingConfig(64, seed=5),
                                  num_samples=64)
    batch = next(iter(build_dataloader(blend, micro_batch_size=4, data_parallel_rank=1,
                                       data_parallel_size=2, consumed_samples=8)))
    assert batch["tokens"].shape == (4, 64) and batch["cu_seqlens"].shape == (4, blend.cu_seqlens_length)
    for j, i in enumerate(range(12, 16)):  # rank 1 of the step starting at sample 8
        torch.testing.assert_close(batch["tokens"][j], blend[i]["tokens"])


@pytest.mark.multiprocess
def test_dp2_resume_with_torchrun_equals_uninterrupted_read(three_types, tmp_path):
    from tests.workers.packed_resume_worker import digest

    data_path = ["3", str(three_types / "pair_a"), "1", str(three_types / "speech")]
    k, mbs = 3, 2
    run_torchrun(REPO_ROOT / "tests" / "workers" / "packed_resume_worker.py", 2,
                 ["--data-path", *data_path, "--out", tmp_path, "--k", k, "--micro-batch", mbs],
                 timeout=300)
    results = read_rank_results(tmp_path, 2)
    blend = build_mixture_dataset(parse_data_path(data_path), PackingConfig(64, seed=11), num_samples=200)
    for rank, result in enumerate(results):
        assert len(result["uninterrupted"]) == 2 * k and len(result["resumed"]) == k
        assert result["resumed"] == result["uninterrupted"][k:]
        # And each batch is exactly the samples the global order assigns to this rank.
        for step, got in enumerate(result["uninterrupted"]):
            first = step * mbs * 2 + rank * mbs
            items = [blend[i] for i in range(first, first + mbs)]
            expected = {key: torch.stack([it[key] for it in items]) for key in items[0]}
            assert got["digest"] == digest(expected)
