"""Build the MIO tokenizer directory: base vocabulary + 12,292 MIO tokens (+ ChatML if missing).

    python tools/build_tokenizer.py --base <SentencePiece .model or HF tokenizer dir> --output DIR
"""

import argparse
import sys

from megatron_mio.tokenizer import build_mio_tokenizer


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True,
                        help="SentencePiece .model file or Hugging Face tokenizer directory")
    parser.add_argument("--output", required=True, help="output tokenizer directory")
    parser.add_argument("--model-max-length", type=int, default=None,
                        help="model_max_length written to tokenizer_config.json "
                             "(default: the base's, else 4096)")
    args = parser.parse_args(argv)
    try:
        result = build_mio_tokenizer(args.base, args.output, model_max_length=args.model_max_length)
    except (OSError, ValueError) as error:
        print(f"build_tokenizer: error: {error}", file=sys.stderr)
        return 1
    print(f"base vocabulary: {result.base_vocab_size} pieces")
    if result.added_mio_tokens:
        print(f"added {result.added_mio_tokens} MIO tokens")
    else:
        print("the base already holds all MIO tokens: none added")
    if result.added_chatml_tokens:
        print(f"the base lacks ChatML: added {' '.join(result.added_chatml_tokens)} "
              "after the MIO tokens")
    print(f"vocabulary size: {result.vocab_size}; written to {result.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
