"""The training loop, assembled from megatron-core parts.

parallel_state -> GPTModel chunks (``megatron_mio.model``) -> DistributedDataParallel ->
(distributed) AdamW + OptimizerParamScheduler -> the pipeline schedule from
``get_forward_backward_func`` (no pipelining, 1F1B, or interleaved) with ``finalize_model_grads``
-> dist_checkpointing.  The loss is per token (see ``step.py``).

:func:`pretrain` builds the parts from the command line and a :class:`RunDescription`, then a
:class:`Trainer` runs the loop: ``train_step``, ``log``, ``evaluate``, ``save``, ``should_stop``.
"""

from __future__ import annotations

import logging
import random
import sys
import time
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from megatron.core import parallel_state, tensor_parallel
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.transformer.module import Float16Module

from megatron_mio import platform as mio_platform
from megatron_mio.model import build_gpt_model, build_transformer_config
from megatron_mio.model.fusions import plan_fusions
from megatron_mio.model.vocab_padding import mask_vocab_padding
from megatron_mio.training import data as mio_data
from megatron_mio.training.arguments import parse_args
from megatron_mio.training.checkpointing import Checkpointer, ResumePoint, check_save_directory, resume_point
from megatron_mio.training.config import ModelConfig, ParallelConfig, TrainingConfig
from megatron_mio.training.loggers import check_wandb, open_sinks
from megatron_mio.training.losses import LossReport, reduce_reports
from megatron_mio.training.metrics import CountingIterator, IntervalStats, MetricsLogger
from megatron_mio.training.optimizer import build_optimizer, build_scheduler, optimizer_config, optimizer_step
from megatron_mio.training.resume import check_schedule
from megatron_mio.training.run import RunDescription, check_vocabulary, describe_run
from megatron_mio.training.signals import ExitSignal
from megatron_mio.training.state import TrainState
from megatron_mio.training.step import forward_step
from megatron_mio.training.timers import IntervalTimers, TimedIterator, timed

log = logging.getLogger("megatron_mio.training")


class TooManySkippedIterations(RuntimeError):
    pass


def initialize(config: TrainingConfig) -> mio_platform.Platform:
    """Platform, process group, model-parallel groups and seeds (Megatron-LM's seeding)."""
    plat = mio_platform.setup(config.use_cpu)
    timeout = config.parallel.timeout_minutes
    mio_platform.init_distributed(plat, timeout)
    layout = config.parallel.layout
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=layout.tensor_model_parallel_size,
        pipeline_model_parallel_size=layout.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=layout.virtual_pipeline_model_parallel_size,
        # Every group, not only the default one: a rank waiting on a lost peer gives up then.
        distributed_timeout_minutes=timeout,
    )
    seed = config.seed + 100 * parallel_state.get_pipeline_model_parallel_rank()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)
    return plat


def build_model(model_config: ModelConfig, parallel: ParallelConfig, run: RunDescription,
                plat: mio_platform.Platform) -> list[DistributedDataParallel]:
    """This rank's model chunks (one, or one per virtual stage), wrapped in megatron's DDP."""
    fusions = plan_fusions(model_config.attention_backend, plat.device.type, model_config.refused_fusions)
    precision = run.precision
    if torch.distributed.get_rank() == 0:
        log.info("fusions: %s; gradients reduced in %s", fusions.describe(),
                 "fp32" if precision.grad_reduce_in_fp32 else "the model dtype")
    config = build_transformer_config(run.preset, run.layout, precision, recompute=model_config.recompute,
                                      fusions=fusions, deterministic_init=model_config.use_cpu_initialization)
    vp = run.layout.virtual_pipeline_model_parallel_size
    chunks = []
    for index in range(run.layout.num_model_chunks):
        vp_stage = index if vp else None
        module = build_gpt_model(
            config, run.preset, run.padded_vocab_size,
            attention_backend=model_config.attention_backend,
            pre_process=parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage),
            post_process=parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage),
            vp_stage=vp_stage,
        )
        mask_vocab_padding(module, run.vocab_size)
        module.to(plat.device)
        if precision.name != "fp32":
            module = Float16Module(config, module)
        chunks.append(module)
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=precision.grad_reduce_in_fp32,
        overlap_grad_reduce=parallel.overlap_grad_reduce,
        overlap_param_gather=parallel.overlap_param_gather,
        use_distributed_optimizer=parallel.use_distributed_optimizer,
        check_for_nan_in_grad=False,  # non-finite gradients skip the step (optimizer_step)
        average_in_collective=False,  # per-token loss: sum over DP, finalize divides by tokens
    )
    return [
        DistributedDataParallel(config=config, ddp_config=ddp_config, module=chunk, disable_bucketing=index > 0)
        for index, chunk in enumerate(chunks)
    ]


