# Shared launch logic for every MIO stage script (sourced, never run directly).
#
# A stage script sets its defaults (STAGE_CONFIG, DATA_CONFIG, TP, PP, ...) and calls
# `mio_launch`.  This file is the one place that knows how a job starts:
#
#   * where the repository is (under sbatch the script runs from a spool copy, so $0 is useless),
#   * node count, processes per node, master address and port, rendezvous, NCCL environment,
#   * srun (one task per node, each running torchrun) inside a Slurm allocation, or torchrun
#     alone on the local machine,
#   * preemption: the warning signal (USR1 from `#SBATCH --signal=B:USR1@N`) reaching the batch
#     shell is forwarded to the training processes, which finish the iteration, save and exit 0;
#     the job then requeues itself (REQUEUE_ON_PREEMPT=1) and resumes with --load; on TERM
#     (scancel, Slurm preemption) the trainers also save and exit,
#   * resume: when CKPT_DIR holds a checkpoint, --load CKPT_DIR; otherwise, when LOAD_DIR is set,
#     the stage starts from those weights (--load LOAD_DIR --finetune: fresh optimizer and schedule).
#
# Several nodes (tested for real on a two-node Slurm cluster in network namespaces,
# tests/test_slurm_two_nodes.py; ci/slurm/start_two_nodes.sh):
#   * master address: the allocation's first node (`scontrol show hostnames`), as the address
#     Slurm itself reaches it at (its NodeAddr from `scontrol show node`; its name when Slurm
#     cannot say).  Node 0 is that node: the batch shell runs there and Slurm numbers it 0.
#   * rendezvous port: a port that is free on that node, chosen by the batch shell (which runs
#     there); from elsewhere (salloc on a login node, DRY_RUN) 20000 + job id % 20000.
#   * torchrun's static rendezvous with --node-rank "$SLURM_NODEID", filled in on each node: every
#     node's processes get the global ranks of its Slurm node number (node 0 holds ranks
#     0..GPUS_PER_NODE-1 and the rendezvous store), whatever order the nodes start in.
#   * interface: each node exports GLOO_SOCKET_IFNAME and NCCL_SOCKET_IFNAME (when not already
#     set) as the interface that holds the master address (node 0) or routes to it (the others,
#     `ip route get`).  Without it gloo binds to the address of the node's hostname, which on a
#     node with several interfaces may not reach the other nodes (Debian maps the hostname to
#     127.0.1.1): gloo's connection set-up then fails with "Connect timeout".
#   * a node lost mid-run: Slurm declares it DOWN after SlurmdTimeout and ends the job
#     (NODE_FAIL; with --requeue it waits for nodes and resumes from CKPT_DIR).  Ranks whose
#     nodes stay up but whose peers stall wait for the collective timeout instead: the trainer's
#     --distributed-timeout-minutes (default 30), which applies to every process group.
#
# Environment variables (all optional; the stage script documents its own defaults):
#   NNODES            nodes (default: Slurm's SLURM_JOB_NUM_NODES, else 1)
#   GPUS_PER_NODE     processes per node (default: Slurm's SLURM_GPUS_ON_NODE, else the GPUs
#                     nvidia-smi lists; with USE_CPU=1: TP x PP)
#   TP, PP            tensor / pipeline model parallel sizes
#   MODEL             model preset (yi-6b, tiny, small)
#   DATA_CONFIG       stage mixture YAML (--data-config); MOCK_DATA=1 uses synthetic data instead
#   TOKENIZER         MIO tokenizer directory (--tokenizer-model; default checkpoints/mio-tokenizer,
#                     written by examples/convert_yi_to_mio.sh)
#   CKPT_DIR          where checkpoints are saved and resumed from (--save, and --load on resume)
#   LOAD_DIR          starting weights when CKPT_DIR has no checkpoint yet (--load ... --finetune)
#   TRAIN_ITERS       iterations (--train-iters)
#   MICRO_BATCH, GLOBAL_BATCH, SAVE_INTERVAL   the matching trainer flags
#   METRICS_FILE      JSON lines per iteration (default: CKPT_DIR/metrics.jsonl)
#   USE_CPU=1         CPU run with gloo (tests, laptops)
#   EXTRA_ARGS        more trainer flags, appended last (they override everything above)
#   STAGE_CONFIG      trainer --config YAML (default: examples/configs/<stage>.yaml; empty: none)
#   MIO_REPO          the repository (default: the script's directory's parent, else SLURM_SUBMIT_DIR)
#   PYTHON            interpreter (default: MIO_REPO/.venv/bin/python if present, else python3)
#   MASTER_ADDR       rendezvous host (default: the allocation's first node, see above)
#   MASTER_PORT       rendezvous port (default: free on the first node, see above)
#   GLOO_SOCKET_IFNAME, NCCL_SOCKET_IFNAME   network interface for gloo / NCCL sockets (default:
#                     per node, the interface toward the master address)
#   LAUNCHER          srun | local (default: srun inside a Slurm allocation, else local)
#   REQUEUE_ON_PREEMPT  1 (default) requeues a Slurm job that saved on a warning signal
#   DRY_RUN=1         print the launch command instead of running it

