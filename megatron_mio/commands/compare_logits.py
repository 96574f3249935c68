"""Logit parity: the same prompts through transformers (--hf-dir) and our GPTModel (--load).

Run under torchrun with TP x PP ranks for a sharded layout, e.g.
    torchrun --nproc-per-node 4 tools/compare_logits.py --hf-dir H --load M --tp 2 --pp 2 --use-cpu
Prints the max absolute logit difference and the top-1 agreement; exits 1 above the tolerance.
"""

import argparse
import json
import sys

import torch


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hf-dir", required=True, help="Hugging Face LlamaForCausalLM directory")
    p.add_argument("--load", required=True, help="Megatron checkpoint (save dir or iter_* dir)")
    p.add_argument("--iteration", type=int, default=None)
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    p.add_argument("--tokenizer", default=None, help="MIO tokenizer dir (default: random token ids)")
    p.add_argument("--prompt", action="append", default=None, help="prompt text (repeatable)")
    p.add_argument("--attention-backend", default="local")
    p.add_argument("--tolerance", type=float, default=1e-3, help="max |logit difference| allowed")
    p.add_argument("--min-top1", type=float, default=1.0, help="minimum top-1 agreement")
    p.add_argument("--use-cpu", action="store_true")
    p.add_argument("--json", default=None, help="also write the report here (last stage, TP rank 0)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from megatron_mio import platform

    platform.quiet_import_warnings()
    plat = platform.setup(args.use_cpu)
    platform.init_distributed(plat)
    if torch.distributed.get_rank() == 0:
        print(f"compare_logits: {platform.describe(plat, args.attention_backend)}", flush=True)
    from megatron.core import parallel_state

    from megatron_mio.convert import parity

    torch.set_grad_enabled(False)
    reader_vocab = parity.description_from_checkpoint(
        parity.CheckpointReader(parity.resolve_checkpoint(args.load, args.iteration)).common, None, None, args.load
    )["vocab_size"]
    prompts = parity.encode_prompts(args.prompt or parity.DEFAULT_PROMPTS, args.tokenizer, reader_vocab)
    ours = parity.megatron_logits(args.load, prompts, tp=args.tp, pp=args.pp,
                                  backend=args.attention_backend, iteration=args.iteration)
    status = 0
    if ours is not None and parallel_state.get_tensor_model_parallel_rank() == 0:
        report = parity.compare(parity.hf_logits(args.hf_dir, prompts), ours)
        print(f"max |logit diff| {report.max_abs_diff:.3e}, top-1 agreement {report.top1_agreement:.4f} "
              f"over {report.tokens} tokens (tolerance {args.tolerance:g})")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(vars(report), f)
        status = 0 if report.passed(args.tolerance, args.min_top1) else 1
    flag = torch.tensor([status])
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    torch.distributed.destroy_process_group()
    return int(flag.item())


if __name__ == "__main__":
    sys.exit(main())
