"""``max_processes`` bounds the remote agent sessions too: five ssh targets
of one sync, a cap of two, changes to all of them at once. At no moment do
more than two agent sessions run on the source side (a session's target
side ends a moment after the syncer closes it), yet
every target converges byte for byte through its agent, which means idle
sessions were closed and opened again for the others. The sessions are
counted on the syncer's side: those over the ssh master by the pipes the
syncer holds with it, those that connected directly by their ssh
clients. Real sshd on
loopback, real agents, real rsync for what the agent does not take."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tests.helpers.daemon import Daemon, sync_entry
from tests.helpers.procs import assert_no_leftovers
from tests.helpers.tree import wait_converged
from tests.integration.test_agent import (
    CONVERGE,
    agent_clients,
    multiplexed_sessions,
    started_agents,
    temp_names,
    write_target_command,
)

pytestmark = pytest.mark.timeout(300)

TARGETS = 5
CAP = 2
ROUNDS = 4


def converge(d: Daemon, src: Path, dsts: list[Path]) -> None:
    wait_converged(src, dsts, timeout=CONVERGE, on_timeout=d.describe)
    for dst in dsts:
        assert not temp_names(dst), f"agent temp files left in {dst}: {temp_names(dst)}"


class Sampler(threading.Thread):
    """The most agent sessions the syncer held at once for ``roots``, and
    every session seen: those over its ssh master (the pipe each one's
    answers come by) and those with an ssh client of their own. A look at
    /proc is no instant: a session closed and another opened while it reads
    would both be seen. So only the sessions seen by two looks in a row are
    counted: each was open from the first look to the second, so all of
    them at once."""

    def __init__(self, roots: list[Path], state: Path) -> None:
        super().__init__(daemon=True)
        self.roots, self.state = roots, state
        self.most = 0
        self.seen: set[object] = set()
        self.direct = 0  # sessions seen with an ssh client of their own
        self.stop = threading.Event()

    def run(self) -> None:
        before: set[object] = set()
        while not self.stop.wait(0.005):
            clients = {pid for root in self.roots for pid in agent_clients(root)}
            now: set[object] = {*clients, *multiplexed_sessions(self.state)}
            self.direct += len(clients - before)
            self.seen |= now
            self.most = max(self.most, len(before & now))
            before = now


def test_remote_agent_sessions_never_pass_max_processes(sshd, tmp_path: Path, src: Path,
                                                        daemon_factory, settings) -> None:
    wrapper, started = write_target_command(tmp_path)
    dsts = [tmp_path / f"dst{i}" for i in range(TARGETS)]
    for d_ in dsts:
        d_.mkdir()
    (src / "seed").write_bytes(b"s" * 100)
    sync = sync_entry(src, [sshd.target(d_) for d_ in dsts], delay=0.2,
                      ssh={**sshd.ssh_config(), "target_command": str(wrapper)})
    sampler = Sampler(dsts, tmp_path / "state")
    sampler.start()
    try:
        d = daemon_factory([sync], {**settings, "max_processes": CAP})
        converge(d, src, dsts)
        for r in range(ROUNDS):
            # a change for every target at once: each wants its session
            (src / f"round{r}").write_bytes(b"%d" % r * 300)
            converge(d, src, dsts)
    finally:
        sampler.stop.set()
        sampler.join()
    assert 0 < sampler.most <= CAP, (
        f"{sampler.most} agent sessions at once with max_processes = {CAP}\n{d.log_tail()}")
    # every target got its changes through an agent session at some point,
    # so sessions were closed for others and opened again
    served = [d_ for d_ in dsts if started_agents(started, d_)]
    assert len(served) == TARGETS, started.read_text()
    assert len(sampler.seen) > CAP, "no session was ever closed for another target"
    # the test's sshd allows 200 sessions a connection: every one rode the master
    assert sampler.direct == 0, f"{sampler.direct} sessions connected directly"
    d.stop()
    assert_no_leftovers(tmp_path)
