#!/usr/bin/env bash
# Tokenize a speech corpus on many nodes: a Slurm array job, one task per shard, one GPU each.
#
#   INPUT=/data/librispeech/clips OUTPUT_PREFIX=/data/librispeech/pairs \
#       CODEC=checkpoints/MIO-7B-Base/SpeechTokenizer sbatch --array=0-15 examples/tokenize_speech.sh
#
# Task i of the array's N tasks encodes part i of the input (tools/tokenize_speech.py reads
# SLURM_ARRAY_TASK_COUNT and SLURM_ARRAY_TASK_ID) to OUTPUT_PREFIX-0000i-of-0000N.jsonl, with the
# files it skipped named in OUTPUT_PREFIX-0000i-of-0000N.report.json.  A shard already written is
# skipped, so resubmitting the same array after a failure or a time limit redoes only the
# unfinished shards.  Then pack every shard in one command:
#   python tools/preprocess_data.py --input OUTPUT_PREFIX-*.jsonl --output-prefix P --tokenizer T --stage 1
#
# Settings (environment variables):
#   INPUT           a directory of audio files + same-stem .txt transcriptions, or a JSONL manifest
#                   of {"audio": path, "transcription": text} lines (required)
#   OUTPUT_PREFIX   where the shards go (required)
#   CODEC           SpeechTokenizer directory (config.json + SpeechTokenizer.pt), or a MIO model
#                   directory holding one in SpeechTokenizer/ (required)
#   MAX_SECONDS     longer audio is skipped and reported (default 15, MIO's limit)
#   BATCH_SIZE      files per encoder call (default 1: each file's codes exactly as encoded alone;
#                   larger is faster on a GPU, see docs/data_format.md)
#   EXTRA_ARGS      more tools/tokenize_speech.py flags (--direction asr, --device cpu)
#   MIO_REPO        the repository (default: SLURM_SUBMIT_DIR when it is one, else this file's ..)
#   PYTHON          interpreter (default: MIO_REPO/.venv/bin/python if present, else python3)
#
#SBATCH --job-name=mio-tokenize-speech
#SBATCH --array=0-15
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --gpus-per-task=1
#SBATCH --cpus-per-task=8
#SBATCH --time=04:00:00
set -euo pipefail

die() { echo "tokenize_speech.sh: error: $*" >&2; exit 2; }

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
: "${INPUT:?set INPUT to a directory of audio + .txt files, or a JSONL manifest}"
: "${OUTPUT_PREFIX:?set OUTPUT_PREFIX (shards are written to OUTPUT_PREFIX-0000i-of-0000N.jsonl)}"
: "${CODEC:?set CODEC to a SpeechTokenizer directory}"
[[ -e $INPUT ]] || die "INPUT=$INPUT: no such file or directory"

echo "[mio-tokenize-speech] task ${SLURM_ARRAY_TASK_ID:-0} of ${SLURM_ARRAY_TASK_COUNT:-1}:" \
     "$INPUT -> $OUTPUT_PREFIX" >&2
# shellcheck disable=SC2086  # EXTRA_ARGS is a list of flags
exec "$PYTHON" "$MIO_REPO/tools/tokenize_speech.py" --input "$INPUT" --codec "$CODEC" \
    --output-prefix "$OUTPUT_PREFIX" --max-seconds "${MAX_SECONDS:-15}" \
    --batch-size "${BATCH_SIZE:-1}" ${EXTRA_ARGS:-}