def _wire_schedule_hooks(parallel: ParallelConfig, model, optimizer) -> None:
    """The callbacks megatron-core's schedules call (Megatron-LM's setup)."""
    config = model[0].config
    config.grad_scale_func = optimizer.scale_loss
    config.finalize_model_grads_func = finalize_model_grads
    if parallel.overlap_grad_reduce:
        no_sync = [chunk.no_sync for chunk in model]
        config.no_sync_func = no_sync[0] if len(model) == 1 else no_sync
    if parallel.overlap_param_gather:
        param_sync = [chunk.start_param_sync for chunk in model]
        config.param_sync_func = param_sync[0] if len(model) == 1 else param_sync


@dataclass(frozen=True)
class StepResult:
    stepped: bool  # False: a non-finite gradient or loss, the update was skipped
    learning_rate: float  # the rate this iteration's update used
    grad_norm: float


@dataclass(frozen=True)
class TrainingParts:
    """What :func:`pretrain` builds for the loop."""

    model: list
    optimizer: object
    scheduler: object
    checkpointer: Checkpointer
    forward_step: object  # megatron-core forward_step_func
    train_data: mio_data.BatchSource
    valid_data: mio_data.BatchSource | None  # None: no evaluation


class Trainer:
    """The loop over iterations of one run, on parts built by :func:`pretrain`."""

    def __init__(self, config: TrainingConfig, run: RunDescription, plat: mio_platform.Platform, parts: TrainingParts):
        self.stop, self.logging, self.run, self.plat = config.stop, config.logging, run, plat
        self.save_interval = config.checkpoint.save_interval if config.checkpoint.save else None
        self.saves = bool(config.checkpoint.save)
        self.finetune = config.checkpoint.finetune
        self.eval_interval = config.data.eval_interval if config.data.evaluates else None
        self.eval_iters = config.data.eval_iters
        self.model, self.optimizer, self.scheduler = parts.model, parts.optimizer, parts.scheduler
        self.checkpointer, self.forward, self.parts = parts.checkpointer, parts.forward_step, parts
        self.schedule = get_forward_backward_func()
        self.dp_group = parallel_state.get_data_parallel_group(with_context_parallel=True)
        self.state = TrainState()
        self.stats = IntervalStats()
        self.logger: MetricsLogger | None = None  # from fit(): a failed resume writes no logs
        self.counter: CountingIterator | None = None
        self.timers = IntervalTimers(plat.device, config.logging.timing_log_level)
        self.model[0].config.finalize_model_grads_func = timed(
            self.model[0].config.finalize_model_grads_func, self.timers, "grad_reduce_exposed")
        self.valid_batches = mio_data.ValidationBatches(parts.valid_data, len(parts.model)) if parts.valid_data else None
        self.started = time.time()

    def _open_logger(self) -> MetricsLogger:
        world = torch.distributed.get_world_size()
        # The last rank is on a last pipeline stage: it has the loss.
        sinks = open_sinks(self.logging, is_logging_rank=torch.distributed.get_rank() == world - 1)
        return MetricsLogger(
            self.run, sinks, train_iters=self.stop.train_iters, world_size=world,
            device_name=None if self.plat.use_cpu else torch.cuda.get_device_name(self.plat.device),
        )

    def resume(self, point: ResumePoint, retarget_schedule: tuple[float, float] | None) -> None:
        self.state = self.checkpointer.load(self.model, self.optimizer, self.scheduler, point,
                                            retarget_schedule=retarget_schedule)

    # ---- one iteration ----------------------------------------------------------------------
    def _run_schedule(self, data_iterator, *, forward_only: bool) -> LossReport | None:
        """Forward (and backward) over this iteration's micro-batches; the loss on last stages."""
        batch = self.run.batch
        reports = self.schedule(
            forward_step_func=self.forward, data_iterator=data_iterator, model=self.model,
            num_microbatches=batch.num_microbatches, seq_length=batch.seq_length,
            micro_batch_size=batch.micro_batch_size, forward_only=forward_only,
        )
        if not parallel_state.is_pipeline_last_stage(ignore_virtual=True):
            return None
        return reduce_reports(reports, self.dp_group)

    def train_step(self, data_iterator) -> StepResult:
        """One iteration: gradients of the global batch, the optimizer step, the interval sums."""
        for chunk in self.model:
            chunk.zero_grad_buffer()
        self.optimizer.zero_grad()
        with self.timers.region("forward_backward"), self.timers.stage_compute(self.model[0].config):
            loss = self._run_schedule(data_iterator, forward_only=False)
        learning_rate = self.optimizer.param_groups[0]["lr"]  # before the scheduler moves it
        with self.timers.region("optimizer"):
            stepped, grad_norm = optimizer_step(self.optimizer)
        state, stats = self.state, self.stats
        if stepped:
            self.scheduler.step(increment=1)
            state.skipped_in_a_row = 0
        else:
            state.skipped_total += 1
            state.skipped_in_a_row += 1
            stats.skipped += 1
        state.iteration += 1
        state.consumed_samples += self.run.batch.global_batch_size
        if loss is not None:
            stats.loss = stats.loss + loss
        stats.grad_norms.append(grad_norm)
        stats.iterations += 1
        tokens, pairs = self._reduce_counts()
        stats.tokens += tokens
        stats.pairs += pairs
        return StepResult(stepped, learning_rate, grad_norm)

    def _reduce_counts(self) -> tuple[int, int]:
        """Tokens and attention pairs of this iteration's batches, over the data-parallel ranks."""
        counts = torch.tensor(self.counter.take(), dtype=torch.float64, device=self.plat.device)
        torch.distributed.all_reduce(counts, group=self.dp_group)
        return int(counts[0].item()), int(counts[1].item())

    def _check_skipped(self) -> None:
        in_a_row, limit = self.state.skipped_in_a_row, self.stop.max_skipped_iterations_in_a_row
        if in_a_row >= limit:
            raise TooManySkippedIterations(
                f"stopping at iteration {self.state.iteration}: {in_a_row} iterations in a row had a "
                f"non-finite loss or gradient and were skipped (--max-skipped-iterations-in-a-row "
                f"{limit}); the weights are those of the last good step; check the data and the learning rate"
            )

    # ---- around the iterations --------------------------------------------------------------
    def log(self, result: StepResult) -> None:
        """The iteration record of the interval that ends here; starts a new interval."""
        record = self.logger.record(
            iteration=self.state.iteration, consumed_samples=self.state.consumed_samples,
            lr=result.learning_rate, stats=self.stats, total_skipped=self.state.skipped_total,
            loss_scale=self.optimizer.get_loss_scale().item() if self.run.precision.fp16 else None,
        )
        if self.timers.enabled:  # every rank takes part: one all-reduce per logged line
            record.update(self.timers.reduce(record["elapsed_ms_per_iteration"], self.stats.iterations))
        if not result.stepped:
            record["skipped_reason"] = "non-finite gradient or loss"
        self.logger.emit(record)
        self.stats = IntervalStats()

    def evaluate(self) -> float | None:
        """Per-token loss over ``--eval-iters`` validation batches (the same batches every time)."""
        iterators = self.valid_batches.new_pass()
        iterators = iterators if len(self.model) > 1 else iterators[0]
        for chunk in self.model:
            chunk.eval()
        total = LossReport().total
        with torch.no_grad():
            for _ in range(self.eval_iters):
                loss = self._run_schedule(iterators, forward_only=True)
                if loss is not None:
                    total = total + loss.total
        for chunk in self.model:
            chunk.train()
        return total.mean()

    def save(self) -> None:
        """A checkpoint of this iteration, unless this run already saved it."""
        if not self.saves or self.state.last_saved == self.state.iteration:
            return
        began = time.time()
        with self.timers.region("checkpoint"):
            self.checkpointer.save(self.state, self.model, self.optimizer, self.scheduler)
        self.state.last_saved = self.state.iteration
        self.stats.started += time.time() - began  # checkpoint time is not training throughput

    def should_stop(self, exit_signal: ExitSignal) -> str | None:
        """Why every rank stops after this iteration, or None.

        The signal and the time limit are per rank; one all-reduce decides for all, so that every
        rank stops at the same iteration.
        """
        stop = self.stop
        limit = stop.exit_duration_in_mins
        over_time = limit is not None and (time.time() - self.started) / 60.0 > limit
        flags = torch.tensor([exit_signal.received is not None, over_time], dtype=torch.int32, device=self.plat.device)
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
        signalled, timed_out = (bool(flag) for flag in flags.tolist())
        if signalled:
            return f"signal {exit_signal.received or 'on another rank'}"
        if stop.exit_interval and self.state.iteration % stop.exit_interval == 0:
            return "exit-interval"
        if timed_out:
            return "exit-duration-in-mins"
        return None

    def _train_iterator(self):
        iterators = [TimedIterator(iterator, self.timers)
                     for iterator in self.parts.train_data.iterators(self.state.consumed_samples, len(self.model))]
        self.counter = iterators[0] = CountingIterator(iterators[0])
        return iterators if len(self.model) > 1 else iterators[0]

    def _after_step(self, result: StepResult) -> None:
        """Log, check, evaluate and save as the intervals say."""
        iteration = self.state.iteration
        if iteration % self.logging.log_interval == 0 or not result.stepped:
            self.log(result)
        self._check_skipped()
        if self.eval_interval and iteration % self.eval_interval == 0:
            self.logger.emit_eval(iteration, self.evaluate())
        if self.save_interval and iteration % self.save_interval == 0:
            self.save()

    def fit(self) -> dict:
        """Train to ``--train-iters`` or a stop; save; returns a summary (iteration, why it stopped)."""
        state = self.state
        data_iterator = self._train_iterator()
        self.logger = self._open_logger()
        exit_signal = ExitSignal(self.stop.exit_signal_handler)
        self.started = self.stats.started = time.time()
        reason = None
        try:
            while reason is None and state.iteration < self.stop.train_iters:
                result = self.train_step(data_iterator)
                self.checkpointer.finalize()
                self._after_step(result)
                reason = self.should_stop(exit_signal)
            self.save()
        finally:
            exit_signal.restore()
            self.logger.close()
        reason = reason or "train-iters"
        if torch.distributed.get_rank() == 0:
            log.info("training stopped at iteration %d (%s)", state.iteration, reason)
        return {"iteration": state.iteration, "consumed_samples": state.consumed_samples,
                "stop_reason": reason, "skipped_iterations": state.skipped_total}


