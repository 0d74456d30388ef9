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

import json
import os
import shlex
import signal
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.churn import Churn, ChurnThread, assert_not_pwned
from tests.helpers.daemon import REPO, Daemon, run_cli, sync_entry
from tests.helpers.procs import assert_no_leftovers
from tests.helpers.tree import wait_converged

from ._modes_helpers import wait_until

pytestmark = pytest.mark.timeout(420)


def relay_daemon(tmp_path: Path, relay: Path, targets: list[Path]) -> Daemon:
    """The relay's own syncsup: its own config, state dir and log, and a
    JSON status file for the source's ``status --relays``."""
    doc = {"settings": {"state_dir": str(tmp_path / "relay-state"), "log_level": "info",
                        "status_file": str(tmp_path / "relay-status.json"),
                        "status_interval": 1},
           "sync": [sync_entry(relay, targets, name="relayed", delay=0.2)]}
    return Daemon(tmp_path, doc, tmp_path / "relay.toml")


def relay_target_command(tmp_path: Path) -> Path:
    """The relay host's syncsup-target for the source's key, serving the
    relay daemon's status file (as ``--relay-status`` in a forced command)."""
    wrapper = tmp_path / "relay-target"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"PYTHONPATH={shlex.quote(str(REPO))}; export PYTHONPATH\n"
        f"exec {shlex.quote(sys.executable)} -P -m syncsup.target "
        f"--relay-status={shlex.quote(str(tmp_path / 'relay-status.json'))} \"$@\"\n")
    os.chmod(wrapper, 0o755)
    return wrapper


def relays(source: Daemon) -> list[dict]:
    r = run_cli("status", "--relays", "--json", source.config)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["relays"]


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
    wrapper = relay_target_command(tmp_path)
    entry = sync_entry(src, [relay], delay=0.2,
                       ssh={**sshd.ssh_config(), "target_command": str(wrapper)})
    entry["targets"] = [{"path": str(relay), "host": sshd.host, "user": sshd.user,
                         "relay": True}]
    source = daemon_factory([entry])
    r = relay_daemon(tmp_path, relay, [t1, t2])
    r.start()
    try:
        converged3(src, relay, [t1, t2], source, r)
        r.wait_idle()
        # a seen-point, so that the restart below can use it
        r.wait_for(lambda st: bool(st["syncs"][0].get("seen")), "the relay's seen-point", 60)
        # the source sees the relay's own targets, idle
        wait_until(lambda: [(t["target"], t["state"]) for rl in relays(source)
                            for s in (rl["status"] or {"syncs": []})["syncs"]
                            for t in s["targets"]] == [(str(t1), "idle"), (str(t2), "idle")],
                   "the relay's targets idle in status --relays", 30)

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
        text = run_cli("status", "--relays", source.config)
        assert text.returncode == 0 and "relays:" in text.stdout, text.stderr
        assert f"www -> {sshd.user}@{sshd.host}:{relay}: 2 target(s)" in text.stdout, text.stdout
    finally:
        if r.running:
            r.stop()
    assert_not_pwned(src, relay, t1, t2)
    # the relay's status gone: shown as unavailable, with why; status still answers
    (stale,) = relays(source)
    assert stale["status"] is not None and stale["age"] >= 0, stale
    (tmp_path / "relay-status.json").unlink()
    (gone,) = relays(source)
    assert gone["status"] is None and "cannot read the relay status" in gone["error"], gone
    source.stop()
    wait_until(lambda: not r.running, "the relay daemon to be gone", 30)
    assert_no_leftovers(tmp_path)
