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
error naming the file and the earlier iterations to fall back to (``find_checkpoint``).
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import threading
from dataclasses import asdict, dataclass

import numpy as np
import torch
from megatron.core import dist_checkpointing, parallel_state, tensor_parallel
from megatron.core.dist_checkpointing.mapping import ShardedObject
from megatron.core.dist_checkpointing.serialization import StrictHandling
from megatron.core.utils import unwrap_model

from megatron_mio.checkpoint.description import (
    PARALLEL_FIELDS, ModelDescription, describe_model, read_description, saved_layout,
)
from megatron_mio.checkpoint.layout import (
    CONSUMED_SAMPLES_KEY, ITERATION_KEY, OPTIMIZER_KEY, RNG_KEY, SCHEDULER_KEY, TRACKER, common_state,
    iteration_dir, model_keys, read_tracker, saved_iterations, write_tracker,
)
from megatron_mio.model import padded_vocab_size
from megatron_mio.training.arguments import ConfigError
from megatron_mio.training.resume import loads_schedule, retarget_param_groups

log = logging.getLogger(__name__)

DP_RESHARDABLE = {"distrib_optim_sharding_type": "dp_reshardable"}
FULLY_RESHARDABLE = {"distrib_optim_sharding_type": "fully_reshardable"}


def optimizer_metadata(fully_reshardable: bool) -> dict:
    """How the distributed optimizer's state is laid out in a checkpoint this run saves."""
    return dict(FULLY_RESHARDABLE if fully_reshardable else DP_RESHARDABLE)


def saved_optimizer_metadata(directory: str) -> dict:
    """The optimizer layout recorded in a checkpoint (older ones were all fully reshardable)."""
    return dist_checkpointing.load_content_metadata(directory) or dict(FULLY_RESHARDABLE)


def _rng_device_type() -> str:
    """Which generator ``torch.cuda``'s RNG calls reach here: the GPU's, or (--use-cpu) the CPU's."""
    from megatron_mio.platform import cpu_redirection_enabled

    return "cpu" if cpu_redirection_enabled() else "cuda"


def _rng_state() -> dict:
    return {
        "random": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "device_type": _rng_device_type(),
        "device": torch.cuda.get_rng_state(),
        "tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
    }


