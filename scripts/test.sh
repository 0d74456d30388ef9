#!/usr/bin/env bash
# Install everything, then run the whole test suite: lint, types, unit and
# integration tests (real inotify, rsync, ZeroMQ and an sshd on loopback),
# then the benchmark's smoke mode against Lsyncd (never fails on speed, only
# if a tool does not converge).
set -euo pipefail
cd "$(dirname "$0")/.."
# lsyncd: the benchmark and the import-lsyncd comparison test run it
bash scripts/install-deps.sh --with-lsyncd
python3 -m ruff check syncsup tests bench
python3 -m mypy
# Integration tests mostly wait on real processes (daemons converging,
# deadlines running out): four workers cut the wall time on a 2-core machine
# without loading it much (each test has its own tmp dir, state_dir and
# sshd), and work stealing keeps the long tests from ending on one worker.
python3 -m pytest -q -p no:cacheprovider -n 4 --dist worksteal "$@"
if [ "${SYNCSUP_SKIP_BENCH:-}" != 1 ]; then
    python3 bench/run.py --smoke
fi
