#!/usr/bin/env bash
# Stop the Slurm and munge daemons that scripts/start-slurm.sh started (listed in its file), and
# only those: a machine that ran them before keeps them. Leaves apt packages and /etc files in place.
set -euo pipefail
STARTED_LIST=/run/copier-lightning-slurm.started
[ -f "$STARTED_LIST" ] || exit 0
stopped=()
for daemon in $(tac "$STARTED_LIST"); do  # slurmd, slurmctld, then munged
    if pkill -x "$daemon"; then
        stopped+=("$daemon")
    fi
done
rm -f "$STARTED_LIST"
echo "stop-slurm: stopped ${stopped[*]:-nothing (already gone)}" >&2
