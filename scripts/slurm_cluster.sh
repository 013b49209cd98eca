#!/usr/bin/env bash
# A single-node SLURM cluster on loopback, for the cluster tests (tests/cluster/) and
# for trying `--use-cluster 1` on a workstation. Debian/Ubuntu packages, run as root,
# no systemd and no cgroups needed.
#
#   bash scripts/slurm_cluster.sh up       # install if missing, configure, start, wait
#   eval "$(bash scripts/slurm_cluster.sh env)"   # export SLURM_CONF=... in this shell
#   bash scripts/slurm_cluster.sh status   # daemons, sinfo, squeue, recent sacct
#   bash scripts/slurm_cluster.sh down     # cancel jobs, stop every daemon it started
#   bash scripts/slurm_cluster.sh down --purge   # ... and delete the state directory
#
# `up` prints `export SLURM_CONF=<dir>/etc/slurm.conf` as its last line; clients
# (sbatch, squeue, sacct, scontrol, submitit) find the cluster through SLURM_CONF.
#
# What it runs (all as root, all state under $SAM3_LORA_SLURM_DIR):
#   munged    own key and socket (<dir>/munge), so the system munge is untouched
#   mariadbd  + slurmdbd: real job accounting, so `sacct` (which submitit polls) knows
#             every job's final state, also for a job that dies before writing its
#             result (without accounting, job.result() waits forever on such a job)
#   slurmctld + slurmd: one node "localhost" (127.0.0.1) with CPUs=2, one partition
#             "debug". ProctrackType=proctrack/linuxproc, TaskPlugin=task/none,
#             SelectType=select/cons_tres with CR_CPU (a task takes CPUs, not cores).
#   The node also declares 2 "gpu" GRES backed by dummy device nodes: SAM3's launcher
#   asks for one GPU per task (--gpus-per-node = --ntasks-per-node =
#   launcher.gpus_per_node), so on a CPU-only node these scheduling tokens let its job
#   through; the trainer itself runs on CPU (trainer.accelerator: cpu) and never looks
#   for a GPU.
#
# Environment:
#   SAM3_LORA_SLURM_DIR         state dir (default /tmp/sam3-lora-slurm; short paths keep
#                               the unix sockets under the 108-byte limit; .slurm/ in the
#                               repository is git-ignored if you prefer it there)
#   SAM3_LORA_SLURM_ACCOUNTING  1 (default): slurmdbd + MariaDB; 0: none (sacct then fails
#                               and submitit can only learn a job's end from its files)
#   SAM3_LORA_SLURM_CPUS        node CPUs (default 2)
#   SAM3_LORA_SLURM_PORT_BASE   ports BASE+0..3: slurmctld, slurmd, slurmdbd, MariaDB
#                               (default 16817)
#   SAM3_LORA_SLURM_TIMEOUT     seconds each start-up wait may take (default 90)
set -euo pipefail

DIR="${SAM3_LORA_SLURM_DIR:-/tmp/sam3-lora-slurm}"
ACCOUNTING="${SAM3_LORA_SLURM_ACCOUNTING:-1}"
CPUS="${SAM3_LORA_SLURM_CPUS:-2}"
PORT_BASE="${SAM3_LORA_SLURM_PORT_BASE:-16817}"
TIMEOUT="${SAM3_LORA_SLURM_TIMEOUT:-90}"
CLUSTER=sam3lora
PARTITION=debug
NODE=localhost
CTLD_PORT=$PORT_BASE
SLURMD_PORT=$((PORT_BASE + 1))
DBD_PORT=$((PORT_BASE + 2))
DB_PORT=$((PORT_BASE + 3))
CONF="$DIR/etc/slurm.conf"
MUNGE_SOCKET="$DIR/munge/munge.socket.2"
DB_SOCKET="$DIR/mysql/mysqld.sock"
DB_PASS=sam3-lora-ci   # loopback-only database of a throw-away test cluster

