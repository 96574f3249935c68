"""Worker: one tiny GPTModel, one TP/PP layout, forward+backward through megatron-core's schedule.

``--save DIR`` (run at TP=1/PP=1) writes the weights with dist_checkpointing; ``--load DIR``
(run at any layout) reads them, so every layout starts from the same numbers.  The worker then
runs two micro-batches of document-packed data through ``get_forward_backward_func`` (1F1B when
PP>1), applies one plain SGD update from the gradients, runs the same data again, and writes the
two losses to ``OUT/rank{r}.json``.  The second loss depends on the gradients, so it checks the
backward pass of the parallel layout too.
"""

import argparse
import json
from functools import partial
from pathlib import Path

import torch

from megatron_mio import platform


def packed_batches(vocab: int, seq_length: int, micro_batch: int, count: int, seed: int):
    """Deterministic packs of 1-3 documents each, following megatron_mio/data/batch.py."""
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        rows = {k: [] for k in ("tokens", "labels", "loss_mask", "position_ids", "cu_seqlens")}
        for _ in range(micro_batch):
            n_docs = int(torch.randint(1, 4, (1,), generator=gen))
            cuts = sorted(torch.randperm(seq_length - 2, generator=gen)[: n_docs - 1].add(1).tolist())
            bounds = [0, *cuts, seq_length]
            tokens = torch.randint(0, vocab, (seq_length,), generator=gen)
            labels = torch.zeros(seq_length, dtype=torch.long)
            loss_mask = torch.zeros(seq_length)
            positions = torch.zeros(seq_length, dtype=torch.long)
            for start, end in zip(bounds[:-1], bounds[1:]):
                labels[start : end - 1] = tokens[start + 1 : end]
                loss_mask[start : end - 1] = 1.0
                positions[start:end] = torch.arange(end - start)
            cu = torch.full((6,), -1, dtype=torch.int32)
            cu[: len(bounds)] = torch.tensor(bounds, dtype=torch.int32)
            for key, value in zip(rows, (tokens, labels, loss_mask, positions, cu)):
                rows[key].append(value)
        batch = {k: torch.stack(v) for k, v in rows.items()}
        batch["modality"] = torch.zeros_like(batch["tokens"], dtype=torch.uint8)
        batches.append(batch)
    return batches


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--pp", type=int, default=1)
    parser.add_argument("--save")
    parser.add_argument("--load")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    plat = platform.setup(use_cpu=True)
    platform.init_distributed(plat)
    from megatron.core import dist_checkpointing, parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    from megatron_mio.model import build_gpt_model, build_transformer_config, get_preset
    from megatron_mio.model.model_config import ParallelLayout
    from megatron_mio.training.step import forward_step

    parallel_state.initialize_model_parallel(args.tp, args.pp)
    model_parallel_cuda_manual_seed(1234)
    preset = get_preset("tiny").with_overrides(num_layers=4)
    config = build_transformer_config(preset, ParallelLayout(args.tp, args.pp))
    vocab = 256
    model = build_gpt_model(
        config, preset, vocab,
        pre_process=parallel_state.is_pipeline_first_stage(),
        post_process=parallel_state.is_pipeline_last_stage(),
    )
    if args.save:
        Path(args.save).mkdir(parents=True, exist_ok=True)
        dist_checkpointing.save(model.sharded_state_dict(), args.save)
    if args.load:
        model.load_state_dict(dist_checkpointing.load(model.sharded_state_dict(), args.load))

    seq_length, micro_batch, n_micro = 32, 2, 2
    batches = packed_batches(vocab, seq_length, micro_batch, n_micro, seed=7)
    run = partial(
        get_forward_backward_func(),
        forward_step_func=partial(forward_step, attention_backend="local"),
        model=[model], num_microbatches=n_micro, seq_length=seq_length,
        micro_batch_size=micro_batch,
    )

    def mean_loss(reports):
        # Only the last pipeline stage sees losses; share them with every rank.
        sums = torch.stack([torch.stack([r.total.loss, r.total.tokens]) for r in reports]).sum(0) if reports else torch.zeros(2)
        torch.distributed.all_reduce(sums, group=parallel_state.get_pipeline_model_parallel_group())
        return (sums[0] / sums[1]).item()

    model.zero_grad()
    loss_before = mean_loss(run(data_iterator=iter(batches), forward_only=False))
    with torch.no_grad():
        for param in model.parameters():
            param -= 0.01 * param.grad
    loss_after = mean_loss(run(data_iterator=iter(batches), forward_only=True))
    rank = torch.distributed.get_rank()
    Path(args.out, f"rank{rank}.json").write_text(
        json.dumps({"loss_before": loss_before, "loss_after": loss_after})
    )
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
