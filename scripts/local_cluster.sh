#!/usr/bin/env bash
# A throwaway single-node SLURM (with accounting, which submitit needs) and a local Ray head on this machine,
# to try the cluster launchers and run the `cluster` tests:
#
#   sudo scripts/local_cluster.sh start        # SLURM: munged, MariaDB + slurmdbd, slurmctld, slurmd; Ray: a head
#   python -m pytest -m cluster tests/test_clusters.py
#   sudo scripts/local_cluster.sh stop
#
# SLURM comes from Debian's packages (installed when missing: slurm-wlm slurmdbd munge mariadb-server); Ray from
# the Python environment whose `ray` command is on PATH (`pip install -e ".[ray]"`; skipped when absent). Keep
# that environment active under sudo: sudo env "PATH=$PATH" scripts/local_cluster.sh start The SLURM node is this machine with
# its CPUs and memory and no GPU. Config files are written to /etc/slurm only if none are there or they were
# written by this script. State lives in $T2L_CLUSTER_DIR (default /tmp/t2l-cluster).
set -euo pipefail

STATE=${T2L_CLUSTER_DIR:-/tmp/t2l-cluster}
MARK="# written by text2live scripts/local_cluster.sh"
CONF=/etc/slurm/slurm.conf
DBD_CONF=/etc/slurm/slurmdbd.conf

die() { echo "error: $*" >&2; exit 2; }

need_root() { [ "$(id -u)" = 0 ] || die "run as root (it starts system daemons): sudo $0 $*"; }

install_packages() {
    local missing=()
    for tool in slurmctld:slurm-wlm slurmdbd:slurmdbd munged:munge mariadbd:mariadb-server; do
        command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
    fi
}

ours_or_absent() {
    [ ! -e "$1" ] || head -1 "$1" | grep -qF "$MARK" || die "$1 exists and was not written by this script: move it away first"
}

write_configs() {
    local host cpus mem
    host=$(hostname -s)
    cpus=$(nproc)
    mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))  # MB, 1 GB left to the system
    ours_or_absent "$CONF"
    ours_or_absent "$DBD_CONF"
    mkdir -p /etc/slurm "$STATE"/{ctld,d,log,run}
    chown -R slurm:slurm "$STATE"
    cat > "$CONF" <<EOF
$MARK
ClusterName=t2l
SlurmctldHost=$host
SlurmUser=slurm
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
MpiDefault=none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=300
KillWait=10
InactiveLimit=0
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    cat > "$DBD_CONF" <<EOF
$MARK
AuthType=auth/munge
DbdHost=localhost
SlurmUser=slurm
PidFile=$STATE/run/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=t2l
StorageLoc=slurm_acct_db
EOF
    chown slurm:slurm "$DBD_CONF"
    chmod 600 "$DBD_CONF"
}

wait_for() {  # wait_for <seconds> <what> <command...>
    local seconds=$1 what=$2
    shift 2
    for _ in $(seq "$seconds"); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 1
    done
    die "$what did not come up within ${seconds}s (logs: $STATE/log)"
}

start_slurm() {
    install_packages
    write_configs
    pgrep -x munged >/dev/null || { mkdir -p /run/munge && chown munge:munge /run/munge && runuser -u munge -- munged; }
    if ! pgrep -x mariadbd >/dev/null; then
        mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
        (mysqld_safe >/dev/null 2>&1 &)
        wait_for 60 MariaDB mysqladmin ping
    fi
    mysql -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db; CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 't2l';
              GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
    pgrep -x slurmdbd >/dev/null || slurmdbd
    wait_for 60 slurmdbd sacctmgr -n list cluster
    sacctmgr -i add cluster t2l >/dev/null 2>&1 || true
    pgrep -x slurmctld >/dev/null || slurmctld
    pgrep -x slurmd >/dev/null || slurmd
    wait_for 60 "the SLURM node" sh -c "sinfo -h -o %T | grep -qE '^(idle|mixed|allocated)'"
    echo "SLURM is up: partition debug, $(nproc) CPUs, no GPU ($(sinfo -h -o '%N %m MB'))"
}

start_ray() {
    if ! command -v ray >/dev/null; then
        echo "Ray is not installed in this Python environment (pip install -e \".[ray]\"): no Ray head started"
        return
    fi
    ray status >/dev/null 2>&1 || ray start --head --num-cpus="$(nproc)" --disable-usage-stats >/dev/null
    echo "Ray is up: connect with hydra.launcher.ray.init.address=auto"
}

stop_all() {
    if command -v ray >/dev/null; then ray stop --force >/dev/null 2>&1 || true; fi
    scancel --user=root >/dev/null 2>&1 || true
    for daemon in slurmd slurmctld slurmdbd; do pkill -x "$daemon" || true; done
    mysqladmin shutdown >/dev/null 2>&1 || true
    echo "stopped (state left in $STATE; the configs in /etc/slurm are kept for the next start)"
}

case "${1:-}" in
    start) need_root start; start_slurm; start_ray ;;
    start-slurm) need_root start; start_slurm ;;
    start-ray) start_ray ;;
    stop) need_root stop; stop_all ;;
    status) sinfo 2>/dev/null || echo "SLURM is not running"; ray status 2>/dev/null | head -5 || true ;;
    *) echo "usage: $0 start | start-slurm | start-ray | stop | status" >&2; exit 2 ;;
esac
