"""A remote agent session that ends while its target's slot runs an rsync
step (a file too large for the agent, its rsync slowed here): its
end is read at once, not left readable in the syncer's poll, which would
then wake it again and again, a core spent until the step ends. The
transfer still completes, and the next change opens a new session."""

from __future__ import annotations

import os
import shlex
import signal
import time
from pathlib import Path

import pytest

from ._modes_helpers import wait_until
from .test_agent import (
    RSYNC,
    converge,
    finish,
    kill_quietly,
    remote_agents,
    remote_sync,
    transports,
    write_target_command,
)

pytestmark = pytest.mark.timeout(300)

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User and system time of ``pid`` so far."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def test_a_session_ending_during_a_transfer_costs_no_spin(sshd, tmp_path: Path, src: Path,
                                                         dst: Path, daemon_factory) -> None:
    wrapper, _started = write_target_command(tmp_path)
    slow = tmp_path / "rsync-slow"  # a paths step (-I) waits 6 s before it starts
    slow.write_text("#!/bin/sh\n"
                    'for a in "$@"; do [ "$a" = -I ] && sleep 6; done\n'
                    f'exec {shlex.quote(RSYNC)} "$@"\n')
    slow.chmod(0o755)
    sync = remote_sync(sshd, src, dst, wrapper, delay=0.1)
    sync["rsync"] = {"binary": str(slow)}
    d = daemon_factory([sync])
    (src / "small").write_bytes(b"s")
    converge(d, src, dst)
    d.wait_idle()
    (src / "small2").write_bytes(b"s")  # through the agent: its session is open
    converge(d, src, dst)
    target = sshd.target(dst)
    assert transports(d, d.wait_idle()) == {target: "agent"}, d.describe()
    (agent,) = wait_until(lambda: remote_agents(dst) or None, "the agent session",
                          timeout=30, context=d.describe)

    (src / "large").write_bytes(os.urandom(1200 * 1024))
    wait_until(lambda: any((t.get("transfer") or {}).get("phase") == "paths"
                           for t in d.targets()) or None,
               "the large file's rsync step", timeout=30, context=d.describe)
    kill_quietly(agent, signal.SIGKILL)
    syncer = next(c["pid"] for c in d.components("syncer"))
    before, t0 = cpu_seconds(syncer), time.monotonic()
    time.sleep(3.0)
    spent, took = cpu_seconds(syncer) - before, time.monotonic() - t0
    assert spent < 0.5 * took, (
        f"the syncer spent {spent:.2f} CPU-s in {took:.1f} s of the transfer after its "
        "target's session ended")
    converge(d, src, dst)
    (src / "after").write_bytes(b"a")
    converge(d, src, dst)
    finish(d, tmp_path, src, dst)
