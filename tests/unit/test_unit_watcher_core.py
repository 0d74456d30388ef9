"""The watcher's pure core (watcher/core.py) on a fake clock: when a
sync's inotify queue is read and when what was read is sent."""

from __future__ import annotations

import pytest

from syncsup.proto import Changes
from syncsup.watcher.core import (
    FLOOD_BYTES,
    HOLD_MAX,
    READ_EVERY,
    SEND_NOW,
    Coalescer,
    hold_window,
)
from tests.helpers.unit import FakeClock


def test_the_window_is_a_fifth_of_the_delay_and_bounded() -> None:
    assert hold_window(0) == 0
    assert hold_window(0.5) == pytest.approx(0.1)
    assert hold_window(15) == HOLD_MAX
    assert hold_window(2) == pytest.approx(0.4)
    assert hold_window(3600) == HOLD_MAX


def test_no_delay_sends_at_once_and_always_polls() -> None:
    c, clock = Coalescer(hold_window(0)), FakeClock()
    c.read_done(clock(), 100)
    assert c.polled() and not c.read_due(clock())
    assert c.take(Changes(paths={b"a"}), clock()) == clock.now
    assert c.wake_at() is None


def test_changes_are_held_for_the_window_from_the_first_one() -> None:
    c, clock = Coalescer(1.0), FakeClock()
    t0 = clock.now
    pending = Changes(paths={b"a"})
    assert c.take(pending, t0) is None
    assert c.wake_at() == t0 + 1.0
    clock.advance(0.6)
    pending.paths.add(b"b")
    assert c.take(pending, clock()) is None  # the window started with the first
    clock.advance(0.4)
    assert c.take(pending, clock()) == t0  # the message says when the oldest was read
    assert c.wake_at() is None
    assert c.take(Changes(), clock()) is None  # nothing held: nothing sent


def test_a_busy_queue_is_read_at_a_pace_an_empty_one_is_polled() -> None:
    c, clock = Coalescer(1.0), FakeClock()
    c.read_done(clock(), 200)
    assert not c.polled()
    assert c.wake_at() == clock.now + READ_EVERY
    assert not c.read_due(clock())
    clock.advance(READ_EVERY)
    assert c.read_due(clock())
    c.read_done(clock(), 0)  # nothing came meanwhile: wait on the descriptor
    assert c.polled() and not c.read_due(clock())
    assert c.wake_at() is None  # no wake-up without work


def test_the_read_pace_never_exceeds_the_window() -> None:
    c, clock = Coalescer(0.03), FakeClock()
    c.read_done(clock(), 200)
    assert c.wake_at() == clock.now + 0.03


def test_a_flood_is_read_again_at_once() -> None:
    """The kernel queue must not fill while we wait: a big read means more."""
    c, clock = Coalescer(1.0), FakeClock()
    c.read_done(clock(), FLOOD_BYTES)
    assert c.polled()


@pytest.mark.parametrize("pending", [
    Changes(paths={f"f{i}".encode() for i in range(SEND_NOW)}),
    Changes(trees={b"d"}),
    Changes(verify={b""}),
])
def test_a_rescan_or_too_much_held_goes_at_once(pending: Changes) -> None:
    c, clock = Coalescer(1.0), FakeClock()
    assert c.take(pending, clock()) == clock.now


def test_a_stop_sends_what_is_held() -> None:
    c, clock = Coalescer(1.0), FakeClock()
    pending = Changes(paths={b"a"})
    assert c.take(pending, clock()) is None
    clock.advance(0.1)
    assert c.take(pending, clock(), stopping=True) == clock.now - 0.1
