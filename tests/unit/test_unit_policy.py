"""RestartPolicy: the supervisor's pure restart state machine."""

from __future__ import annotations

import random

import pytest

from syncsup.supervisor.policy import EX_CONFIG, RestartPolicy, State
from syncsup.timings import Timings

JITTER_LO, JITTER_HI = 0.8, 1.2


# The policy's own names for its Timings fields, for short test lines.
_TIMINGS = {"base": "restart_base", "cap": "restart_cap", "degraded_cap": "degraded_cap",
            "stable_after": "restart_stable_after", "window": "restart_window"}


def make(**kw: object) -> RestartPolicy:
    """A policy on Timings built from ``kw`` (base, cap, degraded_cap,
    stable_after, window; the defaults for the rest)."""
    kw.setdefault("rng", random.Random(1234))
    times = {_TIMINGS[k]: kw.pop(k) for k in list(kw) if k in _TIMINGS}
    timings = Timings(**times)  # type: ignore[arg-type]
    return RestartPolicy(timings=timings, **kw)  # type: ignore[arg-type]


def crash(p: RestartPolicy, at: float, up: float = 0.1, rc: int = 1) -> float:
    """Start at ``at``, exit after ``up`` seconds; returns the restart delay."""
    p.start(at)
    p.exited(rc, at + up)
    assert p.next_start is not None
    return p.next_start - (at + up)


def test_first_crash_restarts_at_once() -> None:
    p = make()
    p.start(100.0)
    p.exited(1, 100.5)
    assert p.state is State.BACKOFF
    assert p.next_start == pytest.approx(100.5)
    assert p.due(100.5)
    assert p.restarts == 1
    assert p.last_exit == 1


def test_not_due_before_any_exit() -> None:
    p = make()
    p.start(0.0)
    assert not p.due(0.0)
    assert not p.due(1e9)
    assert p.state is State.STARTING


def test_repeated_quick_crashes_back_off_exponentially() -> None:
    p = make(base=0.2, cap=1000.0, max_restarts=1000, window=1e9)
    t = 0.0
    delays = []
    for _ in range(8):
        d = crash(p, t)
        delays.append(d)
        t = p.next_start  # type: ignore[assignment]
    assert delays[0] == 0.0
    for n, d in enumerate(delays[1:], start=2):
        expected = 0.2 * 2 ** (n - 2)
        assert expected * JITTER_LO <= d <= expected * JITTER_HI, (n, d)
    # Actually growing, not just bounded.
    assert delays[-1] > 10 * delays[1]
    assert p.failures == 8
    assert p.state is State.BACKOFF


def test_not_due_before_backoff_elapsed() -> None:
    p = make(base=1.0)
    crash(p, 0.0)
    t = p.next_start
    assert t is not None
    crash(p, t)  # second quick failure: about 1 s
    nxt = p.next_start
    assert nxt is not None
    assert not p.due(nxt - 1e-6)
    assert p.due(nxt)
    assert p.due(nxt + 100)


def test_backoff_is_capped() -> None:
    p = make(base=0.2, cap=3.0, max_restarts=1000, window=1e9)
    t = 0.0
    capped = []
    for i in range(30):
        d = crash(p, t)
        if i >= 10:
            capped.append(d)
        t = p.next_start  # type: ignore[assignment]
    assert all(3.0 * JITTER_LO <= d <= 3.0 * JITTER_HI for d in capped), capped
    assert p.state is State.BACKOFF


def test_jitter_within_bounds_varies_and_is_seeded() -> None:
    def schedule(seed: int) -> list[float]:
        p = make(base=1.0, cap=1.0, max_restarts=10_000, window=1e9, rng=random.Random(seed))
        t, out = 0.0, []
        for _ in range(200):
            out.append(crash(p, t))
            t = p.next_start  # type: ignore[assignment]
        return out

    a = schedule(7)
    ratios = a[1:]  # delay 1.0 * jitter from the second failure on
    assert all(JITTER_LO <= r <= JITTER_HI for r in ratios)
    assert len(set(ratios)) > 100  # really random, not a constant factor
    assert min(ratios) < 0.9 and max(ratios) > 1.1  # spread over the range
    assert schedule(7) == a
    assert schedule(8) != a


def test_stable_after_resets_failures_via_tick() -> None:
    p = make(base=1.0, stable_after=5.0)
    t = 0.0
    for _ in range(4):
        crash(p, t)
        t = p.next_start  # type: ignore[assignment]
    assert p.failures == 4
    p.start(t)
    p.up(t + 0.5)
    assert p.state is State.RUNNING
    p.tick(t + 4.9)
    assert p.failures == 4
    p.exited(1, t + 4.95)  # still a quick failure: backs off further
    assert p.failures == 5
    d = p.next_start - (t + 4.95)  # type: ignore[operator]
    assert d >= 1.0 * 2 ** 3 * JITTER_LO

    t = p.next_start  # type: ignore[assignment]
    p.start(t)
    p.up(t + 0.5)
    p.tick(t + 5.01)
    assert p.failures == 0
    assert p.state is State.RUNNING
    p.exited(1, t + 60.0)
    assert p.next_start == pytest.approx(t + 60.0)  # counts as a first crash again
    assert p.failures == 1


def test_up_marks_running_but_not_out_of_degraded() -> None:
    p = make()
    p.start(0.0)
    assert p.state is State.STARTING
    p.up(0.2)
    assert p.state is State.RUNNING

    q = make(base=0.1, cap=1.0, max_restarts=3, window=60.0)
    last = degrade(q)
    q.start(last + 20.0)
    q.up(last + 20.5)
    assert q.state is State.DEGRADED


