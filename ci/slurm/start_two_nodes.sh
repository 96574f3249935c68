#!/usr/bin/env bash
# Start a two-node Slurm cluster on this machine, as root, without systemd:
#
#   bash ci/slurm/start_two_nodes.sh STATE_DIR
#
# Each node is a network namespace with its own hostname (a UTS namespace), its own /etc/hosts
# (a mount namespace) and one slurmd with its own spool and NodeName:
#
#   mio-n1  eth0 10.42.0.1/25  slurmctld + slurmd      the two eth0s are the ends of one veth
#   mio-n2  eth0 10.42.0.2/25  slurmd                  pair; nothing else is connected to it
#
# Both nodes also have loopback, and each node's /etc/hosts maps its own name to 127.0.1.1 (what
# Debian's installer writes), so a program that binds to "the address of my hostname" (gloo's
# default) is unreachable from the other node: launches must pick the interface, as on clusters
# whose nodes have several.  munged runs outside the namespaces; its socket is a file in
# STATE_DIR, which every node sees.  Addresses are one private /24 that exists only inside the
# two namespaces; no address outside them is used.
#
# Prints the path of slurm.conf last.  Clients run inside a node:
#   SLURM_CONF=STATE_DIR/slurm.conf bash ci/slurm/on_node.sh STATE_DIR mio-n1 sbatch ...
# ci/slurm/lose_node.sh cuts a node off and kills it; ci/slurm/stop_two_nodes.sh STATE_DIR removes
# everything this script created (also run here when starting fails).
# MIO_SLURM_READY_TIMEOUT: seconds to wait for both nodes to accept jobs (default 60).
set -euo pipefail

state=${1:?usage: start_two_nodes.sh STATE_DIR}
mkdir -p "$state"
state=$(cd "$state" && pwd)
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$here/common.sh"
ready_timeout=${MIO_SLURM_READY_TIMEOUT:-60}
nodes=(mio-n1 mio-n2)
subnet=10.42.0

die() { echo "error: $*" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || die "the two-node cluster needs root (network namespaces, daemons as root)"
for prog in ip unshare runuser; do
    command -v "$prog" >/dev/null || die "the two-node cluster needs '$prog' (iproute2 / util-linux)"
done
[[ ! -e $state/nodes ]] || die "$state already holds a cluster (stop it with stop_two_nodes.sh)"

# From here on a failure removes whatever was created so far.
started=0
cleanup_on_failure() {
    (( started )) && return
    echo "error: starting the two-node cluster failed; removing what was created" >&2
    bash "$here/stop_two_nodes.sh" "$state" >&2 || true
}
trap cleanup_on_failure EXIT

chmod 755 "$state"
mkdir -p "$state/ctld" "$state/log"
# STATE/nodes lists "NAME NETNS ADDRESS" for every namespace as soon as it exists: what
# stop_two_nodes.sh removes, and nothing else.
: > "$state/nodes"
tag=mio-$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
for i in "${!nodes[@]}"; do
    netns=$tag-${nodes[$i]#mio-}
    if ! err=$(ip netns add "$netns" 2>&1); then
        die "cannot create a network namespace (ip netns add $netns: $err); the two-node cluster needs root with CAP_SYS_ADMIN and CAP_NET_ADMIN"
    fi
    echo "${nodes[$i]} $netns $subnet.$((i + 1))" >> "$state/nodes"
done
read -r _ ns1 addr1 < <(sed -n 1p "$state/nodes")
read -r _ ns2 addr2 < <(sed -n 2p "$state/nodes")
ip link add name eth0 netns "$ns1" type veth peer name eth0 netns "$ns2"
while read -r node netns addr; do
    ip -n "$netns" link set lo up
    ip -n "$netns" addr add "$addr/25" dev eth0
    ip -n "$netns" link set eth0 up
    {
        echo "127.0.0.1 localhost"
        echo "127.0.1.1 $node"
        while read -r other _ other_addr; do
            [[ $other == "$node" ]] || echo "$other_addr $other"
        done < "$state/nodes"
    } > "$state/hosts.$node"
    mkdir -p "$state/slurmd/$node"
done < "$state/nodes"

slurm_start_munge "$state"

cpus=$(nproc)
{
    echo "# Two-node test cluster written by ci/slurm/start_two_nodes.sh (nodes: network namespaces)."
    # Fresh namespaces: Slurm's default ports are free in each.
    slurm_conf_common "$state" 6817 6818
    cat <<CONF
SlurmctldHost=${nodes[0]}($addr1)
SlurmdSpoolDir=$state/slurmd/%n
SlurmdPidFile=$state/slurmd/%n.pid
SlurmdLogFile=$state/log/slurmd-%n.log
# A node that stops answering is DOWN (its jobs NODE_FAIL) after this many seconds.
SlurmdTimeout=10
KillWait=10
NodeName=${nodes[0]} NodeAddr=$addr1 CPUs=$cpus State=UNKNOWN
NodeName=${nodes[1]} NodeAddr=$addr2 CPUs=$cpus State=UNKNOWN
PartitionName=debug Nodes=${nodes[0]},${nodes[1]} Default=YES MaxTime=INFINITE State=UP
CONF
} > "$state/slurm.conf"
echo "$state/slurm.conf" > "$state/conf_path"
export SLURM_CONF="$state/slurm.conf"

bash "$here/on_node.sh" "$state" "${nodes[0]}" /usr/sbin/slurmctld -f "$SLURM_CONF"
for node in "${nodes[@]}"; do
    bash "$here/on_node.sh" "$state" "$node" /usr/sbin/slurmd -f "$SLURM_CONF"
done

if ! slurm_wait_idle "${#nodes[@]}" "$ready_timeout" bash "$here/on_node.sh" "$state" "${nodes[0]}"; then
    bash "$here/on_node.sh" "$state" "${nodes[0]}" sinfo -N >&2 || true
    tail -n 20 "$state"/log/*.log >&2 || true
    die "the two nodes did not both accept jobs within ${ready_timeout}s; logs in $state/log"
fi
started=1
echo "$SLURM_CONF"
