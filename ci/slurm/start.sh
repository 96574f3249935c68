#!/usr/bin/env bash
# Start a one-node Slurm cluster (munged, slurmctld, slurmd) as root, without systemd.
#
#   bash ci/slurm/start.sh STATE_DIR
#
# Everything lives in STATE_DIR (config, munge key and socket, spool, logs, pid files), on
# free ports, so it never touches /etc and two clusters can run side by side. Prints the
# path of slurm.conf last; clients find the cluster with `export SLURM_CONF=STATE_DIR/slurm.conf`.
# Stop it with ci/slurm/stop.sh STATE_DIR.
set -euo pipefail

state=${1:?usage: start.sh STATE_DIR}
mkdir -p "$state"
state=$(cd "$state" && pwd)
chmod 755 "$state"
mkdir -p "$state/munge" "$state/ctld" "$state/slurmd" "$state/log"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# munge: its own key and socket, run as the munge user (munged refuses insecure ownership).
dd if=/dev/urandom of="$state/munge/munge.key" bs=1024 count=1 status=none
chown -R munge:munge "$state/munge"
# The socket directory must be searchable by every user of munge.
chmod 755 "$state/munge"
chmod 400 "$state/munge/munge.key"
runuser -u munge -- /usr/sbin/munged \
    --socket="$state/munge/munge.socket" --key-file="$state/munge/munge.key" \
    --pid-file="$state/munge/munged.pid" --log-file="$state/munge/munged.log" \
    --seed-file="$state/munge/munged.seed"

node=$(hostname -s)
cpus=$(nproc)
cat > "$state/slurm.conf" <<CONF
# One-node test cluster written by ci/slurm/start.sh.
ClusterName=mio-ci
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$state/munge/munge.socket
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/slurmd
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=$state/log/slurmctld.log
SlurmdLogFile=$state/log/slurmd.log
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
KillWait=30
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
CONF
echo "$state/slurm.conf" > "$state/conf_path"

export SLURM_CONF="$state/slurm.conf"
/usr/sbin/slurmctld -f "$SLURM_CONF"
/usr/sbin/slurmd -f "$SLURM_CONF"

# Ready when the node accepts jobs.
for _ in $(seq 60); do
    if sinfo -h -N -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
        echo "$SLURM_CONF"
        exit 0
    fi
    sleep 0.5
done
echo "error: slurm node did not become idle; logs in $state/log and $state/munge" >&2
sinfo -N >&2 || true
tail -n 20 "$state/log/slurmctld.log" "$state/log/slurmd.log" >&2 || true
exit 1
