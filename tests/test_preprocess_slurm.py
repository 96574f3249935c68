"""examples/preprocess.sh as a Slurm array under a real one-node cluster (ci/slurm): three tasks
write three shards of two JSONL files (line ranges, one crossing a file end); read through a glob
in a mixture YAML they are the documents and tokens of one single-process run, and merged with
tools/merge_datasets.py they are its files byte for byte.

The cluster is this module's own (its own state directory and ports, so it runs beside other
test clusters); its daemons are stopped by PID afterwards.  Slurm must be installed
(``bash ci/slurm/install.sh``, which CI runs before pytest); without it this test fails, it
never skips.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from megatron_mio.data import synthetic
from megatron_mio.data.indexed import dataset_files, open_dataset
from megatron_mio.data.mixture import build_mixture_dataset, load_mixture
from megatron_mio.data.packed_dataset import PackingConfig
from megatron_mio.data.preprocess import PreprocessConfig, preprocess, shard_output_prefix
from tests.slurm_cluster import one_node_cluster, run

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
TASKS = 3
SEQ_LENGTH = 256


@pytest.fixture(scope="module")
def slurm_env():
    """A one-node cluster of this module's own; yields the client environment."""
    with one_node_cluster("mio-slurm-preprocess-") as env:
        yield env


def _documents(prefixes) -> tuple[list[np.ndarray], list[np.ndarray]]:
    tokens, masks = [], []
    for prefix in prefixes:
        tokens_ds, mask_ds = open_dataset(prefix)
        tokens += [np.array(doc) for doc in tokens_ds]  # copies: the files close with the reader
        masks += [np.array(doc) for doc in mask_ds]
    return tokens, masks


def test_array_job_shards_equal_one_run(slurm_env, mio_tokenizer_dir, tmp_path):
    samples = synthetic.long_tail_samples(seed=11, n_pages=12, n_interleaved=8,
                                          median_sentences=15)
    samples += synthetic.pretraining_samples(seed=11)
    inputs = [synthetic.write_jsonl(tmp_path / "in" / f"part{k}.jsonl", samples[k::2])
              for k in range(2)]
    (tmp_path / "inputs.txt").write_text("\n".join(inputs) + "\n")
    single = str(tmp_path / "single")
    preprocess(PreprocessConfig(inputs=inputs, output_prefix=single, tokenizer=mio_tokenizer_dir,
                                stage="2", seq_length=SEQ_LENGTH, progress=False))

    shards = tmp_path / "shards" / "pages"
    env = dict(slurm_env, INPUT_LIST=str(tmp_path / "inputs.txt"), OUTPUT_PREFIX=str(shards),
               TOKENIZER=mio_tokenizer_dir, STAGE="2", SEQ_LENGTH=str(SEQ_LENGTH), WORKERS="1",
               MIO_REPO=str(REPO), PYTHON=sys.executable, PYTHONWARNINGS="ignore")
    log = tmp_path / "task-%a.out"
    proc = run(["sbatch", "--wait", f"--array=0-{TASKS - 1}", "-O", "--cpus-per-task=1",
                 "--time=10", f"--output={log}", str(REPO / "examples/preprocess.sh")],
                env=env, cwd=tmp_path, timeout=500, check=False)
    logs = "\n".join(p.read_text(errors="replace") for p in sorted(tmp_path.glob("task-*.out")))
    assert proc.returncode == 0, f"array job failed ({proc.returncode}): {proc.stderr}\n{logs}"
    prefixes = [shard_output_prefix(str(shards), i, TASKS) for i in range(TASKS)]
    for prefix in prefixes:
        assert all(os.path.exists(path) for path in dataset_files(prefix)), logs
    assert f"task 2 of {TASKS}" in logs

    # Read through a glob in a mixture YAML: the single run's documents, in order.
    (tmp_path / "mix.yaml").write_text("types:\n  pages: {weight: 1, prefixes: [shards/pages-*]}\n")
    mixture = load_mixture(tmp_path / "mix.yaml")
    assert list(mixture.types[0].prefixes) == prefixes
    shard_tokens, shard_masks = _documents(prefixes)
    single_tokens, single_masks = _documents([single])
    assert len(shard_tokens) == len(single_tokens) > len(samples)  # long pages were split
    assert all(np.array_equal(a, b) for a, b in zip(shard_tokens, single_tokens))
    assert all(np.array_equal(a, b) for a, b in zip(shard_masks, single_masks))
    assert all(len(open_dataset(p)[0]) > 0 for p in prefixes)  # every task wrote documents
    blend = build_mixture_dataset(mixture, PackingConfig(SEQ_LENGTH, seed=1, cache_dir=str(tmp_path / "cache")),
                                  num_samples=0)
    packed = sum(ds.meta["packed_tokens"] for ds in blend.datasets)
    assert packed == sum(t.size for t in single_tokens)  # every written token reaches a pack

    merged = tmp_path / "merged"
    run([sys.executable, str(REPO / "tools/merge_datasets.py"), "--input",
          str(shards) + "-*", "--output-prefix", str(merged)], timeout=300)
    for suffix in (".bin", ".idx", ".loss_mask.bin", ".loss_mask.idx", ".modality_counts.npy"):
        assert Path(str(merged) + suffix).read_bytes() == Path(single + suffix).read_bytes()
