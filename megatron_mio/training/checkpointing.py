"""Checkpoints: megatron-core dist_checkpointing in Megatron-LM's directory layout.

Where the files are and what the common state holds: ``megatron_mio.checkpoint.layout``; what a
checkpoint records about its model and the layout that saved it: ``megatron_mio.checkpoint.description``.
The tracker is written only after every rank has finished writing its iteration.

State-dict keys (what ``iter_N`` holds):

- ``model`` (``model0``, ``model1``, ... with a virtual pipeline): ``GPTModel.sharded_state_dict()``
  (``embedding.word_embeddings.weight``, ``decoder.layers.{i}.…``, ``decoder.final_layernorm.weight``,
  ``output_layer.weight``; global layer numbers, TP shards stitched), so any TP/PP reloads it.
- ``optimizer``: the (distributed) optimizer.  The distributed optimizer is saved
  ``dp_reshardable`` (each rank writes its own shard; a resume may change the data-parallel size
  only), or ``fully_reshardable`` with ``--dist-ckpt-optim-fully-reshardable`` (every data-parallel
  rank gathers the whole optimizer state of its model-parallel shard, 12 bytes per parameter, so
  that a resume may also change TP/PP; see docs/benchmarks.md for the memory of each).  The format
  is recorded in the checkpoint's content metadata and a load always reads it from there.
- ``opt_param_scheduler``: the LR / weight-decay schedule.
- ``rng_state``: per (PP, TP) rank Python/numpy/torch/device RNG and megatron's RNG tracker.
- ``iteration``, ``consumed_samples``, ``checkpoint_version``, ``args`` (the model description).

``--load`` resumes model, optimizer, schedule, RNG (when the layout is unchanged), iteration and
consumed samples, from the latest complete iteration or ``--ckpt-step N``.  ``--finetune`` takes
the model weights only.  A ``--load`` without a checkpoint is an error unless
``--allow-missing-checkpoint``; a checkpoint whose files are shorter than its index says is an
error naming the file and the earlier iterations to fall back to (``megatron_mio.checkpoint.discovery``).
RNG capture: ``megatron_mio.checkpoint.rng``; the padded vocabulary a resume adopts:
``megatron_mio.model.vocab_padding.padded_vocab_for_load``.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import torch
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.serialization import StrictHandling
from megatron.core.utils import unwrap_model
from torch.distributed.checkpoint.api import CheckpointException

from megatron_mio.checkpoint.description import (
    PARALLEL_FIELDS,
    ModelDescription,
    describe_model,
    read_description,
    saved_layout,
)
from megatron_mio.checkpoint.discovery import CheckpointError, ResumePoint, find_checkpoint
from megatron_mio.checkpoint.layout import (
    CONSUMED_SAMPLES_KEY,
    ITERATION_KEY,
    OPTIMIZER_KEY,
    RNG_KEY,
    SCHEDULER_KEY,
    TRACKER,
    TRAIN_STATE_KEY,
    common_state,
    iteration_dir,
    model_keys,
    read_tracker,
    write_tracker,
)
from megatron_mio.checkpoint.retention import apply_retention
from megatron_mio.checkpoint.rng import capture_rng_state, restore_rng_state, rng_sharded_object
from megatron_mio.training.arguments import ConfigError
from megatron_mio.training.config import CheckpointConfig
from megatron_mio.training.resume import loads_schedule, retarget_param_groups
from megatron_mio.training.run import RunDescription
from megatron_mio.training.state import TrainState

__all__ = ["CheckpointError", "Checkpointer", "ResumePoint", "resume_point"]

log = logging.getLogger(__name__)

DP_RESHARDABLE = {"distrib_optim_sharding_type": "dp_reshardable"}
FULLY_RESHARDABLE = {"distrib_optim_sharding_type": "fully_reshardable"}


def optimizer_metadata(fully_reshardable: bool) -> dict:
    """How the distributed optimizer's state is laid out in a checkpoint this run saves."""
    return dict(FULLY_RESHARDABLE if fully_reshardable else DP_RESHARDABLE)


