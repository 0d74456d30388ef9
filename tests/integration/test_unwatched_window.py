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
just before the read as paths, compared by content; a created one is
proven (the target's copies written before the rewrite are compared by
content). Either way the mirror must converge byte for byte.

The second test is the same class without a race: a directory arrives at a
name whose target copy came from another directory (a release swapped in
by renames, moved in, or unpacked again with the times it was built with),
and its files keep the size and the mtime of the old ones.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from syncsup.syncer.prove import SMALL_DIRS
from tests.helpers.daemon import sync_entry
from tests.helpers.tree import wait_converged, write

from .test_agent import write_target_command

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


@pytest.mark.parametrize("arrival", ["renamed", "created", "moved-in"])
@pytest.mark.parametrize("way", ["agent", "rsync"])
def test_a_rewrite_in_a_directory_just_arrived_is_not_hidden_by_an_early_copy(
        way, arrival, tmp_path, src, dst, daemon_factory):
    entry = sync_entry(src, [dst], delay=0.2)
    if way == "rsync":
        entry["agent_max_size"] = 0
    rounds, wait = 3, 60
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


def release(root: Path, version: bytes, mtime_ns: int, dirs: int = 0) -> None:
    """A tree as a reproducible build makes it: every file the same size in
    each version, every mtime the same fixed moment; ``dirs`` more (empty)
    directories."""
    for rel in ("f", "sub/g", "sub/deep/h"):
        write(root / rel, version * 4096)
        os.utime(root / rel, ns=(mtime_ns, mtime_ns))
    for i in range(dirs):
        (root / "sub" / f"e{i}").mkdir()


@pytest.mark.parametrize("arrival", ["renamed", "moved-in", "recreated"])
@pytest.mark.parametrize("way", ["agent", "rsync", "ssh", "ssh-large", "ssh-no-agent"])
def test_a_directory_arriving_where_the_target_holds_another_is_compared_by_content(
        way, arrival, tmp_path, src, dst, daemon_factory, request):
    """Locally the target's ctimes are read (the proof). Over ssh a small
    directory is compared whole, and a large one (more directories than
    ``SMALL_DIRS``) is proven by the target's agent; with no agent there
    its content is compared whole."""
    if way.startswith("ssh"):
        sshd = request.getfixturevalue("sshd")
        command = (tmp_path / "no-such-program" if way == "ssh-no-agent"
                   else write_target_command(tmp_path)[0])
        entry = sync_entry(src, [sshd.target(dst)], delay=0.2,
                           ssh={**sshd.ssh_config(), "target_command": str(command)})
    else:
        entry = sync_entry(src, [dst], delay=0.2)
    if way == "rsync":
        entry["agent_max_size"] = 0
    fixed = 1_500_000_000 * 10**9
    outside = tmp_path / "outside"
    release(src / "app", b"A", fixed)
    release((src if arrival == "renamed" else outside) / "app.new", b"B", fixed,
            dirs=SMALL_DIRS + 1 if way == "ssh-large" else 0)
    # the target's copies are written well after the new release's files
    # last changed (past the proof's margin): only the directory's own
    # arrival says that they are not copies of these
    time.sleep(2.5)
    d = daemon_factory([entry])
    wait_converged(src, [dst], timeout=120, on_timeout=d.describe)
    watcher = watcher_pid(d)
    os.kill(watcher, signal.SIGSTOP)  # one read, one batch: the target still holds A
    try:
        if arrival == "renamed":
            os.rename(src / "app", src / "app.old")
            os.rename(src / "app.new", src / "app")
        elif arrival == "moved-in":
            os.rename(src / "app", outside / "app.old")
            os.rename(outside / "app.new", src / "app")
        else:  # the old one moved out whole (no event for its files), a new one made
            os.rename(src / "app", outside / "app.old")
            shutil.copytree(outside / "app.new", src / "app", copy_function=shutil.copy2)
    finally:
        os.kill(watcher, signal.SIGCONT)
    wait_converged(src, [dst], timeout=60, on_timeout=d.describe)
    assert (dst / "app" / "sub" / "deep" / "h").read_bytes() == b"B" * 4096
    if way == "ssh-large":  # proven, the same-size copies found for comparing
        assert "3 to compare by content" in d.log_text(), d.log_tail(40)
    d.stop()


def test_a_target_that_cannot_be_proven_is_not_asked_again_for_a_while(
        tmp_path, src, dst, daemon_factory, sshd):
    """No ``syncsup-target`` on the target and no agent channel (rsync for
    everything): the start's proof fails, and the large directories that
    arrive later are compared whole at once, without a session that fails
    again at every batch. Each still mirrors byte for byte."""
    entry = sync_entry(src, [sshd.target(dst)], delay=0.2,
                       ssh={**sshd.ssh_config(),
                            "target_command": str(tmp_path / "no-such-program")})
    entry["agent_max_size"] = 0
    write(src / "seed", b"1")
    d = daemon_factory([entry])
    wait_converged(src, [dst], timeout=120, on_timeout=d.describe)
    for name in ("one", "two"):
        release(src / name, name.encode(), 1_500_000_000 * 10**9, dirs=SMALL_DIRS + 1)
        wait_converged(src, [dst], timeout=120, on_timeout=d.describe)
    failed = d.log_text().count("prove: cannot read the target's ctimes")
    assert failed == 1, d.log_tail(40)  # the start's, then remembered
    d.stop()
