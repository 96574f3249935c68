"""Host memory per rank of each distributed-optimizer checkpoint format, for Yi-6B + MIO.

What each format of megatron-core 0.19.2 (``DistributedOptimizer.sharded_state_dict``) holds in a
rank's host memory while it saves or loads: the fp32 main parameter, ``exp_avg`` and
``exp_avg_sq`` (12 bytes per parameter) of

- ``dp_reshardable`` (our default): the rank's own data-parallel shard only;
- ``fully_reshardable`` (``--dist-ckpt-optim-fully-reshardable``): the whole state of its
  model-parallel shard, all-gathered to *every* data-parallel rank on save and read whole by
  every rank on load;
- ``fully_reshardable`` with megatron's ``distrib_optim_fully_reshardable_mem_efficient``: the
  same gathered over gloo to data-parallel rank 0 only (others hold nothing extra; save and load
  are serialised through that rank).

    python bench/bench_checkpoint_memory.py           # the table in docs/benchmarks.md

The counts come from ``megatron_mio.planner.memory`` (the same parameter count the planner
uses) for the largest pipeline stage; no model is built.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megatron_mio.model.presets import get_preset, padded_vocab_size  # noqa: E402
from megatron_mio.tokenizer.vocab import MIO_VOCAB_SIZE_FOR_YI  # noqa: E402
from megatron_mio.planner.memory import stage_parameters  # noqa: E402

STATE_BYTES = 12  # fp32 main parameter + two fp32 Adam moments
LAYOUTS = [(8, 1, 1), (8, 2, 1), (8, 4, 1), (8, 2, 2), (128, 1, 1), (128, 2, 1), (128, 4, 2)]


def per_rank_bytes(gpus: int, tp: int, pp: int) -> dict:
    preset = get_preset("yi-6b")
    vocab = padded_vocab_size(MIO_VOCAB_SIZE_FOR_YI, tensor_parallel_size=tp)
    shard = max(stage_parameters(preset, vocab, tp, pp, stage) for stage in range(pp))
    dp = gpus // (tp * pp)
    full = STATE_BYTES * shard
    return {"dp": dp, "dp_reshardable": full / dp, "fully_reshardable": full, "mem_efficient_rank0": full}


def main() -> None:
    gib = 2**30
    print("| GPUs | TP x PP x DP | dp_reshardable (default) | fully_reshardable, every rank | "
          "fully_reshardable mem-efficient, DP rank 0 | per 8-GPU node, fully_reshardable |")
    print("| --- | --- | --- | --- | --- | --- |")
    for gpus, tp, pp in LAYOUTS:
        r = per_rank_bytes(gpus, tp, pp)
        print(f"| {gpus} | {tp} x {pp} x {r['dp']} | {r['dp_reshardable'] / gib:.2f} GiB | "
              f"{r['fully_reshardable'] / gib:.1f} GiB | {r['mem_efficient_rank0'] / gib:.1f} GiB | "
              f"{8 * r['fully_reshardable'] / gib:.0f} GiB |")


if __name__ == "__main__":
    main()