def pretrain(argv: list[str] | None = None, forward_step_func=None) -> dict:
    """Run training as the command line describes; returns a summary (iteration, why it stopped).

    ``forward_step_func`` replaces ``step.forward_step`` (same signature); the default is the
    MIO forward step.
    """
    return train(parse_args(argv), forward_step_func)


def train(config: TrainingConfig, forward_step_func=None) -> dict:
    """Run training as ``config`` describes (``pretrain``, once the flags are parsed)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stdout)
    resume, vocabulary = _startup_checks(config)
    plat = initialize(config)
    if torch.distributed.get_rank() == 0:
        log.info(mio_platform.describe(plat, config.model.attention_backend))
    run = describe_run(config, vocabulary.size, resume)
    checkpointer = Checkpointer(config.checkpoint, run, use_distributed_optimizer=config.parallel.use_distributed_optimizer,
                                rng_device_type=plat.rng_device_type)
    try:
        trainer = Trainer(config, run, plat, _build_parts(config, run, plat, vocabulary, checkpointer, forward_step_func))
        if resume:
            optim = config.optim
            trainer.resume(resume, (optim.lr, optim.min_lr) if optim.override_opt_param_scheduler else None)
        return trainer.fit()
    finally:
        checkpointer.close()


def _startup_checks(config: TrainingConfig) -> tuple[ResumePoint | None, mio_data.Vocabulary]:
    """Files only, before any process group or model: a mistake fails in seconds, as one line."""
    check_save_directory(config.checkpoint.save)
    check_wandb(config.logging)
    resume = resume_point(config.checkpoint)
    check_schedule(config.optim, config.checkpoint, resume)
    vocabulary = mio_data.read_vocabulary(config.data)  # the tokenizer, read once
    check_vocabulary(resume, vocabulary.size, config.data)
    if not config.data.mock_data:
        from megatron_mio.training import (
            real_data,  # the packed-data stack, only for real data
        )

        real_data.check_sources(config.data)
    return resume, vocabulary


def _build_parts(config: TrainingConfig, run: RunDescription, plat: mio_platform.Platform,
                 vocabulary: mio_data.Vocabulary, checkpointer: Checkpointer, forward_step_func) -> TrainingParts:
    parallel = config.parallel
    model = build_model(config.model, parallel, run, plat)
    optimizer = build_optimizer(optimizer_config(config.optim, run.precision, distributed=parallel.use_distributed_optimizer,
                                                 overlap_param_gather=parallel.overlap_param_gather), model)
    scheduler = build_scheduler(config.optim, optimizer)
    _wire_schedule_hooks(parallel, model, optimizer)
    forward = forward_step_func or partial(forward_step, attention_backend=config.model.attention_backend,
                                           device=plat.device)
    data, batch = config.data, config.batch
    return TrainingParts(
        model, optimizer, scheduler, checkpointer, forward,
        train_data=mio_data.train_source(data, batch, vocabulary, config.stop.train_iters),
        valid_data=mio_data.valid_source(data, batch, vocabulary) if data.evaluates else None,
    )
