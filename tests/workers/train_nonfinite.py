"""Worker: the real trainer with a NaN injected into the loss of chosen iterations.

Usage: train_nonfinite.py BAD_ITERS MICROBATCHES -- <pretrain flags>.  The forward step is
MIO's own; only its loss is multiplied by NaN on the iterations listed (1-based, comma separated),
so the trainer's detection, skipping and counting run exactly as in production.
"""

import sys

import torch

from megatron_mio.training.step import forward_step
from megatron_mio.training.trainer import TooManySkippedIterations, pretrain


def main() -> int:
    bad = {int(x) for x in sys.argv[1].split(",") if x}
    microbatches = int(sys.argv[2])
    argv = sys.argv[4:]
    calls = {"n": 0}

    def poisoned_forward(data_iterator, model):
        iteration = calls["n"] // microbatches + 1
        calls["n"] += 1
        output, loss_func = forward_step(data_iterator, model, attention_backend="local", device=torch.device("cpu"))
        if iteration in bad:
            def poisoned(output_tensor):
                total, count, reports = loss_func(output_tensor)
                return total * float("nan"), count, reports
            return output, poisoned
        return output, loss_func

    try:
        summary = pretrain(argv, forward_step_func=poisoned_forward)
    except TooManySkippedIterations as err:
        print(f"STOPPED: {err}", flush=True)
        return 3
    print(f"SUMMARY {summary}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
