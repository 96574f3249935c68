#!/usr/bin/env bash
# Start a one-node Slurm cluster (munged, slurmctld, slurmd) as root, without systemd.
#
#   bash ci/slurm/start.sh STATE_DIR
#
# Everything lives in STATE_DIR (config, munge key and socket, spool, logs, pid files), on
# free ports, so it never touches /etc and two clusters can run side by side. Prints the
# path of slurm.conf last; clients find the cluster with `export SLURM_CONF=STATE_DIR/slurm.conf`.
# Stop it with ci/slurm/stop.sh STATE_DIR.  (ci/slurm/start_two_nodes.sh: two nodes.)
set -euo pipefail

state=${1:?usage: start.sh STATE_DIR}
mkdir -p "$state"
state=$(cd "$state" && pwd)
chmod 755 "$state"
mkdir -p "$state/ctld" "$state/slurmd" "$state/log"
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

slurm_start_munge "$state"

node=$(hostname -s)
cpus=$(nproc)
{
    echo "# One-node test cluster written by ci/slurm/start.sh."
    slurm_conf_common "$state" "$(slurm_free_port)" "$(slurm_free_port)"
    cat <<CONF
SlurmctldHost=$node(127.0.0.1)
SlurmdSpoolDir=$state/slurmd
SlurmdPidFile=$state/slurmd.pid
SlurmdLogFile=$state/log/slurmd.log
KillWait=30
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
CONF
} > "$state/slurm.conf"
echo "$state/slurm.conf" > "$state/conf_path"

export SLURM_CONF="$state/slurm.conf"
/usr/sbin/slurmctld -f "$SLURM_CONF"
/usr/sbin/slurmd -f "$SLURM_CONF"

# Ready when the node accepts jobs.
if slurm_wait_idle 1 30; then
    echo "$SLURM_CONF"
    exit 0
fi
echo "error: slurm node did not become idle; logs in $state/log and $state/munge" >&2
sinfo -N >&2 || true
tail -n 20 "$state/log/slurmctld.log" "$state/log/slurmd.log" >&2 || true
exit 1
