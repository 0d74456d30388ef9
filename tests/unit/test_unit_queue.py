"""TargetQueue and Retries: per-target dispatch policy in the collator (pure)."""

from __future__ import annotations

import random

import pytest

from syncsup.collator.journal import PATH, TREE, Row
from syncsup.collator.queue import REPEATS, Retries, TargetQueue, same_failure
from syncsup.proto import Outcome

ROWS = [Row(TREE, b"", 1), Row(PATH, b"a", 2)]


def make(delay: float = 1.0, seed: int = 0) -> TargetQueue:
    return TargetQueue(spec="/mnt/t", delay=delay, backoff=Retries(rng=random.Random(seed)))


def leased(q: TargetQueue, batch_id: int = 1, now: float = 100.0,
           incarnation: str = "inc1") -> None:
    q.on_ready(b"peer1", incarnation)
    q.start(batch_id, list(ROWS), now)


# ----------------------------------------------------------------- Backoff
def test_backoff_zero_without_failures() -> None:
    b = Retries(rng=random.Random(1))
    assert b.delay(0) == 0.0
    assert b.delay(-3) == 0.0


def test_backoff_exponential_with_jitter() -> None:
    b = Retries(base=0.5, cap=1e9, rng=random.Random(1))
    for n in range(1, 12):
        expected = 0.5 * 2 ** (n - 1)
        assert expected * 0.8 <= b.delay(n) <= expected * 1.2


def test_backoff_caps_and_fatal_cap_is_larger() -> None:
    b = Retries(base=0.5, cap=30.0, fatal_cap=300.0, rng=random.Random(2))
    normal = [b.delay(40) for _ in range(200)]
    fatal = [b.delay(40, fatal=True) for _ in range(200)]
    assert all(24.0 <= d <= 36.0 for d in normal)
    assert all(240.0 <= d <= 360.0 for d in fatal)
    assert len(set(normal)) > 100  # jittered


# --------------------------------------------------------------------- due
def test_due_needs_a_credit() -> None:
    q = make()
    assert not q.due(oldest=0.0, now=100.0)
    q.on_ready(b"peer1", "inc1")
    assert q.due(oldest=0.0, now=100.0)


def test_due_needs_work() -> None:
    q = make()
    q.on_ready(b"peer1", "inc1")
    assert not q.due(oldest=None, now=100.0)


def test_due_waits_for_the_batching_delay() -> None:
    q = make(delay=2.0)
    q.on_ready(b"peer1", "inc1")
    assert not q.due(oldest=99.0, now=100.0)
    assert not q.due(oldest=98.01, now=100.0)
    assert q.due(oldest=98.0, now=100.0)


def test_zero_delay_is_due_at_once() -> None:
    q = make(delay=0.0)
    q.on_ready(b"peer1", "inc1")
    assert q.due(oldest=100.0, now=100.0)


def test_due_needs_no_lease() -> None:
    q = make()
    leased(q)
    q.on_ready(b"peer1", "inc1")  # a repeated credit while busy
    assert not q.due(oldest=0.0, now=1000.0)


def test_start_consumes_the_credit() -> None:
    q = make()
    leased(q, batch_id=1)
    assert q.finish(1, Outcome.OK, "", 101.0) is not None
    assert not q.due(oldest=0.0, now=1000.0)  # no new READY yet
    q.on_ready(b"peer1", "inc1")
    assert q.due(oldest=0.0, now=1000.0)


def test_due_waits_for_backoff() -> None:
    q = make()
    leased(q)
    assert q.finish(1, Outcome.RETRY, "rsync rc 23", 100.0) is None
    q.on_ready(b"peer1", "inc1")
    assert q.next_try > 100.0
    assert not q.due(oldest=0.0, now=q.next_try - 1e-3)
    assert q.due(oldest=0.0, now=q.next_try)


# ------------------------------------------------------------------ finish
def test_finish_ok_returns_lease_and_resets_failures() -> None:
    q = make()
    for i in range(3):
        leased(q, batch_id=i)
        q.finish(i, Outcome.RETRY, "boom", 100.0 + i)
    assert q.failures == 3
    leased(q, batch_id=10)
    lease = q.finish(10, Outcome.OK, "", 200.0)
    assert lease is not None
    assert lease.batch_id == 10
    assert lease.rows == ROWS
    assert lease.incarnation == "inc1"
    assert q.lease is None
    assert q.failures == 0
    assert not q.fatal
    assert q.next_try == 0.0
    assert q.last_ok == 200.0
    assert q.last_error is None


