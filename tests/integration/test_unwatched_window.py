"""A rewrite that keeps a file's size and puts its mtime back, in a
directory that has just come into the source (renamed within it, created,
moved in from outside), while the target already holds an older copy under
the new name: a transfer of an enclosing directory, done by hand here (as
the daemon's own transfer of a directory created just before could),
copied it between the directory's arrival and the rewrite. rsync's quick
check (size and mtime) passes that copy, so the new name's rescan alone
cannot see the rewrite. All of it happens while the watcher is stopped
(SIGSTOP, as a descheduled process on a loaded host would be), so that it
falls into one read of the queue.

A renamed directory keeps its watches (the rewrite's events are read under
the new name); the walk of a moved-in one lists the files changed since
just before the read as paths, compared by content. Either way the mirror
must converge byte for byte. A created one is the case left open (its
files are all new: listing them would send each twice), marked as an
expected failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from tests.helpers.daemon import sync_entry
from tests.helpers.tree import wait_converged, write

pytestmark = pytest.mark.timeout(300)


def rewrite_same_size_keep_mtime(path: Path) -> None:
    """Flip some bytes in place; put the times back as they were."""
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.seek(100)
        old = f.read(64)
        f.seek(100)
        f.write(bytes(x ^ 0xFF for x in old))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def watcher_pid(d) -> int:
    return next(int(c["pid"]) for c in d.status()["components"] if c["name"] == "watcher")


CREATED_OPEN = pytest.mark.xfail(strict=True, reason=(
    "known and left open: a created directory's walk lists no file by ctime (all its files "
    "are new, and each would be sent twice, as tar or cp -r into the source makes them), so "
    "this race is seen by the quick check alone"))


@pytest.mark.parametrize("arrival", ["renamed", pytest.param("created", marks=CREATED_OPEN),
                                     "moved-in"])
@pytest.mark.parametrize("way", ["agent", "rsync"])
def test_a_rewrite_in_a_directory_just_arrived_is_not_hidden_by_an_early_copy(
        way, arrival, tmp_path, src, dst, daemon_factory):
    entry = sync_entry(src, [dst], delay=0.2)
    if way == "rsync":
        entry["agent_max_size"] = 0
    # the open case never converges: one round, a shorter wait (it cannot
    # pass by being slow)
    rounds, wait = (1, 20) if arrival == "created" else (3, 60)
    outside = tmp_path / "outside"
    for i in range(rounds):
        write((src if arrival == "renamed" else outside) / f"a{i}" / "x" / "f",
              os.urandom(8192))
        write((src if arrival == "renamed" else outside) / f"a{i}" / "x" / "g",
              os.urandom(8192))
    (src / "b").mkdir()
    d = daemon_factory([entry])
    wait_converged(src, [dst], timeout=120, on_timeout=d.describe)
    time.sleep(1.1)  # the files' mtimes are well before the rewrite's moment
    for i in range(rounds):
        new = src / "b" / f"y{i}"
        watcher = watcher_pid(d)
        os.kill(watcher, signal.SIGSTOP)
        try:
            if arrival == "renamed":
                os.rename(src / f"a{i}" / "x", new)
            elif arrival == "moved-in":
                os.rename(outside / f"a{i}" / "x", new)
            else:
                shutil.copytree(outside / f"a{i}" / "x", new, copy_function=shutil.copy2)
            # the enclosing transfer: the target gets the files as they are now
            shutil.copytree(new, dst / "b" / f"y{i}", copy_function=shutil.copy2)
            rewrite_same_size_keep_mtime(new / "f")
        finally:
            os.kill(watcher, signal.SIGCONT)
        wait_converged(src, [dst], timeout=wait, on_timeout=d.describe)
    d.stop()
