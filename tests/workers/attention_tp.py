"""Worker (2 ranks): logits of tiny models at TP=2, at PP=2 and at TP=1, same master weights.

TP=2: torch and local backends, 2 and 1 query groups (1 group at TP=2 splits a group across
ranks).  PP=2: torch backend through megatron's pipeline schedule, stage weights copied from the
TP=1 model.  Rank 0 writes ``OUT/results.pt``: ``{(layout, backend, groups): (tp1, parallel)}``.
"""

import argparse
from pathlib import Path

import torch

from megatron_mio import platform

TP_CASES = [(backend, groups) for backend in ("torch", "local") for groups in (2, 1)]
PP_BACKEND = "torch"


def micro_batch():
    from tests.attention_models import make_pack, stack_packs

    return stack_packs([make_pack([7, 13, 5, 9], 6, seed=1), make_pack([20, 3, 17], 0, seed=2)])


def tensor_parallel_logits(tp: int) -> dict:
    from megatron.core import parallel_state

    from tests.attention_models import build_tiny_model, logits

    parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp)
    tokens, positions, cu = micro_batch()
    out, weights = {}, {}
    with torch.no_grad():
        for backend, groups in TP_CASES:
            model = build_tiny_model(backend, tp=tp, num_query_groups=groups)
            out[(backend, groups)] = logits(model, tokens, positions, cu, backend)
            weights[(backend, groups)] = model.state_dict()
    parallel_state.destroy_model_parallel()
    return out, weights


def stage_weights(full: dict, stage_layers: range) -> dict:
    """This pipeline stage's slice of a whole model's state dict (layers renumbered from 0)."""
    picked = {}
    for key, value in full.items():
        if key.startswith("decoder.layers."):
            index, rest = key[len("decoder.layers."):].split(".", 1)
            if int(index) in stage_layers:
                picked[f"decoder.layers.{int(index) - stage_layers.start}.{rest}"] = value
        else:
            picked[key] = value
    return picked


def pipeline_logits(full_weights: dict) -> torch.Tensor | None:
    """Logits through get_forward_backward_func at PP=2 (on the last stage; None elsewhere)."""
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from megatron_mio.model.attention import attention_kwargs
    from tests.attention_models import build_tiny_model, gather_vocab

    parallel_state.initialize_model_parallel(pipeline_model_parallel_size=2)
    first = parallel_state.is_pipeline_first_stage()
    last = parallel_state.is_pipeline_last_stage()
    model = build_tiny_model(PP_BACKEND, pp=2, pre_process=first, post_process=last)
    stage = parallel_state.get_pipeline_model_parallel_rank()
    model.load_state_dict(stage_weights(full_weights, range(stage, stage + 1)), strict=False)
    tokens, positions, cu = micro_batch()

    def forward_step(data_iterator, model):
        next(data_iterator)
        output = model(input_ids=tokens if first else None, position_ids=positions,
                       **attention_kwargs(cu, tokens.shape[1], PP_BACKEND))
        return output, lambda output, non_loss_data=False: gather_vocab(output)

    with torch.no_grad():
        collected = get_forward_backward_func()(
            forward_step_func=forward_step, data_iterator=iter([None]), model=[model],
            num_microbatches=1, seq_length=tokens.shape[1], micro_batch_size=tokens.shape[0],
            forward_only=True, collect_non_loss_data=True,
        )
    parallel_state.destroy_model_parallel()
    return collected[0] if last else None


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    platform.init_distributed(platform.setup(use_cpu=True))
    tp2, _ = tensor_parallel_logits(2)
    tp1, weights = tensor_parallel_logits(1)
    pp2 = pipeline_logits(weights[(PP_BACKEND, 2)])
    # The last pipeline stage (rank 1) holds the PP=2 logits; share them with rank 0.
    if pp2 is None:
        pp2 = torch.empty_like(tp1[(PP_BACKEND, 2)])
    torch.distributed.broadcast(pp2, src=1)
    if torch.distributed.get_rank() == 0:
        results = {("tp2", *case): (tp1[case], tp2[case]) for case in TP_CASES}
        results[("pp2", PP_BACKEND, 2)] = (tp1[(PP_BACKEND, 2)], pp2)
        tmp = Path(args.out) / "results.pt.tmp"
        torch.save(results, tmp)
        tmp.rename(Path(args.out) / "results.pt")
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
