"""Megatron torch_dist checkpoint (any TP/PP/virtual PP) -> Hugging Face LlamaForCausalLM directory.

    mio-convert-to-hf --load ckpt/mio-sft --output mio-hf [--tokenizer DIR] [--iteration N]

Writes config.json, sharded safetensors with an index, generation_config.json and the tokenizer
(``--tokenizer``, or the one ``convert_from_hf`` stored next to the checkpoint); TP padding rows
are dropped.  ``AutoModelForCausalLM`` / ``AutoTokenizer.from_pretrained`` load the result.
--tokenizer/--preset are also spelled as the trainer's --tokenizer-model/--model-preset.
"""

from __future__ import annotations

from pathlib import Path

from megatron_mio import cli

PROG = "convert_to_hf"
DTYPES = ("bfloat16", "float16", "float32")


def build_parser():
    p = cli.make_parser(PROG, __doc__)
    p.add_argument("--load", required=True, help="save directory (with the tracker) or an iter_* directory")
    p.add_argument("--output", required=True, help="Hugging Face directory to create")
    p.add_argument("--iteration", type=cli.non_negative_int, default=None, help="default: the tracker's latest")
    p.add_argument(*cli.TOKENIZER_FLAGS, dest="tokenizer", default=None,
                   help="tokenizer dir to copy in (its size is checked)")
    p.add_argument("--max-shard-size", type=cli.byte_size, default="1GiB",
                   help="safetensors shard size, e.g. 1GiB, 500MB")
    p.add_argument("--dtype", choices=DTYPES, default=None, help="default: the checkpoint's")
    p.add_argument(*cli.PRESET_FLAGS, dest="preset", default=None,
                   help="model preset, for checkpoints that record none")
    p.add_argument("--vocab-size", type=cli.positive_int, default=None,
                   help="true vocabulary size (without padding)")
    p.add_argument("--force", action="store_true", help="replace an existing --output")
    return p


def check_inputs(args) -> None:
    """Everything about the paths that can be told before a tensor is read."""
    if not Path(args.load).exists():
        raise cli.UsageError(f"--load {args.load}: no such directory")
    if args.tokenizer is not None and not Path(args.tokenizer).is_dir():
        raise cli.UsageError(f"--tokenizer {args.tokenizer}: no such directory")
    cli.check_writable(args.output, "--output", directory=True, replaced=True, force=args.force)


def convert(args) -> int:
    check_inputs(args)
    import torch

    from megatron_mio.convert import convert_to_hf

    description = convert_to_hf(
        args.load, args.output, tokenizer_dir=args.tokenizer, iteration=args.iteration, force=args.force,
        max_shard_bytes=args.max_shard_size, preset_name=args.preset, vocab_size=args.vocab_size,
        dtype=getattr(torch, args.dtype) if args.dtype else None,
    )
    print(f"wrote {args.output}: {description['model']['num_layers']} layers, vocabulary {description['vocab_size']}")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    cli.quiet_libraries(args.verbose)
    # The conversion's input checks raise these, each naming the file; anything else is a bug and
    # keeps its traceback.
    return cli.run(PROG, lambda: convert(args), input_errors=(ValueError, OSError, KeyError))
