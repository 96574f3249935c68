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
from megatron_mio.training.arguments import parse_args, refused_fusions
from megatron_mio.training.checkpointing import Checkpointer, ResumePoint, find_checkpoint
from megatron_mio.training.losses import LossReport, reduce_reports
from megatron_mio.training.metrics import CountingIterator, IntervalStats, MetricsLogger
from megatron_mio.training.optimizer import build_optimizer, build_scheduler, optimizer_step
from megatron_mio.training.resume import check_schedule
from megatron_mio.training.run import RunDescription, describe_run
from megatron_mio.training.signals import ExitSignal
from megatron_mio.training.step import forward_step

log = logging.getLogger("megatron_mio.training")


class TooManySkippedIterations(RuntimeError):
    pass


def initialize(args) -> mio_platform.Platform:
    """Platform, process group, model-parallel groups and seeds (Megatron-LM's seeding)."""
    plat = mio_platform.setup(args.use_cpu)
    mio_platform.init_distributed(plat, args.distributed_timeout_minutes)
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=args.tensor_model_parallel_size,
        pipeline_model_parallel_size=args.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=args.virtual_pipeline_model_parallel_size,
        # Every group, not only the default one: a rank waiting on a lost peer gives up then.
        distributed_timeout_minutes=args.distributed_timeout_minutes,
    )
    seed = args.seed + 100 * parallel_state.get_pipeline_model_parallel_rank()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)
    return plat


def _set_pipeline_p2p(config, *, interleaved: bool) -> None:
    """How pipeline stages exchange tensors: Megatron-LM's choice, separate sends for VPP.

    The interleaved schedule's steady state sends an activation to the next stage and a gradient
    to the previous one in the same call.  With two pipeline ranks both are the same peer, and
    megatron-core's batched p2p (``batch_p2p_comm``, TransformerConfig's default) posts them as
    untagged sends in the order [prev, next] on both sides: the peer's "from previous" receive gets
    the gradient and its "from next" receive the activation (same shape, so no error, only wrong
    numbers; NVIDIA/Megatron-LM#750, #1450; NCCL matches same-peer ops in order too).  The
    overlapped, unbatched p2p (Megatron-LM's default for interleaving) sends the two directions on
    different process groups, so they cannot cross.
    """
    config.overlap_p2p_comm = interleaved
    config.batch_p2p_comm = not interleaved


def build_model(args, run: RunDescription, plat) -> list[DistributedDataParallel]:
    """This rank's model chunks (one, or one per virtual stage), wrapped in megatron's DDP."""
    fusions = plan_fusions(args.attention_backend, plat.device.type, refused_fusions(args))
    if torch.distributed.get_rank() == 0:
        log.info("fusions: %s; gradients reduced in %s", fusions.describe(),
                 "fp32" if args.accumulate_allreduce_grads_in_fp32 else "the model dtype")
    config = build_transformer_config(
        run.preset,
        tensor_parallel_size=run.tensor_parallel_size,
        pipeline_parallel_size=run.pipeline_parallel_size,
        virtual_pipeline_parallel_size=run.virtual_pipeline_parallel_size,
        sequence_parallel=args.sequence_parallel,
        bf16=args.bf16,
        recompute_granularity=args.recompute_granularity,
        recompute_method=args.recompute_method,
        recompute_num_layers=args.recompute_num_layers,
        fusions=fusions,
        deterministic_init=args.use_cpu_initialization,
    )
    if args.fp16:
        config.fp16 = True
        config.params_dtype = config.pipeline_dtype = torch.float16
    config.calculate_per_token_loss = True
    vp = run.virtual_pipeline_parallel_size
    _set_pipeline_p2p(config, interleaved=vp is not None)
    chunks = []
    for index in range(vp or 1):
        vp_stage = index if vp else None
        module = build_gpt_model(
            config, run.preset, run.padded_vocab_size,
            attention_backend=args.attention_backend,
            pre_process=parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage),
            post_process=parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage),
            vp_stage=vp_stage,
        )
        mask_vocab_padding(module, run.vocab_size)
        module.to(plat.device)
        if args.bf16 or args.fp16:
            module = Float16Module(config, module)
        chunks.append(module)
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=args.accumulate_allreduce_grads_in_fp32,
        overlap_grad_reduce=args.overlap_grad_reduce,
        overlap_param_gather=args.overlap_param_gather,
        use_distributed_optimizer=args.use_distributed_optimizer,
        check_for_nan_in_grad=False,  # non-finite gradients skip the step (optimizer_step)
        average_in_collective=False,  # per-token loss: sum over DP, finalize divides by tokens
    )
    return [
        DistributedDataParallel(config=config, ddp_config=ddp_config, module=chunk, disable_bucketing=index > 0)
        for index, chunk in enumerate(chunks)
    ]