def _set_rng_state(state: dict) -> None:
    random.setstate(state["random"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    saved_on = state.get("device_type", "cuda")
    if saved_on != _rng_device_type():
        # A CUDA generator state is a (seed, offset) pair, a CPU one a Mersenne twister: neither
        # loads into the other (torch.cuda.set_rng_state raises), so the device streams restart.
        log.warning("the checkpoint's device RNG state was saved on %s, this run uses %s: device RNG "
                    "streams (dropout) are re-seeded, not restored", saved_on, _rng_device_type())
        return
    torch.cuda.set_rng_state(state["device"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def _rng_sharded_object(state) -> ShardedObject:
    pp, tp = parallel_state.get_pipeline_model_parallel_world_size(), parallel_state.get_tensor_model_parallel_world_size()
    return ShardedObject(
        RNG_KEY, state, (pp, tp),
        (parallel_state.get_pipeline_model_parallel_rank(), parallel_state.get_tensor_model_parallel_rank()),
        replica_id=parallel_state.get_data_parallel_rank(with_context_parallel=True),
    )


def layout(args, run) -> ModelDescription:
    """What a checkpoint of this run records about its model and layout (``run``: a ``RunDescription``)."""
    return describe_model(
        run.preset, run.vocab_size, run.padded_vocab_size,
        layout=saved_layout(tensor_parallel=run.tensor_parallel_size,
                            pipeline_parallel=run.pipeline_parallel_size,
                            virtual_pipeline=run.virtual_pipeline_parallel_size,
                            data_parallel=run.data_parallel_size, seq_length=run.seq_length, bf16=args.bf16),
    )


class CheckpointError(ConfigError):
    """``--load`` names no usable checkpoint (missing, incomplete or damaged)."""


@dataclass
class ResumePoint:
    """The checkpoint a run starts from, found and checked before anything is built."""

    iteration: int
    directory: str
    common: dict  # the non-sharded state: iteration, consumed samples, schedule, the description

    @property
    def layout(self) -> ModelDescription | None:
        """The model description the checkpoint records (with the layout that saved it)."""
        return read_description(self.common)


def find_checkpoint(args) -> ResumePoint | None:
    """``--load``'s checkpoint (``--ckpt-step``, else the latest complete one), or None when
    ``--allow-missing-checkpoint`` lets a run start without one.

    Reads only files (no process group, no model), so every rank reaches the same verdict and a
    bad ``--load`` fails in seconds, naming the directory, the iteration and the file.
    """
    root = args.load
    if not root:
        return None
    if args.ckpt_step is not None:
        iteration = args.ckpt_step
        if not iteration_dir(root, iteration).is_dir():
            raise CheckpointError(f"--ckpt-step {iteration}: {iteration_dir(root, iteration)} does not exist "
                                  f"(iterations saved in {root}: {_listing(root)})")
    else:
        try:
            iteration = read_tracker(root)
        except ValueError as err:
            raise CheckpointError(f"--load {root}: {err}; pass --ckpt-step N to choose an iteration "
                                  f"({_listing(root)})") from None
        if iteration is None:
            if args.finetune or not args.allow_missing_checkpoint:
                purpose = "to take the weights from (--finetune)" if args.finetune else "to resume from"
                hint = "" if args.finetune else "; pass --allow-missing-checkpoint to start from scratch when there is none yet"
                raise CheckpointError(f"--load {root}: no checkpoint {purpose} ({TRACKER} is missing; "
                                      f"iterations saved: {_listing(root)}){hint}")
            log.warning("no checkpoint in %s (%s missing): starting from scratch (--allow-missing-checkpoint)",
                        root, TRACKER)
            return None
    directory = str(iteration_dir(root, iteration))
    check_checkpoint_files(root, iteration)
    try:
        common = dist_checkpointing.load_common_state_dict(directory)
    except Exception as err:  # noqa: BLE001 - any failure to read it means the same to the user
        raise CheckpointError(_damaged(root, iteration, f"its common state cannot be read ({type(err).__name__}: {err})")) from None
    return ResumePoint(iteration, directory, common)


def check_checkpoint_files(root: str, iteration: int) -> None:
    """Every file of a torch_dist checkpoint is present and as long as its index says."""
    from torch.distributed.checkpoint import FileSystemReader

    directory = str(iteration_dir(root, iteration))
    try:
        metadata = FileSystemReader(directory).read_metadata()
    except Exception as err:  # noqa: BLE001 - missing, truncated or not a pickle
        raise CheckpointError(_damaged(root, iteration, f"its index {os.path.join(directory, '.metadata')} cannot be read "
                                                        f"({type(err).__name__}: {err})")) from None
    needed: dict[str, int] = {}
    for item in metadata.storage_data.values():
        needed[item.relative_path] = max(needed.get(item.relative_path, 0), item.offset + item.length)
    for name, length in sorted(needed.items()):
        path = os.path.join(directory, name)
        size = os.path.getsize(path) if os.path.isfile(path) else None
        if size is None or size < length:
            found = "is missing" if size is None else f"has {size} bytes"
            raise CheckpointError(_damaged(root, iteration, f"{path} {found}, its index needs {length}"))


def _listing(root: str) -> str:
    iterations = saved_iterations(root)
    return ", ".join(str(i) for i in iterations) if iterations else "none"


def _damaged(root: str, iteration: int, what: str) -> str:
    earlier = [i for i in saved_iterations(root) if i < iteration]
    fallback = (f"resume from an earlier one with --ckpt-step {earlier[-1]} (saved: {', '.join(map(str, earlier))})"
                if earlier else f"there is no earlier checkpoint in {root}: restore the file or start without --load")
    return f"checkpoint iteration {iteration} in {root} is damaged: {what}; {fallback}"


def padded_vocab_for_load(vocab_size: int, divisible_by: int, tensor_parallel_size: int,
                          saved: ModelDescription | None) -> int:
    """This run's padded vocabulary: the checkpoint's, when this tensor-parallel size can shard it.

    Padding depends on the TP size (``padded_vocab_size``), and padding rows that the checkpoint
    does not have would keep their fresh initialisation and take part in the softmax.  Adopting
    the saved size (when it divides by this TP size and holds the whole vocabulary) makes a
    reshard exact; otherwise the run pads its own way and ``Checkpointer.load`` warns.
    """
    own = padded_vocab_size(vocab_size, divisible_by, tensor_parallel_size)
    recorded = (saved or {}).get("padded_vocab_size")
    if recorded is None or recorded == own:
        return own
    if recorded >= vocab_size and recorded % tensor_parallel_size == 0:
        log.info("using the checkpoint's padded vocabulary of %d rows (this layout alone would pad %d to %d)",
                 recorded, vocab_size, own)
        return recorded
    return own


def sharded_state_dict(args, model, optimizer=None, scheduler=None, *, is_loading=False, rng=True,
                       optimizer_meta: dict | None = None) -> dict:
    chunks = unwrap_model(model)
    state = {}
    model_state = {}
    for key, chunk in zip(model_keys(len(chunks)), chunks):
        state[key] = chunk.sharded_state_dict()
        model_state[key] = state[key]
    if optimizer is not None:
        # Nested per chunk: with a virtual pipeline the chunks' local parameter names coincide.
        metadata = optimizer_meta if optimizer_meta is not None else optimizer_metadata(args.dist_ckpt_optim_fully_reshardable)
        state[OPTIMIZER_KEY] = optimizer.sharded_state_dict(model_state, is_loading=is_loading, metadata=metadata)
    if scheduler is not None:
        state[SCHEDULER_KEY] = scheduler.state_dict()
    if rng:
        state[RNG_KEY] = _rng_sharded_object(_rng_state() if not is_loading else None)
    return state


class Checkpointer:
    """Saves and loads; with ``--async-save`` the write runs in a background process."""

    def __init__(self, args, run):
        self.args = args
        self.run = run
        self.async_queue = None
        self._warmup = None
        if args.save:
            # torch_dist writers report through a queue served by a *spawned* manager process,
            # which takes seconds to start (it re-imports the entry module).  Start it now, in
            # the background, instead of stalling the first save.
            from megatron.core.dist_checkpointing.strategies.filesystem_async import get_write_results_queue

            self._warmup = threading.Thread(target=get_write_results_queue, daemon=True)
            self._warmup.start()
        if args.async_save:
            from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue

            self.async_queue = AsyncCallsQueue()

    # ---- save -------------------------------------------------------------------------------
    def save(self, iteration: int, consumed_samples: int, model, optimizer, scheduler) -> None:
        args = self.args
        self.finalize(blocking=True)  # one checkpoint in flight at a time
        if self._warmup is not None:
            self._warmup.join()
            self._warmup = None
        directory = str(iteration_dir(args.save, iteration))
        if torch.distributed.get_rank() == 0:
            os.makedirs(args.save, exist_ok=True)
            if os.path.exists(directory):  # left over by a run that died while writing it
                shutil.rmtree(directory)
            os.makedirs(directory)
        torch.distributed.barrier()
        state = sharded_state_dict(
            args, model,
            None if args.no_save_optim else optimizer,
            None if args.no_save_optim else scheduler,
            rng=not args.no_save_rng,
        )
        state.update(common_state(iteration, consumed_samples, layout(args, self.run)))
        request = dist_checkpointing.save(
            state, directory, async_sharded_save=self.async_queue is not None, async_strategy="mcore",
            content_metadata=optimizer_metadata(args.dist_ckpt_optim_fully_reshardable),
        )

        def mark_complete():
            if torch.distributed.get_rank() == 0:
                write_tracker(args.save, iteration)

        if self.async_queue is None:
            torch.distributed.barrier()
            mark_complete()
            torch.distributed.barrier()
        else:
            request.add_finalize_fn(mark_complete)
            self.async_queue.schedule_async_request(request)

    def finalize(self, blocking: bool = False) -> None:
        """Finish background saves that are done (all of them when ``blocking``)."""
        if self.async_queue is not None:
            self.async_queue.maybe_finalize_async_calls(blocking=blocking)

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
    def load(self, model, optimizer, scheduler, point: ResumePoint) -> tuple[int, int]:
        """Load the checkpoint ``find_checkpoint`` chose; returns (iteration, consumed samples)."""
        args = self.args
        iteration, directory, common = point.iteration, point.directory, point.common
        saved = read_description(common) or {}
        _check_same_shapes(directory, saved.get("model", {}), asdict(self.run.preset))
        same_layout = all(saved.get(k) == getattr(args, k) for k in PARALLEL_FIELDS)
        if saved.get("padded_vocab_size") not in (None, self.run.padded_vocab_size):
            # megatron loads the common rows; the padding rows keep this run's initialisation
            # and take part in the softmax, so losses differ from the saving run.
            log.warning(
                "%s has a padded vocabulary of %s rows, this run %s (the saved size does not shard over "
                "this tensor-parallel size): pass --make-vocab-size-divisible-by so that both pad to the "
                "same size for an exact continuation",
                directory, saved.get("padded_vocab_size"), self.run.padded_vocab_size,
            )
        weights_only = args.finetune
        load_optim = loads_schedule(args, common)
        load_rng = not weights_only and not args.no_load_rng and same_layout
        saved_meta = saved_optimizer_metadata(directory)
        if load_optim:
            from megatron_mio.training.optimizer import initialize_empty_state

            if args.use_distributed_optimizer and not same_layout:
                _check_optimizer_reshardable(directory, saved, saved_meta, args)
            initialize_empty_state(optimizer)
        state = sharded_state_dict(
            args, model,
            optimizer if load_optim else None,
            scheduler if load_optim else None,
            is_loading=True, rng=load_rng, optimizer_meta=saved_meta,
        )
        loaded = dist_checkpointing.load(state, directory, strict=StrictHandling.ASSUME_OK_UNEXPECTED)
        for key, chunk in zip(model_keys(len(unwrap_model(model))), unwrap_model(model)):
            chunk.load_state_dict(loaded[key], strict=True)
        if weights_only:
            log.info("loaded model weights from %s (iteration %d); starting at iteration 0", directory, iteration)
            return 0, 0
        if load_optim:
            if args.override_opt_param_scheduler:  # new --lr / --min-lr: see resume.py
                retarget_param_groups(loaded[OPTIMIZER_KEY], common[SCHEDULER_KEY], args)
            optimizer.load_state_dict(loaded[OPTIMIZER_KEY])
            scheduler.load_state_dict(loaded[SCHEDULER_KEY])
        if load_rng:
            _set_rng_state(loaded[RNG_KEY])
        consumed = int(loaded[CONSUMED_SAMPLES_KEY])
        log.info("resumed from %s: iteration %d, %d samples consumed", directory, iteration, consumed)
        return int(loaded[ITERATION_KEY]), consumed


def _check_optimizer_reshardable(directory: str, saved: dict, saved_meta: dict, args) -> None:
    """A dp_reshardable optimizer state reloads only at the TP/PP it was written with: say how to move."""
    if saved_meta.get("distrib_optim_sharding_type") != "dp_reshardable":
        return
    was = " ".join(f"{k}={saved.get(k)}" for k in PARALLEL_FIELDS)
    now = " ".join(f"{k}={getattr(args, k)}" for k in PARALLEL_FIELDS)
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
