"""Targets whose rsync is older than the source's: Debian 12's rsync 3.2.7
as the receiver rejects ``--delete-missing-args`` ("invalid file mode 00
... protocol incompatibility", exit 2, on every batch with a deletion), so
syncsup deletes through the times step's directory listing there. Real
parts: the daemon, inotify, sshd on loopback, and Debian 12's own rsync
binary on the target side (``--rsync-path``) or as the local rsync."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.helpers.daemon import run_cli, sync_entry, write_config
from tests.helpers.old_rsync import debian12_rsync
from tests.helpers.procs import assert_no_leftovers
from tests.helpers.tree import wait_converged

pytestmark = pytest.mark.timeout(400)


def _populate(src):
    for d in ("a/b/c", "keep", "gone/deep/er"):
        (src / d).mkdir(parents=True, exist_ok=True)
    for rel in ("top.txt", "a/f", "a/b/g", "a/b/c/h", "keep/k", "gone/x", "gone/deep/er/y"):
        (src / rel).write_bytes(os.urandom(300) + rel.encode())


def _delete_things(src):
    (src / "top.txt").unlink()                # a file in the root
    (src / "a" / "b" / "g").unlink()          # a file deeper down
    shutil.rmtree(src / "a" / "b" / "c")      # a directory with content
    shutil.rmtree(src / "gone")               # a tree from the root
    (src / "keep" / "new").write_bytes(b"new\n")


def _mirror_with_deletions(src, dst, d):
    wait_converged(src, dst, timeout=120, on_timeout=d.describe)
    _delete_things(src)
    wait_converged(src, dst, timeout=120, on_timeout=d.describe)
    (src / "a" / "f").unlink()
    (src / "later").mkdir()
    wait_converged(src, dst, timeout=120, on_timeout=d.describe)
    failing = [t for t in d.targets() if t.get("state") not in ("idle", "syncing", "ok")]
    assert not failing, failing


def test_the_probe_tells_old_receivers(tmp_path):
    from syncsup.rsync_version import takes_missing_args

    assert takes_missing_args("rsync") is True
    assert takes_missing_args(debian12_rsync(tmp_path)) is False
    assert takes_missing_args(str(tmp_path / "no-such-rsync")) is False


def test_deletions_reach_a_remote_debian12_rsync(tmp_path, src, dst, sshd, daemon_factory):
    """Over ssh, no agent (rsync options of its own), the target's rsync
    Debian 12's: deletions of files and directories arrive."""
    old = debian12_rsync(tmp_path)
    _populate(src)
    sync = sync_entry(src, [sshd.target(dst)], ssh=sshd.ssh_config())
    sync["rsync"] = {"extra": [f"--rsync-path={old}"]}
    d = daemon_factory([sync])
    _mirror_with_deletions(src, dst, d)
    assert "invalid file mode" not in d.log_text()
    assert d.stop() == 0
    assert_no_leftovers(tmp_path)


def test_deletions_with_a_local_debian12_rsync(tmp_path, src, dst, daemon_factory):
    """The local rsync Debian 12's (the receiver of a local target too),
    every change through rsync (no agent, which would delete by itself)."""
    old = debian12_rsync(tmp_path)
    _populate(src)
    sync = sync_entry(src, [dst])
    sync["rsync"] = {"binary": old}
    sync["agent_max_size"] = 0
    d = daemon_factory([sync])
    _mirror_with_deletions(src, dst, d)
    assert d.stop() == 0
    assert_no_leftovers(tmp_path)


def test_check_tells_a_remote_rsync_that_rejects_delete_missing_args(tmp_path, src, dst,
                                                                     sshd):
    """``check`` tries the target's receiver (writing nothing there) and
    says how deletions will go; the real one takes the option."""
    old = debian12_rsync(tmp_path)
    (dst / "keep").write_bytes(b"k\n")
    for extra, rejects in (([f"--rsync-path={old}"], True), ([], False)):
        sync = sync_entry(src, [sshd.target(dst)], ssh=sshd.ssh_config())
        sync["rsync"] = {"extra": extra}
        config = write_config(tmp_path / "old.toml", {
            "settings": {"state_dir": str(tmp_path / "state")}, "sync": [sync]})
        r = run_cli("check", config, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        lines = [ln for ln in r.stdout.splitlines() if "ssh works" in ln]
        assert len(lines) == 1, r.stdout
        assert ("rejects --delete-missing-args" in lines[0]) is rejects, lines[0]
    assert sorted(os.listdir(dst)) == ["keep"]
