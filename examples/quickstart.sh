#!/usr/bin/env bash
# MIO on a laptop: the whole system on a tiny model, on the CPU, in a few minutes.
#
#   bash examples/quickstart.sh [WORKDIR]        (default WORKDIR: ./quickstart)
#
# 1. sets up .venv (Python 3.12 from pyenv or python3.12 on PATH; pip install -e .; matplotlib)
# 2. trains a tiny SentencePiece base model and builds the MIO tokenizer on it (+12,292 tokens)
# 3. writes a small corpus of every data type and preprocesses it into indexed datasets
# 4. trains a tiny MIO model on 2 CPU processes with TP=2, through examples/pretrain_stage3.sh,
#    the launch script clusters use (under Slurm it would srun one torchrun per node)
# 5. exports the checkpoint to Hugging Face, loads it with transformers and generates
# 6. prints the loss at start and end per modality and writes a PNG of the loss curves
#
# Settings: TRAIN_ITERS (default 60), TP (default 2), PP (default 1), MIO_VENV.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORKDIR=$(mkdir -p "${1:-quickstart}" && cd "${1:-quickstart}" && pwd)
step() { echo; echo "=== $* ==="; }

step "1/6 Python environment"
export PYTHONWARNINGS=ignore
# Quiet steps keep their output in WORKDIR/*.log and show it only when they fail.
quiet() {
    local log=$WORKDIR/$1.log; shift
    "$@" > "$log" 2>&1 || { tail -n 40 "$log" >&2; echo "failed: $*; full log: $log" >&2; exit 1; }
}
quiet setup bash "$REPO/tools/setup_venv.sh"
PYTHON=$(tail -n 1 "$WORKDIR/setup.log")
"$PYTHON" -c "import matplotlib" 2>/dev/null || quiet setup-matplotlib "$PYTHON" -m pip install -q --disable-pip-version-check matplotlib
echo "python: $PYTHON"
export PYTHON

step "2-3/6 tokenizer, sample corpus, preprocessing"
"$PYTHON" -m megatron_mio.quickstart prepare "$WORKDIR" 2> "$WORKDIR/prepare.log" || { cat "$WORKDIR/prepare.log" >&2; exit 1; }

step "4/6 training (CPU, TP=${TP:-2}, through examples/pretrain_stage3.sh)"
rm -rf "$WORKDIR/checkpoints"
if ! USE_CPU=1 TP=${TP:-2} PP=${PP:-1} MODEL=tiny \
     STAGE_CONFIG="$REPO/examples/configs/tiny_cpu.yaml" \
     DATA_CONFIG="$WORKDIR/data.yaml" TOKENIZER="$WORKDIR/tokenizer" \
     CKPT_DIR="$WORKDIR/checkpoints" LOAD_DIR= TRAIN_ITERS=${TRAIN_ITERS:-60} LAUNCHER=local \
     EXTRA_ARGS="--seq-length 512 --attention-backend torch --lr 3e-3 --log-interval 5" \
     bash "$REPO/examples/pretrain_stage3.sh" > "$WORKDIR/train.log" 2>&1; then
    tail -n 40 "$WORKDIR/train.log" >&2
    echo "training failed; full log: $WORKDIR/train.log" >&2
    exit 1
fi
grep -E "^ *iteration|mio-launch" "$WORKDIR/train.log" | cut -c1-160 || true

step "5/6 export to Hugging Face and generate with transformers"
quiet export "$PYTHON" "$REPO/tools/convert_to_hf.py" --load "$WORKDIR/checkpoints" \
    --output "$WORKDIR/hf_model" --tokenizer "$WORKDIR/tokenizer" --force
echo "exported: $WORKDIR/hf_model"
quiet generate "$PYTHON" "$REPO/tools/generate.py" --hf-dir "$WORKDIR/hf_model" \
    --prompt "Describe a sunny day." --modality text --max-new-tokens 24 --output "$WORKDIR/generation.json"
echo "generated: $WORKDIR/generation.json"

step "6/6 summary"
"$PYTHON" -m megatron_mio.quickstart summary "$WORKDIR"
