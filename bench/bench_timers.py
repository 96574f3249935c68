"""What the timers cost: the same trainer, iterations with ``--timing-log-level 1`` vs 0, interleaved.

One process builds the tiny CPU model once and runs blocks of iterations alternately with the
timers on and off (on: every region timed, a line logged every iteration, so the all-reduce of the
timer fields runs every iteration, the worst case), then reports the median time per iteration of
each and their ratio.  Same model, same data stream, same process: only the timers differ.

    OMP_NUM_THREADS=1 python bench/bench_timers.py --blocks 40 --block-iterations 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megatron_mio import platform  # noqa: E402

FLAGS = ["--use-cpu", "--mock-data", "--model-preset", "tiny", "--vocab-size", "300", "--seq-length", "256",
         "--micro-batch-size", "2", "--global-batch-size", "4", "--lr-warmup-iters", "1", "--log-interval", "1",
         "--attention-backend", "local", "--no-bias-swiglu-fusion", "--no-bias-dropout-fusion"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=40, help="blocks per setting (alternating on/off)")
    parser.add_argument("--block-iterations", type=int, default=2)
    options = parser.parse_args()
    platform.quiet_import_warnings()
    from megatron_mio.training import trainer as T

    iterations = 2 * options.blocks * options.block_iterations + 2
    config = T.parse_args([*FLAGS, "--train-iters", str(iterations)])
    resume, vocabulary = T._startup_checks(config)
    plat = T.initialize(config)
    run = T.describe_run(config, vocabulary.size, resume)
    checkpointer = T.Checkpointer(config.checkpoint, run, use_distributed_optimizer=False,
                                  rng_device_type=plat.rng_device_type)
    trainer = T.Trainer(config, run, plat, T._build_parts(config, run, plat, vocabulary, checkpointer, None))
    data = trainer._train_iterator()
    trainer.logger = trainer._open_logger()
    trainer.logger.sinks = []  # measure the timers, not printing
    for _ in range(2):  # warm-up
        trainer.log(trainer.train_step(data))
    reduce, spent = trainer.timers.reduce, [0.0]

    def timed_reduce(*args):  # the timers' own cost at each logged line: sync, all-reduce, formatting
        began = time.perf_counter()
        try:
            return reduce(*args)
        finally:
            spent[0] += time.perf_counter() - began

    trainer.timers.reduce = timed_reduce
    per_iteration = {True: [], False: []}
    for block in range(2 * options.blocks):
        timers_on = block % 2 == 0
        trainer.timers.enabled = timers_on
        began = time.perf_counter()
        for _ in range(options.block_iterations):
            trainer.log(trainer.train_step(data))
        per_iteration[timers_on].append((time.perf_counter() - began) / options.block_iterations * 1000.0)
    on, off = statistics.median(per_iteration[True]), statistics.median(per_iteration[False])
    own = spent[0] * 1000.0 / (options.blocks * options.block_iterations)
    print(f"| timers | median ms / iteration ({options.blocks} blocks of {options.block_iterations}) |")
    print("|---|---|")
    print(f"| off (--timing-log-level 0) | {off:.2f} |")
    print(f"| on (--timing-log-level 1), a line every iteration | {on:.2f} |")
    print(f"| on / off | {on / off:.4f} |")
    print(f"| the timers' own reduction per logged line (ms) | {own:.3f} ({100 * own / off:.2f}% of an iteration) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
