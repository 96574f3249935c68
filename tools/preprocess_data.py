#!/usr/bin/env python
"""MIO JSONL samples -> megatron-core indexed datasets with loss masks (docs/data_format.md).

    python tools/preprocess_data.py --input A.jsonl [B.jsonl ...] --output-prefix P \
        --tokenizer DIR --stage {1,2,3,sft} --workers N [--seed S] [--seq-length 2800] \
        [--on-error fail|skip]
"""

import argparse
import sys

from megatron_mio.data.preprocess import PreprocessConfig, PreprocessError, preprocess


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", nargs="+", required=True, help="JSONL files, in order")
    parser.add_argument("--output-prefix", required=True,
                        help="writes PREFIX.bin/.idx, PREFIX.loss_mask.bin/.idx, "
                             "PREFIX.modality_counts.npy and PREFIX.report.json")
    parser.add_argument("--tokenizer", required=True, help="MIO tokenizer directory")
    parser.add_argument("--stage", required=True, choices=["1", "2", "3", "sft"])
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seq-length", type=int, default=2800,
                        help="documents longer than this are reported (text kept, others dropped)")
    parser.add_argument("--on-error", choices=["fail", "skip"], default="fail")
    parser.add_argument("--max-speech-seconds", type=float, default=15.0,
                        help="samples with longer speech are filtered out (the paper uses 15 s)")
    args = parser.parse_args(argv)
    config = PreprocessConfig(
        inputs=args.input, output_prefix=args.output_prefix, tokenizer=args.tokenizer,
        stage=args.stage, workers=args.workers, seed=args.seed, seq_length=args.seq_length,
        on_error=args.on_error, max_speech_seconds=args.max_speech_seconds)
    try:
        report = preprocess(config)
    except (PreprocessError, OSError, ValueError) as error:
        print(f"preprocess_data: error: {error}", file=sys.stderr)
        return 1
    tokens = report["tokens"]
    print(f"{report['documents_written']} documents, {tokens['total']} tokens (text "
          f"{tokens['text']}, image {tokens['image']}, speech {tokens['speech']}); skipped "
          f"{report['skipped']['count']}, filtered {report['filtered']['count']}, long kept/dropped "
          f"{report['long_documents']['kept']}/{report['long_documents']['dropped']}; "
          f"{report['seconds']:.1f} s -> {args.output_prefix}.report.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
