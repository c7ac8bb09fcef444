#!/usr/bin/env bash
# The template's whole test suite: sets up .venv, then renders projects and runs their checks.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k render`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
# The browser tests (tests/test_serving.py) drive Debian's chromium; browsers that tools download from
# elsewhere are not used. Installed here when missing and this runs as root.
if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "test.sh: installing Debian's chromium for the browser tests (apt-get install chromium)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null
fi
if [ "$(id -u)" = 0 ]; then
    echo "test.sh: the Slurm tests will install slurm-wlm and munge if missing, write /etc/slurm and /etc/munge," \
         "and run munged, slurmctld and slurmd as root while they last (scripts/start-slurm.sh, stop-slurm.sh)."
fi
# The test processes start commands whose torch runs two OpenMP threads each: by default a waiting
# thread spins, burning a core that another process needs (a 5-epoch `fit` of the example beside two
# busy loops: 7.65 s of CPU, 5.66 s with PASSIVE; bench/omp_wait.py). PASSIVE makes waiting threads
# sleep; the thread count, and so every result, stays the default's.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
# Three workers, each test file on one of them (--dist loadfile): a file's module fixtures (the Slurm
# cluster, a rendered project) are made once, and the DDP and Slurm tests of one file never race
# each other. Files are taken longest first (tests/conftest.py, LONGEST_FIRST), not by test count.
# Three on 2 cores: the suite waits at times (Slurm's scheduler, the bounded-time tests), and a third
# process fills those waits (docs/benchmarks.md). TEST_WORKERS=0 runs everything in this process.
exec .venv/bin/python -m pytest tests -n "${TEST_WORKERS:-3}" --dist loadfile --no-loadscope-reorder "$@"
