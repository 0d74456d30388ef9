"""Cascades: a relay host receives the mirror over ssh and runs its own
syncsup onward, sourcing the tree it receives.

Source → relay (ssh, the agent started through ``target_command``) → two
local targets on the relay host. Both daemons are separate processes with
their own state dirs, as on two hosts. The relay's watcher sees the agent's
and rsync's writes (rsync's temporary file and its rename included) like
any other; nothing forces a full scan. Churn with hostile names runs on the
source; the relay daemon is SIGKILLed mid-churn and started again: its
start uses its seen-point, and all three trees end byte for byte equal.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.helpers.churn import Churn, ChurnThread, assert_not_pwned
from tests.helpers.daemon import Daemon, sync_entry
from tests.helpers.procs import assert_no_leftovers
from tests.helpers.tree import wait_converged

from ._modes_helpers import wait_until
from .test_agent import write_target_command

pytestmark = pytest.mark.timeout(420)


def relay_daemon(tmp_path: Path, relay: Path, targets: list[Path]) -> Daemon:
    """The relay's own syncsup: its own config, state dir and log."""
    doc = {"settings": {"state_dir": str(tmp_path / "relay-state"), "log_level": "info"},
           "sync": [sync_entry(relay, targets, name="relayed", delay=0.2)]}
    return Daemon(tmp_path, doc, tmp_path / "relay.toml")


def converged3(src: Path, relay: Path, targets: list[Path], *daemons: Daemon) -> None:
    def describe() -> str:
        return "\n".join(d.describe() for d in daemons)
    wait_converged(src, relay, timeout=180, on_timeout=describe)
    for t in targets:
        wait_converged(src, t, timeout=180, on_timeout=describe)


def test_a_relay_mirrors_what_it_receives_and_survives_a_kill(tmp_path, src, sshd,
                                                              daemon_factory):
    relay = tmp_path / "relay"
    relay.mkdir()
    t1, t2 = tmp_path / "t1", tmp_path / "t2"
    t1.mkdir()
    t2.mkdir()
    c = Churn(src, seed=2311, hostile_ratio=0.4)
    c.populate(n_files=120, n_dirs=12, big_every=40)
    wrapper, _log = write_target_command(tmp_path)
    source = daemon_factory([sync_entry(
        src, [sshd.target(relay)], delay=0.2,
        ssh={**sshd.ssh_config(), "target_command": str(wrapper)})])
    r = relay_daemon(tmp_path, relay, [t1, t2])
    r.start()
    try:
        converged3(src, relay, [t1, t2], source, r)
        r.wait_idle()
        # a seen-point, so that the restart below can use it
        r.wait_for(lambda st: bool(st["syncs"][0].get("seen")), "the relay's seen-point", 60)

        churn = ChurnThread(c, 400, sleep_prob=0.5, max_sleep=0.02)
        churn.start()
        time.sleep(1.0)
        os.killpg(r.pid, signal.SIGKILL)  # the whole relay daemon, mid-churn
        r.proc.wait(30)  # type: ignore[union-attr]
        time.sleep(1.0)
        r.start()
        churn.join_checked(180)
        converged3(src, relay, [t1, t2], source, r)
        r.wait_idle()
        log = r.log_text()
        # the restart used the seen-point (not a comparison of everything),
        # and the relay's only rescans of its whole tree were its two starts:
        # what it received came as events
        assert "rescanning, comparing the content of files changed since" in log, \
            r.log_tail(40)
        assert log.count("rescan requested: '/'") == 2, r.log_tail(80)
    finally:
        if r.running:
            r.stop()
    assert_not_pwned(src, relay, t1, t2)
    source.stop()
    wait_until(lambda: not r.running, "the relay daemon to be gone", 30)
    assert_no_leftovers(tmp_path)