mio_log() { echo "[mio-launch $(date +%H:%M:%S)] $*" >&2; }
mio_die() { echo "[mio-launch] error: $*" >&2; exit 2; }

# This file's own path: every node sources it to run its torchrun (mio_node_exec).
MIO_LAUNCH_COMMON=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")

# The repository: MIO_REPO, else the parent of this file's directory.
mio_repo() {
    if [[ -n ${MIO_REPO:-} ]]; then
        echo "$MIO_REPO"
    else
        (cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    fi
}

mio_in_slurm() { [[ -n ${SLURM_JOB_ID:-} ]] && command -v srun >/dev/null 2>&1; }

# The latest complete iteration saved in directory $1, or nothing when it holds no checkpoint.
# megatron_mio.checkpoint owns the layout (it imports no torch: a fraction of a second).
# Returns 3 when the directory's tracker cannot be read (the reason is on stderr).
mio_latest_iteration() {
    PYTHONPATH="$MIO_REPO${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m megatron_mio.checkpoint latest "$1"
}

# Whether directory $1 holds a checkpoint to load.  A damaged tracker counts: the trainer names
# the damage and --ckpt-step (in EXTRA_ARGS) chooses another iteration.
mio_has_checkpoint() {
    local iteration status
    iteration=$(mio_latest_iteration "$1" 2>/dev/null)
    status=$?
    (( status == 0 || status == 3 )) || mio_die "$PYTHON -m megatron_mio.checkpoint failed (status $status; MIO_REPO=$MIO_REPO)"
    (( status == 3 )) || [[ -n $iteration ]]
}

mio_count_gpus() {
    command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -c '^GPU' || echo 0
}

# Resolve every setting into MIO_* variables (no side effects besides exports for the run).
mio_resolve() {
    MIO_REPO=$(mio_repo)
    [[ -f $MIO_REPO/megatron_mio/__init__.py ]] || mio_die "MIO_REPO=$MIO_REPO is not the megatron_mio repository"
    if [[ -z ${PYTHON:-} ]]; then
        if [[ -x $MIO_REPO/.venv/bin/python ]]; then PYTHON=$MIO_REPO/.venv/bin/python; else PYTHON=python3; fi
    fi

    TP=${TP:-1}
    PP=${PP:-1}
    NNODES=${NNODES:-${SLURM_JOB_NUM_NODES:-1}}
    if [[ -z ${GPUS_PER_NODE:-} ]]; then
        if [[ ${USE_CPU:-0} == 1 ]]; then
            GPUS_PER_NODE=$((TP * PP))
        elif [[ ${SLURM_GPUS_ON_NODE:-0} -gt 0 ]]; then
            GPUS_PER_NODE=$SLURM_GPUS_ON_NODE
        else
            GPUS_PER_NODE=$(mio_count_gpus)
        fi
    fi
    (( GPUS_PER_NODE > 0 )) || mio_die "no GPUs found: set GPUS_PER_NODE, or USE_CPU=1 for a CPU run"
    local world=$((NNODES * GPUS_PER_NODE))
    (( world % (TP * PP) == 0 )) || mio_die "world size $world (NNODES=$NNODES x GPUS_PER_NODE=$GPUS_PER_NODE) is not divisible by TP x PP = $TP x $PP"

    if [[ -z ${LAUNCHER:-} ]]; then
        if mio_in_slurm; then LAUNCHER=srun; else LAUNCHER=local; fi
    fi
    if [[ $LAUNCHER == srun ]]; then
        mio_master
    elif (( NNODES > 1 )); then
        mio_die "NNODES=$NNODES needs a Slurm allocation (sbatch/salloc), or run one node per machine with LAUNCHER=srun"
    fi

    # Stage defaults: examples/configs/<stage>.yaml, examples/data/<stage>.yaml, checkpoints/<stage>,
    # starting from checkpoints/<previous stage> (LOAD_DIR= with an empty value: from scratch).
    local stage=${MIO_STAGE:-run}
    STAGE_CONFIG=${STAGE_CONFIG-$MIO_REPO/examples/configs/$stage.yaml}
    if [[ -z ${DATA_CONFIG+set} && ${MOCK_DATA:-0} != 1 ]]; then
        DATA_CONFIG=$MIO_REPO/examples/data/$stage.yaml
    fi
    CKPT_DIR=${CKPT_DIR:-$MIO_REPO/checkpoints/$stage}
    # The tokenizer examples/convert_yi_to_mio.sh builds (TOKENIZER= with an empty value: none).
    if [[ ${MOCK_DATA:-0} != 1 ]]; then
        TOKENIZER=${TOKENIZER-$MIO_REPO/checkpoints/mio-tokenizer}
        [[ -z $TOKENIZER || -d $TOKENIZER ]] || mio_die "TOKENIZER=$TOKENIZER: no such directory (examples/convert_yi_to_mio.sh builds it)"
    fi
    if [[ -z ${LOAD_DIR+set} && -n ${MIO_PREVIOUS_STAGE:-} ]]; then
        LOAD_DIR=$MIO_REPO/checkpoints/$MIO_PREVIOUS_STAGE
    fi
    if [[ -n ${LOAD_DIR:-} ]] && ! mio_has_checkpoint "$CKPT_DIR" && ! mio_has_checkpoint "$LOAD_DIR"; then
        mio_die "LOAD_DIR=$LOAD_DIR has no checkpoint; train the previous stage first, or set LOAD_DIR= (empty) to start from random weights"
    fi
    [[ -z $STAGE_CONFIG || -f $STAGE_CONFIG ]] || mio_die "STAGE_CONFIG=$STAGE_CONFIG: no such file"
    [[ -z ${DATA_CONFIG:-} || -f $DATA_CONFIG ]] || mio_die "DATA_CONFIG=$DATA_CONFIG: no such file"
    METRICS_FILE=${METRICS_FILE:-$CKPT_DIR/metrics.jsonl}
}

# MASTER_ADDR / MASTER_PORT of a Slurm launch: the first node of the allocation, a free port there.
mio_master() {
    local first
    first=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
    [[ -n $first ]] || mio_die "cannot list the nodes of SLURM_JOB_NODELIST=${SLURM_JOB_NODELIST:-}"
    if [[ -z ${MASTER_ADDR:-} ]]; then
        MASTER_ADDR=$(scontrol show node -o "$first" 2>/dev/null | tr ' ' '\n' | sed -n 's/^NodeAddr=//p')
        MASTER_ADDR=${MASTER_ADDR:-$first}
    fi
    if [[ -z ${MASTER_PORT:-} ]]; then
        if [[ ${SLURMD_NODENAME:-} == "$first" ]]; then
            # The batch shell runs on the first node: ask its kernel for a port no one holds.
            MASTER_PORT=$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])') \
                || mio_die "cannot find a free port on $first"
        else
            MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))
        fi
    fi
    export MASTER_ADDR MASTER_PORT  # for mio_node_exec on every node (srun --export=ALL)
}