def _wire_schedule_hooks(args, model, optimizer) -> None:
    """The callbacks megatron-core's schedules call (Megatron-LM's setup)."""
    config = model[0].config
    config.grad_scale_func = optimizer.scale_loss
    config.finalize_model_grads_func = finalize_model_grads
    if args.overlap_grad_reduce:
        no_sync = [chunk.no_sync for chunk in model]
        config.no_sync_func = no_sync[0] if len(model) == 1 else no_sync
    if args.overlap_param_gather:
        param_sync = [chunk.start_param_sync for chunk in model]
        config.param_sync_func = param_sync[0] if len(model) == 1 else param_sync


@dataclass
class TrainState:
    """Where the run is; what a checkpoint restores."""

    iteration: int = 0
    consumed_samples: int = 0
    skipped_total: int = 0
    skipped_in_a_row: int = 0
    last_saved: int | None = None  # the iteration of the newest checkpoint of this run, if any


@dataclass(frozen=True)
class StepResult:
    stepped: bool  # False: a non-finite gradient or loss, the update was skipped
    learning_rate: float  # the rate this iteration's update used
    grad_norm: float


class Trainer:
    """The loop over iterations of one run, on parts built by :func:`pretrain`."""

    def __init__(self, args, run: RunDescription, plat, model, optimizer, scheduler, checkpointer,
                 forward_step_func, vocabulary: mio_data.Vocabulary):
        self.args, self.run, self.plat = args, run, plat
        self.model, self.optimizer, self.scheduler, self.checkpointer = model, optimizer, scheduler, checkpointer
        self.forward = forward_step_func
        self.vocabulary = vocabulary
        self.schedule = get_forward_backward_func()
        self.dp_group = parallel_state.get_data_parallel_group(with_context_parallel=True)
        self.state = TrainState()
        self.stats = IntervalStats()
        self.logger: MetricsLogger | None = None  # from fit(): a failed resume writes no logs
        self.counter: CountingIterator | None = None
        self.started = time.time()

    def _open_logger(self) -> MetricsLogger:
        world = torch.distributed.get_world_size()
        return MetricsLogger(
            self.run, train_iters=self.args.train_iters, world_size=world,
            device_name=None if self.plat.use_cpu else torch.cuda.get_device_name(self.plat.device),
            is_logging_rank=torch.distributed.get_rank() == world - 1,  # a last pipeline stage: it has the loss
            tensorboard_dir=self.args.tensorboard_dir, metrics_file=self.args.metrics_file,
        )

    def resume(self, point: ResumePoint) -> None:
        iteration, consumed = self.checkpointer.load(self.model, self.optimizer, self.scheduler, point)
        if self.args.finetune:  # weights from the checkpoint, everything else fresh
            return
        self.state.iteration, self.state.consumed_samples = iteration, consumed
        self.state.last_saved = iteration

    # ---- one iteration ----------------------------------------------------------------------
    def _run_schedule(self, data_iterator, *, forward_only: bool) -> LossReport | None:
        """Forward (and backward) over this iteration's micro-batches; the loss on last stages."""
        reports = self.schedule(
            forward_step_func=self.forward, data_iterator=data_iterator, model=self.model,
            num_microbatches=self.run.num_microbatches, seq_length=self.run.seq_length,
            micro_batch_size=self.run.micro_batch_size, forward_only=forward_only,
        )
        if not parallel_state.is_pipeline_last_stage(ignore_virtual=True):
            return None
        return reduce_reports(reports, self.dp_group)

    def train_step(self, data_iterator) -> StepResult:
        """One iteration: gradients of the global batch, the optimizer step, the interval sums."""
        for chunk in self.model:
            chunk.zero_grad_buffer()
        self.optimizer.zero_grad()
        state, stats = self.state, self.stats
        # Megatron-LM's forward-backward and optimizer timers: the device is synchronised at
        # each boundary so that the split is device time, not launch time.
        torch.cuda.synchronize()
        began = time.perf_counter()
        loss = self._run_schedule(data_iterator, forward_only=False)
        torch.cuda.synchronize()
        gradients_done = time.perf_counter()
        learning_rate = self.optimizer.param_groups[0]["lr"]  # before the scheduler moves it
        stepped, grad_norm = optimizer_step(self.optimizer)
        torch.cuda.synchronize()
        stats.forward_backward_seconds += gradients_done - began
        stats.optimizer_seconds += time.perf_counter() - gradients_done
        if stepped:
            self.scheduler.step(increment=1)
            state.skipped_in_a_row = 0
        else:
            state.skipped_total += 1
            state.skipped_in_a_row += 1
            stats.skipped += 1
        state.iteration += 1
        state.consumed_samples += self.run.global_batch_size
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
        in_a_row, limit = self.state.skipped_in_a_row, self.args.max_skipped_iterations_in_a_row
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
            loss_scale=self.optimizer.get_loss_scale().item() if self.args.fp16 else None,
        )
        if not result.stepped:
            record["skipped_reason"] = "non-finite gradient or loss"
        self.logger.emit(record)
        self.stats = IntervalStats()

    def evaluate(self) -> float | None:
        """Per-token loss over ``--eval-iters`` validation batches (the same batches every time)."""
        iterators = mio_data.valid_iterators(self.args, self.vocabulary, len(self.model))
        for chunk in self.model:
            chunk.eval()
        total = LossReport().total
        with torch.no_grad():
            for _ in range(self.args.eval_iters):
                loss = self._run_schedule(iterators if len(self.model) > 1 else iterators[0], forward_only=True)
                if loss is not None:
                    total = total + loss.total
        for chunk in self.model:
            chunk.train()
        return total.mean()

    def save(self) -> None:
        """A checkpoint of this iteration, unless this run already saved it."""
        if not self.args.save or self.state.last_saved == self.state.iteration:
            return
        began = time.time()
        self.checkpointer.save(self.state.iteration, self.state.consumed_samples,
                               self.model, self.optimizer, self.scheduler)
        self.state.last_saved = self.state.iteration
        self.stats.started += time.time() - began  # checkpoint time is not training throughput

    def should_stop(self, exit_signal: ExitSignal) -> str | None:
        """Why every rank stops after this iteration, or None.

        The signal and the time limit are per rank; one all-reduce decides for all, so that every
        rank stops at the same iteration.
        """
        args = self.args
        limit = args.exit_duration_in_mins
        over_time = limit is not None and (time.time() - self.started) / 60.0 > limit
        flags = torch.tensor([exit_signal.received is not None, over_time], dtype=torch.int32, device=self.plat.device)
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
        signalled, timed_out = (bool(flag) for flag in flags.tolist())
        if signalled:
            return f"signal {exit_signal.received or 'on another rank'}"
        if args.exit_interval and self.state.iteration % args.exit_interval == 0:
            return "exit-interval"
        if timed_out:
            return "exit-duration-in-mins"
        return None

    def _train_iterator(self):
        iterators = mio_data.train_iterators(self.args, self.vocabulary, self.state.consumed_samples,
                                             len(self.model))
        self.counter = iterators[0] = CountingIterator(iterators[0])
        return iterators if len(self.model) > 1 else iterators[0]

    def fit(self) -> dict:
        """Train to ``--train-iters`` or a stop; save; returns a summary (iteration, why it stopped)."""
        args, state = self.args, self.state
        data_iterator = self._train_iterator()
        self.logger = self._open_logger()
        exit_signal = ExitSignal(args.exit_signal_handler)
        self.started = self.stats.started = time.time()
        reason = None
        try:
            while reason is None and state.iteration < args.train_iters:
                result = self.train_step(data_iterator)
                self.checkpointer.finalize()
                if state.iteration % args.log_interval == 0 or not result.stepped:
                    self.log(result)
                self._check_skipped()
                if args.eval_interval and args.eval_iters and state.iteration % args.eval_interval == 0:
                    valid = self.evaluate()
                    if self.logger.is_logging_rank:
                        self.logger.emit_eval(state.iteration, valid)
                if args.save_interval and state.iteration % args.save_interval == 0:
                    self.save()
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
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stdout)
    args = parse_args(argv)
    resume = find_checkpoint(args)  # files only: a bad --load fails before any rank starts up
    check_schedule(args, resume)
    plat = initialize(args)
    if torch.distributed.get_rank() == 0:
        log.info(mio_platform.describe(plat, args.attention_backend))
    vocabulary = mio_data.read_vocabulary(args)  # the tokenizer, read once
    run = describe_run(args, vocabulary.size, resume)

    model = build_model(args, run, plat)
    optimizer = build_optimizer(args, model)
    scheduler = build_scheduler(args, optimizer)
    _wire_schedule_hooks(args, model, optimizer)
    forward = forward_step_func or partial(forward_step, attention_backend=args.attention_backend, device=plat.device)
    checkpointer = Checkpointer(args, run)
    try:
        trainer = Trainer(args, run, plat, model, optimizer, scheduler, checkpointer, forward, vocabulary)
        if resume:
            trainer.resume(resume)
        return trainer.fit()
    finally:
        checkpointer.close()
