#!/usr/bin/env python3
"""What one daemon start costs: start -> ready -> one change -> SIGTERM -> exit.

    python3 bench/startcost.py             # 5 runs, medians
    python3 bench/startcost.py --runs 9

Each run starts ``python -m syncsup start CONFIG`` (one sync, one local
target holding nothing, a source of one file) in a fresh directory, as a
test or a host with many daemons does, and measures, as the median of the
runs:

* ready: from the start to the source's file on the target (the initial
  sync done; the target's state is then checked to have left "startup");
* change: a new file written in the source until it is on the target;
* stop: from SIGTERM to the supervisor's exit (status 0 required);
* cpu: user + system seconds of the daemon's whole process tree over the
  run (the supervisor, the template, the children, every rsync), from
  ``getrusage(RUSAGE_CHILDREN)`` once the supervisor is reaped.

The target's file is watched on disk rather than asked of the daemon, so
the measuring costs the daemon nothing. The daemon runs with the tests'
environment (``tests/helpers/daemon.py``: bytecode kept in the user's
cache); ``--no-bytecode-cache`` runs it with ``PYTHONDONTWRITEBYTECODE``
and no cache instead, which is what a start costs when every module is
compiled again. Exits non-zero if a run did not converge, did not exit 0
or left a process behind.
"""

from __future__ import annotations

import argparse
import os
import resource
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from syncsup import config as cfg
from syncsup import proto
from syncsup.client import request
from tests.helpers.daemon import (
    sync_entry,
    syncsup_argv,
    syncsup_env,
    write_config,
)
from tests.helpers.procs import assert_no_leftovers

TIMEOUT = 60.0


def _wait_file(path: Path, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not path.exists():
        if proc.poll() is not None:
            raise SystemExit(f"syncsup exited with {proc.returncode} before {path} arrived")
        if time.monotonic() > deadline:
            raise SystemExit(f"{path} did not arrive within {TIMEOUT:.0f}s")
        time.sleep(0.002)


def _check_ready(config: Path) -> None:
    """Every target past its initial sync, as the daemon says."""
    conf = cfg.load(str(config), client=True)
    deadline = time.monotonic() + TIMEOUT
    while True:
        reply = request(conf, proto.StatusRequest(), timeout=TIMEOUT)
        assert isinstance(reply, proto.StatusReply)
        if all(t.state != "startup" for s in reply.status.syncs for t in s.targets):
            return
        if time.monotonic() > deadline:
            raise SystemExit("a target stayed in its initial sync")
        time.sleep(0.01)


def one_run(top: Path, bytecode_cache: bool) -> tuple[float, float, float, float]:
    src, dst = top / "src", top / "dst"
    src.mkdir()
    dst.mkdir()
    (src / "first").write_bytes(b"first\n")
    config = write_config(top / "syncsup.toml", {
        "settings": {"state_dir": str(top / "state")}, "sync": [sync_entry(src, [dst])]})
    env = syncsup_env()
    if not bytecode_cache:
        env.pop("PYTHONPYCACHEPREFIX", None)
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    with open(top / "daemon.log", "wb") as log:
        proc = subprocess.Popen(syncsup_argv("start", config), stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    try:
        _wait_file(dst / "first", proc)
        ready = time.monotonic() - t0
        _check_ready(config)
        t1 = time.monotonic()
        (src / "second").write_bytes(b"second\n")
        _wait_file(dst / "second", proc)
        change = time.monotonic() - t1
        fd = os.pidfd_open(proc.pid)
        t2 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        select.select([fd], [], [], TIMEOUT)
        stop = time.monotonic() - t2
        os.close(fd)
        rc = proc.wait(TIMEOUT)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if rc != 0:
        raise SystemExit(f"syncsup exited {rc} after SIGTERM")
    assert_no_leftovers(top)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return ready, change, stop, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-bytecode-cache", action="store_true",
                        help="compile every module at every start (PYTHONDONTWRITEBYTECODE)")
    args = parser.parse_args()
    rows = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="syncsup-startcost-") as tmp:
            rows.append(one_run(Path(tmp), not args.no_bytecode_cache))
    for i, name in enumerate(("ready", "change", "stop", "cpu")):
        values = [r[i] for r in rows]
        print(f"{name:7} median {statistics.median(values):.3f} s   "
              + " ".join(f"{v:.3f}" for v in values))
    return 0


if __name__ == "__main__":
    sys.exit(main())
