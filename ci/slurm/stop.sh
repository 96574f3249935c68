#!/usr/bin/env bash
# Stop the cluster started by ci/slurm/start.sh STATE_DIR: each daemon by the PID in its pid file.
set -uo pipefail

state=${1:?usage: stop.sh STATE_DIR}
for pidfile in "$state/slurmd.pid" "$state/slurmctld.pid" "$state/munge/munged.pid"; do
    [[ -s $pidfile ]] || continue
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || continue
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
done
exit 0
