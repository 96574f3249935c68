"""A new user's mistakes get one clear line: which flag, path or file, and what to do.

Each row of the table (a tokenizer directory that is missing or lacks the MIO tokens, a damaged
checkpoint, --seq-length beyond the model's positions, a negative --lr, a --load that does not
exist) is checked twice: in-process, where the check runs (argument parsing or the file checks of
``find_checkpoint``, both before any process group or model exists), and as a real 2-rank
``torchrun -m megatron_mio.pretrain`` whose output holds the message exactly once (rank 0) and no
traceback from the trainer.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pytest

from megatron_mio.checkpoint.layout import iteration_dir
from megatron_mio.training.arguments import ConfigError, parse_args
from megatron_mio.training.checkpointing import CheckpointError, find_checkpoint
from tests.distributed import run_torchrun
from tests.trainer_runs import TINY, train

BASE = ["--mock-data", "--vocab-size", "300", "--train-iters", "2", "--model-preset", "tiny", "--seq-length", "64"]


def load_args(load, *extra) -> argparse.Namespace:
    return parse_args([*BASE, "--load", str(load), *extra], world_size=1)


@pytest.fixture(scope="module")
def sentencepiece_dir(tmp_path_factory, sentencepiece_model_path) -> Path:
    """A base SentencePiece directory: tokenizer.model without the MIO tokens (no tokenizer.json)."""
    directory = tmp_path_factory.mktemp("base_sp")
    shutil.copy(sentencepiece_model_path, directory / "tokenizer.model")
    return directory


@pytest.fixture(scope="module")
def damaged(tmp_path_factory) -> Path:
    """A checkpoint directory with iterations 1 and 2, the latest one's data file truncated."""
    root = Path(tmp_path_factory.mktemp("damaged"))
    save = root / "ckpt"
    train(root, "two_iterations", 1, ["--train-iters", "2", "--save", save, "--save-interval", "1"])
    data = sorted(Path(iteration_dir(save, 2)).glob("*.distcp"))[0]
    with open(data, "r+b") as handle:
        handle.truncate(data.stat().st_size // 2)
    return save


def test_missing_tokenizer_directory(tmp_path):
    missing = tmp_path / "no_such_tokenizer"
    with pytest.raises(ConfigError, match=rf"--tokenizer-model {missing}: no such directory .*tools/build_tokenizer\.py"):
        parse_args([*BASE, "--tokenizer-model", str(missing)], world_size=1)


def test_base_sentencepiece_directory_is_not_a_mio_tokenizer(sentencepiece_dir):
    with pytest.raises(ConfigError, match=rf"--tokenizer-model {sentencepiece_dir} has no tokenizer\.json.*"
                                          r"MIO tokens added.*tools/build_tokenizer\.py"):
        parse_args([*BASE, "--tokenizer-model", str(sentencepiece_dir)], world_size=1)


def test_tokenizer_json_without_mio_tokens(tmp_path, mio_tokenizer_dir):
    """A tokenizer.json that lacks the MIO tokens (an HF base tokenizer) names them."""
    import json

    directory = tmp_path / "hf_base"
    shutil.copytree(mio_tokenizer_dir, directory)
    spec = json.loads((directory / "tokenizer.json").read_text())
    spec["added_tokens"] = [t for t in spec["added_tokens"] if not t["content"].startswith("<img")]
    (directory / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(ConfigError, match=rf"--tokenizer-model {directory} is not a usable MIO tokenizer: .*MIO tokens"):
        parse_args([*BASE, "--tokenizer-model", str(directory)], world_size=1)


@pytest.mark.multiprocess
@pytest.mark.slow
def test_damaged_checkpoint_names_iteration_file_and_fallback(damaged):
    data = sorted(Path(iteration_dir(damaged, 2)).glob("*.distcp"))[0]
    with pytest.raises(CheckpointError, match=rf"checkpoint iteration 2 in {damaged} is damaged: {data} has \d+ bytes, "
                                              r"its index needs \d+; resume from an earlier one with --ckpt-step 1"):
        find_checkpoint(load_args(damaged))
    assert find_checkpoint(load_args(damaged, "--ckpt-step", "1")).iteration == 1
    with pytest.raises(CheckpointError, match=r"--ckpt-step 7: .*iter_0000007 does not exist \(iterations saved in .*: 1, 2\)"):
        find_checkpoint(load_args(damaged, "--ckpt-step", "7"))


@pytest.mark.multiprocess
@pytest.mark.slow
def test_damaged_checkpoint_fallback_resumes(damaged, tmp_path):
    """The advice works: --ckpt-step 1 resumes from iteration 1 and trains iteration 2 again."""
    save = tmp_path / "ckpt"
    shutil.copytree(damaged, save)
    run = train(tmp_path, "fallback", 1, ["--train-iters", "2", "--load", save, "--ckpt-step", "1", "--save", save])
    assert [r["iteration"] for r in run["records"]] == [2]
    assert find_checkpoint(load_args(save)).iteration == 2  # rewritten whole


def test_seq_length_beyond_max_position_embeddings():
    with pytest.raises(ConfigError, match=r"--seq-length 1024 is longer than the model's --max-position-embeddings 256"):
        parse_args([*BASE, "--seq-length", "1024", "--max-position-embeddings", "256"], world_size=1)


@pytest.mark.parametrize("argv,match", [
    (["--lr", "-1"], r"--lr -1\.0 is invalid: it must be at least 0"),
    (["--weight-decay", "-0.1"], r"--weight-decay -0\.1 is invalid"),
    (["--adam-beta2", "1.0"], r"--adam-beta2 1\.0 is invalid: it must be in \[0, 1\)"),
    (["--lr", "1e-4", "--min-lr", "1e-3"], r"--min-lr 0\.001 is above --lr 0\.0001"),
    (["--micro-batch-size", "0"], r"--micro-batch-size 0 is invalid"),
    (["--lr", "fast"], r"argument --lr: invalid float value: 'fast'"),
])
def test_bad_values(argv, match):
    with pytest.raises(ConfigError, match=match):
        parse_args([*BASE, *argv], world_size=1)


def test_load_that_does_not_exist(tmp_path):
    missing = tmp_path / "no_such_checkpoint"
    with pytest.raises(ConfigError, match=rf"--load {missing}: no such directory.*--allow-missing-checkpoint"):
        load_args(missing)
    # The caller that says a missing checkpoint is fine (the launch scripts' resume) starts from scratch...
    assert find_checkpoint(load_args(missing, "--allow-missing-checkpoint")) is None
    # ...but --finetune needs the weights either way.
    with pytest.raises(ConfigError, match=rf"--load {missing}: no such directory \(expected the checkpoint"):
        load_args(missing, "--finetune", "--allow-missing-checkpoint")


def test_load_directory_without_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match=rf"--load {tmp_path}: no checkpoint to resume from "
                                              r"\(latest_checkpointed_iteration\.txt is missing; iterations saved: none\)"
                                              r"; pass --allow-missing-checkpoint"):
        find_checkpoint(load_args(tmp_path))
    assert find_checkpoint(load_args(tmp_path, "--allow-missing-checkpoint")) is None


def mistake(row: str, root: Path, damaged: Path, sentencepiece_dir: Path) -> tuple[list[str], str]:
    """The flags of one table row, and the text that names the culprit."""
    return {
        "tokenizer": (["--tokenizer-model", str(root / "no_tok")], f"--tokenizer-model {root / 'no_tok'}: no such directory"),
        "base_sentencepiece": (["--tokenizer-model", str(sentencepiece_dir)], f"{sentencepiece_dir} has no tokenizer.json"),
        "damaged_checkpoint": (["--load", str(damaged)], "iteration 2 in"),
        "seq_length": (["--seq-length", "1024", "--max-position-embeddings", "256"], "--max-position-embeddings 256"),
        "negative_lr": (["--lr", "-1"], "--lr -1.0 is invalid"),
        "missing_load": (["--load", str(root / "no_ckpt")], f"--load {root / 'no_ckpt'}: no such directory"),
    }[row]


# One launch per table row (the base SentencePiece directory is the tokenizer row's other case,
# checked in-process above).
ROWS = ["tokenizer", "damaged_checkpoint", "seq_length", "negative_lr", "missing_load"]


@pytest.mark.multiprocess
@pytest.mark.slow
@pytest.mark.parametrize("row", ROWS)
def test_each_mistake_is_one_line_on_rank_0(row, tmp_path, damaged, sentencepiece_dir):
    flags, culprit = mistake(row, tmp_path, damaged, sentencepiece_dir)
    proc = run_torchrun("megatron_mio.pretrain", 2, [*TINY, "--train-iters", "2", *flags], module=True,
                        timeout=300, check=False)
    output = proc.stdout + proc.stderr
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert proc.returncode != 0
    assert len(errors) == 1 and culprit in errors[0], output[-5000:]
    # torchrun's agent reports the failed rank; no rank prints a traceback through the trainer.
    frames = [line for line in output.splitlines() if line.strip().startswith('File "') and "megatron_mio" in line]
    assert not frames, output[-5000:]
