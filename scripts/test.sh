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
# Bytecode (and pytest's rewritten test modules) kept between runs outside
# the checkout, as the tests' daemons keep theirs: where
# PYTHONDONTWRITEBYTECODE is set, every worker would otherwise compile every
# test module and syncsup module again (4 CPU-s each, against 1).
export PYTHONPYCACHEPREFIX="${PYTHONPYCACHEPREFIX:-$HOME/.cache/syncsup-tests}"
unset PYTHONDONTWRITEBYTECODE
# One process fills that cache first (collecting imports every test module,
# the helpers and the syncsup modules they use): from a cold cache, eight
# workers starting at once would each compile all of it (about 3 CPU-s
# each). A collection error is reported by the run below.
python3 -m pytest -q -p no:cacheprovider --collect-only "$@" >/dev/null 2>&1 || true
# Integration tests mostly wait on real processes (daemons converging,
# deadlines running out): eight workers keep two cores busy through the
# waits (each test has its own tmp dir, state_dir and sshd), and work
# stealing keeps the long tests from ending on one worker. (On two cores,
# with the bytecode kept: 4 workers 4 min 14 s, 8 workers 3 min 16-29 s.)
python3 -m pytest -q -p no:cacheprovider -n 8 --dist worksteal "$@"
if [ "${SYNCSUP_SKIP_BENCH:-}" != 1 ]; then
    python3 bench/run.py --smoke
fi
