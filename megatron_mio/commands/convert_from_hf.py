"""Hugging Face LlamaForCausalLM (e.g. Yi-6B-Base) -> Megatron torch_dist checkpoint (iteration 0).

    python tools/convert_from_hf.py --hf-dir Yi-6B --output ckpt/mio-init --tp 2 --pp 2 \\
        --tokenizer mio_tokenizer [--new-token-init mean|normal]

The result starts training with ``python -m megatron_mio.pretrain --load ckpt/mio-init`` (or
``--finetune``) at any TP/PP whose tensor-parallel size divides the padded vocabulary (--tp sets
the padding, which the trainer adopts).
"""

import argparse
import sys

from megatron_mio import platform

platform.quiet_import_warnings()  # before megatron-core is imported

from megatron_mio.convert import convert_from_hf  # noqa: E402
from megatron_mio.convert.vocab import NEW_TOKEN_INITS  # noqa: E402
from megatron_mio.model.presets import VOCAB_SIZE_DIVISIBLE_BY  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hf-dir", required=True, help="directory with config.json and safetensors")
    p.add_argument("--output", required=True, help="checkpoint save directory to create")
    p.add_argument("--tp", type=int, default=1, help="tensor parallel size (decides vocab padding)")
    p.add_argument("--pp", type=int, default=1, help="pipeline parallel size (validated)")
    p.add_argument("--tokenizer", default=None, help="MIO tokenizer dir: extend the vocabulary to it")
    p.add_argument("--new-token-init", choices=NEW_TOKEN_INITS, default="mean")
    p.add_argument("--seed", type=int, default=0, help="seed of --new-token-init normal")
    p.add_argument("--make-vocab-size-divisible-by", type=int, default=VOCAB_SIZE_DIVISIBLE_BY)
    p.add_argument("--force", action="store_true", help="replace an existing --output")
    args = p.parse_args(argv)
    plan = convert_from_hf(
        args.hf_dir, args.output, tp=args.tp, pp=args.pp, tokenizer_dir=args.tokenizer,
        new_token_init=args.new_token_init, seed=args.seed, force=args.force,
        divisible_by=args.make_vocab_size_divisible_by,
    )
    print(f"wrote {args.output}: {plan.preset.num_layers} layers, vocabulary {plan.base_vocab} -> "
          f"{plan.vocab} (padded {plan.padded_vocab} for TP={args.tp}), {plan.dtype}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, FileNotFoundError, FileExistsError, KeyError) as err:
        sys.exit(f"convert_from_hf: error: {err}")