log() { echo "[slurm_cluster] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# wait_for SECONDS DESCRIPTION COMMAND...: retry COMMAND every 0.5 s, bounded.
wait_for() {
  local limit=$1 what=$2; shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "timed out after ${limit}s waiting for $what"
      return 1
    fi
    sleep 0.5
  done
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

install_packages() {
  local need=()
  command -v munged >/dev/null || need+=(munge)
  command -v slurmctld >/dev/null || need+=(slurmctld)
  command -v slurmd >/dev/null || need+=(slurmd)
  command -v sbatch >/dev/null || need+=(slurm-client)
  if [ "$ACCOUNTING" = 1 ]; then
    command -v slurmdbd >/dev/null || need+=(slurmdbd)
    command -v mariadbd >/dev/null || need+=(mariadb-server)
    command -v mariadb >/dev/null || need+=(mariadb-client)
  fi
  [ ${#need[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null || die "missing ${need[*]} and no apt-get to install them"
  log "installing ${need[*]} (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  local apt=(apt-get -y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold
             install --no-install-recommends)
  # Try the package lists as they are first; refresh them only if that fails.
  if ! timeout 900 "${apt[@]}" "${need[@]}" >"$DIR/log/apt.log" 2>&1; then
    timeout 300 apt-get -q update >>"$DIR/log/apt.log" 2>&1 || true
    timeout 900 "${apt[@]}" "${need[@]}" >>"$DIR/log/apt.log" 2>&1 \
      || { tail -20 "$DIR/log/apt.log" >&2; die "apt-get install ${need[*]} failed"; }
  fi
}

write_configs() {
  local mem_mb
  mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.85)}' /proc/meminfo)
  local acct
  if [ "$ACCOUNTING" = 1 ]; then
    acct="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=$NODE
AccountingStoragePort=$DBD_PORT
# Connections to slurmdbd authenticate through this munge socket (AuthInfo is not used).
AccountingStoragePass=$MUNGE_SOCKET
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30"
  else
    acct="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
  fi
  cat >"$CONF" <<EOF
# Written by scripts/slurm_cluster.sh: single-node test cluster on loopback.
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
CredType=cred/munge
StateSaveLocation=$DIR/state/ctld
SlurmdSpoolDir=$DIR/state/slurmd
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No systemd, no cgroups: track processes through /proc, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
# Trust the node line below over what slurmd detects (a CI VM may report its 2 vCPUs
# as 1 core x 2 threads).
SlurmdParameters=config_overrides
# Quick turnaround for tests: kill 10 s after SIGTERM, keep finished jobs 5 min.
KillWait=10
MinJobAge=300
InactiveLimit=0
Waittime=0
# Requeued jobs (scontrol requeue, submitit's timeout/preemption requeue) may run again.
JobRequeue=1
GresTypes=gpu
$acct
JobCompType=jobcomp/none
NodeName=$NODE NodeHostname=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$mem_mb Gres=gpu:$CPUS State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
  # GPU tokens (see the header). slurmd drops a GPU without File=, and wants a device
  # node there: these are /dev/null's (1,3); with TaskPlugin=task/none nothing opens or
  # confines them. A plain file also works (slurmd logs an error about it).
  local i
  for ((i = 0; i < CPUS; i++)); do
    [ -e "$DIR/dev/gpu$i" ] || mknod "$DIR/dev/gpu$i" c 1 3 2>/dev/null || touch "$DIR/dev/gpu$i"
  done
  cat >"$DIR/etc/gres.conf" <<EOF
NodeName=$NODE Name=gpu File=$DIR/dev/gpu[0-$((CPUS - 1))]
EOF
  if [ "$ACCOUNTING" = 1 ]; then
    cat >"$DIR/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
DbdHost=$NODE
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
DebugLevel=info
LogFile=$DIR/log/slurmdbd.log
PidFile=$DIR/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
    chmod 600 "$DIR/etc/slurmdbd.conf"
  fi
  # slurmdbd and the plugins look for slurmdbd.conf / gres.conf next to SLURM_CONF.
  chmod 644 "$CONF" "$DIR/etc/gres.conf"
}

start_munge() {
  pid_alive "$DIR/run/munged.pid" && return 0
  if [ ! -s "$DIR/munge/munge.key" ]; then
    dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
  fi
  chmod 600 "$DIR/munge/munge.key"
  chmod 755 "$DIR/munge"   # munged refuses a socket directory without o+x
  munged --socket="$MUNGE_SOCKET" --key-file="$DIR/munge/munge.key" \
    --pid-file="$DIR/run/munged.pid" --log-file="$DIR/log/munged.log" \
    --seed-file="$DIR/munge/munged.seed" --num-threads=10
  wait_for "$TIMEOUT" munged bash -c "munge -S '$MUNGE_SOCKET' -n | unmunge -S '$MUNGE_SOCKET'"
}

db() { mariadb --no-defaults -S "$DB_SOCKET" -u root "$@"; }

start_mariadb() {
  pid_alive "$DIR/run/mariadbd.pid" && return 0
  if [ ! -d "$DIR/mysql/data/mysql" ]; then
    mariadb-install-db --no-defaults --user=root --datadir="$DIR/mysql/data" \
      --auth-root-authentication-method=socket --skip-test-db >"$DIR/log/mariadb-install.log" 2>&1 \
      || { tail -20 "$DIR/log/mariadb-install.log" >&2; die "mariadb-install-db failed"; }
  fi
  # Small buffers: this database holds a few hundred test jobs.
  nohup mariadbd --no-defaults --user=root --datadir="$DIR/mysql/data" \
    --socket="$DB_SOCKET" --port="$DB_PORT" --bind-address=127.0.0.1 \
    --pid-file="$DIR/run/mariadbd.pid" --log-error="$DIR/log/mariadbd.log" \
    --innodb-buffer-pool-size=64M --innodb-log-file-size=48M \
    --innodb-lock-wait-timeout=900 --skip-name-resolve >/dev/null 2>&1 &
  wait_for "$TIMEOUT" MariaDB db -e "SELECT 1" \
    || { tail -20 "$DIR/log/mariadbd.log" >&2; die "MariaDB did not start"; }
  db -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
}

start_slurmdbd() {
  pid_alive "$DIR/run/slurmdbd.pid" && return 0
  slurmdbd
  wait_for "$TIMEOUT" slurmdbd sacctmgr -n -i show cluster \
    || { tail -20 "$DIR/log/slurmdbd.log" >&2; die "slurmdbd did not start"; }
}

node_idle() { sinfo -h -N -n "$NODE" -o %T | grep -qx idle; }

start_slurm() {
  if ! pid_alive "$DIR/run/slurmctld.pid"; then
    slurmctld -f "$CONF"
  fi
  wait_for "$TIMEOUT" slurmctld scontrol ping \
    || { tail -20 "$DIR/log/slurmctld.log" >&2; die "slurmctld did not start"; }
  if ! pid_alive "$DIR/run/slurmd.pid"; then
    slurmd -f "$CONF" -N "$NODE"
  fi
  wait_for "$TIMEOUT" "node $NODE to be idle" node_idle || {
    sinfo -N -l >&2 || true
    tail -20 "$DIR/log/slurmd.log" >&2
    die "node $NODE is not idle"
  }
}

cmd_up() {
  [ "$(id -u)" = 0 ] || die "run as root (the daemons run as SlurmUser=root)"
  local t0=$SECONDS
  mkdir -p "$DIR"/{etc,log,run,dev,state/ctld,state/slurmd,munge,mysql}
  install_packages
  export SLURM_CONF="$CONF"
  if pid_alive "$DIR/run/slurmctld.pid" && pid_alive "$DIR/run/slurmd.pid" \
      && timeout 10 scontrol ping >/dev/null 2>&1; then
    log "already up"
  else
    write_configs
    start_munge
    if [ "$ACCOUNTING" = 1 ]; then
      start_mariadb
      start_slurmdbd
    fi
    start_slurm
    log "up in $((SECONDS - t0)) s: cluster $CLUSTER, partition $PARTITION, node $NODE" \
      "($CPUS CPUs), accounting $([ "$ACCOUNTING" = 1 ] && echo slurmdbd+MariaDB || echo off)"
  fi
  echo "export SLURM_CONF=$CONF" >"$DIR/env.sh"
  echo "export SLURM_CONF=$CONF"
}

# stop PIDFILE NAME: SIGTERM the daemon started from that pid file, SIGKILL after 20 s.
stop() {
  local pidfile=$1 name=$2 pid
  pid_alive "$pidfile" || { rm -f "$pidfile"; return 0; }
  pid=$(cat "$pidfile")
  kill -TERM "$pid" 2>/dev/null || true
  if ! wait_for 20 "$name to stop" bash -c "! kill -0 $pid"; then
    log "$name (pid $pid) ignored SIGTERM; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

cmd_down() {
  export SLURM_CONF="$CONF"
  if pid_alive "$DIR/run/slurmctld.pid"; then
    # Jobs' processes live under slurmstepd, which outlives slurmd: cancel them first.
    timeout 30 scancel --quiet --user "$(id -un)" 2>/dev/null || true
    wait_for 45 "jobs to end" bash -c '[ -z "$(squeue -h -t R,CG,PD -o %i)" ]' || true
  fi
  stop "$DIR/run/slurmd.pid" slurmd
  stop "$DIR/run/slurmctld.pid" slurmctld
  stop "$DIR/run/slurmdbd.pid" slurmdbd
  stop "$DIR/run/mariadbd.pid" mariadbd
  stop "$DIR/run/munged.pid" munged
  rm -f "$DIR/env.sh"
  if [ "${1:-}" = "--purge" ]; then
    rm -rf "$DIR"
    log "down; removed $DIR"
  else
    log "down (state kept in $DIR; 'down --purge' removes it)"
  fi
}

cmd_status() {
  export SLURM_CONF="$CONF"
  local name
  for name in munged mariadbd slurmdbd slurmctld slurmd; do
    if pid_alive "$DIR/run/$name.pid"; then
      echo "$name: running (pid $(cat "$DIR/run/$name.pid"))"
    else
      echo "$name: not running"
    fi
  done
  echo "SLURM_CONF=$CONF"
  timeout 20 sinfo -N -l || { echo "sinfo failed: the cluster is not reachable"; return 1; }
  timeout 20 squeue || true
  timeout 20 sacct -a -X -S now-1hour -o JobID%20,JobName%30,State,ExitCode,Elapsed 2>/dev/null \
    | tail -20 || true
}

case "${1:-}" in
  up) cmd_up ;;
  down) shift; cmd_down "$@" ;;
  status) cmd_status ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  *) echo "usage: $0 {up|down [--purge]|status|env}" >&2; exit 2 ;;
esac
