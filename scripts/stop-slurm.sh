#!/usr/bin/env bash
# Stop the Slurm and munge daemons that scripts/start-slurm.sh started (listed in its file), and
# only those: a machine that ran them before keeps them. Leaves apt packages and /etc files in place.
set -euo pipefail
STARTED_LIST=/run/copier-lightning-slurm.started
[ -f "$STARTED_LIST" ] || exit 0
if grep -qx slurmctld "$STARTED_LIST" && command -v scancel >/dev/null; then
    # Jobs first: a job step still running when slurmd goes leaves its srun waiting forever.
    squeue -h -o %i 2>/dev/null | xargs -r scancel --full >/dev/null 2>&1 || true
    for _ in $(seq 30); do
        [ -z "$(squeue -h 2>/dev/null)" ] && break
        sleep 1
    done
fi
stopped=()
for daemon in $(tac "$STARTED_LIST"); do  # slurmd, slurmctld, then munged
    if pkill -x "$daemon"; then
        stopped+=("$daemon")
        for _ in $(seq 10); do  # slurmd can linger on SIGTERM once slurmctld is gone
            pgrep -x "$daemon" >/dev/null || break
            sleep 1
        done
        pkill -KILL -x "$daemon" || true
    fi
done
rm -f "$STARTED_LIST"
echo "stop-slurm: stopped ${stopped[*]:-nothing (already gone)}" >&2
