"""Core attention on one document pack, forward + backward: dense mask (local) vs per document (torch).

Both backends are the core-attention modules the layer specs build (megatron's
DotProductAttention with our dense block-diagonal mask, and our DocumentAttention), fed the same
query/key/value and the arguments ``attention_kwargs`` produces for one pack.  The paper's shape
by default: 2,800 tokens, 10 documents, 32 heads x 128, 4 key/value groups (Yi-6B), fp32 on the
CPU.  Prints the median time of each and the ratio, measured in this one run.

    python bench/bench_attention.py [--seq-length 2800] [--docs 10] [--heads 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def document_bounds(seq_length: int, docs: int, seed: int) -> list[int]:
    """Random document lengths summing to the pack length (no document shorter than 16)."""
    gen = torch.Generator().manual_seed(seed)
    weights = torch.rand(docs, generator=gen) + 0.5
    lengths = (weights / weights.sum() * (seq_length - 16 * docs)).floor().long() + 16
    lengths[-1] += seq_length - int(lengths.sum())
    return [0] + lengths.cumsum(0).tolist()


def core_attention(backend: str, config):
    from megatron.core.transformer.enums import AttnMaskType

    from megatron_mio.model.attention import layer_spec

    spec = layer_spec(backend).submodules.self_attention
    mask_type: AttnMaskType = spec.params["attn_mask_type"]
    return spec.submodules.core_attention(
        config=config, layer_number=1, attn_mask_type=mask_type, attention_type="self"
    )


def time_fwd_bwd(module, inputs, kwargs, repeats: int) -> float:
    times = []
    for _ in range(repeats + 1):  # the first run warms up allocators and is dropped
        q, k, v = (x.detach().requires_grad_() for x in inputs)
        start = time.perf_counter()
        out = module(q, k, v, kwargs.get("attention_mask"), attn_mask_type=None,
                     packed_seq_params=kwargs.get("packed_seq_params"))
        out.backward(torch.ones_like(out))
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-length", type=int, default=2800)
    parser.add_argument("--docs", type=int, default=10)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from megatron_mio import platform

    platform.init_distributed(platform.setup(use_cpu=True))
    from megatron.core import parallel_state, tensor_parallel

    from megatron_mio.model import build_transformer_config, get_preset
    from megatron_mio.model.attention import attention_kwargs

    parallel_state.initialize_model_parallel(1, 1)
    tensor_parallel.model_parallel_cuda_manual_seed(0)  # the RNG tracker dropout forks from
    preset = get_preset("tiny").with_overrides(
        hidden_size=args.heads * args.head_dim, num_attention_heads=args.heads,
        num_query_groups=args.groups,
    )
    config = build_transformer_config(preset)

    s = args.seq_length
    bounds = document_bounds(s, args.docs, seed=0)
    cu = torch.tensor([bounds], dtype=torch.int32)
    gen = torch.Generator().manual_seed(1)
    inputs = [torch.randn(s, 1, h, args.head_dim, generator=gen)
              for h in (args.heads, args.groups, args.groups)]

    seconds, outputs = {}, {}
    for backend in ("local", "torch"):
        module = core_attention(backend, config)
        kwargs = attention_kwargs(cu, s, backend)
        seconds[backend] = time_fwd_bwd(module, inputs, kwargs, args.repeats)
        with torch.no_grad():
            outputs[backend] = module(*inputs, kwargs.get("attention_mask"), attn_mask_type=None,
                                      packed_seq_params=kwargs.get("packed_seq_params"))
    difference = (outputs["local"] - outputs["torch"]).abs().max().item()

    print(f"pack: {s} tokens, {args.docs} documents {bounds}; {args.heads} heads x {args.head_dim}, "
          f"{args.groups} kv groups; fp32, {torch.get_num_threads()} threads; "
          f"median of {args.repeats} fwd+bwd")
    print(f"local (dense block-diagonal mask): {seconds['local']:.3f} s")
    print(f"torch (SDPA per document):         {seconds['torch']:.3f} s")
    print(f"speed-up torch vs local: {seconds['local'] / seconds['torch']:.2f}x; "
          f"max |output difference| {difference:.2e}")
    parallel_state.destroy_model_parallel()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
