"""The watcher's pure core (watcher/core.py) on a fake clock: when a
sync's inotify queue is read and when what was read is sent; when an idle
sync's seen-point goes and what it says; a source root missing, replaced
or back; what is said of blind subtrees and when they are looked at again."""

from __future__ import annotations

import logging

import pytest

from syncsup import sourceroot
from syncsup.proto import Changes
from syncsup.seen import Seen
from syncsup.timings import Timings
from syncsup.watcher.core import (
    FLOOD_BYTES,
    HELD_MAX,
    HOLD_MAX,
    READ_EVERY,
    SEND_NOW,
    BlindNews,
    BlindReports,
    Coalescer,
    Rewalk,
    RootWatch,
    SeenPoints,
    hold_window,
    rewalk_blind,
)
from syncsup.watcher.tree import ERROR, MOUNT, TOO_LONG, UNREADABLE, WATCH_LIMIT, Blind
from tests.helpers.unit import FakeClock

T = Timings(seen_delay=2.0, seen_margin=1.0, root_poll=0.5)  # small, as the tests' daemons
SEEN_DELAY, ROOT_POLL, MARGIN = T.seen_delay, T.root_poll, T.seen_margin


def test_the_window_is_the_delay_and_bounded() -> None:
    assert hold_window(0) == 0
    assert hold_window(-1) == 0
    assert hold_window(0.05) == pytest.approx(0.05)
    assert hold_window(0.5) == pytest.approx(0.5)
    assert hold_window(1) == HOLD_MAX
    assert hold_window(15) == HOLD_MAX
    assert hold_window(3600) == HOLD_MAX


def test_max_delays_changes_go_at_once() -> None:
    """The collator flushes a batch at ``max_delays`` changes: the watcher
    must not hold that many for its window."""
    c, clock = Coalescer(1.0, send_now=3), FakeClock()
    # a new file is its path and a ``created`` mark: one change, as the
    # collator counts it
    assert c.take(Changes(paths={b"a", b"b"}, created={b"a", b"b"}), clock()) is None
    assert c.take(Changes(paths={b"a", b"b", b"c"}), clock()) is not None
    # in command mode the collator counts the mark too
    commands = Coalescer(1.0, send_now=3, count_created=True)
    assert commands.take(Changes(paths={b"a", b"b"}, created={b"a"}), clock()) is not None
    big, many = Coalescer(1.0, send_now=SEND_NOW * 10), {b"%d" % i for i in range(SEND_NOW)}
    assert big.take(Changes(paths=many), clock()) is not None  # never more than a message


def test_a_paced_queue_holds_less_than_a_seen_points_margin() -> None:
    """What a queue read at the pace holds unread when an idle sync's
    seen-point is taken is at most READ_EVERY old; the next start compares
    by content what changed within seen_margin of it, which can never be
    set below its floor."""
    import dataclasses

    floor = next(f.metadata["floor"] for f in dataclasses.fields(Timings)
                 if f.name == "seen_margin")
    assert floor > READ_EVERY


def test_no_delay_sends_at_once_and_always_polls() -> None:
    c, clock = Coalescer(hold_window(0)), FakeClock()
    c.read_done(clock(), 100)
    assert c.polled() and not c.read_due(clock())
    assert c.take(Changes(paths={b"a"}), clock()) == clock.now
    assert c.wake_at() is None


def test_changes_are_held_for_the_window_from_the_first_one() -> None:
    c, clock = Coalescer(1.0), FakeClock()
    t0 = clock.now
    held = Changes(paths={b"a"})
    assert c.take(held, t0) is None
    assert c.wake_at() == t0 + 1.0
    clock.advance(0.6)
    held.paths.add(b"b")
    assert c.take(held, clock()) is None  # the window started with the first
    clock.advance(0.4)
    assert c.take(held, clock()) == t0  # the message says when the oldest was read
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


def test_changes_held_while_the_collator_is_behind_keep_their_first_moment() -> None:
    """Changes that cannot go (the unacked messages at their bound) are held
    whatever the window says: no wake-up for a send that cannot happen
    (the ack that frees a slot wakes the loop), and the message that
    finally carries them is dated from the read of the oldest."""
    c, clock = Coalescer(0.0), FakeClock()  # delay 0: everything goes at once
    c.read_done(clock(), 64)
    first = clock.now
    held = Changes(paths={b"a"})
    c.hold(held, clock())
    assert c.wake_at(sending=False) is None
    assert c.wake_at() == first  # once it can go: now
    clock.advance(2.0)
    c.read_done(clock(), 64)  # more read meanwhile
    held.paths.add(b"b")
    c.hold(held, clock())
    assert c.take(held, clock()) == first
    assert c.held_since is None
    c.hold(Changes(), clock())  # nothing held: nothing to date
    assert c.held_since is None


