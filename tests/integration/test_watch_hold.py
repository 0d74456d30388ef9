"""The watcher's hold window: with a ``delay``, changes read from inotify
are held for the delay (at most a second) and sent as one message.

* A watcher SIGKILLed while it holds changes loses none of them: the next
  start rescans what changed since the last seen-point, which is never
  sent while anything is held.
* A clean stop reads what the kernel queue still holds, sends it with what
  is held, has it acknowledged, and then commits a seen-point, so the next
  start compares only what changed since.

Each test ends with a byte comparison and a check that no process is left.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from typing import Any

import pytest

from syncsup.statedir import StateDir
from syncsup.watcher.core import HOLD_MAX, READ_EVERY
from tests.helpers.daemon import Daemon, sync_entry
from tests.helpers.procs import assert_no_leftovers
from tests.helpers.tree import wait_converged, write

pytestmark = pytest.mark.timeout(300)

# The shortest delay with the longest hold window (1 s): the changes are
# held as long as they can be, and the batch after a restart's rescan
# waits no longer than it must.
DELAY = HOLD_MAX
NAME = "www"


def journal_rows(d: Daemon, query: str, *args: str) -> list[tuple[Any, ...]]:
    """Rows of the sync's journal (read while the daemon is stopped)."""
    assert d.doc is not None
    path = StateDir(d.doc["settings"]["state_dir"]).journal(NAME)
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return list(db.execute(query, args))
    finally:
        db.close()


def journal_paths(d: Daemon) -> set[bytes]:
    return {bytes(r[0]) for r in journal_rows(d, "SELECT path FROM dirty")}


def journal_meta(d: Daemon, key: str) -> str | None:
    rows = journal_rows(d, "SELECT value FROM meta WHERE key = ?", key)
    return str(rows[0][0]) if rows else None


def test_a_watcher_killed_while_holding_changes_loses_none(tmp_path, src, dst,
                                                         daemon_factory):
    write(src / "old" / "a", b"a" * 100)
    d = daemon_factory([sync_entry(src, [dst], name=NAME, delay=DELAY)])
    wait_converged(src, dst, timeout=120, on_timeout=d.describe)
    watcher = next(c for c in d.status()["components"] if c["role"] == "watcher")
    pid = int(watcher["pid"])
    # Several kinds of change within the window, then the kill inside it.
    for i in range(20):
        write(src / "new" / f"f{i:02d}", os.urandom(300))
    os.rename(src / "old" / "a", src / "new" / "moved")
    os.unlink(src / "new" / "f05")
    # Read by now (the first at once, the others at the pace), held: the
    # window of 1 s started with the first.
    time.sleep(READ_EVERY + 0.2)
    os.kill(pid, signal.SIGKILL)
    d.wait_for(lambda st: any(c["role"] == "watcher" and c["restarts"] >= 1
                              and c["state"] == "running" for c in st["components"]),
               "the watcher to be restarted", timeout=90)
    wait_converged(src, dst, timeout=120, on_timeout=d.describe)
    d.stop()
    assert_no_leftovers(tmp_path)


def test_a_clean_stop_sends_what_is_held_then_a_seen_point(tmp_path, src, dst,
                                                         daemon_factory):
    write(src / "a", b"a")
    d = daemon_factory([sync_entry(src, [dst], name=NAME, delay=DELAY)])
    wait_converged(src, dst, timeout=120, on_timeout=d.describe)
    names = {f"b{i}".encode() for i in range(10)}
    for n in sorted(names):
        write(src / n.decode(), os.urandom(200))
    # Some read and held (the window is 1 s, a batch further away), the
    # rest still in the kernel queue, read at the pace (READ_EVERY, longer
    # than this sleep): the stop reads the queue, then sends everything.
    time.sleep(min(0.3, READ_EVERY / 2))
    written = time.time()
    d.stop()
    assert names <= journal_paths(d)  # committed before the watcher went
    # and the last seen-point was taken after them: not one from before
    seen = journal_meta(d, "seen")
    assert seen is not None and json.loads(seen)["wall"] > written, seen
    before = len(d.log_text())
    d.start()
    wait_converged(src, dst, timeout=120, on_timeout=d.describe)
    restart = d.log_text()[before:]
    assert "comparing the content of files changed since" in restart, restart
    assert "no earlier state is known" not in restart, restart
    d.stop()
    assert_no_leftovers(tmp_path)
