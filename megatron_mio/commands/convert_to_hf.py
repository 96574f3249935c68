"""Megatron torch_dist checkpoint (any TP/PP/virtual PP) -> Hugging Face LlamaForCausalLM directory.

    python tools/convert_to_hf.py --load ckpt/mio-sft --output mio-hf [--tokenizer DIR] [--iteration N]

Writes config.json, sharded safetensors with an index, generation_config.json and the tokenizer
(``--tokenizer``, or the one ``convert_from_hf.py`` stored next to the checkpoint); TP padding rows
are dropped.  ``AutoModelForCausalLM`` / ``AutoTokenizer.from_pretrained`` load the result.
"""

import argparse
import sys

import torch

from megatron_mio import platform

platform.quiet_import_warnings()  # before megatron-core is imported

from megatron_mio.convert import convert_to_hf  # noqa: E402
from megatron_mio.convert.hf_io import parse_size  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--load", required=True, help="save directory (with the tracker) or an iter_* directory")
    p.add_argument("--output", required=True, help="Hugging Face directory to create")
    p.add_argument("--iteration", type=int, default=None, help="default: the tracker's latest")
    p.add_argument("--tokenizer", default=None, help="tokenizer dir to copy in (its size is checked)")
    p.add_argument("--max-shard-size", default="1GiB", help="safetensors shard size, e.g. 1GiB, 500MB")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: the checkpoint's")
    p.add_argument("--preset", default=None, help="model preset, for checkpoints that record none")
    p.add_argument("--vocab-size", type=int, default=None, help="true vocabulary size (without padding)")
    p.add_argument("--force", action="store_true", help="replace an existing --output")
    args = p.parse_args(argv)
    description = convert_to_hf(
        args.load, args.output, tokenizer_dir=args.tokenizer, iteration=args.iteration, force=args.force,
        max_shard_bytes=parse_size(args.max_shard_size), preset_name=args.preset,
        vocab_size=args.vocab_size, dtype=DTYPES.get(args.dtype),
    )
    print(f"wrote {args.output}: {description['model']['num_layers']} layers, vocabulary {description['vocab_size']}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, FileNotFoundError, FileExistsError, KeyError) as err:
        sys.exit(f"convert_to_hf: error: {err}")