def test_a_read_that_cannot_happen_wakes_nothing() -> None:
    """A queue that cannot be read now (its messages unacked at their bound,
    or its watch stopped) must not make the loop wake for its read: the
    read would not happen, and the loop would spin until it could."""
    c, clock = Coalescer(1.0), FakeClock()
    c.read_done(clock(), 200)
    read_at = clock.now
    clock.advance(1.5 * READ_EVERY)  # a read is due, the window not out
    assert c.read_due(clock())
    assert c.wake_at(reading=False) is None
    held = Changes(paths={b"a"})
    c.take(held, clock())
    assert c.wake_at(reading=False) == read_at + 1.0  # the send still wakes it
    c.reset()  # the watch stopped: its next queue is polled
    assert c.polled() and not c.read_due(clock())


def test_the_read_pace_never_exceeds_the_window() -> None:
    c, clock = Coalescer(0.03), FakeClock()
    c.read_done(clock(), 200)
    assert c.wake_at() == clock.now + 0.03


def test_a_flood_is_read_again_at_once() -> None:
    """The kernel queue must not fill while we wait: a big read means more."""
    c, clock = Coalescer(1.0), FakeClock()
    c.read_done(clock(), FLOOD_BYTES)
    assert c.polled()


def test_what_a_flood_leaves_is_dated_from_before_the_flood() -> None:
    """A read that comes back big is followed by another at once; what that
    one returns was left behind by the flood, so it arrived no earlier than
    what the flood read, not just now: the message's ``first`` must not
    make its batch later than ``delay`` after those changes."""
    c, clock = Coalescer(hold_window(0.5)), FakeClock()
    c.read_done(clock(), 200)  # polled: arrived just now
    before_flood = clock.now
    clock.advance(c.read_every)
    c.read_done(clock(), FLOOD_BYTES)  # at the pace: after the previous read
    assert c.arrived_after == before_flood and c.polled()
    clock.advance(0.05)
    c.read_done(clock(), 300)  # the rest of the flood
    assert c.arrived_after == before_flood
    # its window counts from before the flood: it ran out, they go now
    assert c.take(Changes(paths={b"a"}), clock()) == before_flood
    last = clock.now
    clock.advance(c.read_every)
    c.read_done(clock(), 300)  # at the pace again
    assert c.arrived_after == last


@pytest.mark.parametrize("held", [
    Changes(paths={f"f{i}".encode() for i in range(SEND_NOW)}),
    Changes(trees={b"d"}),
    Changes(verify={b""}),
    Changes(prove={b"d"}),  # a directory that arrived
])
def test_a_rescan_or_too_much_held_goes_at_once(held: Changes) -> None:
    c, clock = Coalescer(1.0), FakeClock()
    assert c.take(held, clock()) == clock.now


def test_under_steady_changes_every_read_at_the_pace_sends_what_it_read() -> None:
    """One turn of the loop per message: a queue read at the pace holds
    only what arrived since the previous read, so it is counted from that
    read, whose window has run out by then. Nothing is sent later than a
    window after it arrived, and ``first`` is never later than the change."""
    c, clock = Coalescer(hold_window(0.5)), FakeClock()
    assert c.read_every == c.window
    held = Changes(paths={b"a"})
    t0 = clock()
    c.read_done(t0, 200)  # polled: it arrived just now
    assert c.take(held, t0) is None
    assert c.wake_at() == t0 + c.window  # the send and the next read: one wake-up
    sends = []
    for i in range(1, 6):
        clock.advance(c.read_every)
        assert c.read_due(clock())
        arrived = clock.now - c.read_every / 2  # anywhere since the last read
        c.read_done(clock(), 200)
        held.paths.add(b"f%d" % i)
        first = c.take(held, clock())
        assert first is not None and first <= arrived
        sends.append(first)
        held = Changes()
    assert sends == pytest.approx([t0 + i * c.read_every for i in range(5)])