# The interface that holds ADDRESS (on its own node) or routes to it, or nothing.
mio_interface_toward() {
    local addr=$1 ip_addr dev
    command -v ip >/dev/null 2>&1 || return 0
    ip_addr=$(getent ahostsv4 "$addr" 2>/dev/null | awk 'NR == 1 {print $1}')
    [[ -n $ip_addr ]] || return 0
    dev=$(ip -o -4 addr show to "$ip_addr" 2>/dev/null | awk 'NR == 1 {print $2}')
    [[ -n $dev ]] || dev=$(ip -o route get "$ip_addr" 2>/dev/null | sed -n 's/.* dev \([^ ]*\).*/\1/p')
    echo "$dev"
}

# Runs on every node of a Slurm launch (srun starts it once per node): fill in this node's
# --node-rank, choose the network interface, ignore USR1, exec torchrun.
#   bash -c 'source launch_common.sh && mio_node_exec "$@"' launch_common.sh TORCHRUN... ARGS...
mio_node_exec() {
    local node_rank=${SLURM_NODEID:?mio_node_exec runs under srun, which sets SLURM_NODEID}
    local args=() arg
    for arg in "$@"; do
        if [[ $arg == '$SLURM_NODEID' ]]; then args+=("$node_rank"); else args+=("$arg"); fi
    done
    local nnodes=${SLURM_NNODES:-1} dev="" how="set by the user"
    if (( nnodes == 1 )); then
        how="one node: every connection is local"
    elif [[ -z ${GLOO_SOCKET_IFNAME:-} || -z ${NCCL_SOCKET_IFNAME:-} ]]; then
        dev=$(mio_interface_toward "$MASTER_ADDR")
        if [[ -n $dev && $dev != lo ]]; then
            export GLOO_SOCKET_IFNAME=${GLOO_SOCKET_IFNAME:-$dev} NCCL_SOCKET_IFNAME=${NCCL_SOCKET_IFNAME:-$dev}
            how="toward $MASTER_ADDR"
        else
            how="none found toward $MASTER_ADDR: gloo/NCCL choose; set GLOO_SOCKET_IFNAME/NCCL_SOCKET_IFNAME"
        fi
    fi
    mio_log "node $node_rank of $nnodes ($(hostname)): node rank $node_rank," \
            "master $MASTER_ADDR:$MASTER_PORT, GLOO_SOCKET_IFNAME=${GLOO_SOCKET_IFNAME:-} NCCL_SOCKET_IFNAME=${NCCL_SOCKET_IFNAME:-} ($how)"
    # torchrun ignores the warning signal, so it reaches the trainers only (see mio_launch_cmd).
    trap "" USR1
    exec "${args[@]}"
}

