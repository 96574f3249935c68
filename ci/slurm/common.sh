# What the test clusters share (sourced by start.sh and start_two_nodes.sh, never run).
#
# A cluster lives in one STATE directory: munge key and socket, slurm.conf, spool, logs and pid
# files, so it never touches /etc and several clusters can run side by side.

slurm_free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# munged with its own key and socket in STATE/munge, as the munge user (munged refuses insecure
# ownership).  The socket is a file, so it also serves processes in other network namespaces.
slurm_start_munge() {
    local state=$1
    mkdir -p "$state/munge"
    dd if=/dev/urandom of="$state/munge/munge.key" bs=1024 count=1 status=none
    chown -R munge:munge "$state/munge"
    # The socket directory must be searchable by every user of munge.
    chmod 755 "$state/munge"
    chmod 400 "$state/munge/munge.key"
    runuser -u munge -- /usr/sbin/munged \
        --socket="$state/munge/munge.socket" --key-file="$state/munge/munge.key" \
        --pid-file="$state/munge/munged.pid" --log-file="$state/munge/munged.log" \
        --seed-file="$state/munge/munged.seed"
}

# The slurm.conf lines every test cluster has; the caller appends its hosts, nodes and partition.
#   slurm_conf_common STATE CTLD_PORT SLURMD_PORT
slurm_conf_common() {
    local state=$1 ctld_port=$2 slurmd_port=$3
    cat <<CONF
ClusterName=mio-ci
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$state/munge/munge.socket
StateSaveLocation=$state/ctld
SlurmctldPidFile=$state/slurmctld.pid
SlurmctldLogFile=$state/log/slurmctld.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
# Finished jobs leave the controller quickly, so \`sbatch --wait\` returns promptly.
MinJobAge=5
CONF
}

# Wait until N nodes accept jobs (sinfo reads SLURM_CONF); 0 when they do.
#   slurm_wait_idle N TIMEOUT_S [CLIENT_PREFIX...]
slurm_wait_idle() {
    local want=$1 timeout=$2 ready
    shift 2
    local tries=$((timeout * 2))
    for (( i = 0; i < tries; i++ )); do
        ready=$("$@" sinfo -h -N -o '%N %T' 2>/dev/null | grep -cE ' (idle|mixed|allocated)$' || true)
        (( ready >= want )) && return 0
        sleep 0.5
    done
    return 1
}
