#!/usr/bin/env bash
# Start a real single-node Slurm (Debian's slurm-wlm) for the job-script tests, with GPU GRES typed
# like MIG slices (1g.10gb, 2g.20gb) and one full GPU (a100). No GPU is needed: the GRES files are
# stand-ins, and the tests run the example on the CPU. Needs root. Idempotent.
# It changes the machine, and says so first: installs slurm-wlm and munge with apt if missing, writes
# /etc/slurm and /etc/munge, and starts munged, slurmctld and slurmd as root. The daemons it started
# are listed in $STARTED_LIST; scripts/stop-slurm.sh stops those (and only those).
set -euo pipefail
STARTED_LIST=/run/copier-lightning-slurm.started
echo "start-slurm: for the Slurm tests this installs slurm-wlm and munge (apt, if missing), writes /etc/slurm" \
     "and /etc/munge, and starts munged, slurmctld and slurmd as root; scripts/stop-slurm.sh stops them." >&2
start_daemon() {  # start $1 unless it runs already, and remember that this script started it
    if ! pgrep -x "$1" >/dev/null; then
        "$@"
        echo "$1" >> "$STARTED_LIST"
    fi
}
if ! command -v slurmctld >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge) >/dev/null
fi
HOST=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge /etc/munge
if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
fi
chown -R munge:munge /etc/munge /run/munge 2>/dev/null || true
chmod 400 /etc/munge/munge.key
start_daemon munged --force
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=local
SlurmctldHost=${HOST}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
JobRequeue=1
GresTypes=gpu
NodeName=${HOST} CPUs=${CPUS} RealMemory=${MEM_MB} Gres=gpu:1g.10gb:1,gpu:2g.20gb:1,gpu:a100:1 State=UNKNOWN
PartitionName=gpu Nodes=${HOST} Default=YES MaxTime=INFINITE State=UP
CONF
cat > /etc/slurm/gres.conf <<CONF
AutoDetect=off
NodeName=${HOST} Name=gpu Type=1g.10gb File=/dev/null
NodeName=${HOST} Name=gpu Type=2g.20gb File=/dev/zero
NodeName=${HOST} Name=gpu Type=a100 File=/dev/full
CONF
start_daemon slurmctld
start_daemon slurmd
for _ in $(seq 30); do
    if sinfo -h -o "%t" 2>/dev/null | grep -qE "idle|mix|alloc"; then
        scontrol update nodename="${HOST}" state=resume >/dev/null 2>&1 || true
        echo "start-slurm: ready ($(sinfo -h -o '%P %G %t'))"
        exit 0
    fi
    scontrol update nodename="${HOST}" state=resume >/dev/null 2>&1 || true
    sleep 1
done
echo "start-slurm: the node did not come up" >&2
sinfo -N -l >&2 || true
tail -20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
exit 1
