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
# stealing keeps the long tests from ending on one worker. More workers
# were no faster (docs/testing.md has the figures).
#
# The tests' trees (sources, targets, state dirs: 1.8 GB made and deleted
# in a run) go to a tmpfs where one serves: on this project's 2-core CI
# machine a directory made on its ext4 root costs 0.5 ms of CPU (over 100
# times a tmpfs's) and a small file 0.13 ms (11 times), and the kernel's
# share was over a third of the suite's CPU. The tests need nothing of a
# disk's there: inotify, rsync, ctimes and sockets behave the same, and
# the probe below asks for what a tmpfs may lack (user xattrs, which the
# attacks on setxattr need before Linux 6.6; exec, which the forced
# commands' wrappers need). The benchmark stays on the disk.
# SYNCSUP_TEST_TMP=DIR puts them under DIR instead (a short path: a
# daemon's socket inside a test's directory must fit a unix socket's 108
# bytes).
parent=${SYNCSUP_TEST_TMP:-}
if [ -z "$parent" ] && [ "$(stat -f -c %T /dev/shm 2>/dev/null)" = tmpfs ] && python3 - <<'PROBE'
import os, sys, tempfile
d = "/dev/shm"
st = os.statvfs(d)
if st.f_bavail * st.f_frsize < 8 << 30 or st.f_flag & os.ST_NOEXEC:
    sys.exit(1)
with tempfile.NamedTemporaryFile(dir=d) as f:
    try:
        os.setxattr(f.name, "user.syncsup-probe", b"1")
    except OSError:
        sys.exit(1)
PROBE
then
    parent=/dev/shm
fi
tmpdir=""
tmpenv=()
if [ -n "$parent" ]; then
    tmpdir="$(realpath -m -- "$parent")/syncsup-tests-$(id -u)"
    if [ ${#tmpdir} -gt 28 ]; then
        echo "error: SYNCSUP_TEST_TMP: $tmpdir is too long for the daemons' sockets (28 bytes at most)" >&2
        exit 2
    fi
    mkdir -p -m 0700 "$tmpdir"
    # ours alone: a directory someone else made or can write could be
    # swapped for a symlink under the tests, which run as this user
    if [ -L "$tmpdir" ] || [ "$(stat -c %u "$tmpdir")" != "$(id -u)" ] \
            || [ $((0$(stat -c %a "$tmpdir") & 022)) -ne 0 ]; then
        echo "error: $tmpdir is not a directory of this user's that others cannot write" >&2
        exit 2
    fi
    chmod 0755 "$tmpdir"  # the attacks' throw-away accounts reach their places in it
    # what an interrupted run left (pytest's own cleanup of --basetemp
    # recurses, and fails on a tree a thousand levels deep)
    find "$tmpdir" -mindepth 1 -maxdepth 1 -exec rm -rf --one-file-system -- {} +
    set -- --basetemp="$tmpdir/run" "$@"
    tmpenv=(env TMPDIR="$tmpdir")
fi
${tmpenv[@]+"${tmpenv[@]}"} python3 -m pytest -q -p no:cacheprovider -n 8 --dist worksteal "$@"
if [ -n "$tmpdir" ]; then
    rm -rf --one-file-system -- "$tmpdir/run"
fi
if [ "${SYNCSUP_SKIP_BENCH:-}" != 1 ]; then
    python3 bench/run.py --smoke
fi
