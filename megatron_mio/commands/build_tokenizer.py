"""Build the MIO tokenizer directory: base vocabulary + 12,292 MIO tokens (+ ChatML if missing).

    mio-build-tokenizer --base <SentencePiece .model or HF tokenizer dir> --output DIR
"""

from __future__ import annotations

from megatron_mio import cli

PROG = "build_tokenizer"


def build_parser():
    parser = cli.make_parser(PROG, __doc__)
    parser.add_argument("--base", required=True,
                        help="SentencePiece .model file or Hugging Face tokenizer directory")
    parser.add_argument("--output", required=True, help="output tokenizer directory")
    parser.add_argument("--model-max-length", type=cli.positive_int, default=None,
                        help="model_max_length written to tokenizer_config.json "
                             "(default: the base's, else 4096)")
    return parser


def build(args) -> int:
    cli.check_writable(args.output, "--output", directory=True)
    from megatron_mio.tokenizer.build import build_mio_tokenizer

    result = build_mio_tokenizer(args.base, args.output, model_max_length=args.model_max_length)
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


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    cli.quiet_libraries(args.verbose)
    return cli.run(PROG, lambda: build(args), input_errors=(OSError, ValueError))
