"""Logit parity: the same prompts through transformers (--hf-dir) and our GPTModel (--load).

Run under torchrun with TP x PP ranks for a sharded layout, e.g.
    torchrun --nproc-per-node 4 tools/compare_logits.py --hf-dir H --load M --tp 2 --pp 2 --use-cpu
Prints the max absolute logit difference and the top-1 agreement; exits 1 above the tolerance.
--tp/--pp/--tokenizer are also spelled as the trainer's --tensor-model-parallel-size /
--pipeline-model-parallel-size / --tokenizer-model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from megatron_mio import cli

PROG = "compare_logits"


def build_parser():
    p = cli.make_parser(PROG, __doc__)
    p.add_argument("--hf-dir", required=True, help="Hugging Face LlamaForCausalLM directory")
    p.add_argument("--load", required=True, help="Megatron checkpoint (save dir or iter_* dir)")
    p.add_argument("--iteration", type=cli.non_negative_int, default=None)
    p.add_argument(*cli.TP_FLAGS, dest="tp", type=cli.positive_int, default=1)
    p.add_argument(*cli.PP_FLAGS, dest="pp", type=cli.positive_int, default=1)
    p.add_argument(*cli.TOKENIZER_FLAGS, dest="tokenizer", default=None,
                   help="MIO tokenizer dir (default: random token ids)")
    p.add_argument("--prompt", action="append", default=None, help="prompt text (repeatable)")
    p.add_argument("--attention-backend", default="local")
    p.add_argument("--tolerance", type=float, default=1e-3, help="max |logit difference| allowed")
    p.add_argument("--min-top1", type=float, default=1.0, help="minimum top-1 agreement")
    p.add_argument("--use-cpu", action="store_true")
    p.add_argument("--json", default=None, help="also write the report here (last stage, TP rank 0)")
    return p


def check_inputs(args) -> None:
    """Every mistake that files and the environment reveal, before a process group or a model."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if args.tp * args.pp != world_size:
        how = ("run it under torchrun --nproc-per-node "
               f"{args.tp * args.pp}" if world_size == 1 else f"start {args.tp * args.pp} processes")
        raise cli.UsageError(f"--tp {args.tp} x --pp {args.pp} needs {args.tp * args.pp} processes, "
                             f"this job has {world_size}: {how}")
    hf_dir = Path(args.hf_dir)
    if not (hf_dir / "config.json").is_file():
        what = "no such directory" if not hf_dir.is_dir() else "no config.json in it"
        raise cli.UsageError(f"--hf-dir {args.hf_dir}: {what} (give a Hugging Face model directory)")
    if not Path(args.load).exists():
        raise cli.UsageError(f"--load {args.load}: no such directory")
    if args.tokenizer is not None and not Path(args.tokenizer).is_dir():
        raise cli.UsageError(f"--tokenizer {args.tokenizer}: no such directory")
    if args.json:
        cli.check_writable(args.json, "--json")


def compare(args) -> int:
    check_inputs(args)
    import torch

    from megatron_mio import platform
    from megatron_mio.convert import parity

    # The checkpoint is read (and checked) before the ranks meet: a bad --load is one line.
    vocab = parity.description_from_checkpoint(
        parity.CheckpointReader(parity.resolve_checkpoint(args.load, args.iteration)).common, None, None, args.load
    )["vocab_size"]
    plat = platform.setup(args.use_cpu)
    platform.init_distributed(plat)
    if torch.distributed.get_rank() == 0:
        print(f"{PROG}: {platform.describe(plat, args.attention_backend)}", flush=True)
    from megatron.core import parallel_state

    torch.set_grad_enabled(False)
    prompts = parity.encode_prompts(args.prompt or parity.DEFAULT_PROMPTS, args.tokenizer, vocab)
    ours = parity.megatron_logits(args.load, prompts, tp=args.tp, pp=args.pp,
                                  backend=args.attention_backend, iteration=args.iteration)
    status = 0
    if ours is not None and parallel_state.get_tensor_model_parallel_rank() == 0:
        report = parity.compare(parity.hf_logits(args.hf_dir, prompts), ours)
        print(f"max |logit diff| {report.max_abs_diff:.3e}, top-1 agreement {report.top1_agreement:.4f} "
              f"over {report.tokens} tokens (tolerance {args.tolerance:g})")
        if args.json:
            from megatron_mio.atomic import write_text

            write_text(args.json, json.dumps(vars(report)))
        status = 0 if report.passed(args.tolerance, args.min_top1) else 1
    flag = torch.tensor([status])
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    torch.distributed.destroy_process_group()
    return int(flag.item())


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    cli.quiet_libraries(args.verbose)
    # Reading --load raises these, naming the file (a missing or damaged checkpoint).
    return cli.run(PROG, lambda: compare(args), input_errors=(ValueError, OSError, KeyError))