def test_a_polled_read_counts_from_itself() -> None:
    """An idle queue is polled: what it returns arrived just now, and is
    held for the window from then."""
    c, clock = Coalescer(1.0), FakeClock()
    c.read_done(clock(), 0)
    clock.advance(30)
    c.read_done(clock(), 100)
    assert c.take(Changes(paths={b"a"}), clock()) is None
    assert c.held_since == clock.now


def test_a_stop_sends_what_is_held() -> None:
    c, clock = Coalescer(1.0), FakeClock()
    held = Changes(paths={b"a"})
    assert c.take(held, clock()) is None
    clock.advance(0.1)
    assert c.take(held, clock(), stopping=True) == clock.now - 0.1


# ------------------------------------------------------------ seen-points
def seen_at(wall: float) -> Seen:
    return Seen(wall, "boot", 0.0)


def test_a_seen_point_goes_once_after_the_idle_delay() -> None:
    s, clock = SeenPoints(SEEN_DELAY, MARGIN), FakeClock(100.0)
    assert s.due(clock(), idle=True) == 100.0 + SEEN_DELAY
    clock.advance(SEEN_DELAY)
    assert s.due(clock(), idle=True) == 100.0 + SEEN_DELAY
    point = s.take(seen_at(5000.0), [])
    assert point == seen_at(5000.0) and s.last == point
    clock.advance(100)
    assert s.due(clock(), idle=True) is None  # once per stretch of idleness


def test_work_restarts_the_idle_wait() -> None:
    s, clock = SeenPoints(SEEN_DELAY, MARGIN), FakeClock(100.0)
    s.due(clock(), idle=True)
    s.take(seen_at(5000.0), [])
    clock.advance(3)
    assert s.due(clock(), idle=False) is None  # something held, walked or unacked
    clock.advance(1)
    assert s.due(clock(), idle=True) == clock.now + SEEN_DELAY


def test_a_seen_point_is_held_back_to_the_watch_limits_oldest_mark() -> None:
    """Changes in a subtree left out by the watch limit are seen only by its
    rescan, which compares from its mark: the seen-point must not pass it."""
    s = SeenPoints(SEEN_DELAY, MARGIN)
    point = s.take(seen_at(5000.0), [4000.0, 4500.0])
    assert point.wall == 4000.0 + MARGIN
    assert s.take(seen_at(5000.0), [4999.0]).wall == 5000.0  # never later than now


# -------------------------------------------------------------- the root
def test_a_missing_root_is_said_once_and_polled() -> None:
    r, clock = RootWatch("/src", "www", ROOT_POLL), FakeClock(10.0)
    v = r.looked(clock(), sourceroot.MISSING, None)
    assert not v.watch and r.next_poll == 10.0 + ROOT_POLL and v.level == logging.ERROR
    assert v.say is not None and "missing" in v.say and "nothing is deleted" in v.say
    clock.advance(ROOT_POLL)
    v = r.looked(clock(), sourceroot.MISSING, None)
    assert not v.watch and v.say is None and r.next_poll == clock.now + ROOT_POLL
    v = r.looked(clock(), sourceroot.SYMLINK, None)  # another state: said again
    assert v.say is not None and "symlink" in v.say


def test_a_root_that_comes_back_is_watched_and_said_back() -> None:
    r = RootWatch("/src", "www", ROOT_POLL)
    first = r.looked(0.0, sourceroot.OK, (1, 2))
    assert first.watch and first.say is None  # the first start says nothing
    r.gone(1.0, sourceroot.OK, "moved, deleted or unmounted")
    assert r.state == sourceroot.MISSING  # gone, though something is there again
    v = r.looked(3.0, sourceroot.OK, (1, 2))
    assert v.watch and v.say == "source /src of www is back"


@pytest.mark.parametrize(("ident", "words"), [((1, 9), "as another directory"),
                                              ((7, 2), "on another filesystem")])
def test_a_root_back_as_another_directory_is_a_fresh_start(ident: tuple[int, int],
                                                           words: str) -> None:
    r = RootWatch("/src", "www", ROOT_POLL)
    r.looked(0.0, sourceroot.OK, (1, 2))
    r.gone(1.0, sourceroot.MISSING, "gone")
    v = r.looked(3.0, sourceroot.OK, ident)
    assert v.watch and v.level == logging.WARNING
    assert v.say is not None and words in v.say and "fresh start" in v.say
    assert r.ident == ident


