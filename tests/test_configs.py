"""Per-component configs: one translation of the flags, one TransformerConfig, one owner per fact."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from megatron_mio.model import build_transformer_config, get_preset
from megatron_mio.model.model_config import ParallelLayout, Precision
from megatron_mio.training.arguments import build_configs, parse_args, parse_flags
from megatron_mio.training.config import LoggingConfig
from megatron_mio.training.loggers import ConsoleSink, JsonlSink, TensorBoardSink, open_sinks

BASE = ["--mock-data", "--vocab-size", "300", "--train-iters", "4", "--model-preset", "tiny", "--seq-length", "64"]


def test_flags_become_frozen_configs_and_the_namespace_is_not_extended():
    args = parse_flags([*BASE, "--bf16", "--tensor-model-parallel-size", "2", "--micro-batch-size", "2"])
    before = vars(args).copy()
    config = build_configs(args, world_size=4)
    assert vars(args) == before  # nothing derived is written back into the namespace
    assert config.parallel.layout == ParallelLayout(tensor_model_parallel_size=2, data_parallel_size=2)
    assert config.batch.global_batch_size == 4 and config.batch.num_microbatches == 1
    assert config.precision.name == "bf16" and config.precision.grad_reduce_in_fp32
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.optim.lr = 1.0


@pytest.mark.parametrize("flag,dtype", [("--fp16", torch.float16), ("--bf16", torch.bfloat16), (None, torch.float32)])
def test_transformer_config_is_complete_when_built(flag, dtype):
    """fp16, the dtypes, the per-token loss and the p2p choice are constructor arguments, so
    TransformerConfig validates them, and convert/parity.py builds the same config."""
    config = parse_args([*BASE, *([flag] if flag else [])], world_size=1)
    built = build_transformer_config(config.model.preset, config.parallel.layout, config.precision)
    assert built.params_dtype == built.pipeline_dtype == dtype
    assert built.fp16 == (flag == "--fp16") and built.bf16 == (flag == "--bf16")
    assert built.calculate_per_token_loss and built.batch_p2p_comm and not built.overlap_p2p_comm
    interleaved = build_transformer_config(get_preset("tiny"), ParallelLayout(1, 2, 2), Precision("fp32"))
    assert interleaved.overlap_p2p_comm and not interleaved.batch_p2p_comm


def test_each_sink_writes_the_record_on_the_logging_rank_only(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = LoggingConfig(log_interval=1, tensorboard_dir=str(tmp_path / "tb"), metrics_file=str(tmp_path / "m.jsonl"))
    assert open_sinks(config, is_logging_rank=False) == []
    sinks = open_sinks(config, is_logging_rank=True)
    assert [type(s) for s in sinks] == [ConsoleSink, TensorBoardSink, JsonlSink]
    record = {"iteration": 3, "train_iters": 4, "consumed_samples": 12, "elapsed_ms_per_iteration": 5.0,
              "learning_rate": 1e-3, "global_batch_size": 4, "loss": 2.5, "loss_text": 2.0, "loss_image": 3.0,
              "loss_speech": None, "loss_scale": None, "grad_norm": 1.0, "skipped_iterations": 0,
              "tokens_per_second": 100.0, "tflops_per_gpu": 0.0, "mfu": None}
    for sink in sinks:
        sink.write_iteration(record)
        sink.write_validation(3, 2.25)
        sink.close()
    printed = capsys.readouterr().out
    assert "iteration        3/       4" in printed and "validation loss at iteration 3 | lm loss: 2.250000E+00" in printed
    lines = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert lines == [record, {"iteration": 3, "valid_loss": 2.25}]
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert events.Scalars("loss")[0].value == 2.5 and events.Scalars("loss")[0].step == 3
    assert events.Scalars("valid_loss")[0].value == 2.25
    assert "iteration" not in events.Tags()["scalars"] and "loss_speech" not in events.Tags()["scalars"]


def test_the_trainers_record_carries_the_layout_and_the_sinks_keep_it_off_the_curves(tmp_path, capsys):
    """The record a run builds says how the run was laid out (Megatron-LM's argument names), so a
    metrics file alone can calibrate the planner; the console line and the curves leave it out."""
    import time

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from megatron_mio.training.loggers import format_line
    from megatron_mio.training.metrics import IntervalStats, MetricsLogger
    from megatron_mio.training.run import describe_run

    config = parse_args([*BASE, "--num-layers", "4", "--tensor-model-parallel-size", "2",
                         "--pipeline-model-parallel-size", "2", "--num-layers-per-virtual-pipeline-stage", "1",
                         "--recompute-granularity", "full", "--recompute-method", "uniform",
                         "--recompute-num-layers", "1", "--global-batch-size", "8"], world_size=8)
    logging = LoggingConfig(log_interval=1, tensorboard_dir=str(tmp_path / "tb"), metrics_file=str(tmp_path / "m.jsonl"))
    logger = MetricsLogger(describe_run(config, 300, None), open_sinks(logging, is_logging_rank=True),
                           train_iters=4, world_size=8, device_name=None)
    stats = IntervalStats(iterations=1, tokens=8 * 64, pairs=8 * 64 * 65 // 2, started=time.time() - 0.5)
    record = logger.record(iteration=1, consumed_samples=8, lr=1e-3, stats=stats, total_skipped=0, loss_scale=None)
    logger.emit(record)
    logger.close()
    layout = {"tensor_model_parallel_size": 2, "pipeline_model_parallel_size": 2,
              "virtual_pipeline_model_parallel_size": 2, "data_parallel_size": 2, "world_size": 8,
              "recompute_granularity": "full"}
    [written] = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert {key: written[key] for key in layout} == layout
    without_layout = {key: value for key, value in record.items() if key not in layout}
    assert capsys.readouterr().out.strip() == format_line(without_layout).strip()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert "tokens_per_second" in events.Tags()["scalars"]
    assert not set(layout) & set(events.Tags()["scalars"])

@pytest.fixture(scope="module")
def cpu_world():
    from megatron.core import parallel_state

    from megatron_mio import platform

    platform.init_distributed(platform.setup(use_cpu=True))
    parallel_state.initialize_model_parallel(1, 1)
    yield
    parallel_state.destroy_model_parallel()
    torch.distributed.destroy_process_group()


def test_validation_loaders_are_built_once_and_replayed(cpu_world):
    from megatron_mio.training import data as mio_data

    config = parse_args([*BASE, "--eval-interval", "1", "--eval-iters", "3"], world_size=1)
    vocab = mio_data.read_vocabulary(config.data)
    batches = mio_data.ValidationBatches(mio_data.valid_source(config.data, config.batch, vocab), num_chunks=1)
    first = [next(batches.new_pass()[0])["tokens"] for _ in range(1)]
    loaders = batches.loaders
    again = batches.new_pass()[0]
    assert batches.loaders is loaders  # the second evaluation reuses the loaders (and their workers)
    assert torch.equal(next(again)["tokens"], first[0])  # and starts from the first batch again
