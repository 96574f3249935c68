"""Worker (2 ranks): logits of tiny models at TP=2 and at TP=1, same master weights.

For the torch and local backends and for 2 and 1 query groups (1 group at TP=2 splits a group
across ranks), rank 0 writes ``OUT/results.pt``: ``{(backend, groups): (tp1_logits, tp2_logits)}``.
"""

import argparse
from pathlib import Path

import torch

from megatron_mio import platform

CASES = [(backend, groups) for backend in ("torch", "local") for groups in (2, 1)]


def all_logits(tp: int) -> dict:
    from megatron.core import parallel_state

    from tests.workers.attention_models import build_tiny_model, logits, make_pack, stack_packs

    parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp)
    tokens, positions, cu = stack_packs([make_pack([7, 13, 5, 9], 6, seed=1),
                                         make_pack([20, 3, 17], 0, seed=2)])
    out = {}
    with torch.no_grad():
        for backend, groups in CASES:
            model = build_tiny_model(backend, tp=tp, num_query_groups=groups)
            out[(backend, groups)] = logits(model, tokens, positions, cu, backend)
    parallel_state.destroy_model_parallel()
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    platform.init_distributed(platform.setup(use_cpu=True))
    tp2 = all_logits(2)
    tp1 = all_logits(1)
    if torch.distributed.get_rank() == 0:
        results = {case: (tp1[case], tp2[case]) for case in CASES}
        tmp = Path(args.out) / "results.pt.tmp"
        torch.save(results, tmp)
        tmp.rename(Path(args.out) / "results.pt")
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
