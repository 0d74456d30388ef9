"""The supervisor's children (supervisor/core.py) driven through a fake OS
port and a fake clock: start, restart and its backoff, degrade, a config
error, heartbeat loss and the stop grace, with no process at all."""

from __future__ import annotations

import signal
from dataclasses import dataclass, field

import pytest

from syncsup.config import EX_CONFIG
from syncsup.supervisor._spawner import SpawnError
from syncsup.supervisor.core import ROLES_IN_START_ORDER, Children
from syncsup.supervisor.policy import State
from syncsup.timings import Timings

# Small, and each distinct, so that a test can tell which one acted.
TIMINGS = Timings(heartbeat_interval=1.0, heartbeat_timeout=3.0, stop_grace=2.0,
                  restart_base=0.5, restart_cap=4.0, restart_stable_after=5.0,
                  restart_window=60.0, degraded_cap=20.0)


@dataclass
class Proc:
    role: str
    rc: int | None = None       # set once it has exited
    ignores_term: bool = False


@dataclass
class FakeOs:
    """Processes that live until signalled; a clock that moves only when
    told (``wait`` moves it too)."""

    now: float = 1000.0
    procs: dict[int, Proc] = field(default_factory=dict)
    signals: list[tuple[str, int]] = field(default_factory=list)  # (role, signal)
    fail_spawns: int = 0
    stubborn: set[str] = field(default_factory=set)
    next_pid: int = 100

    def spawn(self, role: str) -> int:
        if self.fail_spawns:
            self.fail_spawns -= 1
            raise SpawnError(0, "the template is gone")
        self.next_pid += 1
        self.procs[self.next_pid] = Proc(role, ignores_term=role in self.stubborn)
        return self.next_pid

    def exited(self, pid: int) -> bool:
        return self.procs[pid].rc is not None

    def collect(self, pid: int) -> int:
        rc = self.procs.pop(pid).rc
        assert rc is not None, "reaped a live process"
        return rc

    def collect_other(self) -> tuple[int, int] | None:
        return None

    def killpg(self, pgid: int, sig: int) -> None:
        p = self.procs.get(pgid)
        if p is None:
            return
        self.signals.append((p.role, sig))
        if p.rc is None and (sig == signal.SIGKILL or (sig == signal.SIGTERM
                                                       and not p.ignores_term)):
            p.rc = -sig

    def clock(self) -> float:
        return self.now

    def wait(self, pid: int, seconds: float) -> None:
        self.now += seconds

    # the test's hand on the processes
    def exit(self, role: str, rc: int) -> None:
        pid = next(pid for pid, p in self.procs.items() if p.role == role and p.rc is None)
        self.procs[pid].rc = rc


def started(fake: FakeOs) -> Children:
    kids = Children(TIMINGS, fake)
    kids.start_all(fake.now)
    for c in kids.components.values():
        assert c.pid is not None
        kids.heartbeat(c.role, c.pid, f"{c.role}-1", b"peer", fake.now)
    return kids


def beat_all(kids: Children, now: float) -> None:
    for c in kids.components.values():
        if c.pid is not None:
            kids.heartbeat(c.role, c.pid, c.incarnation or "x", b"peer", now)


def test_start_in_order_and_running_at_the_first_heartbeat() -> None:
    fake = FakeOs()
    kids = Children(TIMINGS, fake)
    kids.start_all(fake.now)
    assert [p.role for p in fake.procs.values()] == list(ROLES_IN_START_ORDER)
    assert all(c.policy.state is State.STARTING for c in kids.components.values())
    c = kids.components["syncer"]
    assert c.pid is not None
    kids.heartbeat("syncer", c.pid + 1000, "inc", b"p", fake.now)  # a stranger: ignored
    assert c.policy.state is State.STARTING
    kids.heartbeat("syncer", c.pid, "inc", b"p", fake.now)
    assert c.policy.state is State.RUNNING and c.peer == b"p"


def test_a_crash_restarts_at_once_then_backs_off() -> None:
    fake = FakeOs()
    kids = started(fake)
    fake.exit("collator", 1)
    assert kids.reap(fake.now) == ["collator"]
    c = kids.components["collator"]
    assert c.pid is None and c.policy.state is State.BACKOFF
    kids.restart_due(fake.now)  # the first crash: at once
    assert c.pid is not None and c.policy.restarts == 1
    fake.now += 0.1
    fake.exit("collator", 1)
    kids.reap(fake.now)
    kids.restart_due(fake.now)
    assert c.pid is None, "a second quick crash restarted at once"
    assert c.policy.next_start is not None
    wait = c.policy.next_start - fake.now
    assert 0.8 * TIMINGS.restart_base <= wait <= 1.2 * TIMINGS.restart_base
    fake.now += wait
    kids.restart_due(fake.now)
    assert c.pid is not None
    assert all(kids.components[r].policy.restarts == 0 for r in ("syncer", "watcher"))