# Environment for the training processes: threads, NCCL, allocator.
mio_export_env() {
    export PYTHONPATH="$MIO_REPO${PYTHONPATH:+:$PYTHONPATH}"
    if [[ ${USE_CPU:-0} == 1 ]]; then
        export MIO_USE_CPU=1
        export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
        return
    fi
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
    # megatron-core orders TP communication after compute on one CUDA stream.
    export CUDA_DEVICE_MAX_CONNECTIONS=${CUDA_DEVICE_MAX_CONNECTIONS:-1}
    # A rank that dies takes the job down instead of hanging every other rank in a collective.
    export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}
    export TORCH_NCCL_AVOID_RECORD_STREAMS=${TORCH_NCCL_AVOID_RECORD_STREAMS:-1}
    export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
    # Cluster-specific NCCL_SOCKET_IFNAME / NCCL_IB_HCA / NCCL_NET_GDR_LEVEL pass through untouched.
}

# The trainer's arguments, in order: stage config, env-var settings, resume, EXTRA_ARGS last.
mio_train_args() {
    MIO_ARGS=(-m megatron_mio.pretrain)
    [[ -n ${STAGE_CONFIG:-} ]] && MIO_ARGS+=(--config "$STAGE_CONFIG")
    MIO_ARGS+=(--tensor-model-parallel-size "$TP" --pipeline-model-parallel-size "$PP")
    [[ -n ${MODEL:-} ]] && MIO_ARGS+=(--model-preset "$MODEL")
    if [[ ${MOCK_DATA:-0} == 1 ]]; then
        MIO_ARGS+=(--mock-data)
    elif [[ -n ${DATA_CONFIG:-} ]]; then
        MIO_ARGS+=(--data-config "$DATA_CONFIG")
    fi
    [[ -n ${TOKENIZER:-} ]] && MIO_ARGS+=(--tokenizer-model "$TOKENIZER")
    [[ -n ${TRAIN_ITERS:-} ]] && MIO_ARGS+=(--train-iters "$TRAIN_ITERS")
    [[ -n ${MICRO_BATCH:-} ]] && MIO_ARGS+=(--micro-batch-size "$MICRO_BATCH")
    [[ -n ${GLOBAL_BATCH:-} ]] && MIO_ARGS+=(--global-batch-size "$GLOBAL_BATCH")
    [[ -n ${SAVE_INTERVAL:-} ]] && MIO_ARGS+=(--save-interval "$SAVE_INTERVAL")
    MIO_ARGS+=(--save "$CKPT_DIR" --metrics-file "$METRICS_FILE")
    if mio_has_checkpoint "$CKPT_DIR"; then
        mio_log "resuming from $CKPT_DIR (iteration $(mio_latest_iteration "$CKPT_DIR" 2>&1))"
        MIO_ARGS+=(--load "$CKPT_DIR" --allow-missing-checkpoint)
    elif [[ -n ${LOAD_DIR:-} ]]; then
        mio_log "starting from the weights in $LOAD_DIR"
        MIO_ARGS+=(--load "$LOAD_DIR" --finetune)
    fi
    [[ ${USE_CPU:-0} == 1 ]] && MIO_ARGS+=(--use-cpu)
    # Word splitting is intended: EXTRA_ARGS is a flag string.
    # shellcheck disable=SC2206
    MIO_ARGS+=(${EXTRA_ARGS:-})
}