def saved_optimizer_metadata(directory: str) -> dict:
    """The optimizer layout recorded in a checkpoint (older ones were all fully reshardable)."""
    return dist_checkpointing.load_content_metadata(directory) or dict(FULLY_RESHARDABLE)


def check_save_directory(save: str | None) -> None:
    """``--save`` can be written: checked at start (a probe file written and removed), not at the first save."""
    if not save:
        return
    probe = os.path.join(save, f".write_probe.{socket.gethostname()}.{os.getpid()}")
    try:
        os.makedirs(save, exist_ok=True)
        with open(probe, "w", encoding="utf-8") as handle:
            handle.write("probe")
        os.remove(probe)
    except OSError as err:
        raise ConfigError(f"--save {save}: cannot write there ({err.strerror or err}); choose a directory this "
                          f"job can write") from None


def resume_point(config: CheckpointConfig) -> ResumePoint | None:
    """The checkpoint ``--load`` / ``--ckpt-step`` name (see ``megatron_mio.checkpoint.discovery``)."""
    return find_checkpoint(config.load, config.ckpt_step, allow_missing=config.allow_missing_checkpoint,
                           finetune=config.finetune)


def describe_checkpoint(run: RunDescription) -> ModelDescription:
    """What a checkpoint of this run records about its model and layout."""
    layout = run.layout
    return describe_model(
        run.preset, run.vocab_size, run.padded_vocab_size,
        layout=saved_layout(tensor_parallel=layout.tensor_model_parallel_size,
                            pipeline_parallel=layout.pipeline_model_parallel_size,
                            virtual_pipeline=layout.virtual_pipeline_model_parallel_size,
                            data_parallel=layout.data_parallel_size, seq_length=run.batch.seq_length,
                            bf16=run.precision.bf16),
    )


def sharded_state_dict(model, optimizer=None, scheduler=None, *, optimizer_meta: dict, is_loading=False,
                       rng_state: dict | None = None, rng: bool = True) -> dict:
    chunks = unwrap_model(model)
    state = {}
    model_state = {}
    for key, chunk in zip(model_keys(len(chunks)), chunks):
        state[key] = chunk.sharded_state_dict()
        model_state[key] = state[key]
    if optimizer is not None:
        # Nested per chunk: with a virtual pipeline the chunks' local parameter names coincide.
        state[OPTIMIZER_KEY] = optimizer.sharded_state_dict(model_state, is_loading=is_loading, metadata=optimizer_meta)
    if scheduler is not None:
        state[SCHEDULER_KEY] = scheduler.state_dict()
    if rng:
        state[RNG_KEY] = rng_sharded_object(rng_state)
    return state


class CheckpointWriteError(RuntimeError):
    """A save failed (the run stops; the previous checkpoint and the tracker are intact)."""


def _write_failure(root: str, iteration: int, directory: str, needed: int, err: Exception) -> str:
    previous = read_tracker(root)
    if previous is not None:  # the last checkpoint's own size beats the estimate
        needed = sum(path.stat().st_size for path in iteration_dir(root, previous).rglob("*") if path.is_file())
    free = shutil.disk_usage(root).free if os.path.isdir(root) else None
    resume = (f"the last complete checkpoint is iteration {previous} ({TRACKER} still names it), and a restart "
              f"resumes from it" if previous is not None else "there is no complete checkpoint yet")
    space = f"{_gib(free)} free there, " if free is not None else ""
    return (f"could not save iteration {iteration} to {directory} ({_cause(err)}): {space}a checkpoint of this run "
            f"needs about {_gib(needed)}; {resume}. Free space or choose another --save, then restart")


