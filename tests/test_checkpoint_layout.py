"""The checkpoint layout's one owner: directory resolution, the record every checkpoint carries,
and the query the launch scripts make at job start (no torch, an answer for every state)."""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys

import pytest
import torch

from megatron_mio.checkpoint.description import (
    describe_model, description_from_checkpoint, preset_of, read_description, saved_layout,
)
from megatron_mio.checkpoint.layout import (
    CHECKPOINT_CONFIG, DESCRIPTION_KEY, TRACKER, common_state, iteration_dir, resolve_checkpoint, saved_iterations,
    write_tracker,
)
from megatron_mio.model.presets import get_preset
from tests.distributed import REPO_ROOT


def query(directory) -> subprocess.CompletedProcess:
    """``python -m megatron_mio.checkpoint latest DIR``, checking that it imported no torch."""
    code = ("import sys; from megatron_mio.checkpoint.__main__ import main; status = main(sys.argv[1:]); "
            "assert 'torch' not in sys.modules; sys.exit(status)")
    return subprocess.run([sys.executable, "-c", code, "latest", str(directory)], cwd=REPO_ROOT,
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))


def test_latest_query_answers_none_found_and_damaged(tmp_path):
    none = query(tmp_path / "nowhere")
    assert (none.returncode, none.stdout) == (0, "")
    iteration_dir(tmp_path, 300).mkdir()
    (iteration_dir(tmp_path, 300) / CHECKPOINT_CONFIG).write_text("{}")
    write_tracker(tmp_path, 300)
    found = query(tmp_path)
    assert (found.returncode, found.stdout) == (0, "300\n")
    (tmp_path / TRACKER).write_text("3OO")
    damaged = query(tmp_path)
    assert damaged.returncode == 3 and damaged.stdout == ""
    assert f"{tmp_path / TRACKER}, line 1: expected an iteration number, found '3OO'" in damaged.stderr


def test_launch_script_resumes_through_the_query(tmp_path):
    """The stage script resumes from CKPT_DIR when the query finds a checkpoint there, also when
    its tracker is damaged (the trainer then names the damage; --ckpt-step picks another)."""
    env = dict(os.environ, MIO_REPO=str(REPO_ROOT), PYTHON=sys.executable, DRY_RUN="1", MOCK_DATA="1",
               GPUS_PER_NODE="1", LAUNCHER="local", CKPT_DIR=str(tmp_path), LOAD_DIR="")
    env.pop("SLURM_JOB_ID", None)

    def launch():
        return subprocess.run(["bash", str(REPO_ROOT / "examples/pretrain_stage1.sh")], env=env,
                              capture_output=True, text=True, check=True)

    assert "--load" not in launch().stdout
    iteration_dir(tmp_path, 12).mkdir()
    (iteration_dir(tmp_path, 12) / CHECKPOINT_CONFIG).write_text("{}")
    write_tracker(tmp_path, 12)
    run = launch()
    assert f"resuming from {tmp_path} (iteration 12)" in run.stderr and f"--load {tmp_path}" in run.stdout
    (tmp_path / TRACKER).write_text("twelve")
    assert f"--load {tmp_path}" in launch().stdout


def test_resolve_checkpoint(tmp_path):
    for iteration in (5, 10):
        iteration_dir(tmp_path, iteration).mkdir()
        (iteration_dir(tmp_path, iteration) / CHECKPOINT_CONFIG).write_text("{}")
    (tmp_path / "iter_x").mkdir()
    assert saved_iterations(tmp_path) == [5, 10]
    assert iteration_dir(tmp_path, 5).name == "iter_0000005"
    write_tracker(tmp_path, 5)
    assert resolve_checkpoint(tmp_path) == iteration_dir(tmp_path, 5)
    assert resolve_checkpoint(tmp_path, 10) == iteration_dir(tmp_path, 10)
    assert resolve_checkpoint(iteration_dir(tmp_path, 10)) == iteration_dir(tmp_path, 10)
    with pytest.raises(FileNotFoundError, match=rf"iter_0000007: no torch_dist checkpoint \({CHECKPOINT_CONFIG} missing\)"):
        resolve_checkpoint(tmp_path, 7)
    with pytest.raises(FileNotFoundError, match=f"no {TRACKER}"):
        resolve_checkpoint(tmp_path / "iter_x")


def test_the_config_file_is_megatron_cores():
    from megatron.core.dist_checkpointing.core import CONFIG_FNAME

    assert CHECKPOINT_CONFIG == CONFIG_FNAME


def test_trainer_and_converter_describe_the_model_alike():
    """Both records read back the same way, survive megatron-core's ``weights_only`` load of the
    common state, and only the trainer's carries the layout a resume compares."""
    preset = get_preset("tiny")
    layout = saved_layout(tensor_parallel=2, pipeline_parallel=1, virtual_pipeline=None, data_parallel=4,
                          seq_length=64, bf16=False)
    trainer = describe_model(preset, 300, 512, layout=layout)
    converter = describe_model(preset, 300, 512, special_ids={"bos_token_id": 1, "eos_token_id": 2})
    for description in (trainer, converter):
        buffer = io.BytesIO()
        torch.save(common_state(0, 0, description), buffer)
        buffer.seek(0)
        loaded = read_description(torch.load(buffer, weights_only=True))
        assert loaded == description and preset_of(loaded) == preset
        assert (loaded["vocab_size"], loaded["padded_vocab_size"]) == (300, 512)
    assert trainer["tensor_model_parallel_size"] == 2 and "tensor_model_parallel_size" not in converter
    assert (converter["bos_token_id"], trainer["bos_token_id"]) == (1, None)


def test_a_checkpoint_without_a_description_needs_the_preset():
    megatron_lm = {DESCRIPTION_KEY: argparse.Namespace(num_layers=2)}  # Megatron-LM records its flags there
    assert read_description(megatron_lm) is None
    with pytest.raises(ValueError, match="records no model description.*pass --preset"):
        description_from_checkpoint(megatron_lm, None, None, "ckpt")
    described = description_from_checkpoint(megatron_lm, "tiny", 300, "ckpt")
    assert preset_of(described) == get_preset("tiny") and described["vocab_size"] == 300
