"""MIO JSONL samples -> megatron-core indexed datasets with loss masks (docs/data_format.md).

    python tools/preprocess_data.py --input A.jsonl [B.jsonl ...] --output-prefix P \
        --tokenizer DIR --stage {1,2,3,sft} --workers N [--seed S] [--seq-length 2800] \
        [--append-eod] [--on-error fail|skip] [--num-shards N --shard-index I]

Inside a Slurm array job --num-shards/--shard-index default to the array's task count and task
index, and shard I of N is written to P-0000I-of-0000N (examples/preprocess.sh).
"""

import argparse
import os
import sys


from megatron_mio import platform  # noqa: E402

platform.quiet_import_warnings()  # before megatron-core is imported

from megatron_mio.data.preprocess import (  # noqa: E402
    PreprocessConfig, PreprocessError, drop_warnings, preprocess,
)


def slurm_array_shard() -> tuple[int, int]:
    """(num_shards, shard_index) from Slurm's array variables; (1, 0) outside an array."""
    count = os.environ.get("SLURM_ARRAY_TASK_COUNT")
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    if not count or not task:
        return 1, 0
    return int(count), int(task) - int(os.environ.get("SLURM_ARRAY_TASK_MIN", "0"))


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
                        help="longer samples are split (pages, interleaved pages, chats) or, "
                             "when they cannot be (pairs), dropped and reported")
    parser.add_argument("--append-eod", action="store_true",
                        help="an eos after each language document, so a base model learns where "
                             "pages end")
    parser.add_argument("--on-error", choices=["fail", "skip"], default="fail")
    parser.add_argument("--max-speech-seconds", type=float, default=15.0,
                        help="samples with longer speech are filtered out (the paper uses 15 s)")
    num_shards, shard_index = slurm_array_shard()
    parser.add_argument("--num-shards", type=int, default=num_shards,
                        help="split the input into this many parts (default: "
                             "SLURM_ARRAY_TASK_COUNT, else 1)")
    parser.add_argument("--shard-index", type=int, default=shard_index,
                        help="which part to write, from 0 (default: SLURM_ARRAY_TASK_ID - "
                             "SLURM_ARRAY_TASK_MIN, else 0)")
    args = parser.parse_args(argv)
    config = PreprocessConfig(
        inputs=args.input, output_prefix=args.output_prefix, tokenizer=args.tokenizer,
        stage=args.stage, workers=args.workers, seed=args.seed, seq_length=args.seq_length,
        append_eod=args.append_eod, on_error=args.on_error,
        max_speech_seconds=args.max_speech_seconds, num_shards=args.num_shards,
        shard_index=args.shard_index)
    try:
        report = preprocess(config)
    except (PreprocessError, OSError, ValueError) as error:
        print(f"preprocess_data: error: {error}", file=sys.stderr)
        return 1
    tokens = report["tokens"]
    print(f"{report['documents_written']} documents, {tokens['total']} tokens (text "
          f"{tokens['text']}, image {tokens['image']}, speech {tokens['speech']}); split "
          f"{report['split']['documents']} into {report['split']['pieces']} pieces; skipped "
          f"{report['skipped']['count']}, filtered {report['filtered']['count']}; coverage "
          f"{100 * report['coverage']:.2f}%; {report['seconds']:.1f} s -> "
          f"{report['output_prefix']}.report.json")
    for line in drop_warnings(report):
        print(f"preprocess_data: warning: {line}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