@pytest.mark.parametrize("outcome", [Outcome.RETRY, Outcome.FATAL])
def test_failed_outcome_keeps_rows_and_backs_off(outcome: Outcome) -> None:
    q = make()
    leased(q, batch_id=5)
    assert q.finish(5, outcome, "ssh: connection refused", 100.0) is None
    assert q.lease is None  # the rows go back to pending
    assert q.failures == 1
    assert q.fatal is (outcome is Outcome.FATAL)
    assert q.last_error == "ssh: connection refused"
    first = 300.0 if outcome is Outcome.FATAL else 0.5  # fatal: every 5 minutes
    assert 100.0 + first * 0.8 <= q.next_try <= 100.0 + first * 1.2
    assert q.last_ok is None


def test_halt_stops_the_target_until_released() -> None:
    q = make()
    leased(q, batch_id=5)
    assert q.finish(5, Outcome.HALT, "max-delete", 100.0) is None
    assert q.halted and q.fatal
    q.on_ready(b"peer", "inc")
    assert not q.due(oldest=0.0, now=1e9)
    q.release_halt()
    assert q.due(oldest=0.0, now=1e9)


def test_failed_outcome_without_message_records_outcome() -> None:
    q = make()
    leased(q)
    q.finish(1, Outcome.RETRY, "", 100.0)
    assert q.last_error == "retry"


def test_repeated_failures_back_off_further() -> None:
    q = make()
    waits = []
    now = 100.0
    for i in range(6):
        leased(q, batch_id=i, now=now)
        q.note_change(now)  # something changes between the tries: never stuck
        q.finish(i, Outcome.RETRY, "x", now)
        waits.append(q.next_try - now)
        now = q.next_try
    assert q.failures == 6
    assert not q.stuck
    for n, w in enumerate(waits, start=1):
        assert 0.5 * 2 ** (n - 1) * 0.8 <= w <= 0.5 * 2 ** (n - 1) * 1.2


def fail_same(q: TargetQueue, times: int, now: float, error: str = "too deep") -> float:
    for i in range(times):
        leased(q, batch_id=100 + i, now=now)
        q.finish(100 + i, Outcome.RETRY, error, now)
        now = q.next_try
    return now


def test_an_identical_failure_repeated_is_stuck_until_something_changes() -> None:
    """The same error REPEATS times with no change between: shown failed
    (permanent, saying why), next try after the long cap, not the 0.5-30 s
    retry loop; a change for the target makes it due at once."""
    q = make()
    now = fail_same(q, REPEATS - 1, 100.0)
    assert not q.stuck and q.state(1, False) == "retrying"
    leased(q, batch_id=7, now=now)
    q.finish(7, Outcome.RETRY, "too deep", now)
    assert q.stuck and q.state(1, False) == "failed"
    assert q.next_try - now >= 0.8 * q.backoff.cap  # not the 0.5-2 s of the first retries
    waits = []
    for i in range(5):  # still the same: the delay doubles up to fatal_cap
        now = q.next_try
        leased(q, batch_id=20 + i, now=now)
        q.finish(20 + i, Outcome.RETRY, "too deep", now)
        waits.append(q.next_try - now)
    want = [min(q.backoff.fatal_cap, q.backoff.cap * 2 ** n) for n in range(1, 6)]
    assert all(0.8 * w <= got <= 1.2 * w for got, w in zip(waits, want, strict=True)), waits
    assert q.last_error is not None and q.last_error.endswith(": too deep")
    assert "8 times in a row" in q.last_error
    q.note_change(now + 1)
    assert not q.stuck and q.next_try == now + 1 and q.state(1, False) == "retrying"
    q.finish(7, Outcome.OK, "", now + 2)  # unknown batch: ignored
    leased(q, batch_id=8, now=now + 2)
    q.finish(8, Outcome.OK, "", now + 2)
    assert q.repeats == 0 and not q.stuck and q.last_error is None


def test_rsyncs_random_temporary_names_do_not_make_a_failure_different() -> None:
    err = 'rsync: [receiver] mkstemp "/m/private/.secret.{}" failed: Permission denied (13)'
    assert same_failure(err.format("Pu6jcK")) == same_failure(err.format("ziRJrL"))
    assert same_failure(err.format("Pu6jcK")) != same_failure(err.replace("secret", "other"))
    q = make()
    now = 100.0
    for i, name in enumerate(["Pu6jcK", "ziRJrL", "6cqbrF"]):
        leased(q, batch_id=i, now=now)
        q.finish(i, Outcome.RETRY, err.format(name), now)
        now = q.next_try
    assert q.stuck and q.last_error is not None and q.last_error.endswith(err.format("6cqbrF"))


