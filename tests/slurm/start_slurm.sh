#!/usr/bin/env bash
# Start a throw-away one-node SLURM cluster (munged + slurmctld + slurmd) on this machine, as root.
#
#   tests/slurm/start_slurm.sh [STATE_DIR]      # default: /tmp/image-density-slurm
#   tests/slurm/stop_slurm.sh  [STATE_DIR]      # stops exactly the daemons started here
#
# Installs slurm-wlm and munge with apt-get when missing (running `apt-get update` first when the
# package lists are empty or stale). Everything the daemons write (state, spool, logs, the munge
# socket) lives in STATE_DIR; the only file written outside it is /etc/slurm/slurm.conf, because the
# job step started by the Snakemake SLURM plugin drops SLURM_CONF and reads that path. An existing
# slurm.conf that this script did not write is never touched.
# No accounting database: `sacct` never sees jobs finish, so Snakemake must poll with `squeue`
# (slurm-status-command: squeue), and MinJobAge=600 keeps finished jobs visible to squeue.
# PIDs of the daemons go to STATE_DIR/pids ("name pid" per line) for stop_slurm.sh.
set -euo pipefail

STATE=${1:-/tmp/image-density-slurm}
CONF=/etc/slurm/slurm.conf
MARKER="# written by image-density tests/slurm/start_slurm.sh"

die() { echo "start_slurm.sh: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (it installs packages and starts daemons)"

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    command -v apt-get >/dev/null || die "slurm-wlm/munge missing and apt-get is not available"
    export DEBIAN_FRONTEND=noninteractive
    if ! timeout 600 apt-get install -y -q slurm-wlm munge >"${TMPDIR:-/tmp}/apt-slurm.log" 2>&1; then
        timeout 300 apt-get update -q >>"${TMPDIR:-/tmp}/apt-slurm.log" 2>&1 \
            || die "apt-get update failed (log: ${TMPDIR:-/tmp}/apt-slurm.log)"
        timeout 600 apt-get install -y -q slurm-wlm munge >>"${TMPDIR:-/tmp}/apt-slurm.log" 2>&1 \
            || die "apt-get install slurm-wlm munge failed (log: ${TMPDIR:-/tmp}/apt-slurm.log)"
    fi
fi

if [ -e "$CONF" ] && ! grep -qF "$MARKER" "$CONF"; then
    die "$CONF exists and was not written by this script; refusing to replace a real SLURM config"
fi
if [ -s "$STATE/pids" ]; then
    die "$STATE/pids exists: a test cluster may still be running (run tests/slurm/stop_slurm.sh $STATE)"
fi
if timeout 5 scontrol ping >/dev/null 2>&1; then
    die "a slurmctld already answers on this machine; stop it first"
fi

rm -rf "$STATE"
mkdir -p "$STATE"/ctld "$STATE"/spool "$STATE"/munge
chmod 700 "$STATE" "$STATE"/munge
STATE=$(cd "$STATE" && pwd)

# munge: our own socket, pid and seed files, so a system munged (if any) is left alone.
KEY=/etc/munge/munge.key
if [ ! -s "$KEY" ]; then
    if command -v mungekey >/dev/null; then mungekey --create --keyfile="$KEY"; else create-munge-key -f; fi
fi
SOCKET="$STATE/munge/munge.socket"

HOST=$(hostname -s)
MEM_MB=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
mkdir -p /etc/slurm
cat >"$CONF" <<CONFEOF
$MARKER
# One node, 2 CPUs, no accounting; see tests/slurm/start_slurm.sh.
ClusterName=imagedensity
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCKET
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=600
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=2 RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONFEOF

start() {  # name, command...: run in the foreground of a background shell, record its PID
    local name=$1; shift
    setsid "$@" >"$STATE/$name.out" 2>&1 </dev/null &
    echo "$name $!" >>"$STATE/pids"
}

start munged munged --foreground --force --socket="$SOCKET" --key-file="$KEY" \
    --pid-file="$STATE/munge/munged.pid" --seed-file="$STATE/munge/munged.seed" \
    --log-file="$STATE/munge/munged.log"
for _ in $(seq 50); do [ -S "$SOCKET" ] && break; sleep 0.2; done
[ -S "$SOCKET" ] || die "munged did not start (see $STATE/munged.out)"

start slurmctld slurmctld -D -i
for _ in $(seq 100); do timeout 5 scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.3; done
timeout 5 scontrol ping 2>/dev/null | grep -q UP || die "slurmctld did not answer (see $STATE/slurmctld.log)"

start slurmd slurmd -D
for _ in $(seq 100); do
    state=$(timeout 5 sinfo -h -N -o %t 2>/dev/null || true)
    case "$state" in idle*|mix*|alloc*) break ;; esac
    sleep 0.3
done
case "$state" in
    idle*|mix*|alloc*) ;;
    *) die "node $HOST is '$state', not idle (see $STATE/slurmd.log, $STATE/slurmctld.log)" ;;
esac
echo "start_slurm.sh: one-node SLURM up (node $HOST, state dir $STATE)"
