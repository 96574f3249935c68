#!/usr/bin/env bash
# Lose a node of the cluster ci/slurm/start_two_nodes.sh started, as a machine that dies does:
# its link goes down first (so no connection is closed politely: peers see silence, not a reset),
# then every process in the node (its slurmd, job steps, trainers) is killed.
#
#   bash ci/slurm/lose_node.sh STATE_DIR NODE
set -uo pipefail
state=${1:?usage: lose_node.sh STATE_DIR NODE}
node=${2:?usage: lose_node.sh STATE_DIR NODE}
netns=$(awk -v n="$node" '$1 == n {print $2}' "$state/nodes" 2>/dev/null)
[[ -n $netns ]] || { echo "error: no node $node in $state/nodes" >&2; exit 2; }
ip -n "$netns" link set eth0 down
for _ in $(seq 50); do
    pids=$(ip netns pids "$netns")
    [[ -z $pids ]] && exit 0
    # shellcheck disable=SC2086
    kill -9 $pids 2>/dev/null
    sleep 0.1
done
echo "error: processes left in $node ($netns): $(ip netns pids "$netns" | tr '\n' ' ')" >&2
exit 1
