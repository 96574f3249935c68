"""The training loop, assembled from megatron-core parts.

parallel_state -> GPTModel chunks (``megatron_mio.model``) -> DistributedDataParallel ->
(distributed) AdamW + OptimizerParamScheduler -> the pipeline schedule from
``get_forward_backward_func`` (no pipelining, 1F1B, or interleaved) with ``finalize_model_grads``
-> dist_checkpointing.  The loss is per token (see ``step.py``).
"""

from __future__ import annotations

import logging
import math
import random
import sys
import time
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
from megatron_mio.training.arguments import model_preset, parse_args, refused_fusions
from megatron_mio.training.checkpointing import Checkpointer, find_checkpoint, padded_vocab_for_load
from megatron_mio.training.metrics import CountingIterator, IntervalStats, MetricsLogger
from megatron_mio.training.optimizer import build_optimizer, build_scheduler, optimizer_step
from megatron_mio.training.resume import check_schedule
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


def build_model(args, preset, plat) -> list[DistributedDataParallel]:
    """This rank's model chunks (one, or one per virtual stage), wrapped in megatron's DDP."""
    fusions = plan_fusions(args.attention_backend, plat.device.type, refused_fusions(args))
    if torch.distributed.get_rank() == 0:
        log.info("fusions: %s; gradients reduced in %s", fusions.describe(),
                 "fp32" if args.accumulate_allreduce_grads_in_fp32 else "the model dtype")
    config = build_transformer_config(
        preset,
        tensor_parallel_size=args.tensor_model_parallel_size,
        pipeline_parallel_size=args.pipeline_model_parallel_size,
        virtual_pipeline_parallel_size=args.virtual_pipeline_model_parallel_size,
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
    vp = args.virtual_pipeline_model_parallel_size
    _set_pipeline_p2p(config, interleaved=vp is not None)
    chunks = []
    for index in range(vp or 1):
        vp_stage = index if vp else None
        module = build_gpt_model(
            config, preset, args.padded_vocab_size,
            attention_backend=args.attention_backend,
            pre_process=parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage),
            post_process=parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage),
            vp_stage=vp_stage,
        )
        mask_vocab_padding(module, args.true_vocab_size)
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


def _reduce_loss_reports(losses: list[dict]) -> torch.Tensor | None:
    """Sum the per-micro-batch reports over micro-batches and data-parallel ranks (last stage)."""
    if not parallel_state.is_pipeline_last_stage(ignore_virtual=True):
        return None
    total = torch.stack([item["loss_sums"].float() for item in losses]).sum(0)
    torch.distributed.all_reduce(total, group=parallel_state.get_data_parallel_group(with_context_parallel=True))
    return total.double().cpu()


def _reduce_counts(counter: CountingIterator, device) -> tuple[int, int]:
    counts = torch.tensor(counter.take(), dtype=torch.float64, device=device)
    torch.distributed.all_reduce(counts, group=parallel_state.get_data_parallel_group(with_context_parallel=True))
    return int(counts[0].item()), int(counts[1].item())


def _should_stop_for_time(args, start: float, device) -> bool:
    if args.exit_duration_in_mins is None:
        return False
    over = torch.tensor([1 if (time.time() - start) / 60.0 > args.exit_duration_in_mins else 0], dtype=torch.int32, device=device)
    torch.distributed.all_reduce(over, op=torch.distributed.ReduceOp.MAX)
    return bool(over.item())


def evaluate(args, model, forward, table, num_microbatches) -> float | None:
    """Per-token loss over ``--eval-iters`` validation batches (the same batches every time)."""
    iterators = mio_data.valid_iterators(args, args.true_vocab_size, table, len(model))
    for chunk in model:
        chunk.eval()
    sums = torch.zeros(2, dtype=torch.float64)
    run = get_forward_backward_func()
    with torch.no_grad():
        for _ in range(args.eval_iters):
            losses = run(
                forward_step_func=forward, data_iterator=iterators if len(model) > 1 else iterators[0],
                model=model, num_microbatches=num_microbatches, seq_length=args.seq_length,
                micro_batch_size=args.micro_batch_size, forward_only=True,
            )
            reduced = _reduce_loss_reports(losses)
            if reduced is not None:
                sums += reduced[:2]
    for chunk in model:
        chunk.train()
    return float(sums[0] / sums[1]) if sums[1] > 0 else None


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
    preset = model_preset(args)
    args.true_vocab_size = mio_data.tokenizer_vocab_size(args)
    args.padded_vocab_size = padded_vocab_for_load(
        args.true_vocab_size, args.make_vocab_size_divisible_by, args.tensor_model_parallel_size,
        resume.layout if resume else None,
    )
    table = mio_data.modality_table(args, args.true_vocab_size)

    model = build_model(args, preset, plat)
    optimizer = build_optimizer(args, model)
    scheduler = build_scheduler(args, optimizer)
    _wire_schedule_hooks(args, model, optimizer)
    checkpointer = Checkpointer(args)
    try:
        return _train(args, plat, preset, table, model, optimizer, scheduler, checkpointer, forward_step_func, resume)
    finally:
        checkpointer.close()


