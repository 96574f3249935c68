#!/usr/bin/env bash
# Preprocess a list of JSONL files on many nodes: a Slurm array job, one task per shard.
#
#   INPUT_LIST=files.txt OUTPUT_PREFIX=/data/laion_coco/pairs TOKENIZER=checkpoints/mio-tokenizer \
#       STAGE=1 sbatch --array=0-15 examples/preprocess.sh
#
# Task i of the array's N tasks writes shard i of the input (whole files when there are at least
# N, else byte ranges cut at line starts; tools/preprocess_data.py reads SLURM_ARRAY_TASK_COUNT
# and SLURM_ARRAY_TASK_ID) to OUTPUT_PREFIX-0000i-of-0000N, with all the task's CPUs as
# workers.  Train on the shards with a glob in the mixture YAML
# (`prefixes: [/data/laion_coco/pairs-*]`), or merge them into one prefix, byte-identical to a
# single run: python tools/merge_datasets.py --input '/data/laion_coco/pairs-*' --output-prefix P
#
# Settings (environment variables):
#   INPUT_LIST      a file naming the JSONL inputs, one path per line, in order (required)
#   OUTPUT_PREFIX   where the shards go (required)
#   TOKENIZER       MIO tokenizer directory (default checkpoints/mio-tokenizer)
#   STAGE           1, 2, 3 or sft (required)
#   SEQ_LENGTH      the training sequence length: longer samples are split (default 2800)
#   WORKERS         worker processes per task (default: SLURM_CPUS_PER_TASK, else nproc)
#   EXTRA_ARGS      more tools/preprocess_data.py flags (--seed, --append-eod, --on-error skip)
#   MIO_REPO        the repository (default: SLURM_SUBMIT_DIR when it is one, else this file's ..)
#   PYTHON          interpreter (default: MIO_REPO/.venv/bin/python if present, else python3)
#
#SBATCH --job-name=mio-preprocess
#SBATCH --array=0-15
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=16
#SBATCH --time=04:00:00
set -euo pipefail

die() { echo "preprocess.sh: error: $*" >&2; exit 2; }

if [[ -z ${MIO_REPO:-} ]]; then
    if [[ -n ${SLURM_SUBMIT_DIR:-} && -f $SLURM_SUBMIT_DIR/megatron_mio/__init__.py ]]; then
        MIO_REPO=$SLURM_SUBMIT_DIR  # under sbatch this file runs from a spool copy
    else
        MIO_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    fi
fi
[[ -f $MIO_REPO/megatron_mio/__init__.py ]] || die "MIO_REPO=$MIO_REPO is not the megatron_mio repository"
if [[ -z ${PYTHON:-} ]]; then
    if [[ -x $MIO_REPO/.venv/bin/python ]]; then PYTHON=$MIO_REPO/.venv/bin/python; else PYTHON=python3; fi
fi
: "${INPUT_LIST:?set INPUT_LIST to a file listing the JSONL inputs}"
: "${OUTPUT_PREFIX:?set OUTPUT_PREFIX (shards are written to OUTPUT_PREFIX-0000i-of-0000N)}"
: "${STAGE:?set STAGE to 1, 2, 3 or sft}"
[[ -f $INPUT_LIST ]] || die "INPUT_LIST=$INPUT_LIST: no such file"
mapfile -t inputs < <(grep -v '^[[:space:]]*$' "$INPUT_LIST")
[[ ${#inputs[@]} -gt 0 ]] || die "INPUT_LIST=$INPUT_LIST names no input file"
WORKERS=${WORKERS:-${SLURM_CPUS_PER_TASK:-$(nproc)}}

echo "[mio-preprocess] task ${SLURM_ARRAY_TASK_ID:-0} of ${SLURM_ARRAY_TASK_COUNT:-1}:" \
     "${#inputs[@]} input files, $WORKERS workers -> $OUTPUT_PREFIX" >&2
# shellcheck disable=SC2086  # EXTRA_ARGS is a list of flags
exec "$PYTHON" "$MIO_REPO/tools/preprocess_data.py" --input "${inputs[@]}" \
    --output-prefix "$OUTPUT_PREFIX" --tokenizer "${TOKENIZER:-checkpoints/mio-tokenizer}" \
    --stage "$STAGE" --seq-length "${SEQ_LENGTH:-2800}" --workers "$WORKERS" ${EXTRA_ARGS:-}
