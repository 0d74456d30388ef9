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
# Collecting fills that cache first (it imports every test module, the
# helpers and the syncsup modules they use): from a cold cache, eight
# workers starting at once would each compile all of it (about 3 CPU-s
# each). Two collections side by side, one per core: the unit tests' and
# the rest's. A collection error is reported by the run below.
python3 -m pytest -q -p no:cacheprovider --collect-only tests/unit >/dev/null 2>&1 &
python3 -m pytest -q -p no:cacheprovider --collect-only tests/integration >/dev/null 2>&1 || true
wait || true
# Integration tests mostly wait on real processes (daemons converging,
# deadlines running out): eight workers keep two cores busy through the
# waits (each test has its own tmp dir, state_dir and sshd), and work
# stealing keeps the long tests from ending on one worker. (On two cores,
# with the bytecode kept: 4 workers 4 min 14 s, 8 workers 3 min 16-29 s.)
# The tests' trees (sources, targets, state dirs: 1.8 GB created and
# deleted in a run) go to a tmpfs when /dev/shm is one with room to spare:
# on this project's 2-core CI machine a directory made on its ext4 root
# costs 0.5 ms of CPU (130 times a tmpfs's) and a small file 0.13 ms (11
# times), and the kernel's share was over a third of the suite's CPU. The
# tests need nothing of a disk's (inotify, rsync, xattrs, ctimes and
# sockets are the same); the benchmark stays on the disk. SYNCSUP_TEST_TMP
# chooses the directory; the run's own (--basetemp) is emptied when the
# next run starts, and removed after a run that passed.
if [ -z "${SYNCSUP_TEST_TMP:-}" ] && [ "$(stat -f -c %T /dev/shm 2>/dev/null)" = tmpfs ] \
        && [ "$(df -Pk /dev/shm | awk 'NR == 2 {print $4}')" -ge $((8 * 1024 * 1024)) ]; then
    SYNCSUP_TEST_TMP=/dev/shm/syncsup-tests-$(id -u)
fi
tmp=()
if [ -n "${SYNCSUP_TEST_TMP:-}" ]; then
    # short: a daemon's socket path (state dir inside a test's directory)
    # must stay within the 108 bytes of a unix socket address
    mkdir -p -m 0755 "$SYNCSUP_TEST_TMP"
    tmp=(env TMPDIR="$SYNCSUP_TEST_TMP")
    set -- --basetemp="$SYNCSUP_TEST_TMP/run" "$@"
fi
${tmp[@]+"${tmp[@]}"} python3 -m pytest -q -p no:cacheprovider -n 8 --dist worksteal "$@"
if [ -n "${SYNCSUP_TEST_TMP:-}" ]; then
    rm -rf --one-file-system -- "$SYNCSUP_TEST_TMP/run"
fi
if [ "${SYNCSUP_SKIP_BENCH:-}" != 1 ]; then
    python3 bench/run.py --smoke
fi
