"""The packed dataset as the trainer's batch source (``--data-config`` / ``--data-path``).

Thin glue over ``megatron_mio.data.sampler.build_pretraining_dataloader``: it sizes the dataset
for the whole run (``train_iters x global_batch_size`` packs) so that a resumed run, starting at
the checkpoint's ``consumed_samples``, reads exactly the packs it would have read without a stop.
"""

from __future__ import annotations

from megatron_mio.data.sampler import build_pretraining_dataloader


def _pad_id(args) -> int:
    if not args.tokenizer_model:
        return 0
    from megatron_mio.tokenizer import MIOTokenizer

    return int(MIOTokenizer(args.tokenizer_model).pad_id)


def packed_batches(args, table, *, consumed_samples: int, data_parallel_rank: int,
                   data_parallel_size: int, validation: bool = False):
    """This rank's micro-batches; ``validation`` reads the --valid-data-* sources from the start."""
    if validation:
        data_config, data_path = args.valid_data_config, args.valid_data_path
        num_samples = args.eval_iters * args.global_batch_size
    else:
        data_config, data_path = args.data_config, args.data_path
        num_samples = args.train_iters * args.global_batch_size
    loader = build_pretraining_dataloader(
        data_config=data_config, data_path=data_path or None, seq_length=args.seq_length,
        seed=args.seed, num_samples=num_samples, micro_batch_size=args.micro_batch_size,
        data_parallel_rank=data_parallel_rank, data_parallel_size=data_parallel_size,
        consumed_samples=consumed_samples, modality_table=table, pad_id=_pad_id(args),
        num_workers=args.num_workers,
    )
    return iter(loader)