def test_an_unreachable_target_is_never_stuck() -> None:
    """ssh cannot connect, again and again: the host is down, nothing in the
    tree; the usual backoff (capped at ``cap``) goes on, so the mirror
    catches up within it once the host is back."""
    refused = ("ssh: connect to host 10.0.0.9 port 22: Connection refused | rsync: connection "
               "unexpectedly closed (0 bytes received so far) [sender]")
    for rc, error in ((255, refused), (12, refused), (10, "rsync: read error"),
                      (35, "timeout waiting for daemon connection"),
                      (5, "@ERROR: auth failed on module mirror | rsync error: error starting "
                          "client-server protocol (code 5)"),
                      (5, "@ERROR: Unknown module 'nope'")):
        q = make()
        now = 100.0
        for i in range(3 * REPEATS):
            leased(q, batch_id=i, now=now)
            q.finish(i, Outcome.RETRY, error, now, rc)
            assert not q.stuck and q.state(1, False) == "retrying", (rc, i)
            assert q.next_try - now <= 1.2 * q.backoff.cap
            now = q.next_try
    # a protocol error that ssh did not cause is the tree's: stuck as before
    q = make()
    now = 100.0
    for i in range(REPEATS):
        leased(q, batch_id=i, now=now)
        q.finish(i, Outcome.RETRY, "rsync: [receiver] write error: Broken pipe", now, 12)
        now = q.next_try
    assert q.stuck


def test_an_operators_resume_releases_a_stuck_target() -> None:
    q = make()
    fail_same(q, REPEATS, 100.0)
    assert q.stuck
    q.release_halt()
    assert not q.stuck and q.next_try == 0.0 and q.state(1, False) == "retrying"


def test_different_failures_are_not_stuck() -> None:
    q = make()
    now = 100.0
    for i in range(2 * REPEATS):
        leased(q, batch_id=i, now=now)
        q.finish(i, Outcome.RETRY, f"error {i % 2}", now)
        now = q.next_try
    assert not q.stuck and q.repeats == 1


def test_fatal_backs_off_beyond_normal_cap_and_ok_clears_it() -> None:
    q = make()
    now = 0.0
    for i in range(20):
        leased(q, batch_id=i, now=now)
        q.finish(i, Outcome.FATAL, "rsync rc 1", now)
        now = q.next_try
    leased(q, batch_id=99, now=now)
    q.finish(99, Outcome.FATAL, "rsync rc 1", now)
    assert q.next_try - now >= 300.0 * 0.8
    leased(q, batch_id=100, now=now)
    q.finish(100, Outcome.OK, "", now + 1)
    assert not q.fatal
    assert q.failures == 0


def test_done_for_unknown_batch_is_ignored() -> None:
    q = make()
    assert q.finish(1, Outcome.OK, "", 100.0) is None  # nothing leased at all
    leased(q, batch_id=7)
    assert q.finish(6, Outcome.OK, "", 101.0) is None
    assert q.finish(6, Outcome.FATAL, "x", 101.0) is None
    assert q.lease is not None and q.lease.batch_id == 7
    assert q.failures == 0
    assert not q.fatal
    assert q.last_ok is None
    assert q.finish(7, Outcome.OK, "", 102.0) is not None
    assert q.finish(7, Outcome.OK, "", 103.0) is None  # a duplicate DONE


# ---------------------------------------------------------------- on_ready
def test_new_incarnation_releases_the_old_lease() -> None:
    q = make()
    leased(q, batch_id=3, incarnation="inc1")
    released = q.on_ready(b"peer2", "inc2")
    assert released is not None
    assert released.batch_id == 3
    assert released.rows == ROWS
    assert q.lease is None
    assert q.ready_peer == b"peer2"
    assert q.ready_incarnation == "inc2"
    assert q.due(oldest=0.0, now=1000.0)
    # A late DONE from the dead syncer no longer counts.
    assert q.finish(3, Outcome.OK, "", 1000.0) is None


def test_same_incarnation_keeps_its_lease() -> None:
    q = make()
    leased(q, batch_id=3, incarnation="inc1")
    assert q.on_ready(b"peer1", "inc1") is None
    assert q.lease is not None and q.lease.batch_id == 3
    assert not q.due(oldest=0.0, now=1000.0)


def test_on_ready_without_lease_releases_nothing() -> None:
    q = make()
    assert q.on_ready(b"peer1", "inc1") is None
    assert q.on_ready(b"peer2", "inc2") is None
    assert q.ready_peer == b"peer2"


