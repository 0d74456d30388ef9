"""Randomised churn on a live tree, mirrored to a local and an ssh target."""

from __future__ import annotations

import pytest

from tests.helpers.churn import Churn, ChurnThread, assert_not_pwned
from tests.helpers.daemon import sync_entry
from tests.helpers.procs import assert_no_leftovers
from tests.helpers.tree import wait_converged

pytestmark = pytest.mark.timeout(300)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_churn_local_and_ssh(seed, tmp_path, src, dst, sshd, daemon_factory):
    dst_ssh = tmp_path / "dst_ssh"
    dst_ssh.mkdir()
    c = Churn(src, seed)
    c.populate(n_files=150, n_dirs=20, big_every=75)
    d = daemon_factory([sync_entry(src, [dst, sshd.target(dst_ssh)], ssh=sshd.ssh_config())])
    t = ChurnThread(c, 300, sleep_prob=0.4, max_sleep=0.02)
    t.start()
    t.join_checked(120)
    wait_converged(
        src, [dst, dst_ssh], timeout=150, on_timeout=lambda: c.summary() + "\n" + d.describe()
    )
    d.stop()
    assert_no_leftovers(tmp_path)
    assert_not_pwned(tmp_path, src, dst, dst_ssh)


def test_churn_ssh_only(tmp_path, src, sshd, daemon_factory):
    dst_ssh = tmp_path / "dst_ssh"
    dst_ssh.mkdir()
    c = Churn(src, 4)
    c.populate(n_files=100, n_dirs=15)
    d = daemon_factory([sync_entry(src, [sshd.target(dst_ssh)], ssh=sshd.ssh_config(), delay=0.5)])
    t = ChurnThread(c, 300, sleep_prob=0.4, max_sleep=0.02)
    t.start()
    t.join_checked(120)
    wait_converged(src, dst_ssh, timeout=150, on_timeout=lambda: c.summary() + "\n" + d.describe())
    # a second wave after a quiet period
    c.run(100, sleep_prob=0.2, max_sleep=0.01)
    wait_converged(src, dst_ssh, timeout=150, on_timeout=lambda: c.summary() + "\n" + d.describe())
    d.stop()
    assert_no_leftovers(tmp_path)
    assert_not_pwned(tmp_path, src, dst_ssh)


@pytest.mark.timeout(400)
def test_ssh_target_down_then_back(tmp_path, src, dst, sshd, daemon_factory):
    """A target that is down delays only itself; its changes arrive once it is back."""
    dst_ssh = tmp_path / "dst_ssh"
    dst_ssh.mkdir()
    remote = sshd.target(dst_ssh)
    c = Churn(src, 5)
    c.populate(n_files=60, n_dirs=8)
    d = daemon_factory([sync_entry(src, [dst, remote], ssh=sshd.ssh_config())])
    wait_converged(src, [dst, dst_ssh], timeout=120, on_timeout=d.describe)

    sshd.stop(kill_sessions=True)
    try:
        c.run(150, sleep_prob=0.3, max_sleep=0.02)
        # the local target is not held back by the dead one
        wait_converged(src, dst, timeout=120, on_timeout=lambda: c.summary() + "\n" + d.describe())

        def ssh_not_ok(st):
            t = [t for t in d.targets(st) if t["target"] == remote]
            return bool(t) and t[0]["state"] in ("retrying", "failed") and t[0]["last_error"]

        d.wait_for(ssh_not_ok, "the ssh target to report its failure", timeout=90)
    finally:
        sshd.start()
    c.run(50, sleep_prob=0.3, max_sleep=0.02)
    wait_converged(
        src, [dst, dst_ssh], timeout=180, on_timeout=lambda: c.summary() + "\n" + d.describe()
    )
    d.stop()
    assert_no_leftovers(tmp_path)
    assert_not_pwned(tmp_path, src, dst, dst_ssh)
