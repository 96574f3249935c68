#!/usr/bin/env bash
# Remove the cluster ci/slurm/start_two_nodes.sh STATE_DIR started, and only what it created:
# the daemons (by their pid files), every process left in its network namespaces, munged, and
# the namespaces (which takes their veth ends and addresses with them).  Then checks that none
# of it is left and exits 1, naming what is, if anything is.
#
#   bash ci/slurm/stop_two_nodes.sh STATE_DIR
set -uo pipefail
state=${1:?usage: stop_two_nodes.sh STATE_DIR}

daemon_pids() {  # the daemons' pids from their pid files
    local pidfile
    for pidfile in "$state"/slurmd/*.pid "$state/slurmctld.pid" "$state/munge/munged.pid"; do
        [[ -s $pidfile ]] && cat "$pidfile"
    done
}

netns_exists() { ip netns list | awk '{print $1}' | grep -qxF "$1"; }

netns_list=()
[[ -f $state/nodes ]] && mapfile -t netns_list < <(awk '{print $2}' "$state/nodes")
# The daemons first, all at once, with TERM (each takes a second or two), then whatever is left,
# daemons and job processes in the namespaces, with KILL.
left=()
mapfile -t daemons < <(daemon_pids)
wait_gone() {  # up to $1 tenths of a second for every daemon to be gone
    local pid alive
    for _ in $(seq "$1"); do
        alive=0
        for pid in "${daemons[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        (( alive )) || return 0
        sleep 0.1
    done
}
(( ${#daemons[@]} )) && kill "${daemons[@]}" 2>/dev/null
wait_gone 50
for pid in "${daemons[@]}"; do kill -9 "$pid" 2>/dev/null; done
wait_gone 30
for netns in "${netns_list[@]}"; do
    netns_exists "$netns" || continue
    for _ in $(seq 50); do
        pids=$(ip netns pids "$netns")
        [[ -z $pids ]] && break
        # shellcheck disable=SC2086
        kill -9 $pids 2>/dev/null
        sleep 0.1
    done
    pids=$(ip netns pids "$netns")
    [[ -n $pids ]] && left+=("processes $(echo $pids) in $netns")
    ip netns del "$netns" 2>/dev/null
done

for netns in "${netns_list[@]}"; do
    netns_exists "$netns" && left+=("network namespace $netns")
done
for pid in "${daemons[@]}"; do
    kill -0 "$pid" 2>/dev/null && left+=("process $pid")
done
if (( ${#left[@]} )); then
    printf 'error: left after stopping the cluster in %s: %s\n' "$state" "${left[*]}" >&2
    exit 1
fi
exit 0