def test_lease_carries_the_incarnation_of_the_credit() -> None:
    q = make()
    q.on_ready(b"peer9", "inc9")
    lease = q.start(4, list(ROWS), 50.0)
    assert lease.incarnation == "inc9"
    assert lease.started == 50.0
    assert q.lease is lease


# ------------------------------------------------------------------- state
def test_state_startup_before_first_full_sync() -> None:
    q = make()
    assert q.state(pending=0, startup_pending=True) == "startup"
    assert q.state(pending=5, startup_pending=True) == "startup"
    leased(q)
    assert q.state(pending=5, startup_pending=True) == "startup"
    assert q.state(pending=5, startup_pending=False) == "syncing"


def test_a_retry_in_flight_still_reads_as_the_failure() -> None:
    """An unreachable target is tried again and again; while a try is in
    flight it still reads ``retrying`` (a halted or stuck one ``failed``),
    so ``syncsup_target_healthy`` stays 0 for as long as nothing has
    worked, and an alert waiting for ten minutes of it can fire. Only a
    success turns it back."""
    q = make()
    leased(q, batch_id=1, now=100.0)
    q.finish(1, Outcome.RETRY, "ssh: connect: Connection refused", 100.0)
    for startup_pending in (True, False):
        assert q.state(1, startup_pending) == "retrying"
    leased(q, batch_id=2, now=q.next_try)
    for startup_pending in (True, False):
        assert q.state(1, startup_pending) == "retrying"
    q.finish(2, Outcome.FATAL, "max-delete", q.next_try)
    leased(q, batch_id=3, now=q.next_try)
    assert q.state(1, False) == "failed"
    q.finish(3, Outcome.OK, "", q.next_try)
    leased(q, batch_id=4, now=q.next_try)
    assert q.state(1, False) == "syncing"


def test_state_syncing_idle_pending() -> None:
    q = make()
    q.synced_this_run = True
    assert q.state(pending=0, startup_pending=False) == "idle"
    assert q.state(pending=3, startup_pending=False) == "pending"
    leased(q)
    assert q.state(pending=3, startup_pending=True) == "syncing"
    q.finish(1, Outcome.OK, "", 101.0)
    assert q.state(pending=0, startup_pending=False) == "idle"


def test_state_retrying_and_failed() -> None:
    q = make()
    q.synced_this_run = True
    leased(q)
    q.finish(1, Outcome.RETRY, "x", 101.0)
    assert q.state(pending=3, startup_pending=False) == "retrying"
    leased(q, batch_id=2)
    assert q.state(pending=3, startup_pending=False) == "retrying"  # until one works
    q.finish(2, Outcome.FATAL, "x", 102.0)
    assert q.state(pending=3, startup_pending=False) == "failed"
    # Failure words win over "startup" too.
    q.synced_this_run = False
    assert q.state(pending=3, startup_pending=True) == "failed"


def test_state_paused_unless_a_transfer_runs() -> None:
    q = make()
    q.synced_this_run = True
    q.paused = True
    assert q.state(pending=3, startup_pending=False) == "paused"
    leased(q)  # one already handed out finishes
    assert q.state(pending=3, startup_pending=False) == "syncing"
    q.finish(1, Outcome.FATAL, "x", 101.0)
    assert q.state(pending=3, startup_pending=False) == "paused"


def test_outcomes_are_counted_and_any_done_may_leave_work() -> None:
    q = make()
    for i, outcome in enumerate([Outcome.OK, Outcome.RETRY, Outcome.OK, Outcome.HALT]):
        leased(q, batch_id=i)
        q.maybe_pending = False
        q.finish(i, outcome, "", 100.0 + i)
        assert q.maybe_pending  # changes may have come in during the transfer
    assert q.outcomes == {"ok": 2, "retry": 1, "halt": 1}
    q.finish(99, Outcome.OK, "", 200.0)  # unknown: not counted
    assert sum(q.outcomes.values()) == 4


def test_start_carries_the_moves_and_clears_the_credit() -> None:
    q = make()
    q.on_ready(b"peer1", "inc1")
    lease = q.start(1, list(ROWS), 10.0, [(7, b"a", b"b")])
    assert lease.moves == [(7, b"a", b"b")]
    assert q.ready_peer is None
    q.on_ready(b"peer1", "inc1")
    assert q.start(2, [], 11.0).moves == []


def test_release_halt_retries_at_once() -> None:
    q = make()
    leased(q, batch_id=1)
    q.finish(1, Outcome.HALT, "max-delete", 100.0)
    assert q.next_try > 100.0
    q.release_halt()
    assert not q.halted and q.next_try == 0.0
    assert q.failures == 1 and q.fatal  # the record stays until a success
