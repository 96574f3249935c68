"""Arguments: Megatron-LM spellings, --config YAML with flags on top, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from megatron_mio.model.presets import get_preset
from megatron_mio.training.arguments import ConfigError, parse_args, parse_flags

REPO = Path(__file__).resolve().parents[1]
BASE = ["--mock-data", "--vocab-size", "512", "--train-iters", "10"]


def write(tmp_path, text, name="run.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_megatron_flags_and_derived_sizes():
    args = parse_args([*BASE, "--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2",
                       "--micro-batch-size", "2", "--global-batch-size", "32", "--lr-warmup-fraction", "0.03",
                       "--train-iters", "1000", "--num-layers-per-virtual-pipeline-stage", "4"], world_size=16)
    assert args.parallel.layout.data_parallel_size == 4 and args.batch.num_microbatches == 4
    assert args.optim.lr_warmup_steps == 30 and args.optim.lr_decay_iters == 1000
    assert args.parallel.layout.virtual_pipeline_model_parallel_size == 4  # 32 yi-6b layers / PP 2 / 4 per virtual stage


def test_yaml_keys_dashed_or_underscored_and_flags_override(tmp_path):
    config = write(tmp_path, "lr: 3e-5\nlr-warmup-fraction: 0.03\nmodel_preset: tiny\nnum_layers: 3\nbf16: true\n"
                             "data-path: [0.5, a, 0.5, b]\n")
    argv = ["--config", config, "--vocab-size", "512", "--train-iters", "10", "--lr", "1e-4"]
    args = parse_flags(argv)
    assert args.lr == 1e-4  # the flag wins over the file
    assert args.lr_warmup_fraction == 0.03 and args.bf16 is True
    assert args.data_path == ["0.5", "a", "0.5", "b"]
    preset = parse_args(argv, world_size=1).model.preset
    assert preset.num_layers == 3 and preset.hidden_size == 64  # preset with one field overridden
    args = parse_args(["--config", config, "--vocab-size", "512", "--train-iters", "10", "--num-layers", "5"], world_size=1)
    assert args.model.preset.num_layers == 5


def test_unknown_yaml_key_names_file_line_and_key(tmp_path):
    config = write(tmp_path, "lr: 3e-5\nlearning_rate: 1e-4\n")
    with pytest.raises(ConfigError, match=r"run\.yaml:2: unknown key 'learning_rate'"):
        parse_args(["--config", config, *BASE], world_size=1)


@pytest.mark.parametrize("text,match", [
    ("lr: fast\n", r"run\.yaml:1: key 'lr': 'fast' is not a valid float"),
    ("bf16: 1\n", r"run\.yaml:1: key 'bf16': expected true or false"),
    ("lr_decay_style: stepwise\n", r"run\.yaml:1: key 'lr_decay_style': 'stepwise' is not one of"),
    ("- lr\n", r"expected a mapping"),
])
def test_bad_yaml_values_are_errors(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        parse_args(["--config", write(tmp_path, text), *BASE], world_size=1)


@pytest.mark.parametrize("argv,world,match", [
    (["--tensor-model-parallel-size", "3"], 4, "not divisible by tensor x pipeline"),
    (["--global-batch-size", "3", "--micro-batch-size", "2"], 1, "not a multiple of micro batch"),
    (["--finetune"], 1, "--finetune needs --load"),
    (["--bf16", "--fp16"], 1, "exclusive"),
    (["--data-path", "x"], 1, "exactly one data source"),
])
def test_bad_combinations(argv, world, match):
    with pytest.raises(ConfigError, match=match):
        parse_args([*BASE, *argv], world_size=world)


@pytest.mark.parametrize("stage,iters,batch", [("stage1", 24800, 2048), ("stage2", 12800, 2048),
                                                ("stage3", 32200, 128), ("sft", 3000, 128)])
def test_stage_configs_hold_the_paper_defaults(stage, iters, batch, mio_tokenizer_dir):
    config = str(REPO / "examples" / "configs" / f"{stage}.yaml")
    gpus = batch // 16
    # A real tokenizer directory: --tokenizer-model is checked while parsing.
    argv = ["--config", config, "--tokenizer-model", mio_tokenizer_dir]
    args, run = parse_flags(argv), parse_args(argv, world_size=gpus)
    assert (args.train_iters, args.global_batch_size, args.seq_length) == (iters, batch, 2800)
    assert (args.lr, args.lr_decay_style, args.lr_warmup_fraction, args.clip_grad) == (3e-5, "cosine", 0.03, 1.0)
    assert args.optimizer == "adam" and args.bf16 and args.model_preset == "yi-6b"
    assert run.batch.global_batch_size // run.parallel.layout.data_parallel_size == 16  # 16 packs per GPU
    assert run.optim.lr_warmup_steps == int(0.03 * iters)


def test_tiny_cpu_config_runs_arguments():
    args = parse_args(["--config", str(REPO / "examples" / "configs" / "tiny_cpu.yaml"), "--mock-data",
                       "--vocab-size", "512"], world_size=2)
    assert args.use_cpu and args.model.preset == get_preset("tiny") and args.batch.num_microbatches == 1