def _train(args, plat, preset, table, model, optimizer, scheduler, checkpointer, forward_step_func, resume) -> dict:
    iteration, consumed = (checkpointer.load(model, optimizer, scheduler, resume) if resume else (0, 0))
    if args.finetune:  # weights from the checkpoint, everything else fresh
        iteration, consumed = 0, 0

    forward = forward_step_func or partial(forward_step, attention_backend=args.attention_backend, device=plat.device)
    iterators = mio_data.train_iterators(args, args.true_vocab_size, table, consumed, len(model))
    counter = CountingIterator(iterators[0])
    iterators[0] = counter
    data_iterator = iterators if len(model) > 1 else iterators[0]
    run = get_forward_backward_func()

    world = torch.distributed.get_world_size()
    device_name = None if plat.use_cpu else torch.cuda.get_device_name(plat.device)
    logger = MetricsLogger(args, preset, world, device_name, is_logging_rank=torch.distributed.get_rank() == world - 1)
    exit_signal = ExitSignal(args.exit_signal_handler, plat.device)
    stats = IntervalStats()
    skipped_total = skipped_in_a_row = 0
    last_saved = iteration if resume and not args.finetune else None
    start = time.time()
    stop_reason = "train-iters"

    def save():
        nonlocal last_saved
        if args.save and last_saved != iteration:
            began = time.time()
            checkpointer.save(iteration, consumed, model, optimizer, scheduler)
            last_saved = iteration
            stats.started += time.time() - began  # checkpoint time is not training throughput

    try:
        while iteration < args.train_iters:
            for chunk in model:
                chunk.zero_grad_buffer()
            optimizer.zero_grad()
            losses = run(
                forward_step_func=forward, data_iterator=data_iterator, model=model,
                num_microbatches=args.num_microbatches, seq_length=args.seq_length,
                micro_batch_size=args.micro_batch_size, forward_only=False,
            )
            lr = optimizer.param_groups[0]["lr"]  # the rate this iteration's update uses
            stepped, grad_norm = optimizer_step(optimizer)
            if stepped:
                scheduler.step(increment=1)
                skipped_in_a_row = 0
            else:
                skipped_total += 1
                skipped_in_a_row += 1
                stats.skipped += 1
            iteration += 1
            consumed += args.global_batch_size
            reduced = _reduce_loss_reports(losses)
            if reduced is not None:
                stats.loss_sums += reduced
            stats.grad_norms.append(grad_norm)
            stats.iterations += 1
            tokens, pairs = _reduce_counts(counter, plat.device)
            stats.tokens += tokens
            stats.pairs += pairs
            checkpointer.finalize()

            if iteration % args.log_interval == 0 or not stepped:
                record = logger.record(
                    iteration=iteration, consumed_samples=consumed,
                    lr=lr, stats=stats, total_skipped=skipped_total,
                    loss_scale=optimizer.get_loss_scale().item() if args.fp16 else None,
                )
                if not stepped:
                    record["skipped_reason"] = "non-finite gradient or loss"
                logger.emit(record)
                stats = IntervalStats()
            if skipped_in_a_row >= args.max_skipped_iterations_in_a_row:
                raise TooManySkippedIterations(
                    f"stopping at iteration {iteration}: {skipped_in_a_row} iterations in a row had a "
                    f"non-finite loss or gradient and were skipped (--max-skipped-iterations-in-a-row "
                    f"{args.max_skipped_iterations_in_a_row}); the weights are those of the last good "
                    f"step; check the data and the learning rate"
                )
            if args.eval_interval and args.eval_iters and iteration % args.eval_interval == 0:
                valid = evaluate(args, model, forward, table, args.num_microbatches)
                if logger.is_logging_rank:
                    logger.emit_eval(iteration, valid)
            if args.save_interval and iteration % args.save_interval == 0:
                save()
            if exit_signal.requested():
                stop_reason = f"signal {exit_signal.received or 'on another rank'}"
                break
            if args.exit_interval and iteration % args.exit_interval == 0:
                stop_reason = "exit-interval"
                break
            if _should_stop_for_time(args, start, plat.device):
                stop_reason = "exit-duration-in-mins"
                break
        save()
    finally:
        exit_signal.restore()
        logger.close()
    if torch.distributed.get_rank() == 0:
        log.info("training stopped at iteration %d (%s)", iteration, stop_reason)
    return {"iteration": iteration, "consumed_samples": consumed, "stop_reason": stop_reason,
            "skipped_iterations": skipped_total}
