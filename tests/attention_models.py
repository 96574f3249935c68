"""Tiny MIO GPTModels and document packs for the attention tests (in-process and torchrun workers).

Callers must have run ``megatron_mio.platform.setup(use_cpu=True)``, joined a process group and
initialised megatron's parallel state before building a model.
"""

from __future__ import annotations

import torch
from megatron.core import parallel_state, tensor_parallel

from megatron_mio.model import build_gpt_model, build_transformer_config, get_preset
from megatron_mio.model.attention import attention_kwargs
from megatron_mio.model.model_config import ParallelLayout

VOCAB = 256  # a multiple of 128 x TP for TP <= 2: no padding rows to think about
SEED = 1234


def build_tiny_model(backend: str, *, tp: int = 1, pp: int = 1, num_query_groups: int = 2,
                     pre_process: bool = True, post_process: bool = True, seed: int = SEED):
    """The ``tiny`` preset (2 layers, 4 heads) with the same master weights for every layout."""
    preset = get_preset("tiny").with_overrides(num_query_groups=num_query_groups)
    config = build_transformer_config(preset, ParallelLayout(tp, pp), deterministic_init=True)
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)
    model = build_gpt_model(
        config, preset, VOCAB, attention_backend=backend,
        pre_process=pre_process, post_process=post_process,
    )
    return model.eval()


def make_pack(doc_lengths, pad: int = 0, *, seed: int = 0, width: int = 8):
    """tokens [1, s], position_ids [1, s], cu_seqlens [1, width] (batch contract), documents."""
    gen = torch.Generator().manual_seed(seed)
    docs = [torch.randint(1, VOCAB, (n,), generator=gen) for n in doc_lengths]
    pieces = docs + ([torch.zeros(pad, dtype=torch.long)] if pad else [])
    tokens = torch.cat(pieces).unsqueeze(0)
    positions = torch.cat([torch.arange(p.numel()) for p in pieces]).unsqueeze(0)
    bounds = torch.tensor([0] + [p.numel() for p in pieces]).cumsum(0)
    cu = torch.full((1, width), -1, dtype=torch.int32)
    cu[0, : bounds.numel()] = bounds.to(torch.int32)
    return tokens, positions, cu, docs


def stack_packs(packs):
    """One micro-batch of several packs of the same length."""
    return tuple(torch.cat([p[i] for p in packs]) for i in range(3))


def gather_vocab(logits: torch.Tensor) -> torch.Tensor:
    """Full-vocabulary logits from this rank's tensor-parallel shard."""
    if parallel_state.get_tensor_model_parallel_world_size() == 1:
        return logits
    return tensor_parallel.gather_from_tensor_model_parallel_region(logits)


def logits(model, tokens, positions, cu_seqlens, backend: str, **overrides) -> torch.Tensor:
    """[b, s, vocab] logits of a whole (single-stage) model, documents kept apart by ``backend``."""
    kwargs = attention_kwargs(cu_seqlens, tokens.shape[1], backend)
    kwargs.update(overrides)
    out = model(input_ids=tokens, position_ids=positions, **kwargs)
    return gather_vocab(out)


def alone_logits(model, doc: torch.Tensor, backend: str) -> torch.Tensor:
    """[n, vocab] logits of one document run by itself."""
    n = doc.numel()
    cu = torch.tensor([[0, n]], dtype=torch.int32)
    return logits(model, doc.unsqueeze(0), torch.arange(n).unsqueeze(0), cu, backend)[0]
