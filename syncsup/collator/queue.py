"""Per-target dispatch policy, pure: when may this target get its next batch,
and what state does status show.

One lease per target at a time (one rsync per target), so a slow or broken
target only ever delays itself. Failures back off exponentially with jitter
so that a dead host costs a retry every minute, not a busy loop.

A failure that repeats identically (:data:`REPEATS` times, with no change
recorded for the target in between) will fail again: rsync's depth limit
on a tree, a file it can never read. Resending the same megabytes every
half minute teaches nothing, so the target is shown ``failed`` (the same
failure N times in a row) and tried again at once when something changes
for it (or an operator resumes it), else after a delay that doubles from
``cap`` to ``fatal_cap``: a cause outside the tree (a target fixed, a
command's dependency back) is still found, a few minutes later at most.
A target that cannot be reached (ssh could not connect) is never stuck:
nothing in the tree causes that, the host may be back any moment, and the
batch then goes within the usual backoff (at most ``cap``).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from syncsup.backoff import Backoff
from syncsup.collator.journal import Row
from syncsup.proto import Outcome
from syncsup.timings import Timings

__all__ = ["REPEATS", "Lease", "Retries", "TargetQueue", "same_failure", "unreachable"]

REPEATS = 3  # identical failures in a row, with no change between, before a target is stuck
# rsync's exit codes for a connection that failed (ssh's own 255, socket I/O,
# daemon connection timeout, an rsync daemon refusing the session: wrong
# password, unknown module, too many connections), and its protocol error when
# it is ssh that could not connect (the ssh client's messages start with "ssh: ").
UNREACHABLE_RCS = frozenset({255, 5, 10, 35})


def unreachable(rc: int, error: str) -> bool:
    """Did this failure come from not reaching the target at all?"""
    return rc in UNREACHABLE_RCS or (rc == 12 and "ssh: " in error)

# rsync's temporary files (".NAME.XXXXXX", random each run) in its errors
_TEMP_NAME = re.compile(r"(/\.[^/\"]+\.)[A-Za-z0-9]{6}(\")")


def same_failure(error: str) -> str:
    """``error`` with what differs between two runs of the same failure
    (rsync's temporary file names) taken out."""
    return _TEMP_NAME.sub(r"\1XXXXXX\2", error)


@dataclass
class Retries:
    """When a failed batch goes again, on the shared :class:`Backoff`:
    ``base`` doubling up to ``cap`` (``Timings.retry_base``, ``retry_cap``);
    a fatal failure waits ``fatal_cap`` (``stuck_cap``); a stuck target
    from ``cap`` doubling up to ``fatal_cap``."""

    base: float = Timings.retry_base
    cap: float = Timings.retry_cap
    fatal_cap: float = Timings.stuck_cap
    rng: random.Random = field(default_factory=random.Random)

    @classmethod
    def of(cls, timings: Timings) -> Retries:
        return cls(timings.retry_base, timings.retry_cap, timings.stuck_cap)

    def delay(self, failures: int, fatal: bool = False) -> float:
        if failures <= 0:
            return 0.0
        if fatal:
            return Backoff(self.fatal_cap, self.fatal_cap, self.rng).delay(1)
        return Backoff(self.base, self.cap, self.rng).delay(failures)

    def stuck_delay(self, repeats: int) -> float:
        """After the same failure ``repeats`` times (REPEATS or more): from
        ``cap``, doubling, up to ``fatal_cap``."""
        return Backoff(self.cap, self.fatal_cap, self.rng).delay(max(1, repeats - REPEATS + 1))


@dataclass
class Lease:
    """Rows handed to a syncer incarnation as batch ``batch_id``."""

    batch_id: int
    incarnation: str
    rows: list[Row]
    started: float
    moves: list[tuple[int, bytes, bytes]] = field(default_factory=list)


@dataclass
class TargetQueue:
    """Dispatch state of one target (all times are ``time.time()``)."""

    spec: str
    delay: float
    backoff: Retries = field(default_factory=Retries)
    ready_peer: bytes | None = None
    ready_incarnation: str | None = None
    lease: Lease | None = None
    failures: int = 0
    fatal: bool = False
    next_try: float = 0.0
    last_ok: float | None = None
    last_error: str | None = None
    synced_this_run: bool = False
    marked: int = 0  # changes recorded since the last batch (for max_delays)
    paused: bool = False
    halted: bool = False  # "halt" outcome: no retry until an operator says so
    maybe_pending: bool = True  # False once the journal was seen empty for it
    outcomes: dict[str, int] = field(default_factory=dict)  # transfers by outcome value
    bytes_sent: int = 0
    repeats: int = 0       # identical failures in a row with no change between them
    stuck: bool = False    # repeats reached REPEATS: waiting for a change (or fatal_cap)
    changed: bool = False  # a change was recorded since the last failure
    _error: str = ""       # the last failure's error, as the syncer gave it

    def on_ready(self, peer: bytes, incarnation: str) -> Lease | None:
        """A credit from a syncer. Returns a lease that must go back to
        pending because the syncer that held it was replaced."""
        released = None
        if self.lease is not None and self.lease.incarnation != incarnation:
            released, self.lease = self.lease, None
        if self.lease is None:
            self.ready_peer, self.ready_incarnation = peer, incarnation
        return released

    def due(self, oldest: float | None, now: float, flush: bool = False) -> bool:
        """May a batch be handed out now? Needs a credit, no lease, work
        whose batching delay has passed (or ``flush``: max_delays reached),
        and no backoff in force."""
        if self.ready_peer is None or self.lease is not None or oldest is None or self.halted:
            return False
        if now < self.next_try:
            return False
        return flush or now >= oldest + self.delay

    def release_halt(self) -> None:
        """An operator's resync or resume: try again now."""
        self.halted, self.stuck, self.next_try = False, False, 0.0
        self.changed = True  # the operator says something changed

    def start(self, batch_id: int, rows: list[Row], now: float,
              moves: list[tuple[int, bytes, bytes]] | None = None) -> Lease:
        assert self.ready_incarnation is not None
        self.lease = Lease(batch_id, self.ready_incarnation, rows, now, moves or [])
        self.ready_peer = None
        return self.lease

    def finish(self, batch_id: int, outcome: Outcome, error: str, now: float,
               rc: int = 0) -> Lease | None:
        """Record a DONE; returns the lease if ``outcome`` lets the journal
        forget its rows, else None. A DONE for an unknown batch (from before a
        collator restart) is ignored. ``rc``: the transfer's exit code (an
        unreachable target is never stuck)."""
        if self.lease is None or self.lease.batch_id != batch_id:
            return None
        lease, self.lease = self.lease, None
        self.maybe_pending = True  # changes may have come in during the transfer
        self.outcomes[outcome.value] = self.outcomes.get(outcome.value, 0) + 1
        if outcome is Outcome.OK:
            self.failures, self.fatal, self.next_try = 0, False, 0.0
            self.last_ok, self.last_error = now, None
            self.repeats, self.stuck, self._error = 0, False, ""
            return lease
        self.failures += 1
        self.fatal = outcome in (Outcome.FATAL, Outcome.HALT)
        self.halted = outcome is Outcome.HALT
        error = error or outcome.value
        same = same_failure(error) == self._error and not self.changed
        self.repeats = self.repeats + 1 if same else 1
        self._error, self.changed = same_failure(error), False
        self.stuck = self.repeats >= REPEATS and not self.fatal and not unreachable(rc, error)
        self.last_error = error
        if self.stuck:
            self.last_error = (f"the same failure {self.repeats} times in a row: retried when "
                               f"something changes, else after a growing delay (at most "
                               f"{self.backoff.fatal_cap:.0f}s): {error}")
            self.next_try = now + self.backoff.stuck_delay(self.repeats)
        else:
            self.next_try = now + self.backoff.delay(self.failures, self.fatal)
        return None

    def note_change(self, now: float) -> None:
        """A change was recorded for this target: a stuck target is tried
        again at once (the change may be the fix), with the usual backoff."""
        self.changed = True
        if self.stuck:
            self.stuck, self.next_try = False, now

    def defer(self, now: float, error: str) -> None:
        """A batch that worked but could not be recorded as done (the
        journal cannot be written): its rows go again, after a backoff."""
        self.failures += 1
        self.last_error = error
        self.next_try = now + self.backoff.delay(self.failures)

    def state(self, pending: int, startup_pending: bool) -> str:
        """The word status shows for this target.

        A retry in flight still reads ``retrying`` (or ``failed``): the last
        transfer failed until one succeeds. Were an attempt shown as
        ``syncing``, an unreachable target would flap between the two at
        every try, and an alert that needs the failure to last (Prometheus'
        ``for:``) would restart its clock at every scrape that met one."""
        if self.lease is not None and not (self.failures or self.fatal or self.stuck):
            return "startup" if startup_pending and not self.synced_this_run else "syncing"
        if self.paused:
            return "paused"
        if self.fatal or self.stuck:
            return "failed"  # halted and stuck targets too: last_error says why
        if self.failures:
            return "retrying"
        if not self.synced_this_run:
            return "startup"
        return "pending" if pending else "idle"
