#!/usr/bin/env bash
# Run a command on a node of the cluster ci/slurm/start_two_nodes.sh started: in the node's
# network namespace, with its hostname and its /etc/hosts.
#
#   bash ci/slurm/on_node.sh STATE_DIR NODE COMMAND [ARGS...]
set -euo pipefail
state=${1:?usage: on_node.sh STATE_DIR NODE COMMAND...}
node=${2:?usage: on_node.sh STATE_DIR NODE COMMAND...}
shift 2
netns=$(awk -v n="$node" '$1 == n {print $2}' "$state/nodes" 2>/dev/null)
[[ -n $netns ]] || { echo "error: no node $node in $state/nodes" >&2; exit 2; }
# nsenter joins the network namespace (unlike `ip netns exec`, without remounting /sys, so
# /sys/fs/cgroup stays visible to slurmd); unshare adds the node's own hostname and, bound over
# /etc/hosts in a mount namespace of its own, the node's hosts file.
exec nsenter --net="/run/netns/$netns" unshare --uts --mount -- bash -c \
    'hostname "$1" && mount --bind "$2" /etc/hosts && shift 2 && exec "$@"' \
    on-node "$node" "$state/hosts.$node" "$@"
