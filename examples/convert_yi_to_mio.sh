#!/usr/bin/env bash
# Prepare MIO's stage-I starting point from Yi-6B-Base (a Hugging Face download):
#   1. the MIO tokenizer: Yi's SentencePiece model + 12,292 image/speech tokens (tools/build_tokenizer.py)
#   2. a Megatron torch_dist checkpoint of Yi-6B with the embedding and output layer extended to the
#      MIO vocabulary (tools/convert_from_hf.py), which examples/pretrain_stage1.sh loads by default
#
#   sbatch examples/convert_yi_to_mio.sh    or    bash examples/convert_yi_to_mio.sh
#
# Settings (environment variables):
#   YI_DIR      the Hugging Face Yi-6B-Base directory (config.json, safetensors, tokenizer.model)
#               (default: checkpoints/Yi-6B)
#   TOKENIZER   where the MIO tokenizer goes (default checkpoints/mio-tokenizer)
#   OUTPUT      where the checkpoint goes (default checkpoints/yi-6b-mio)
#   TP, PP      the layout stage I will train with: TP decides the vocabulary padding
#               (76,416 at TP1, 76,544 at TP2, 76,800 at TP4/TP8), so use stage I's TP (default 1, 1)
#   NEW_TOKEN_INIT  mean (default) or normal: how the new embedding rows start
#   EXTRA_ARGS  more tools/convert_from_hf.py flags (e.g. --force to replace OUTPUT)
#
#SBATCH --job-name=mio-convert-yi
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=16
#SBATCH --time=02:00:00
#SBATCH --output=%x-%j.out

here=$(dirname "${BASH_SOURCE[0]}")
[[ -f $here/launch_common.sh ]] || here=${MIO_REPO:-${SLURM_SUBMIT_DIR:-.}}/examples
source "$here/launch_common.sh" || { echo "cannot find examples/launch_common.sh: set MIO_REPO" >&2; exit 2; }
set -euo pipefail

repo=$(mio_repo)
python=${PYTHON:-$repo/.venv/bin/python}
[[ -x $python ]] || python=python3
YI_DIR=${YI_DIR:-$repo/checkpoints/Yi-6B}
TOKENIZER=${TOKENIZER:-$repo/checkpoints/mio-tokenizer}
OUTPUT=${OUTPUT:-$repo/checkpoints/yi-6b-mio}
[[ -f $YI_DIR/config.json ]] || mio_die "YI_DIR=$YI_DIR has no config.json: download 01-ai/Yi-6B there first"
base=$YI_DIR/tokenizer.model
[[ -f $base ]] || base=$YI_DIR
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"

mio_log "building the MIO tokenizer from $base into $TOKENIZER"
"$python" "$repo/tools/build_tokenizer.py" --base "$base" --output "$TOKENIZER"

mio_log "converting $YI_DIR into $OUTPUT (TP=${TP:-1} PP=${PP:-1})"
# shellcheck disable=SC2086
"$python" "$repo/tools/convert_from_hf.py" --hf-dir "$YI_DIR" --output "$OUTPUT" \
    --tp "${TP:-1}" --pp "${PP:-1}" --tokenizer "$TOKENIZER" \
    --new-token-init "${NEW_TOKEN_INIT:-mean}" ${EXTRA_ARGS:-}
mio_log "done: stage I starts from $OUTPUT (examples/pretrain_stage1.sh loads it by default)"
