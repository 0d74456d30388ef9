"""An agent session with nothing to do is closed after ``[sync.ssh]
agent_idle`` seconds, so a remote target at rest costs its ssh master only;
the next change opens a new session over the master and still goes through
the agent, not rsync. Real sshd on loopback, real agent."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.helpers.churn import assert_not_pwned
from tests.helpers.daemon import sync_entry
from tests.helpers.procs import assert_no_leftovers
from tests.helpers.sshd import Sshd
from tests.helpers.tree import wait_converged
from tests.integration.test_agent import (
    agent_clients,
    converge,
    finish,
    masters_listening,
    multiplexed_sessions,
    names_in,
    remote_agents,
    rsync_logger,
    rsync_runs,
    ssh_masters,
    started_agents,
    transports,
    with_rsync,
    write_all,
    write_target_command,
)

from ._modes_helpers import wait_until

pytestmark = pytest.mark.timeout(300)


def _start(sshd, tmp_path: Path, src: Path, dst: Path, daemon_factory, **idle: float):
    """A daemon mirroring ``src`` to ``dst`` over the test's sshd, through
    this checkout's agent, with the ``[sync.ssh]`` idle times given; its
    rsync runs and agent starts logged."""
    rsync_bin, runs = rsync_logger(tmp_path)
    wrapper, started = write_target_command(tmp_path)
    (src / "seed").write_bytes(b"s" * 100)
    target = sshd.target(dst)
    sync = sync_entry(src, [target], delay=0.1,
                      ssh={**sshd.ssh_config(), "target_command": str(wrapper), **idle})
    return daemon_factory([with_rsync(sync, rsync_bin)]), runs, started, target


def test_an_idle_session_is_closed_and_the_next_change_opens_one(sshd, tmp_path: Path,
                                                                  src: Path, dst: Path,
                                                                  daemon_factory) -> None:
    d, runs, started, target = _start(sshd, tmp_path, src, dst, daemon_factory, agent_idle=1)
    converge(d, src, dst)
    (src / "first").write_bytes(b"1" * 200)
    converge(d, src, dst)
    wait_until(lambda: len(started_agents(started, dst)) >= 1, "an agent session", 60,
               context=d.log_tail)
    # idle: the session ends, on both sides (the loop checks once a heartbeat)
    state = tmp_path / "state"
    wait_until(lambda: not remote_agents(dst) and not agent_clients(dst)
               and not multiplexed_sessions(state),
               "the idle session closed on both sides", 90, context=d.log_tail)
    assert transports(d) == {target: "agent"}, d.describe()
    (src / "second").write_bytes(b"2" * 200)
    converge(d, src, dst)
    assert len(started_agents(started, dst)) == 2, started.read_text()
    assert b"second" not in names_in(rsync_runs(runs)), "the change went by rsync"
    finish(d, tmp_path, src, dst)


def test_an_unused_master_is_closed_and_the_next_change_opens_it(sshd, tmp_path: Path,
                                                                 src: Path, dst: Path,
                                                                 daemon_factory) -> None:
    """A target at rest keeps no ssh process at all: after ``master_idle``
    with no batch its master closes too (after the agent's session); the
    next change opens both again, converges, and still goes through the
    agent."""
    d, runs, started, target = _start(sshd, tmp_path, src, dst, daemon_factory,
                                      agent_idle=1, master_idle=2)
    state = tmp_path / "state"
    converge(d, src, dst)
    assert ssh_masters(state), "no ssh master while the first batches ran"
    wait_until(lambda: not ssh_masters(state) and not remote_agents(dst)
               and not agent_clients(dst) and not multiplexed_sessions(state),
               "the master and the session closed", 90,
               context=d.log_tail)
    sessions = len(started_agents(started, dst))
    (src / "after-rest").write_bytes(b"r" * 200)
    converge(d, src, dst)
    wait_until(lambda: bool(ssh_masters(state)), "the master open again", 60,
               context=d.log_tail)
    assert b"after-rest" not in names_in(rsync_runs(runs)), "the change went by rsync"
    assert len(started_agents(started, dst)) > sessions, "no new agent session"
    assert transports(d) == {target: "agent"}, d.describe()
    assert "ssh master connection ended" not in d.log_text(), d.log_tail(20)  # no failure
    finish(d, tmp_path, src, dst)


def _connections(sshd: Sshd) -> int:
    """Connections the sshd has accepted so far (each a handshake on both
    ends, an ssh client here and a session process there)."""
    return sshd.log.read_bytes().count(b"Accepted publickey")


def test_a_start_makes_one_connection_per_login_not_one_per_target(
        sshd, tmp_path: Path, src: Path, daemon_factory) -> None:
    """At a start the login's master is still connecting when the first
    steps are ready: the rescan's rsync, the agents' sessions and the
    proofs of three targets wait for it instead of each connecting by
    itself, so the sshd sees one connection, the master's."""
    dsts = [tmp_path / f"dst-{n}" for n in ("a", "b", "c")]
    for p in dsts:
        p.mkdir()
    write_all(src, {"one": b"1" * 300, "d/two": b"2", "d/three": b"3" * 5000})
    wrapper, _started = write_target_command(tmp_path)
    before = _connections(sshd)
    d = daemon_factory([sync_entry(src, [sshd.target(p) for p in dsts], delay=0.1,
                                   ssh={**sshd.ssh_config(), "target_command": str(wrapper)})])
    wait_converged(src, dsts, timeout=120, on_timeout=d.describe)
    write_all(src, {"after": b"a" * 100, "d/two": b"22"})
    wait_converged(src, dsts, timeout=120, on_timeout=d.describe)
    log = d.log_text()
    assert log.count("over the ssh master") == 3, d.log_tail(30)  # the three proofs
    assert _connections(sshd) - before == 1, sshd.log_tail(20)
    finish(d, tmp_path, src, dsts[0])


def test_targets_on_one_login_share_one_master(sshd, tmp_path: Path, src: Path,
                                               daemon_factory) -> None:
    """Three remote targets on one host with one ssh command (two of one
    sync, one of another) keep one ssh master between them, not three. When
    it is killed, every target goes on (direct connections) and one master
    comes back; all three end identical to their source."""
    other_src = tmp_path / "src2"
    other_src.mkdir()
    dsts = [tmp_path / f"dst-{n}" for n in ("a", "b", "c")]
    write_all(src, {"one": b"1" * 300, "d/two": b"2"})
    write_all(other_src, {"three": b"3" * 50})
    ssh = {**sshd.ssh_config(), "master_idle": 0}
    d = daemon_factory([sync_entry(src, [sshd.target(dsts[0]), sshd.target(dsts[1])],
                                   delay=0.1, ssh=ssh),
                        sync_entry(other_src, [sshd.target(dsts[2])], name="other",
                                   delay=0.1, ssh=ssh)])

    def all_converged() -> None:
        wait_converged(src, dsts[:2], timeout=120, on_timeout=d.describe)
        wait_converged(other_src, dsts[2], timeout=120, on_timeout=d.describe)

    all_converged()
    state = tmp_path / "state"
    first = wait_until(lambda: ssh_masters(state), "the ssh master", 60, context=d.log_tail)
    assert len(first) == 1, first
    write_all(src, {"after": b"a" * 100})
    write_all(other_src, {"after": b"b" * 100})
    all_converged()
    assert ssh_masters(state) == first, "a second master for the same login"
    os.kill(first[0], signal.SIGKILL)
    write_all(src, {"while-down": b"w" * 100})
    write_all(other_src, {"while-down": b"x" * 100})
    all_converged()
    again = wait_until(lambda: [p for p in ssh_masters(state) if p != first[0]],
                       "the master started again", 60, context=d.log_tail)
    assert len(ssh_masters(state)) == 1, ssh_masters(state)
    # and it listens: the killed one's socket file was not left in its way
    wait_until(lambda: masters_listening(state) == 1, "the new master listening", 30,
               context=d.log_tail)
    assert "ssh master connection ended" in d.log_text(), d.log_tail(20)
    write_all(src, {"last": b"l"})
    write_all(other_src, {"last": b"m"})
    all_converged()
    assert ssh_masters(state) == again
    finish(d, tmp_path, src, dsts[0])
    assert_not_pwned(tmp_path, other_src, dsts[2])


class _OneSessionSshd(Sshd):
    """An sshd that lets one connection carry one session (``MaxSessions
    1``; OpenSSH's default is 10)."""

    def _write_config(self) -> None:
        super()._write_config()
        self.config.write_text(self.config.read_text().replace("MaxSessions 200",
                                                               "MaxSessions 1"))


def test_sessions_ride_the_master_and_one_it_refuses_connects_directly(
        tmp_path: Path, src: Path, daemon_factory) -> None:
    """Two targets on one login, a server that allows one session per
    connection: the first agent session goes over the ssh master with no ssh
    process of its own; the master refuses the second, which then connects
    directly on the same pipes (what the syncer had written to it is not
    lost). Both targets get their changes through their agents, not rsync,
    and end identical."""
    server = _OneSessionSshd(tmp_path / "sshd1")
    server.start()
    try:
        rsync_bin, runs = rsync_logger(tmp_path)
        wrapper, started = write_target_command(tmp_path)
        dsts = [tmp_path / "dst-a", tmp_path / "dst-b"]
        write_all(src, {"seed": b"s" * 100})
        sync = sync_entry(src, [server.target(p) for p in dsts], delay=0.1,
                          ssh={**server.ssh_config(), "target_command": str(wrapper)})
        d = daemon_factory([with_rsync(sync, rsync_bin)])
        state = tmp_path / "state"
        wait_converged(src, dsts, timeout=120, on_timeout=d.describe)
        write_all(src, {"by-agent": b"a" * 200})
        wait_converged(src, dsts, timeout=120, on_timeout=d.describe)
        wait_until(lambda: all(started_agents(started, p) for p in dsts),
                   "a session for each target", 60, context=d.log_tail)
        assert len(ssh_masters(state)) == 1
        # one session rides the master; the other has its own ssh client
        wait_until(lambda: len(multiplexed_sessions(state)) == 1
                   and sum(len(agent_clients(p)) for p in dsts) == 1,
                   "one multiplexed session and one direct", 60, context=d.log_tail)
        assert "the session was refused" in d.log_text(), d.log_tail(20)
        assert b"by-agent" not in names_in(rsync_runs(runs)), "the change went by rsync"
        assert transports(d) == {server.target(p): "agent" for p in dsts}, d.describe()
        write_all(src, {"later": b"l" * 50})
        wait_converged(src, dsts, timeout=120, on_timeout=d.describe)
        d.stop()
        server.close()
        assert_no_leftovers(tmp_path)
    finally:
        server.close()
