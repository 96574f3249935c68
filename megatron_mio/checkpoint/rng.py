"""The random-number state a checkpoint carries, per (pipeline, tensor) rank.

Python, numpy, torch's host generator, the device generator and megatron-core's model-parallel
RNG tracker (dropout streams).  ``device_type`` comes from the ``Platform`` the run set up: on
``--use-cpu`` the ``torch.cuda`` RNG calls reach the CPU generator, whose state does not load
into a GPU one (or back).
"""

from __future__ import annotations

import logging
import random

import numpy as np
import torch
from megatron.core import parallel_state, tensor_parallel
from megatron.core.dist_checkpointing.mapping import ShardedObject

from megatron_mio.checkpoint.layout import RNG_KEY

log = logging.getLogger(__name__)


def capture_rng_state(device_type: str) -> dict:
    return {
        "random": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "device_type": device_type,
        "device": torch.cuda.get_rng_state(),
        "tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
    }


def restore_rng_state(state: dict, device_type: str) -> None:
    random.setstate(state["random"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    saved_on = state.get("device_type", "cuda")
    if saved_on != device_type:
        # A CUDA generator state is a (seed, offset) pair, a CPU one a Mersenne twister: neither
        # loads into the other (torch.cuda.set_rng_state raises), so the device streams restart.
        log.warning("the checkpoint's device RNG state was saved on %s, this run uses %s: device RNG "
                    "streams (dropout) are re-seeded, not restored", saved_on, device_type)
        return
    torch.cuda.set_rng_state(state["device"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def rng_sharded_object(state: dict | None) -> ShardedObject:
    """This rank's RNG state as one shard of a (PP, TP) grid, replicated over data-parallel ranks."""
    pp, tp = parallel_state.get_pipeline_model_parallel_world_size(), parallel_state.get_tensor_model_parallel_world_size()
    return ShardedObject(
        RNG_KEY, state, (pp, tp),
        (parallel_state.get_pipeline_model_parallel_rank(), parallel_state.get_tensor_model_parallel_rank()),
        replica_id=parallel_state.get_data_parallel_rank(with_context_parallel=True),
    )