def test_too_many_restarts_in_the_window_degrade_and_slow_down() -> None:
    fake = FakeOs()
    kids = started(fake)
    c = kids.components["watcher"]
    for _ in range(c.policy.max_restarts + 1):
        if c.pid is None:
            assert c.policy.next_start is not None
            fake.now = max(fake.now, c.policy.next_start)
            kids.restart_due(fake.now)
        fake.now += 0.1
        fake.exit("watcher", 1)
        kids.reap(fake.now)
    assert c.policy.state is State.DEGRADED
    assert c.policy.next_start is not None
    assert c.policy.next_start - fake.now >= 0.8 * TIMINGS.degraded_cap / 4


def test_a_config_error_is_never_restarted() -> None:
    fake = FakeOs()
    kids = started(fake)
    fake.exit("syncer", EX_CONFIG)
    kids.reap(fake.now)
    for _ in range(5):
        fake.now += 100.0
        kids.restart_due(fake.now)
    c = kids.components["syncer"]
    assert c.pid is None and c.policy.state is State.FATAL


def test_a_silent_child_is_killed_after_the_heartbeat_timeout_and_restarted() -> None:
    fake = FakeOs()
    kids = started(fake)
    hung = kids.components["collator"]
    old = hung.pid
    fake.now += TIMINGS.heartbeat_timeout  # exactly the timeout: not yet
    for role in ("syncer", "watcher"):
        pid = kids.components[role].pid
        assert pid is not None
        kids.heartbeat(role, pid, f"{role}-1", b"peer", fake.now)
    assert not kids.silent(fake.now)
    kids.reap(fake.now)
    assert ("collator", signal.SIGKILL) not in fake.signals
    fake.now += 0.1
    assert kids.silent(fake.now)
    assert kids.reap(fake.now) == []  # killed now, reaped at the next look
    assert fake.signals == [("collator", signal.SIGKILL)]
    assert kids.reap(fake.now) == ["collator"]
    assert hung.policy.last_exit == -signal.SIGKILL
    kids.restart_due(fake.now)
    assert hung.pid not in (None, old) and hung.policy.state is State.STARTING
    assert kids.deadlines() and min(kids.deadlines()) > fake.now


def test_a_spawn_that_fails_is_retried_with_backoff() -> None:
    fake = FakeOs(fail_spawns=1)
    kids = Children(TIMINGS, fake)
    kids.start_all(fake.now)
    c = kids.components["collator"]
    assert c.pid is None and c.policy.last_exit == 127
    kids.restart_due(fake.now)
    assert c.pid is not None


@pytest.mark.parametrize("stubborn", [set(), {"syncer"}])
def test_stop_terms_the_watcher_first_and_kills_after_the_grace(stubborn: set[str]) -> None:
    fake = FakeOs(stubborn=stubborn)
    kids = started(fake)
    begun = fake.now
    kids.stop_all()
    terms = [role for role, sig in fake.signals if sig == signal.SIGTERM]
    assert terms == ["watcher", "syncer", "collator"]  # the watcher alone first
    assert all(c.pid is None and c.policy.state is State.STOPPED
               for c in kids.components.values())
    assert fake.procs == {}, "a child was left unreaped"
    took = fake.now - begun
    if stubborn:
        assert TIMINGS.stop_grace <= took <= TIMINGS.stop_grace + 0.1
        assert ("syncer", signal.SIGKILL) in fake.signals
        killed_first = fake.signals.index(("syncer", signal.SIGKILL))
        assert killed_first > fake.signals.index(("collator", signal.SIGTERM))
    else:
        assert took < 0.1, "waited although every child left at once"
    for _ in range(3):  # stopped children are not restarted
        fake.now += 100.0
        kids.restart_due(fake.now)
    assert all(c.pid is None for c in kids.components.values())


def test_a_stable_child_starts_its_backoff_again() -> None:
    fake = FakeOs()
    kids = started(fake)
    c = kids.components["syncer"]
    for _ in range(3):  # quick crashes: the backoff grows
        fake.now += 0.1
        fake.exit("syncer", 1)
        kids.reap(fake.now)
        assert c.policy.next_start is not None
        fake.now = c.policy.next_start
        kids.restart_due(fake.now)
    assert c.policy.failures == 3
    fake.now += TIMINGS.restart_stable_after
    beat_all(kids, fake.now)
    kids.restart_due(fake.now)
    assert c.policy.failures == 0
    fake.exit("syncer", 1)
    kids.reap(fake.now)
    kids.restart_due(fake.now)
    assert c.pid is not None, "a crash after a stable run waited"
