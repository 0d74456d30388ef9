"""What one start and one stop do, with real processes: the template that
forks the children starts while the supervisor checks rsync, so a start
refused by that check must still leave nothing behind (no template, a free
lock); SIGTERM stops everything, exits 0, and leaves nothing running."""

from __future__ import annotations

import os
import signal

import pytest

from tests.helpers.daemon import Daemon, run_cli, sync_entry, write_config
from tests.helpers.procs import assert_no_leftovers
from tests.helpers.tree import wait_converged

pytestmark = pytest.mark.timeout(240)


def test_a_start_that_cannot_run_rsync_leaves_nothing(tmp_path, src, dst):
    (src / "f").write_bytes(b"data\n")
    sync = sync_entry(src, [dst])
    sync["rsync"] = {"binary": str(tmp_path / "no-such-rsync")}
    config = write_config(tmp_path / "bad.toml", {
        "settings": {"state_dir": str(tmp_path / "state")}, "sync": [sync]})
    r = run_cli("start", config, timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot start" in lines[0] and "does not run" in lines[0], r.stderr
    assert os.listdir(dst) == []
    assert_no_leftovers(tmp_path, timeout=0.5)

    # The lock is free and nothing of the failed start is in the way: the
    # same state_dir with a working rsync mirrors and stops cleanly.
    good = sync_entry(src, [dst])
    config = write_config(tmp_path / "good.toml", {
        "settings": {"state_dir": str(tmp_path / "state")}, "sync": [good]})
    d = Daemon(tmp_path, None, config)
    d.start()
    try:
        wait_converged(src, dst, timeout=120, on_timeout=d.describe)
    finally:
        assert d.stop() == 0
    assert_no_leftovers(tmp_path)


def test_waiting_for_a_child_returns_when_it_exits_and_leaves_it_to_reap() -> None:
    """The stop waits for each child through a pidfd: it must return at the
    exit, not at the end of the wait, and leave the zombie for ``waitpid``
    (so that its pid, and its process group id, are not reused meanwhile)."""
    import subprocess

    from syncsup.processes import wait_exited

    proc = subprocess.Popen(["sleep", "60"])
    try:
        assert not wait_exited(proc.pid, 0.05)  # still running: the wait ran out
        proc.send_signal(signal.SIGTERM)
        # woken by the exit: a wait that ran its hour would hit the test's timeout
        assert wait_exited(proc.pid, 3600)
        assert os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    finally:
        proc.kill()
        assert proc.wait() == -signal.SIGTERM


def test_waiting_for_a_child_without_pidfd_naps_and_reports_it_running(monkeypatch) -> None:
    """A kernel without pidfd_open (before 5.3): the wait is a short nap, the
    stop's loop asks again; nothing raises."""
    import errno
    import subprocess

    from syncsup import processes

    def no_pidfd(pid: int, flags: int = 0) -> int:
        raise OSError(errno.ENOSYS, "pidfd_open")

    proc = subprocess.Popen(["sleep", "60"])
    try:
        monkeypatch.setattr(processes.os, "pidfd_open", no_pidfd)
        assert not processes.wait_exited(proc.pid, 5)
    finally:
        proc.kill()
        proc.wait()