def test_a_root_replaced_by_a_file_keeps_its_state() -> None:
    r = RootWatch("/src", "www", ROOT_POLL)
    r.looked(0.0, sourceroot.OK, (1, 2))
    v = r.gone(1.0, sourceroot.NOT_DIRECTORY, "replaced")
    assert r.state == sourceroot.NOT_DIRECTORY
    assert v.say is not None and "not a directory (replaced)" in v.say


# ------------------------------------------------------- blind subtrees
def test_blind_subtrees_are_reported_when_new_and_when_gone() -> None:
    b = BlindReports()
    news = b.update({b"a": Blind(UNREADABLE, 1.0), b"a/b/c": Blind(UNREADABLE, 1.0)})
    assert news.new == [(UNREADABLE, {b"a", b"a/b/c"}, b"a")] and not news.rescan
    assert b.any()
    assert b.update({b"a": Blind(UNREADABLE, 1.0), b"a/b/c": Blind(UNREADABLE, 1.0)}) \
        == BlindNews()  # nothing new: nothing said
    news = b.update({})
    assert news.cleared == [UNREADABLE] and news.new == []
    assert news.rescan == Changes(trees={b"a", b"a/b/c"})  # readable again: look now
    assert not b.any()


@pytest.mark.parametrize("reason", [WATCH_LIMIT, MOUNT])
def test_watch_limit_and_mounts_are_not_rescanned_when_they_end(reason: str) -> None:
    """Their rescans run on their own schedule; the report only says so."""
    b = BlindReports()
    b.update({b"x": Blind(reason, 1.0)})
    news = b.update({})
    assert news.cleared == [reason] and not news.rescan


@pytest.mark.parametrize("reason", [TOO_LONG, UNREADABLE, ERROR])
def test_a_subtree_no_longer_blind_is_rescanned_even_if_others_stay(reason: str) -> None:
    b = BlindReports()
    b.update({b"x": Blind(reason, 1.0), b"y": Blind(reason, 1.0)})
    news = b.update({b"y": Blind(reason, 1.0)})
    assert news.rescan == Changes(trees={b"x"}) and news.cleared == [] and news.new == []


def test_blind_subtrees_are_walked_again_by_their_reason() -> None:
    blind = {b"w": Blind(WATCH_LIMIT, 10.0), b"m": Blind(MOUNT, 11.0),
             b"t": Blind(TOO_LONG, 12.0), b"e": Blind(ERROR, 13.0)}
    got = {r.rel: r for r in rewalk_blind(blind, mounts_due=True, mark=50.0)}
    # the watch limit: rescanned, comparing content changed since its mark
    assert got[b"w"] == Rewalk(b"w", Changes(trees={b"w"}), 10.0, 50.0)
    # a mount: rescanned with the quick check
    assert got[b"m"] == Rewalk(b"m", Changes(trees={b"m"}), None, 50.0)
    # the others: watched again, keeping their mark; once they can be
    # read, what changed since their mark is compared by content
    assert got[b"t"] == Rewalk(b"t", None, 12.0, 12.0)
    assert got[b"e"] == Rewalk(b"e", None, 13.0, 13.0)
    assert b"m" not in {r.rel for r in rewalk_blind(blind, mounts_due=False, mark=50.0)}


def test_a_queue_is_read_while_the_collator_is_behind_until_too_much_is_held() -> None:
    """While a sync's unacked messages are at their bound, its queue is read
    and what is read held (an overflow costs a rescan of the whole source),
    up to :data:`HELD_MAX` entries; past it the kernel's queue holds the
    rest. A sync with no watch is never read."""
    from types import SimpleNamespace

    from syncsup.watcher._main import Watcher

    def reads(full: bool, held: int, fd: int | None = 3) -> bool:
        me = SimpleNamespace(outbox=SimpleNamespace(full=lambda name: full))
        w = SimpleNamespace(fd=fd, sync=SimpleNamespace(name="s"),
                            held=Changes(paths={b"%d" % i for i in range(held)}))
        return bool(Watcher.reads(me, w))  # type: ignore[arg-type]

    assert reads(full=False, held=HELD_MAX + 1)  # sends go: reading is what sends them
    assert reads(full=True, held=HELD_MAX - 1)
    assert not reads(full=True, held=HELD_MAX)
    assert not reads(full=False, held=0, fd=None)
