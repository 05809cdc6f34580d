#!/usr/bin/env bash
# Stop the cluster started by tests/slurm/start_slurm.sh: cancel its jobs, then end exactly the
# daemons whose PIDs it recorded (TERM, then KILL after 10 s), and remove its slurm.conf.
#
#   tests/slurm/stop_slurm.sh [STATE_DIR]       # default: /tmp/image-density-slurm
set -uo pipefail

STATE=${1:-/tmp/image-density-slurm}
CONF=/etc/slurm/slurm.conf
MARKER="# written by image-density tests/slurm/start_slurm.sh"

[ -s "$STATE/pids" ] || { echo "stop_slurm.sh: no $STATE/pids, nothing to stop"; exit 0; }

timeout 10 scancel --full --signal=KILL --user="$(id -un)" 2>/dev/null
for _ in $(seq 30); do
    [ -z "$(timeout 5 squeue -h -t R,CG 2>/dev/null)" ] && break
    sleep 0.5
done

# Reverse start order: slurmd, slurmctld, munged.
tac "$STATE/pids" | while read -r name pid; do
    kill -0 "$pid" 2>/dev/null || continue
    kill -TERM "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
        echo "stop_slurm.sh: $name ($pid) ignored TERM, killing" >&2
        kill -KILL "$pid"
    fi
done
mv "$STATE/pids" "$STATE/pids.stopped"
if [ -e "$CONF" ] && grep -qF "$MARKER" "$CONF"; then rm -f "$CONF"; fi
echo "stop_slurm.sh: stopped"
