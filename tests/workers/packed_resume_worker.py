"""Worker: read packed batches on one data-parallel rank, then "restart" from consumed samples.

Every rank builds the mixture from ``--data-path`` (rank 0 builds the cached indices, the others
wait and memory-map them), reads ``2k`` micro-batches uninterrupted, then builds a fresh loader
at ``consumed_samples = k * micro_batch * dp`` and reads ``k`` more, as a restarted run would.
It writes, per micro-batch, the sample indices and a digest of every tensor to
``OUT/rank{r}.json``; the test compares them.
"""

import argparse
import hashlib
import json
from pathlib import Path

import torch

from megatron_mio import platform
from megatron_mio.data.mixture import read_mixture
from megatron_mio.data.packed_dataset import PackingConfig
from megatron_mio.data.sampler import build_pretraining_dataloader


def digest(batch: dict) -> str:
    h = hashlib.sha256()
    for key in sorted(batch):
        h.update(key.encode())
        h.update(batch[key].contiguous().numpy().tobytes())
    return h.hexdigest()


def read(loader, steps: int) -> list[dict]:
    out = []
    for step, batch in zip(range(steps), loader):
        out.append(dict(digest=digest(batch), shape=list(batch["tokens"].shape)))
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-path", nargs="+", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--micro-batch", type=int, default=2)
    parser.add_argument("--seq-length", type=int, default=64)
    parser.add_argument("--num-samples", type=int, default=200)
    args = parser.parse_args()
    platform.init_distributed(platform.setup(True))
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()

    def loader(consumed: int, workers: int):
        return build_pretraining_dataloader(
            read_mixture(data_path=args.data_path), PackingConfig(args.seq_length, seed=11),
            num_samples=args.num_samples, micro_batch_size=args.micro_batch,
            data_parallel_rank=rank, data_parallel_size=world, consumed_samples=consumed,
            num_workers=workers,
        )

    uninterrupted = read(loader(0, 0), 2 * args.k)
    resumed = read(loader(args.k * args.micro_batch * world, 1), args.k)
    Path(args.out, f"rank{rank}.json").write_text(
        json.dumps(dict(uninterrupted=uninterrupted, resumed=resumed)))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
