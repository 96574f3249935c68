"""Where the trainer's metrics go: one :class:`MetricsSink` per destination.

The trainer builds one record (a dict) per logged iteration (``metrics.MetricsLogger``) and hands
it to every sink; sinks exist on the logging rank only (:func:`open_sinks` decides, once), so no
sink checks ranks.  Console: Megatron-LM's iteration line; TensorBoard: one scalar per numeric
field; ``--metrics-file``: one JSON line per record; ``--wandb-project``: Weights & Biases.
"""

from __future__ import annotations

import importlib.util
import json
import os

from megatron_mio.tokenizer.vocab import Modality
from megatron_mio.training.arguments import ConfigError
from megatron_mio.training.config import LoggingConfig
from megatron_mio.training.timers import REGIONS as TIMED_REGIONS


class MetricsSink:
    """One destination of the iteration and validation records."""

    def write_iteration(self, record: dict) -> None:
        raise NotImplementedError

    def write_validation(self, iteration: int, valid_loss: float | None) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class ConsoleSink(MetricsSink):
    def write_iteration(self, record: dict) -> None:
        print(format_line(record), flush=True)

    def write_validation(self, iteration: int, valid_loss: float | None) -> None:
        print(f" validation loss at iteration {iteration} | lm loss: {_fmt(valid_loss, '.6E')} |", flush=True)


# Record fields that are the step axis or constants (the run's layout), not curves.
_NOT_SCALARS = ("iteration", "train_iters", "tensor_model_parallel_size", "pipeline_model_parallel_size",
                "virtual_pipeline_model_parallel_size", "data_parallel_size", "world_size")


def scalars(record: dict) -> dict[str, float]:
    """The record's numeric fields (bools and None excluded), as a dashboard plots them."""
    return {key: value for key, value in record.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in _NOT_SCALARS}


class TensorBoardSink(MetricsSink):
    def __init__(self, directory: str):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=directory)

    def write_iteration(self, record: dict) -> None:
        for key, value in scalars(record).items():
            self.writer.add_scalar(key, value, record["iteration"])
        self.writer.flush()

    def write_validation(self, iteration: int, valid_loss: float | None) -> None:
        if valid_loss is not None:
            self.writer.add_scalar("valid_loss", valid_loss, iteration)

    def close(self) -> None:
        self.writer.close()


class JsonlSink(MetricsSink):
    """``--metrics-file``: appended, one JSON object per line (a resumed run continues the file)."""

    def __init__(self, path: str):
        self.path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    def _append(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def write_iteration(self, record: dict) -> None:
        self._append(record)

    def write_validation(self, iteration: int, valid_loss: float | None) -> None:
        self._append({"iteration": iteration, "valid_loss": valid_loss})


class WandbSink(MetricsSink):
    """Weights & Biases (``--wandb-project``): the same scalars as TensorBoard, at the iteration as step.

    ``wandb`` is optional (:func:`check_wandb` refuses the flag without it, at start-up); with
    ``WANDB_MODE=offline`` the run is written under ``--wandb-save-dir`` for ``wandb sync``.
    """

    def __init__(self, project: str, name: str | None, save_dir: str | None):
        import wandb

        if save_dir:
            os.makedirs(save_dir, exist_ok=True)
        self.run = wandb.init(project=project, name=name, dir=save_dir)

    def write_iteration(self, record: dict) -> None:
        self.run.log(scalars(record), step=record["iteration"])

    def write_validation(self, iteration: int, valid_loss: float | None) -> None:
        if valid_loss is not None:
            self.run.log({"valid_loss": valid_loss}, step=iteration)

    def close(self) -> None:
        self.run.finish()


def check_wandb(config: LoggingConfig) -> None:
    """``--wandb-project`` without the wandb package: one line at start-up, on every rank."""
    if config.wandb_project and importlib.util.find_spec("wandb") is None:
        raise ConfigError("--wandb-project needs the wandb package, which is not installed: pip install wandb")


def open_sinks(config: LoggingConfig, is_logging_rank: bool) -> list[MetricsSink]:
    """The sinks the flags ask for, on the logging rank; none elsewhere."""
    if not is_logging_rank:
        return []
    sinks: list[MetricsSink] = [ConsoleSink()]
    if config.tensorboard_dir:
        sinks.append(TensorBoardSink(config.tensorboard_dir))
    if config.metrics_file:
        sinks.append(JsonlSink(config.metrics_file))
    if config.wandb_project:
        sinks.append(WandbSink(config.wandb_project, config.wandb_exp_name, config.wandb_save_dir))
    return sinks


def _fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def format_line(r: dict) -> str:
    """Megatron-LM's iteration line, with the per-modality losses and MFU added."""
    names = [kind.label for kind in Modality]
    return (
        f" iteration {r['iteration']:8d}/{r['train_iters']:8d} |"
        f" consumed samples: {r['consumed_samples']:12d} |"
        f" elapsed time per iteration (ms): {r['elapsed_ms_per_iteration']:.1f} |"
        f" learning rate: {r['learning_rate']:.6E} |"
        f" global batch size: {r['global_batch_size']:5d} |"
        f" lm loss: {_fmt(r['loss'], '.6E')} |"
        f" loss {'/'.join(names)}: {' / '.join(_fmt(r[f'loss_{name}'], '.4E') for name in names)} |"
        + (f" loss scale: {r['loss_scale']:.1f} |" if r["loss_scale"] is not None else "")
        + f" grad norm: {_fmt(r['grad_norm'], '.3f')} |"
        f" number of skipped iterations: {r['skipped_iterations']:3d} |"
        f" tokens/s: {r['tokens_per_second']:.0f} |"
        f" TFLOP/s/GPU: {r['tflops_per_gpu']:.1f} |"
        f" MFU: {_fmt(None if r['mfu'] is None else 100 * r['mfu'], '.1f')}{'' if r['mfu'] is None else '%'} |"
        + (_timer_fields(r) if "time_forward_backward_ms" in r else "")
    )


def _timer_fields(r: dict) -> str:
    """The timers' part of the line (``--timing-log-level`` 1 or 2): per iteration, max over ranks."""
    regions = " / ".join(f"{r[f'time_{name}_ms']:.1f}" for name in TIMED_REGIONS)
    compute = r.get("time_stage_compute_ms")  # --timing-log-level 2
    return (f" time per iteration (ms) data/fwd-bwd/grad-reduce/optimizer/checkpoint: {regions} |"
            + ("" if compute is None else f" stage compute (ms): {compute:.1f} |")
            + f" peak memory (MB): {r['peak_memory_mb']:.0f} |"
            f" iteration (ms) slowest/fastest rank: {r['iteration_ms_slowest_rank']:.1f} / "
            f"{r['iteration_ms_fastest_rank']:.1f} |")
