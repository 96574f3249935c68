"""Measure what a tiny megatron-core GPTModel really holds on one rank (tests/test_plan_parallelism.py).

Run under torchrun (CPU, gloo).  For each layout given as ``TPxPP:precision:distopt:backend``
and recompute (e.g. ``2x1:fp32:1:local:none``, ``1x1:bf16:0:local:full``) it builds the model, megatron-core DDP and optimizer exactly as the
trainer does, and records, for this rank:
  parameters  -- elements of the model's parameters,
  weights     -- bytes of the DDP parameter storage,
  grads       -- bytes of the DDP gradient buffers,
  optimizer   -- bytes of optimizer state (Adam moments, fp32 main weights) after one step,
  activations -- bytes of the distinct storages autograd saved for backward in one forward
                 (parameters excluded), from torch.autograd.graph.saved_tensors_hooks.
Results go to OUT/rank{r}.json as {layout: {...}}.
"""

from __future__ import annotations

import json
import os
import sys

import torch

from megatron_mio import platform


def storages_of(tensors) -> dict[int, int]:
    return {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}


def measure(spec: str, preset_name: str, vocab: int, seq: int, micro_batch: int) -> dict:
    from megatron.core import parallel_state, tensor_parallel
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.optimizer import OptimizerConfig

    from megatron_mio.model.attention import attention_kwargs
    from megatron_mio.model.gpt import build_gpt_model, build_transformer_config
    from megatron_mio.model.model_config import BF16, FP32, ParallelLayout, Recompute
    from megatron_mio.model.presets import get_preset, padded_vocab_size
    from megatron_mio.training.optimizer import build_optimizer

    shape, precision, dist_opt, backend, recompute = spec.split(":")
    recompute = None if recompute == "none" else recompute
    tp, pp = (int(x) for x in shape.split("x"))
    bf16 = precision == "bf16"
    dist_opt = dist_opt == "1"
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)
    tensor_parallel.model_parallel_cuda_manual_seed(1234)
    preset = get_preset(preset_name)
    precision = BF16 if bf16 else FP32
    config = build_transformer_config(preset, ParallelLayout(tp, pp), precision, recompute=Recompute(
        recompute, "uniform" if recompute == "full" else None, 1 if recompute == "full" else None))
    padded = padded_vocab_size(vocab, 128, tp)
    first = parallel_state.is_pipeline_first_stage()
    last = parallel_state.is_pipeline_last_stage()
    model = build_gpt_model(config, preset, padded, attention_backend=backend,
                            pre_process=first, post_process=last)
    ddp_config = DistributedDataParallelConfig(grad_reduce_in_fp32=True, use_distributed_optimizer=dist_opt)
    model = DistributedDataParallel(config, ddp_config, model)
    optimizer = build_optimizer(OptimizerConfig(optimizer="adam", lr=1e-3, bf16=bf16, params_dtype=precision.dtype,
                                                use_distributed_optimizer=dist_opt), [model])

    params = list(model.parameters())
    param_storages = storages_of(params)
    grad_storages = {b.grad_data.untyped_storage().data_ptr(): b.grad_data.untyped_storage().nbytes()
                     for b in model.buffers}

    tokens = torch.randint(0, vocab, (micro_batch, seq))
    half = seq // 2
    cu_seqlens = torch.tensor([[0, half, seq, -1]] * micro_batch, dtype=torch.int32)
    position_ids = torch.cat([torch.arange(half), torch.arange(seq - half)]).repeat(micro_batch, 1)
    inputs = {"input_ids": tokens if first else None, "position_ids": position_ids}
    inputs.update(attention_kwargs(cu_seqlens, seq, backend))
    if not first:
        hidden = torch.randn(seq, micro_batch, preset.hidden_size, requires_grad=True,
                             dtype=torch.bfloat16 if bf16 else torch.float32)
        model.module.set_input_tensor(hidden)
    saved: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in param_storages and storage.data_ptr() != 0:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    optimizer.zero_grad()
    model.zero_grad_buffer()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(**inputs, labels=tokens if last else None)
    loss = out.float().sum()
    loss.backward()
    model.finish_grad_sync()
    optimizer.step()

    optimizer_storages: dict[int, int] = {}
    known = set(param_storages) | set(grad_storages)
    for inner in getattr(optimizer, "chained_optimizers", [optimizer]):
        for state in inner.optimizer.state.values():
            optimizer_storages.update(storages_of(v for v in state.values()
                                                  if torch.is_tensor(v) and v.numel() > 1))
        for group_list in ("shard_fp32_from_float16_groups", "fp32_from_float16_groups"):
            for group in getattr(inner, group_list, None) or []:
                optimizer_storages.update(storages_of(group))
    optimizer_storages = {k: v for k, v in optimizer_storages.items() if k not in known}
    result = {
        "parameters": sum(p.numel() for p in params),
        "weights": sum(param_storages.values()),
        "grads": sum(grad_storages.values()),
        "optimizer": sum(optimizer_storages.values()),
        "activations": sum(saved.values()),
        "first_stage": first,
        "last_stage": last,
        "padded_vocab": padded,
        "dp": parallel_state.get_data_parallel_world_size(),
    }
    parallel_state.destroy_model_parallel()
    return result


def main() -> None:
    out_dir, preset_name, vocab, seq, micro_batch, *specs = sys.argv[1:]
    platform_ = platform.setup(True)
    platform.init_distributed(platform_)
    torch.manual_seed(0)
    results = {spec: measure(spec, preset_name, int(vocab), int(seq), int(micro_batch)) for spec in specs}
    rank = torch.distributed.get_rank()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as handle:
        json.dump(results, handle)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
