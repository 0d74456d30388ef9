"""What the watcher says and does about blind subtrees: one log line when a
kind of blindness starts, one when it ends, ``watch_limit_needed`` cleared
once every directory is watched again, and a rescan of a subtree that could
not be read once it can. The kernel is a fake (tests/unit/test_unit_watchtree);
the tree and the sync's bookkeeping are the real ones."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import pytest

from syncsup import config as cfg
from syncsup.statedir import StateDir
from syncsup.watcher.mounts import mount_points, under
from syncsup.watcher.sync import SyncWatch
from syncsup.watcher.tree import WatchTree
from tests.unit.test_unit_watchtree import FakeInotify


@pytest.fixture
def sync(tmp_path: Path) -> tuple[SyncWatch, FakeInotify, Path]:
    src = tmp_path / "src"
    for d in ("a/b", "c", "d"):
        (src / d).mkdir(parents=True)
    conf = cfg.parse({"settings": {"state_dir": str(tmp_path / "state")},
                      "sync": [{"name": "s", "source": str(src),
                                "targets": [str(tmp_path / "dst")]}]}, tmp_path / "c.toml")
    w = SyncWatch(conf.syncs[0], StateDir(conf.settings.state_dir))
    fake = FakeInotify()
    w.tree = WatchTree(os.fsencode(src), fake.add_watch, fake.rm_watch)
    return w, fake, src


def walk(w: SyncWatch, now: float = 1.0) -> None:
    """The first walk of the tree, or the walks :meth:`rescan_blind` queued."""
    assert w.tree is not None
    if not w.tree.paths:
        w.tree.queue(b"")
    while w.tree.walking:
        w.walk(now)


def lines(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


def test_watch_limit_needed_is_cleared_once_everything_is_watched(sync, caplog) -> None:
    w, fake, src = sync
    caplog.set_level(logging.INFO, "syncsup.watcher")
    fake.fail[os.fsencode(src / "a")] = errno.ENOSPC
    walk(w)
    st = w.status()
    assert st.watch_limit_needed is not None and st.watch_limit_needed > 0
    assert st.blind_counts == {"watch_limit": 1} and st.unwatched == 1
    assert len(lines(caplog, "inotify watch limit reached")) == 1
    w.rescan_blind(100.0)  # still failing: no second line
    walk(w)
    assert len(lines(caplog, "inotify watch limit reached")) == 1
    del fake.fail[os.fsencode(src / "a")]  # the limit was raised
    w.rescan_blind(200.0)
    walk(w)
    st = w.status()
    assert st.watch_limit_needed is None and st.unwatched == 0 and st.blind_counts == {}
    assert lines(caplog, "inotify watch limit: every such subtree is watched again")


@pytest.mark.parametrize(("err", "reason", "said"), [
    (errno.EACCES, "unreadable", "permission denied"),
    (errno.ENAMETOOLONG, "too_long", "path too long"),
    (errno.EIO, "error", "error of the kernel")])
def test_a_blind_subtree_is_reported_once_retried_and_rescanned_when_it_ends(
        sync, caplog, err: int, reason: str, said: str) -> None:
    w, fake, src = sync
    caplog.set_level(logging.INFO, "syncsup.watcher")
    fake.fail[os.fsencode(src / "a")] = err
    fake.fail[os.fsencode(src / "c")] = err
    walk(w)
    st = w.status()
    assert st.blind_counts == {reason: 2}
    assert [(b.path, b.reason, b.error) for b in st.blind] == [
        ("a", reason, os.strerror(err)), ("c", reason, os.strerror(err))]
    started = lines(caplog, "subtree(s) cannot be watched")
    assert len(started) == 1 and said in started[0] and "2 subtree(s)" in started[0]
    w.held.trees.clear()
    w.rescan_blind(50.0)  # nothing changed: still blind, said nothing more
    walk(w)
    assert len(lines(caplog, "subtree(s) cannot be watched")) == 1
    assert not w.held.trees  # a subtree nobody can read is not sent to rsync
    fake.fail.clear()
    w.rescan_blind(100.0)
    walk(w)
    assert w.status().blind_counts == {}
    assert lines(caplog, f"{said}: every such subtree is watched again")
    assert w.held.trees == {b"a", b"c"}  # what changed there while blind


def test_the_mount_table_is_read_as_the_kernel_writes_it() -> None:
    table = (b"22 1 0:21 / / rw shared:1 - ext4 /dev/sda1 rw\n"
             b"40 22 0:40 / /srv/www/a\\040b rw - tmpfs none rw\n"
             b"41 22 0:41 / /srv/www rw - tmpfs none rw\n"
             b"42 22 0:42 / /srv/wwwx rw - tmpfs none rw\n")
    points = mount_points(table)
    assert b"/srv/www/a b" in points
    assert under(b"/srv/www", points) == {b"", b"a b"}