def _cause(err: BaseException) -> str:
    """What failed, in a few words: the OS error if one is at hand, else the writer's own message
    (torch's CheckpointException carries each rank's error in ``failures``)."""
    errors = [err] + [failure[0] for failure in getattr(err, "failures", {}).values()]
    for error in errors:
        seen = error
        while seen is not None:
            if isinstance(seen, OSError) and seen.strerror:
                return seen.strerror
            seen = seen.__cause__ or seen.__context__
    lines = str(errors[-1]).strip().splitlines()
    return lines[-1] if lines else type(errors[-1]).__name__


def _gib(size: int) -> str:
    return f"{size / 2**30:.2f} GiB" if size >= 2**30 else f"{size / 2**20:.1f} MiB"


def _checkpoint_bytes_estimate(model, run: RunDescription, with_optimizer: bool) -> int:
    """About what one checkpoint takes: this rank's weights, times the model-parallel ranks, plus
    AdamW's fp32 main weights and two moments (12 bytes a parameter) when saved."""
    chunks = unwrap_model(model)
    params = sum(p.numel() for chunk in chunks for p in chunk.parameters())
    weight_bytes = sum(p.numel() * p.element_size() for chunk in chunks for p in chunk.parameters())
    layout = run.layout
    model_parallel = layout.tensor_model_parallel_size * layout.pipeline_model_parallel_size
    return model_parallel * (weight_bytes + (12 * params if with_optimizer else 0))


