"""A directory that appears (renamed within the source, created, moved in)
is out of sight until the watcher's walk places its watch: what is written
in it meanwhile makes no event the watcher can use. Its rescan is a tree
step, compared by rsync's quick check (size and mtime), which is enough
only where the target holds no older copy of a file. Here it does: a
transfer of an enclosing directory, run by hand between the rename and the
rewrite (as the daemon's own transfer of a directory created just before
could), copies the file under its new name; the file is then rewritten at
the same size with its mtime put back. All of it falls into one read of
the queue (``delay = 0.2``: the read after a change waits 0.2 s).

The daemon must still converge: the walk of the new name lists the files
changed since just before the read as paths, compared by content.
"""

from __future__ import annotations

import os
import subprocess
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


@pytest.mark.parametrize("way", ["agent", "rsync"])
def test_a_rewrite_in_a_renamed_directory_is_not_hidden_by_an_early_copy(
        way, tmp_path, src, dst, daemon_factory):
    entry = sync_entry(src, [dst], delay=0.2)
    if way == "rsync":
        entry["agent_max_size"] = 0
    rounds = 5
    for i in range(rounds):
        write(src / f"a{i}" / "x" / "f", os.urandom(8192))
        write(src / f"a{i}" / "x" / "g", os.urandom(8192))
    (src / "b").mkdir()
    d = daemon_factory([entry])
    wait_converged(src, [dst], timeout=120, on_timeout=d.describe)
    time.sleep(1.1)  # the files' mtimes are well before the rewrite's moment
    for i in range(rounds):
        # a change read at once makes the watcher read the next ones 0.2 s later
        write(src / f"pace{i}", b"p")
        time.sleep(0.05)
        os.rename(src / f"a{i}" / "x", src / "b" / f"y{i}")
        subprocess.run(["rsync", "-a", "--", f"{src}/b/", f"{dst}/b/"], check=True)
        rewrite_same_size_keep_mtime(src / "b" / f"y{i}" / "f")
        assert (src / "b" / f"y{i}" / "f").stat().st_size == 8192
        wait_converged(src, [dst], timeout=60, on_timeout=d.describe)
    d.stop()
