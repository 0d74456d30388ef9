"""The supervisor's decisions about its children, behind an OS port.

Which child to start, when a silent one is killed, what an exit means
(restart now, later, slowly, never) and how a stop ends them all: every
such decision is made here, by :class:`Children`, from what the port
reports and the time it tells. The port is the only way out to the kernel
(spawn, ``waitid``, ``waitpid``, ``killpg``, the clock, a wait for an exit), as
supervisord's ``options`` object is for its process states: the real one is
:class:`ProcessPort`, and a unit test gives a fake one and a fake clock,
so restart, backoff, degrade, heartbeat loss and the stop grace run there
with no process at all.

What happens to each child across restarts is :class:`~.policy.RestartPolicy`'s
(pure, per child); this module applies it to the processes.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass
from typing import Protocol

from syncsup.processes import killpg, wait_exited
from syncsup.supervisor._spawner import Spawner, SpawnError
from syncsup.supervisor.policy import RestartPolicy, State
from syncsup.timings import Timings

__all__ = ["ROLES_IN_START_ORDER", "Children", "Component", "OsPort", "ProcessPort"]

log = logging.getLogger("syncsup.supervisor")

ROLES_IN_START_ORDER = ("collator", "syncer", "watcher")


class OsPort(Protocol):
    """What the supervisor asks of the operating system about its children."""

    def spawn(self, role: str) -> int:
        """A new ``role`` process; its pid. Raises SpawnError."""

    def exited(self, pid: int) -> bool:
        """Has child ``pid`` exited? Its zombie is left in place, so its pid
        (and process group id) cannot be reused until :meth:`collect`."""

    def collect(self, pid: int) -> int:
        """Reap child ``pid`` (it has exited); its exit code (negative: the
        signal that killed it)."""

    def collect_other(self) -> tuple[int, int] | None:
        """Reap any other child that has exited (an orphan re-parented to us,
        the template): (pid, exit code), or None when there is none."""

    def killpg(self, pgid: int, sig: int) -> None:
        """Signal a process group that may already be gone."""

    def clock(self) -> float:
        """Monotonic seconds."""

    def wait(self, pid: int, seconds: float) -> None:
        """Wait up to ``seconds`` for child ``pid`` to exit, returning as
        soon as it has, without reaping it (only while stopping: the loop
        itself never waits)."""


class ProcessPort:
    """The real port: children come from the template (``Spawner``), exits
    from ``waitid``/``waitpid`` (waited for through a pidfd), time from
    ``time.monotonic``."""

    def __init__(self, spawner: Spawner) -> None:
        self.spawner = spawner

    def spawn(self, role: str) -> int:
        return self.spawner.spawn(role)

    def exited(self, pid: int) -> bool:
        try:
            return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return True  # reaped already: nothing left to wait for

    def collect(self, pid: int) -> int:
        try:
            _pid, status = os.waitpid(pid, 0)
        except ChildProcessError:
            return -signal.SIGKILL
        return os.waitstatus_to_exitcode(status)

    def collect_other(self) -> tuple[int, int] | None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return None
            if pid == 0:
                return None
            if not self.spawner.exited(pid):  # the template is the spawner's
                return pid, os.waitstatus_to_exitcode(status)

    def killpg(self, pgid: int, sig: int) -> None:
        killpg(pgid, sig)

    def clock(self) -> float:
        return time.monotonic()

    def wait(self, pid: int, seconds: float) -> None:
        wait_exited(pid, seconds)


@dataclass
class Component:
    """One supervised child and what the supervisor knows of it."""

    role: str
    policy: RestartPolicy
    pid: int | None = None
    spawned: float = 0.0
    last_beat: float = 0.0
    incarnation: str | None = None
    peer: bytes | None = None  # its routing id on the control socket


class Children:
    """The three children: started, watched for heartbeats and exits,
    restarted by their policies, stopped in order."""

    def __init__(self, timings: Timings, port: OsPort) -> None:
        self.timings = timings
        self.port = port
        self.stopping = False
        self.components = {role: Component(role, RestartPolicy(timings))
                            for role in ROLES_IN_START_ORDER}

    # -- starting and exits ------------------------------------------------------

    def start_all(self, now: float) -> None:
        for c in self.components.values():
            self.spawn(c, now)

    def spawn(self, c: Component, now: float) -> None:
        c.policy.start(now)
        try:
            c.pid = self.port.spawn(c.role)
        except SpawnError as exc:
            log.error("cannot start %s: %s", c.role, exc.strerror or exc)
            c.policy.exited(127, now)
            return
        c.spawned = c.last_beat = now
        c.incarnation = c.peer = None
        log.debug("started %s (pid %d)", c.role, c.pid)

    def _exited(self, c: Component, rc: int, now: float) -> None:
        pid, c.pid, c.peer = c.pid, None, None
        c.policy.exited(rc, now)
        if c.policy.state is State.FATAL:
            log.error("%s exited with a configuration error (78): not restarting; "
                      "fix the config and restart syncsup", c.role)
        elif not self.stopping:
            how = f"signal {-rc}" if rc < 0 else f"exit code {rc}"
            log.warning("%s (pid %s) died (%s); restart #%d in %.1fs%s", c.role, pid, how,
                        c.policy.restarts, max(0.0, (c.policy.next_start or now) - now),
                        " [degraded: restarting too often]"
                        if c.policy.state is State.DEGRADED else "")

    def reap(self, now: float) -> list[str]:
        """Collect exited children and kill the silent ones; the roles that
        exited. A known child is peeked at first: while its zombie exists
        its pid, and so its process group id, cannot be reused, so killing
        the group is safe. Then every other exited child (the template,
        orphans re-parented to us)."""
        gone: list[str] = []
        for c in self.components.values():
            if c.pid is None:
                continue
            if not self.port.exited(c.pid):
                if now - c.last_beat > self.timings.heartbeat_timeout:
                    log.error("%s (pid %d) sent no heartbeat for %.0fs: killing it", c.role,
                              c.pid, now - c.last_beat)
                    self.port.killpg(c.pid, signal.SIGKILL)
                continue
            self.port.killpg(c.pid, signal.SIGKILL)  # anything it left in its group
            self._exited(c, self.port.collect(c.pid), now)
            gone.append(c.role)
        while (other := self.port.collect_other()) is not None:
            pid, rc = other
            for c in self.components.values():
                if c.pid == pid:
                    self._exited(c, rc, now)
                    gone.append(c.role)
        return gone

    def silent(self, now: float) -> bool:
        """Has a running child missed its heartbeat deadline?"""
        limit = self.timings.heartbeat_timeout
        return any(c.pid is not None and now - c.last_beat > limit
                   for c in self.components.values())

    def restart_due(self, now: float) -> None:
        """Time passes for every policy; a child whose restart is due starts."""
        for c in self.components.values():
            c.policy.tick(now)
            if c.pid is None and c.policy.due(now) and not self.stopping:
                self.spawn(c, now)

    def heartbeat(self, role: str, pid: int, incarnation: str, peer: bytes, now: float) -> None:
        """A child said it is alive; its first beat (a new incarnation) means
        it is up. A beat from a stale incarnation or a stranger is ignored."""
        c = self.components.get(role)
        if c is None or c.pid != pid:
            return
        c.last_beat = now
        c.peer = peer
        if c.incarnation != incarnation:
            c.policy.up(now)
        c.incarnation = incarnation

    def deadlines(self) -> list[float]:
        """When something about the children is due: a heartbeat deadline,
        a restart, the end of a degraded child's stable time."""
        due: list[float] = []
        for c in self.components.values():
            if c.pid is not None:
                due.append(c.last_beat + self.timings.heartbeat_timeout + 0.05)
            elif c.policy.next_start is not None:
                due.append(c.policy.next_start)
            if c.policy.state is State.DEGRADED and c.policy.started_at is not None:
                due.append(c.policy.started_at + c.policy.stable_after)
        return due

    # -- stop ------------------------------------------------------------------------

    def stop_all(self) -> None:
        """TERM in reverse start order, wait up to ``stop_grace``, then KILL.
        The watcher goes first, alone: at a clean stop it hands its last
        changes and a seen-point to the collator and waits for the ack,
        which needs the collator still running (without it the next start
        compares more than what changed while syncsup was stopped)."""
        live = [c for c in reversed(list(self.components.values())) if c.pid is not None]
        deadline = self.port.clock() + self.timings.stop_grace
        first = [c for c in live if c.role == "watcher"]
        self._term_and_wait(first, deadline)
        self._term_and_wait([c for c in live if c not in first], deadline)

    def _term_and_wait(self, live: list[Component], deadline: float) -> None:
        for c in live:
            c.policy.stop()
            assert c.pid is not None
            self.port.killpg(c.pid, signal.SIGTERM)
            self.port.killpg(c.pid, signal.SIGCONT)  # a stopped child acts on TERM once continued
        for c in live:
            assert c.pid is not None
            while (now := self.port.clock()) < deadline:
                if self.port.exited(c.pid):
                    break
                self.port.wait(c.pid, deadline - now)
            else:
                log.warning("%s did not stop in %.1fs: killing it", c.role,
                            self.timings.stop_grace)
            self.port.killpg(c.pid, signal.SIGKILL)
            self.port.collect(c.pid)
            c.pid = c.peer = None