class Checkpointer:
    """Saves and loads; with ``--async-save`` the write runs in a background process."""

    def __init__(self, config: CheckpointConfig, run: RunDescription, *, use_distributed_optimizer: bool,
                 rng_device_type: str):
        self.config = config
        self.run = run
        self.use_distributed_optimizer = use_distributed_optimizer
        self.rng_device_type = rng_device_type  # the Platform's: "cuda", or "cpu" on --use-cpu
        self.async_queue = None
        self._warmup = None
        self._in_flight: tuple[int, str, int] | None = None  # (iteration, directory, bytes it needs)
        self.resumed_from: tuple[str, int] | None = None  # (--load, iteration) once loaded
        if config.save:
            # torch_dist writers report through a queue served by a *spawned* manager process,
            # which takes seconds to start (it re-imports the entry module).  Start it now, in
            # the background, instead of stalling the first save.
            from megatron.core.dist_checkpointing.strategies.filesystem_async import get_write_results_queue

            self._warmup = threading.Thread(target=get_write_results_queue, daemon=True)
            self._warmup.start()
        if config.async_save:
            from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue

            self.async_queue = AsyncCallsQueue()

    # ---- save -------------------------------------------------------------------------------
    def save(self, train_state: TrainState, model, optimizer, scheduler) -> None:
        """Write ``train_state.iteration``'s checkpoint; the tracker points to it once every rank
        wrote, and only then does retention delete older ones."""
        config, iteration = self.config, train_state.iteration
        self.finalize(blocking=True)  # one checkpoint in flight at a time
        if self._warmup is not None:
            self._warmup.join()
            self._warmup = None
        directory = str(iteration_dir(config.save, iteration))
        self._in_flight = (iteration, directory, _checkpoint_bytes_estimate(model, self.run, config.save_optim))
        if torch.distributed.get_rank() == 0:
            os.makedirs(config.save, exist_ok=True)
            if os.path.exists(directory):  # left over by a run that died while writing it
                shutil.rmtree(directory)
            os.makedirs(directory)
        torch.distributed.barrier()
        meta = optimizer_metadata(config.fully_reshardable)
        state = sharded_state_dict(
            model, optimizer if config.save_optim else None, scheduler if config.save_optim else None,
            optimizer_meta=meta, rng_state=capture_rng_state(self.rng_device_type), rng=config.save_rng,
        )
        state.update(common_state(iteration, train_state.consumed_samples, describe_checkpoint(self.run),
                                  train_state.counters()))
        with self._reporting_write_failures():
            request = dist_checkpointing.save(state, directory, content_metadata=meta, **self._async_arguments())
            if self.async_queue is None:
                torch.distributed.barrier()
                self._mark_complete(iteration)
                torch.distributed.barrier()
                self._in_flight = None
            else:
                request.add_finalize_fn(lambda: self._mark_complete(iteration))
                self.async_queue.schedule_async_request(request)

    def _async_arguments(self) -> dict:
        """``dist_checkpointing.save``'s asynchronous-save arguments: none for a synchronous save
        (megatron-core reads ``async_strategy`` only when ``async_sharded_save`` is set).

        megatron-core 0.19.2's one non-deprecated async writer, ``"nvrx"``, lives in the separate
        nvidia-resiliency-ext package with its own request queue; without it the only async path
        is megatron-core's own ``"mcore"`` writer, deprecated, and used here for --async-save only.
        (Its synchronous save runs that same writer too, so it logs the deprecation either way:
        ``TorchDistSaveShardedStrategy.save`` calls ``async_save(async_strategy="mcore")``.)"""
        if self.async_queue is None:
            return {}
        return {"async_sharded_save": True, "async_strategy": "mcore"}

    def _mark_complete(self, iteration: int) -> None:
        """Point the tracker to ``iteration`` (every rank has written it), then apply retention."""
        if torch.distributed.get_rank() != 0:
            return
        write_tracker(self.config.save, iteration)
        apply_retention(self.config.save, self.config.retention, self._protected())

    def _protected(self) -> frozenset[int]:
        """The checkpoint this run resumed from, when it lives in --save: never deleted by this run."""
        if self.resumed_from is None:
            return frozenset()
        root, iteration = self.resumed_from
        same = os.path.isdir(root) and os.path.samefile(root, self.config.save)
        return frozenset({iteration}) if same else frozenset()

    @contextmanager
    def _reporting_write_failures(self):
        """A failed write (a full disk, a lost mount) as one line; the tracker still names the last
        complete checkpoint, and this one's partial directory is removed to give the space back."""
        try:
            yield
        except (Exception, CheckpointException) as err:  # noqa: BLE001 - torch's wraps the writers' errors
            if self._in_flight is None:
                raise
            iteration, directory, needed = self._in_flight
            self._in_flight = None
            if torch.distributed.get_rank() == 0:
                shutil.rmtree(directory, ignore_errors=True)
            raise CheckpointWriteError(_write_failure(self.config.save, iteration, directory, needed, err)) from err

    def finalize(self, blocking: bool = False) -> None:
        """Finish background saves that are done (all of them when ``blocking``)."""
        if self.async_queue is not None:
            with self._reporting_write_failures():
                self.async_queue.maybe_finalize_async_calls(blocking=blocking)
            if self.async_queue.get_num_unfinalized_calls() == 0:
                self._in_flight = None

    def close(self) -> None:
        """Release the helper processes; safe on every exit path, also before any save.

        The warm-up thread may still be starting the spawned manager process; a process that
        exits while it does leaves the manager waiting for a handshake and the interpreter
        joining it forever, so the start is awaited (then the manager's own exit hook stops it).
        """
        if self._warmup is not None:
            self._warmup.join()
            self._warmup = None
        if self.async_queue is not None:
            self.async_queue.maybe_finalize_async_calls(blocking=True)
            self.async_queue.close()

    # ---- load -------------------------------------------------------------------------------
    def load(self, model, optimizer, scheduler, point: ResumePoint, *,
             retarget_schedule: tuple[float, float] | None = None) -> TrainState:
        """Load the checkpoint ``resume_point`` chose; returns the state it saved (a fresh one for --finetune).

        ``retarget_schedule``: this run's (max_lr, min_lr) for the saved parameter groups
        (``--override-opt_param-scheduler``, see resume.py).
        """
        config = self.config
        directory, common = point.directory, point.common
        loads_optimizer = loads_schedule(config, common)
        saved = read_description(common) or {}
        _check_same_shapes(directory, saved.get("model", {}), asdict(self.run.preset))
        same_layout = all(saved.get(k) == getattr(self.run.layout, k) for k in PARALLEL_FIELDS)
        self._warn_other_padding(directory, saved)
        load_rng = not config.finetune and config.load_rng and same_layout
        saved_meta = saved_optimizer_metadata(directory)
        if loads_optimizer:
            from megatron_mio.training.optimizer import initialize_empty_state

            if self.use_distributed_optimizer and not same_layout:
                _check_optimizer_reshardable(directory, saved, saved_meta, self.run.layout)
            initialize_empty_state(optimizer)
        state = sharded_state_dict(
            model, optimizer if loads_optimizer else None, scheduler if loads_optimizer else None,
            optimizer_meta=saved_meta, is_loading=True, rng=load_rng,
        )
        loaded = dist_checkpointing.load(state, directory, strict=StrictHandling.ASSUME_OK_UNEXPECTED)
        for key, chunk in zip(model_keys(len(unwrap_model(model))), unwrap_model(model)):
            chunk.load_state_dict(loaded[key], strict=True)
        if not config.finetune:
            self.resumed_from = (str(Path(directory).parent), point.iteration)
        if config.finetune:
            log.info("loaded model weights from %s (iteration %d); starting at iteration 0", directory, point.iteration)
            return TrainState()
        if loads_optimizer:
            if retarget_schedule is not None:
                retarget_param_groups(loaded[OPTIMIZER_KEY], common[SCHEDULER_KEY], *retarget_schedule)
            optimizer.load_state_dict(loaded[OPTIMIZER_KEY])
            scheduler.load_state_dict(loaded[SCHEDULER_KEY])
        if load_rng:
            restore_rng_state(loaded[RNG_KEY], self.rng_device_type)
        state = TrainState.restored(int(loaded[ITERATION_KEY]), int(loaded[CONSUMED_SAMPLES_KEY]),
                                    common.get(TRAIN_STATE_KEY))
        log.info("resumed from %s: iteration %d, %d samples consumed, %d iterations skipped so far",
                 directory, state.iteration, state.consumed_samples, state.skipped_total)
        return state

    def _warn_other_padding(self, directory: str, saved: dict) -> None:
        if saved.get("padded_vocab_size") in (None, self.run.padded_vocab_size):
            return
        # megatron loads the common rows; the padding rows keep this run's initialisation
        # and take part in the softmax, so losses differ from the saving run.
        log.warning(
            "%s has a padded vocabulary of %s rows, this run %s (the saved size does not shard over "
            "this tensor-parallel size): pass --make-vocab-size-divisible-by so that both pad to the "
            "same size for an exact continuation",
            directory, saved.get("padded_vocab_size"), self.run.padded_vocab_size,
        )


