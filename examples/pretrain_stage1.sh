#!/usr/bin/env bash
# MIO pre-training stage I: image-text pairs, language-only and speech-text pairs (pair:lang:interleaved+video:speech = 12:2:0:2 per GPU).
# Paper setting: 16 nodes x 8 GPUs, 24,800 steps, starting from Yi-6B-Base with the MIO vocabulary (examples/convert_yi_to_mio.sh).
#
#   sbatch examples/pretrain_stage1.sh     a Slurm job (the #SBATCH lines are the paper's defaults;
#                                   sbatch options on the command line override them)
#   bash examples/pretrain_stage1.sh       inside an allocation (srun + torchrun), or torchrun on this machine
#
# Settings (environment variables; examples/launch_common.sh describes every one):
#   NNODES, GPUS_PER_NODE   default: the allocation's nodes and GPUs (16 x 8 here)
#   TP, PP                  tensor / pipeline parallel sizes (default 1, 1; see tools/plan_parallelism.py)
#   MODEL                   model preset (default from examples/configs/stage1.yaml: yi-6b)
#   DATA_CONFIG             mixture YAML (default examples/data/stage1.yaml)
#   TOKENIZER               MIO tokenizer directory (default checkpoints/mio-tokenizer)
#   CKPT_DIR                checkpoints of this stage; the job resumes from here (default checkpoints/stage1)
#   LOAD_DIR                starting weights (default checkpoints/yi-6b-mio; empty value: random init)
#   TRAIN_ITERS             iterations (default from the stage config)
#   USE_CPU=1               CPU run with gloo (GPUS_PER_NODE then counts processes)
#   EXTRA_ARGS              more trainer flags, appended last
# Preemption: Slurm sends USR1 ten minutes before the time limit; the trainers save and exit 0
# and the job requeues itself, resuming from CKPT_DIR.
#
#SBATCH --job-name=mio-stage1
#SBATCH --nodes=16
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
#SBATCH --time=48:00:00
#SBATCH --signal=B:USR1@600
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out

# Under sbatch this file runs from a spool copy: find the repository via MIO_REPO or the
# submission directory.
here=$(dirname "${BASH_SOURCE[0]}")
[[ -f $here/launch_common.sh ]] || here=${MIO_REPO:-${SLURM_SUBMIT_DIR:-.}}/examples
source "$here/launch_common.sh" || { echo "cannot find examples/launch_common.sh: set MIO_REPO" >&2; exit 2; }

MIO_STAGE=stage1
MIO_PREVIOUS_STAGE=yi-6b-mio
mio_launch
