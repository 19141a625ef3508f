#!/usr/bin/env bash
# A one-node Slurm cluster on this host, for tests and for trying the Slurm examples: munged,
# slurmctld and slurmd run as root with every file (config, munge key and socket, state, logs)
# inside one folder. Nothing under /etc is read or written, so it coexists with a real Slurm
# installation and with other clusters made by this script (each picks free ports).
#
#   scripts/slurm/local_cluster.sh start DIR   start the cluster; DIR must be empty or absent
#   scripts/slurm/local_cluster.sh stop DIR    cancel its jobs, stop its daemons and their children
#
# Then point the Slurm commands at it:  export SLURM_CONF=DIR/slurm.conf
#
# Needs root and the Debian packages slurm-wlm, munge and libpmix-dev (scripts/setup.sh installs
# them). The node says it has max(nproc, ORIGAMI_LOCAL_CLUSTER_CPUS or 8) CPUs
# (SlurmdParameters=config_overrides), so `srun -n 4` runs on a 2-core machine without
# --overcommit. The MPI default is PMIx (`srun --mpi=pmix`).
set -euo pipefail

usage() {
  sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}
[ $# -eq 2 ] || usage
action=$1
dir=$2

log() { echo "local_cluster: $*" >&2; }

# True while PID names a live process (a zombie counts as gone).
alive() {
  local state
  state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$state" ] && [ "$state" != Z ]
}

# Sends TERM to the processes, waits up to SECONDS for them to end, then KILLs what is left.
stop_pids() {
  local seconds=$1
  shift
  local pids=() p
  for p in "$@"; do alive "$p" && pids+=("$p"); done
  [ "${#pids[@]}" -gt 0 ] || return 0
  kill -TERM "${pids[@]}" 2>/dev/null || true
  local waited=0 left
  while :; do
    left=()
    for p in "${pids[@]}"; do alive "$p" && left+=("$p"); done
    [ "${#left[@]}" -gt 0 ] || return 0
    [ "$waited" -lt $((seconds * 10)) ] || break
    sleep 0.1
    waited=$((waited + 1))
  done
  log "killing ${left[*]} (still running after ${seconds}s)"
  kill -KILL "${left[@]}" 2>/dev/null || true
}

# Every process that carries this cluster's marker in its environment: the daemons and the
# slurmstepd processes they forked (job tasks get the environment of srun, not this marker).
marked_pids() {
  local marker="ORIGAMI_LOCAL_CLUSTER=$dir" f pid
  for f in /proc/[0-9]*/environ; do
    pid=${f#/proc/}
    pid=${pid%/environ}
    [ "$pid" != $$ ] || continue
    grep -qzxF "$marker" "$f" 2>/dev/null && echo "$pid"
  done
  return 0
}

pid_from() { if [ -s "$1" ]; then cat "$1"; fi; }

# A TCP port nobody listens on, from a range clear of the usual ephemeral ports.
free_port() {
  local port tries=0
  while [ $tries -lt 100 ]; do
    port=$((20000 + RANDOM % 12000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return 0
    fi
    tries=$((tries + 1))
  done
  log "no free port found"
  return 1
}

start() {
  if [ "$(id -u)" -ne 0 ]; then
    log "needs root (the daemons run as root)"
    exit 1
  fi
  local missing=() c
  for c in munged mungekey munge unmunge slurmctld slurmd sinfo scontrol srun sbatch; do
    command -v "$c" >/dev/null 2>&1 || missing+=("$c")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    log "missing ${missing[*]}; install them with scripts/setup.sh"
    exit 1
  fi
  if [ -e "$dir" ] && [ -n "$(ls -A "$dir")" ]; then
    log "$dir is not empty"
    exit 1
  fi
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  # munged demands a socket folder everyone may enter (every folder above it too) and a key only
  # its owner reads.
  chmod 755 "$dir"
  local up=$dir
  while [ "$up" != / ]; do
    up=$(dirname "$up")
    if [ "$(($(stat -c '%#a' "$up") & 8#111))" -ne $((8#111)) ]; then
      log "munged needs every folder above its socket searchable by all: chmod a+x $up"
      exit 1
    fi
  done
  mkdir -p "$dir/munge" "$dir/state" "$dir/spool" "$dir/log"
  mkdir -m 700 "$dir/munge-private"
  chmod 755 "$dir/munge"
  export ORIGAMI_LOCAL_CLUSTER="$dir"

  mungekey --create --keyfile="$dir/munge-private/munge.key" >/dev/null
  munged --key-file="$dir/munge-private/munge.key" --socket="$dir/munge/munge.socket" \
    --pid-file="$dir/munge-private/munged.pid" --log-file="$dir/log/munged.log" \
    --seed-file="$dir/munge-private/munged.seed"
  if ! munge -S "$dir/munge/munge.socket" -n | unmunge -S "$dir/munge/munge.socket" >/dev/null; then
    log "munge credentials do not round-trip; see $dir/log/munged.log"
    exit 1
  fi

  local host cpus ctld_port slurmd_port
  host=$(hostname -s)
  cpus=$(nproc)
  [ "$cpus" -ge "${ORIGAMI_LOCAL_CLUSTER_CPUS:-8}" ] || cpus=${ORIGAMI_LOCAL_CLUSTER_CPUS:-8}
  ctld_port=$(free_port)
  slurmd_port=$(free_port)
  while [ "$slurmd_port" = "$ctld_port" ]; do slurmd_port=$(free_port); done
  : >"$dir/plugstack.conf"
  cat >"$dir/slurm.conf" <<EOF
# One-node cluster made by scripts/slurm/local_cluster.sh
ClusterName=origami-local
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
PlugStackConfig=$dir/plugstack.conf
# No cgroups (containers rarely allow them): processes tracked by /proc, tasks not bound.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=pmix
ReturnToService=2
# Short waits between SIGTERM and SIGKILL when a job ends or is cancelled.
KillWait=5
InactiveLimit=0
MailProg=/bin/true
# The node's CPU count is taken from this file, not from the hardware.
SlurmdParameters=config_overrides
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE
EOF
  export SLURM_CONF="$dir/slurm.conf"
  slurmctld -i
  slurmd -N "$host"

  # Wait for the controller to answer and the node to be idle.
  local state=""
  for _ in $(seq 1 300); do
    state=$(sinfo -h -n "$host" -o %t 2>/dev/null || true)
    case "$state" in
      idle) break ;;
      down* | drain* | inval*) scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true ;;
    esac
    sleep 0.1
  done
  if [ "$state" != idle ]; then
    log "node $host is '${state:-not answering}' after 30 s; logs in $dir/log"
    tail -n 20 "$dir"/log/*.log >&2 || true
    exit 1
  fi
  log "node $host idle ($cpus CPUs, slurmctld port $ctld_port); export SLURM_CONF=$dir/slurm.conf"
}

stop() {
  [ -d "$dir" ] || return 0
  dir=$(cd "$dir" && pwd)
  export SLURM_CONF="$dir/slurm.conf"
  local ctld d m
  ctld=$(pid_from "$dir/slurmctld.pid")
  d=$(pid_from "$dir/slurmd.pid")
  m=$(pid_from "$dir/munge-private/munged.pid")
  # Cancel the jobs while the daemons can still end them cleanly.
  if [ -n "$ctld" ] && alive "$ctld" && [ -f "$SLURM_CONF" ]; then
    local jobs
    jobs=$(timeout 10 squeue -h -o %i 2>/dev/null || true)
    if [ -n "$jobs" ]; then
      # shellcheck disable=SC2086
      timeout 10 scancel $jobs 2>/dev/null || true
      for _ in $(seq 1 100); do
        [ -z "$(timeout 10 squeue -h -o %i 2>/dev/null || true)" ] && break
        sleep 0.1
      done
    fi
  fi
  # Step daemons first (they hold the job tasks), then slurmd, slurmctld and munged.
  local steps=() p
  for p in $(marked_pids); do
    [ "$p" = "$ctld" ] || [ "$p" = "$d" ] || [ "$p" = "$m" ] || steps+=("$p")
  done
  [ "${#steps[@]}" -eq 0 ] || stop_pids 5 "${steps[@]}"
  [ -z "$d" ] || stop_pids 10 "$d"
  [ -z "$ctld" ] || stop_pids 10 "$ctld"
  [ -z "$m" ] || stop_pids 5 "$m"
  # Anything else that still carries the marker.
  local rest
  rest=$(marked_pids)
  # shellcheck disable=SC2086
  [ -z "$rest" ] || stop_pids 2 $rest
  log "stopped the cluster in $dir"
}

case "$action" in
  start) start ;;
  stop) stop ;;
  *) usage ;;
esac