def _check_optimizer_reshardable(directory: str, saved: dict, saved_meta: dict, layout) -> None:
    """A dp_reshardable optimizer state reloads only at the TP/PP it was written with: say how to move."""
    if saved_meta.get("distrib_optim_sharding_type") != "dp_reshardable":
        return
    was = " ".join(f"{k}={saved.get(k)}" for k in PARALLEL_FIELDS)
    now = " ".join(f"{k}={getattr(layout, k)}" for k in PARALLEL_FIELDS)
    raise ConfigError(
        f"{directory}: its distributed-optimizer state was saved dp_reshardable at {was} and cannot "
        f"be loaded at {now}. Resume once at the saved layout with --dist-ckpt-optim-fully-reshardable "
        f"(and e.g. --exit-interval 1) to write a fully reshardable checkpoint, or pass --no-load-optim "
        f"to keep only the weights"
    )


_SHAPE_FIELDS = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups")


def _check_same_shapes(directory: str, saved: dict, wanted: dict) -> None:
    """One clear line instead of dist_checkpointing's shape mismatch deep inside the load."""
    differ = [f"{k} {saved[k]} (this run {wanted[k]})" for k in _SHAPE_FIELDS if k in saved and saved[k] != wanted[k]]
    if differ:
        raise ConfigError(f"{directory} holds another model shape: {', '.join(differ)}; pass the checkpoint's "
                         f"--model-preset / shape flags, or --load a checkpoint of this model")
