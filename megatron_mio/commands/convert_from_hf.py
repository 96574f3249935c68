"""Hugging Face LlamaForCausalLM (e.g. Yi-6B-Base) -> Megatron torch_dist checkpoint (iteration 0).

    mio-convert-from-hf --hf-dir Yi-6B --output ckpt/mio-init --tp 2 --pp 2 \\
        --tokenizer mio_tokenizer [--new-token-init mean|normal]

The result starts training with ``python -m megatron_mio.pretrain --load ckpt/mio-init`` (or
``--finetune``) at any TP/PP whose tensor-parallel size divides the padded vocabulary (--tp sets
the padding, which the trainer adopts).  --tp/--pp/--tokenizer are also spelled as the trainer's
--tensor-model-parallel-size/--pipeline-model-parallel-size/--tokenizer-model.
"""

from __future__ import annotations

from pathlib import Path

from megatron_mio import cli

PROG = "convert_from_hf"
# megatron_mio.convert.vocab.NEW_TOKEN_INITS, spelled here so that --help imports no torch
# (tests/test_tool_errors.py checks that the two agree).
NEW_TOKEN_INITS = ("mean", "normal")


def build_parser():
    p = cli.make_parser(PROG, __doc__)
    p.add_argument("--hf-dir", required=True, help="directory with config.json and safetensors")
    p.add_argument("--output", required=True, help="checkpoint save directory to create")
    p.add_argument(*cli.TP_FLAGS, dest="tp", type=cli.positive_int, default=1,
                   help="tensor parallel size (decides vocab padding)")
    p.add_argument(*cli.PP_FLAGS, dest="pp", type=cli.positive_int, default=1,
                   help="pipeline parallel size (validated)")
    p.add_argument(*cli.TOKENIZER_FLAGS, dest="tokenizer", default=None,
                   help="MIO tokenizer dir: extend the vocabulary to it")
    p.add_argument("--new-token-init", choices=NEW_TOKEN_INITS, default="mean")
    p.add_argument("--seed", type=int, default=0, help="seed of --new-token-init normal")
    p.add_argument("--make-vocab-size-divisible-by", type=cli.positive_int, default=None,
                   help="vocabulary padding multiple (x TP); default: the trainer's, 128")
    p.add_argument("--force", action="store_true", help="replace an existing --output")
    return p


def check_inputs(args) -> None:
    """Everything about the paths that can be told before a tensor is read."""
    if not (Path(args.hf_dir) / "config.json").is_file():
        what = "no such directory" if not Path(args.hf_dir).is_dir() else "no config.json in it"
        raise cli.UsageError(f"--hf-dir {args.hf_dir}: {what} (give a Hugging Face model directory)")
    cli.check_writable(args.output, "--output", directory=True, replaced=True, force=args.force)


def convert(args) -> int:
    check_inputs(args)
    from megatron_mio.convert import convert_from_hf
    from megatron_mio.model.presets import VOCAB_SIZE_DIVISIBLE_BY

    plan = convert_from_hf(
        args.hf_dir, args.output, tp=args.tp, pp=args.pp, tokenizer_dir=args.tokenizer,
        new_token_init=args.new_token_init, seed=args.seed, force=args.force,
        divisible_by=args.make_vocab_size_divisible_by or VOCAB_SIZE_DIVISIBLE_BY,
    )
    print(f"wrote {args.output}: {plan.preset.num_layers} layers, vocabulary {plan.base_vocab} -> "
          f"{plan.vocab} (padded {plan.padded_vocab} for TP={args.tp}), {plan.dtype}")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    cli.quiet_libraries(args.verbose)
    # The conversion's input checks raise these, each naming the file (UnsupportedModelError is a
    # ValueError); anything else is a bug and keeps its traceback.
    return cli.run(PROG, lambda: convert(args), input_errors=(ValueError, OSError, KeyError))