# torchrun for this node; under srun the same command runs once per node.
mio_torchrun_cmd() {
    MIO_TORCHRUN=("$PYTHON" -m torch.distributed.run --nproc-per-node "$GPUS_PER_NODE" --max-restarts 0)
    if [[ $LAUNCHER == srun ]]; then
        # '$SLURM_NODEID' stays literal here: mio_node_exec puts each node's number in its place.
        MIO_TORCHRUN+=(--nnodes "$NNODES" --node-rank '$SLURM_NODEID'
                       --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT")
    else
        MIO_TORCHRUN+=(--standalone --nnodes 1)
    fi
}

# The full command.  torchrun itself ignores USR1 (an ignored signal stays ignored across exec
# and in its children), so the warning reaches the trainers, which install their own handler,
# without killing the agent that supervises them.
mio_launch_cmd() {
    if [[ $LAUNCHER == srun ]]; then
        # Each node sources this file and runs mio_node_exec (node rank, interface, USR1).
        local node_cmd=(bash -c 'source "$0" && mio_node_exec "$@"' "$MIO_LAUNCH_COMMON"
                        "${MIO_TORCHRUN[@]}" "${MIO_ARGS[@]}")
        # The one task per node gets every CPU of the node (srun does not inherit the batch
        # job's --cpus-per-task since Slurm 22.05; a 1-CPU step would pin all 8 trainers to
        # one core) and, by default, all of the job's GPUs.
        MIO_CMD=(srun --nodes "$NNODES" --ntasks "$NNODES" --ntasks-per-node 1
                 --cpus-per-task "${SLURM_CPUS_ON_NODE:-1}" --kill-on-bad-exit=1
                 --export=ALL "${node_cmd[@]}")
    else
        MIO_CMD=(bash -c 'trap "" USR1; exec "$@"' mio-node "${MIO_TORCHRUN[@]}" "${MIO_ARGS[@]}")
    fi
}

# Forward a signal to the training processes, which save and exit 0 on USR1 and TERM.
# USR1 is the time-limit warning: srun relays it to every task's process tree on every node
# (torchrun ignores it, the trainers catch it), and the job requeues itself afterwards.
# TERM (scancel, preemption by Slurm) already reaches every process of the job from Slurm; it is
# relayed only locally, and never requeues: a cancelled job stays cancelled.
mio_forward_signal() {
    MIO_INTERRUPTED=1
    mio_log "got SIG$1: asking the trainers to save and exit"
    if [[ $1 == USR1 ]]; then
        MIO_PREEMPTED=1
        if [[ $LAUNCHER == srun ]]; then
            kill -s USR1 "$MIO_PID" 2>/dev/null || true
        else
            pkill -USR1 -P "$MIO_PID" 2>/dev/null || true
        fi
    elif [[ $LAUNCHER != srun ]]; then
        pkill -TERM -P "$MIO_PID" 2>/dev/null || true
    fi
}

# Requeue after a save on a warning signal, unless training has reached TRAIN_ITERS.
mio_maybe_requeue() {
    [[ $LAUNCHER == srun && ${REQUEUE_ON_PREEMPT:-1} == 1 && ${MIO_PREEMPTED:-0} == 1 ]] || return 0
    local done_iters
    done_iters=$(mio_latest_iteration "$CKPT_DIR")
    done_iters=${done_iters:-0}
    if [[ -n ${TRAIN_ITERS:-} ]] && (( done_iters >= TRAIN_ITERS )); then
        mio_log "preempted after the last iteration; not requeueing"
        return 0
    fi
    mio_log "checkpoint at iteration $done_iters saved; requeueing job $SLURM_JOB_ID"
    scontrol requeue "$SLURM_JOB_ID"
}

# Resolve, print and run; returns the trainer's exit code.
mio_launch() {
    set -uo pipefail
    mio_resolve
    mio_export_env
    mio_train_args
    mio_torchrun_cmd
    mio_launch_cmd
    mio_log "repo=$MIO_REPO launcher=$LAUNCHER nodes=$NNODES procs/node=$GPUS_PER_NODE TP=$TP PP=$PP" \
            "master=${MASTER_ADDR:-local}:${MASTER_PORT:-auto} restart=${SLURM_RESTART_COUNT:-0}"
    mio_log "command: ${MIO_CMD[*]}"
    if [[ ${DRY_RUN:-0} == 1 ]]; then
        printf '%q ' "${MIO_CMD[@]}"; echo
        return 0
    fi
    mkdir -p "$CKPT_DIR"

    MIO_PREEMPTED=0
    MIO_INTERRUPTED=0
    trap 'mio_forward_signal USR1' USR1
    trap 'mio_forward_signal TERM' TERM
    "${MIO_CMD[@]}" &
    MIO_PID=$!
    local rc status
    wait "$MIO_PID"
    rc=$?
    # `wait` returns early when a trapped signal arrives; wait again for the real status
    # (127 means the status was already collected by the first wait).
    while (( MIO_INTERRUPTED )); do
        MIO_INTERRUPTED=0
        wait "$MIO_PID"
        status=$?
        (( status == 127 )) || rc=$status
    done
    trap - USR1 TERM
    mio_log "training exited with status $rc"
    (( rc == 0 )) && mio_maybe_requeue
    return "$rc"
}