def test_long_run_resets_failures_even_without_tick() -> None:
    p = make(base=1.0, stable_after=5.0)
    t = 0.0
    for _ in range(4):
        crash(p, t)
        t = p.next_start  # type: ignore[assignment]
    p.start(t)
    p.exited(1, t + 6.0)
    assert p.failures == 1
    assert p.next_start == pytest.approx(t + 6.0)


def test_short_run_does_not_reset_failures() -> None:
    p = make(base=1.0, stable_after=5.0)
    crash(p, 0.0)
    t = p.next_start
    assert t is not None
    d = crash(p, t, up=4.0)
    assert p.failures == 2
    assert d >= 1.0 * JITTER_LO


def degrade(p: RestartPolicy) -> float:
    """Crash quickly until degraded; returns the time of the last exit."""
    t = 0.0
    for _ in range(p.max_restarts):
        crash(p, t)
        assert p.state is State.BACKOFF
        t = p.next_start  # type: ignore[assignment]
    crash(p, t)
    return t + 0.1


def test_too_many_restarts_in_window_degrades_and_slows_down() -> None:
    p = make(base=0.1, cap=1.0, degraded_cap=60.0, max_restarts=3, window=60.0)
    last = degrade(p)
    assert p.state is State.DEGRADED
    assert p.restarts == 4
    delay = p.next_start - last  # type: ignore[operator]
    # Slower than anything the normal cap allows, but bounded by degraded_cap.
    assert delay >= 60.0 / 4 * JITTER_LO
    assert delay > 1.0 * JITTER_HI
    assert delay <= 60.0 * JITTER_HI
    # It keeps retrying: restart is due eventually, and degraded survives start().
    assert p.due(last + 60.0 * JITTER_HI)
    p.start(last + 20.0)
    assert p.state is State.DEGRADED


def test_restarts_spread_over_more_than_window_do_not_degrade() -> None:
    p = make(base=0.1, max_restarts=3, window=10.0)
    t = 0.0
    for _ in range(20):
        crash(p, t, up=0.1)
        assert p.state is State.BACKOFF
        t = t + 11.0  # each crash more than a window after the previous one
    assert p.restarts == 20


def test_window_expiring_clears_degraded_via_tick() -> None:
    p = make(base=0.1, cap=1.0, degraded_cap=60.0, max_restarts=3, window=60.0,
             stable_after=5.0)
    last = degrade(p)
    assert p.state is State.DEGRADED
    p.start(last + 16.0)
    p.up(last + 16.5)
    p.tick(last + 30.0)  # stable, but the crashes are still inside the window
    assert p.state is State.DEGRADED
    assert p.failures == 0
    p.tick(last + 61.0)  # the window has moved past every crash
    assert p.state is State.RUNNING
    # Not degraded any more: the next crash restarts at once again.
    p.exited(1, last + 100.0)
    assert p.state is State.BACKOFF
    assert p.next_start == pytest.approx(last + 100.0)


def test_tick_does_not_clear_degraded_while_down() -> None:
    p = make(base=0.1, cap=1.0, max_restarts=3, window=60.0)
    last = degrade(p)
    p.tick(last + 1000.0)  # nothing running: nothing can be stable
    assert p.state is State.DEGRADED


def test_exit_78_is_fatal_and_never_due() -> None:
    p = make()
    p.start(0.0)
    p.exited(EX_CONFIG, 0.1)
    assert EX_CONFIG == 78
    assert p.state is State.FATAL
    assert p.next_start is None
    assert not p.due(0.1)
    assert not p.due(1e12)
    assert p.restarts == 0
    assert p.last_exit == 78
    p.tick(1e6)
    assert p.state is State.FATAL


def test_exit_78_after_crashes_cancels_pending_restart() -> None:
    p = make(base=1.0)
    crash(p, 0.0)
    crash(p, 1.0)
    p.start(5.0)
    p.exited(EX_CONFIG, 5.1)
    assert p.state is State.FATAL
    assert not p.due(1e12)
    assert p.restarts == 2


def test_stop_means_no_restart() -> None:
    p = make()
    p.start(0.0)
    p.up(0.5)
    p.tick(10.0)
    p.stop()
    p.exited(-15, 10.5)  # killed by our SIGTERM
    assert p.state is State.STOPPED
    assert not p.due(10.5)
    assert not p.due(1e12)
    assert p.restarts == 0
    assert p.last_exit == -15


def test_stop_cancels_a_scheduled_restart() -> None:
    p = make()
    crash(p, 0.0)
    assert p.due(1.0)
    p.stop()
    assert not p.due(1.0)
    assert p.state is State.STOPPED


@pytest.mark.parametrize("rc", [0, 1, 2, -9, -11, 255])
def test_any_other_exit_is_restarted_and_counted(rc: int) -> None:
    p = make()
    p.start(0.0)
    p.exited(rc, 1.0)
    assert p.state is State.BACKOFF
    assert p.due(1.0)
    assert p.restarts == 1
    assert p.last_exit == rc


def test_restarts_counter_counts_every_restart() -> None:
    p = make(base=0.01, stable_after=1.0, max_restarts=1000)
    t = 0.0
    for i in range(1, 13):
        crash(p, t, up=2.0 if i % 2 else 0.1)
        assert p.restarts == i
        t = p.next_start  # type: ignore[assignment]
    # A stable period does not reset the total, only the consecutive failures.
    p.start(t)
    p.tick(t + 10.0)
    assert p.restarts == 12
    assert p.failures == 0
