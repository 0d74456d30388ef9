"""Restart policy: a pure state machine per component, driven by
``(event, now)``, in the manner of supervisord's process states.

::

    STOPPED --start--> STARTING --first heartbeat (up)--> RUNNING
       ^                  |  \\                             |
       |                  |   exit(78) --> FATAL           | exit
       |                  v                                v
       +--stop--------- BACKOFF <---------------------- (restart due)
                          | too many restarts in restart_window
                          v
                       DEGRADED (keeps retrying, slowly)

Why these rules: a component that crashes once restarts at once; one that
keeps crashing backs off exponentially (with jitter, so several syncs do
not restart in lockstep) instead of burning a CPU; a configuration error
(exit 78) is never retried because it cannot fix itself.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum

from syncsup.backoff import JITTER, Backoff
from syncsup.config import EX_CONFIG
from syncsup.timings import Timings

__all__ = ["EX_CONFIG", "RestartPolicy", "State"]


class State(StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff"
    DEGRADED = "degraded"
    FATAL = "fatal"


@dataclass
class RestartPolicy:
    """Decides when a component (re)starts. Times are monotonic seconds;
    the delays, the stability time and the window come from ``timings``."""

    timings: Timings = field(default_factory=Timings)
    max_restarts: int = 10      # restarts in the window before "degraded"
    rng: random.Random = field(default_factory=random.Random)

    state: State = State.STOPPED
    restarts: int = 0
    failures: int = 0           # consecutive quick failures
    started_at: float | None = None
    next_start: float | None = None
    last_exit: int | None = None
    _recent: deque[float] = field(default_factory=deque)

    def __post_init__(self) -> None:
        t = self.timings
        self._backoff = Backoff(t.restart_base, t.restart_cap, self.rng)
        self._degraded = Backoff(t.restart_base, t.degraded_cap, self.rng)

    @property
    def stable_after(self) -> float:
        """Up this long, the backoff starts again from zero."""
        return self.timings.restart_stable_after

    def start(self, now: float) -> None:
        """The process was spawned."""
        self.state = State.DEGRADED if self.state is State.DEGRADED else State.STARTING
        self.started_at = now
        self.next_start = None

    def up(self, now: float) -> None:
        """The process said hello (its first heartbeat): it is running,
        unless it is degraded, which only time without restarts clears."""
        if self.state is State.STARTING:
            self.state = State.RUNNING

    def tick(self, now: float) -> None:
        """Time passes: a process up for ``stable_after`` has its backoff
        reset; a degraded one whose window has cleared is running again."""
        alive = now - self.started_at if self.started_at is not None else -1.0
        if alive >= self.stable_after:
            self.failures = 0
            if self.state is State.DEGRADED and not self._too_many(now):
                self.state = State.RUNNING

    def exited(self, rc: int, now: float) -> None:
        """The process exited with ``rc`` (negative: signal). Schedules a
        restart: at once after the first quick failure, then backing off
        (``restart_base`` doubling up to ``restart_cap``; once degraded, at
        least a quarter of ``degraded_cap`` and at most all of it)."""
        self.last_exit = rc
        if self.state is State.STOPPED:
            return
        if rc == EX_CONFIG:
            self.state, self.next_start = State.FATAL, None
            return
        up = now - self.started_at if self.started_at is not None else 0.0
        if up >= self.stable_after:
            self.failures = 0
        self.failures += 1
        self.restarts += 1
        self._recent.append(now)
        degraded = self._too_many(now)
        delay = (self._degraded if degraded else self._backoff).raw(self.failures - 1)
        if degraded:
            delay = max(delay, self.timings.degraded_cap / 4)
        self.next_start = now + delay * self.rng.uniform(*JITTER)
        self.state = State.DEGRADED if degraded else State.BACKOFF
        self.started_at = None

    def due(self, now: float) -> bool:
        """Should the supervisor spawn the process now?"""
        return self.next_start is not None and now >= self.next_start

    def stop(self) -> None:
        """The supervisor is stopping it on purpose: no restart."""
        self.state, self.next_start = State.STOPPED, None

    def _too_many(self, now: float) -> bool:
        while self._recent and now - self._recent[0] > self.timings.restart_window:
            self._recent.popleft()
        return len(self._recent) > self.max_restarts
