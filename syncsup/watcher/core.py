"""The watcher's decisions, pure: driven by what was read and by time,
with no socket, no inotify instance and no clock of its own. Each sync's
watch (:mod:`syncsup.watcher.sync`) does the reading and the logging,
the loop (:mod:`syncsup.watcher._main`) the sending; these classes say
when and what:

* :class:`Coalescer`: when a queue is read and its changes are sent;
* :class:`SeenPoints`: when an idle sync's seen-point goes, and its value;
* :class:`RootWatch`: a source root that is missing, replaced or back;
* :class:`BlindReports` and :func:`rewalk_blind`: the subtrees out of
  sight, what to say of them and when to look at them again.

:class:`Coalescer` decides when one sync's inotify queue is read and when
the changes read from it go to the collator. Under steady churn the cost
of an event is almost all fixed cost per wake-up and per message (a poll,
a ZeroMQ round trip, a journal transaction in the collator, an ack), not
per path: a blocking poll that wakes costs 50 to 100 µs of CPU by itself
on a virtual machine, more than the Python work for a few events. So
with a ``delay`` the watcher holds what it read for the delay itself (at
most :data:`HOLD_MAX`) and sends it as one message, and reads a busy queue
only every :data:`READ_EVERY` (or the window, if shorter): one wake-up
then covers every event that arrived in between, and, the pace being the
window, every paced read sends what it read at once (one turn of the loop
per message, not two). The message reaches the collator when its batch
is due, so the collator records it and hands the batch out in the same
turn: one read, one message and one wake-up of each process per batch.

Why this keeps every guarantee:

* nothing is lost if the watcher is killed while it holds changes: a
  seen-point is only sent when nothing is held or unacknowledged, so the
  next start rescans everything changed since a moment older than any held
  change;
* the message carries a moment no later than its oldest change
  (``first``): for a queue read at the pace, the previous read (everything
  the queue holds arrived after it), else the read itself; the collator
  counts the delay from then, so a batch goes out ``delay`` after its
  oldest change plus the time its message takes to reach the journal (a
  millisecond or two on an idle machine);
* enough changes go at once, window or not: ``max_delays`` of the sync,
  counted as the collator counts them (it flushes a batch at that many,
  as Lsyncd does), or :data:`SEND_NOW` entries in all; so do rescans;
* a queue read at the pace may hold, unread, what came since its last
  read (at most :data:`READ_EVERY` old) when an idle sync's seen-point is
  taken; the next start compares by content every file changed within
  ``seen_margin`` of a seen-point (1 s at the least), so those are
  covered, and a clean stop reads the queue before its last seen-point;
* ``delay = 0`` holds nothing and reads at once: the latency path is the
  same as before;
* the kernel queue absorbs what arrives while the queue is not read
  (``max_queued_events``, 16 384 by default: 0.5 s of 32 000 events a
  second); a read that comes back big (a flood) is followed by the next
  read at once, so the queue is never left unread for long while it
  fills, and a queue that overflows anyway is rescanned.

Why the whole delay: each read and each message wakes the watcher, the
collator (a transaction, an ack, then a timer for the batch) and their
ZeroMQ threads, whatever it carries. Measured under steady churn at
``delay = 0.5`` (docs/benchmarks.md), against a window of 0.4 of the delay
read every 0.2 s: the collator woke 15 times a second instead of 32, its
CPU per event fell by half and the whole tree's by a third. A window
shorter than the delay makes a message arrive before its batch is due,
and the collator wakes again, on a timer, to hand the batch out; a window
read twice costs a second wake-up.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from syncsup import sourceroot
from syncsup.proto import Changes
from syncsup.seen import Seen
from syncsup.watcher.tree import (
    BLIND_REASONS,
    ERROR,
    MOUNT,
    TOO_LONG,
    UNREADABLE,
    WATCH_LIMIT,
    Blind,
)

__all__ = ["FLOOD_BYTES", "HELD_MAX", "HOLD_MAX", "READ_EVERY", "SEND_NOW", "BlindNews",
           "BlindReports", "Coalescer", "Rewalk", "RootVerdict", "RootWatch", "SeenPoints",
           "hold_window", "rewalk_blind"]

HOLD_MAX = 1.0      # seconds changes are held at most, whatever the delay
READ_EVERY = 0.5    # seconds between reads of a queue while changes keep coming
FLOOD_BYTES = 64 * 1024  # a read this big is a flood: read again at once
SEND_NOW = 5000     # entries held that go at once, window or not (memory, message size)
# entries held while the collator is behind (its acks late: a journal
# checkpoint on a busy disk), past which a sync's inotify queue is left
# unread: a 100 000-file burst held whole, about 15 MB
HELD_MAX = 100_000


def hold_window(delay: float) -> float:
    """How long a sync with this ``delay`` holds changes before sending them:
    the delay itself, at most :data:`HOLD_MAX`."""
    return max(0.0, min(delay, HOLD_MAX))


class Coalescer:
    """When one sync's queue is read and its held changes are sent.

    ``held_since`` is the moment the oldest held change is counted from
    (``None``: nothing held); ``next_read`` when the queue may be read
    again (0: at once, by polling its descriptor); ``arrived_after`` a
    moment before every change the last read returned. Times are the
    watcher's monotonic clock; the caller passes ``now``.
    """

    def __init__(self, window: float, send_now: int = SEND_NOW,
                 count_created: bool = False) -> None:
        self.window = window
        # this many changes held go at once (the sync's max_delays), counted
        # as the collator counts them: the ``created`` mark a new file
        # carries beside its path only in command mode (elsewhere the
        # collator drops it); SEND_NOW entries in all, whatever
        self.send_now = send_now
        self.count_created = count_created
        self.read_every = min(window, READ_EVERY)
        self.held_since: float | None = None
        self.next_read = 0.0
        self.last_read: float | None = None
        self.arrived_after: float | None = None
        # after a flood read: what it read arrived after this, and so did
        # what it left in the queue (the queue keeps the order of events)
        self.flood_after: float | None = None

    def read_done(self, now: float, nbytes: int) -> None:
        """A read of the queue returned ``nbytes`` (0: it was empty). An
        empty queue is polled from now on, a busy one read again after
        :attr:`read_every`, a flooded one at once. What a read at the pace
        returns arrived after the previous read; what a polled queue
        returns, just now; what a read right after a flood returns, after
        what the flood read."""
        paced = self.next_read != 0.0 and self.last_read is not None
        if self.flood_after is not None:
            self.arrived_after = self.flood_after
        else:
            self.arrived_after = self.last_read if paced else now
        self.last_read = now
        self.flood_after = self.arrived_after if nbytes >= FLOOD_BYTES else None
        if nbytes == 0 or nbytes >= FLOOD_BYTES or self.read_every <= 0:
            self.next_read = 0.0
        else:
            self.next_read = now + self.read_every

    def polled(self) -> bool:
        """Is the queue's descriptor to be polled (rather than read at a
        time of our choosing)?"""
        return self.next_read == 0.0

    def read_due(self, now: float) -> bool:
        """Is a deferred read due now?"""
        return self.next_read != 0.0 and now >= self.next_read

    def take(self, held: Changes, now: float, stopping: bool = False) -> float | None:
        """Do the changes in ``held`` go now? If so, a moment no later
        than the oldest of them (for the message's ``first``); None while
        they are held. They go when there is nothing to wait for: no
        window, the window ran out, too much held, a rescan, or a stop. The
        window starts with the first change held, counted from when it
        arrived (at the latest), not from when it was read."""
        if not held:
            self.held_since = None
            return None
        first = self.held_since
        if first is None:
            since = self.arrived_after
            first = now if since is None else min(now, since)
        if (stopping or self.window <= 0 or now >= first + self.window
                or held.size() >= SEND_NOW or self._changes(held) >= self.send_now
                or held.trees or held.verify or held.prove):
            self.held_since = self.arrived_after = None
            return first
        self.held_since = first
        return None

    def hold(self, held: Changes, now: float) -> None:
        """``held`` cannot go now, whatever the window says (the collator is
        behind): the moment its oldest change is counted from is kept for
        the :meth:`take` that sends it."""
        if held and self.held_since is None:
            since = self.arrived_after
            self.held_since = now if since is None else min(now, since)

    def _changes(self, held: Changes) -> int:
        return held.size() if self.count_created else held.size() - len(held.created)

    def wake_at(self, reading: bool = True, sending: bool = True) -> float | None:
        """The next time this sync needs the loop (a read or a send), or None.
        ``reading`` False: its queue cannot be read now (no watch, or too
        much held while the collator is behind), so a read due is no reason
        to wake (the loop would spin on it until the queue can be read);
        ``sending`` False: what is held cannot go now (its unacked messages
        are at their bound: an ack wakes the loop), the same for a send."""
        read = self.next_read if reading and self.next_read else None
        send = (None if self.held_since is None or not sending
                else self.held_since + self.window)
        due = [t for t in (read, send) if t is not None]
        return min(due) if due else None

    def reset(self) -> None:
        """The queue is gone (the watch stopped): the next one is polled."""
        self.next_read = 0.0
        self.last_read = self.arrived_after = self.flood_after = None


class SeenPoints:
    """When an idle sync's seen-point is sent, and what it says.

    A seen-point says "every change before this moment is in the journal";
    a restart trusts rsync's quick check for files older than it. So it is
    sent only once nothing is held, walked, written or unacknowledged, and
    ``delay`` seconds after that (once per stretch of idleness: an idle
    watcher sends nothing more; more than the margin of a seen-point). It
    is held back to the oldest mark of the subtrees blind for the watch
    limit, whose changes only their rescans see.
    """

    def __init__(self, delay: float, margin: float, last: Seen | None = None) -> None:
        self.delay = delay
        self.margin = margin               # Timings.seen_margin: a seen-point's own margin
        self.last = last                   # the last seen-point sent (or read at start)
        self.idle_since: float | None = None
        self.sent = False                  # one went out in this stretch of idleness

    def due(self, now: float, idle: bool) -> float | None:
        """When the next seen-point goes (None: not while busy, nor twice)."""
        if not idle:
            self.idle_since, self.sent = None, False
            return None
        if self.idle_since is None:
            self.idle_since = now
        return None if self.sent else self.idle_since + self.delay

    def take(self, point: Seen, watch_limit_marks: Iterable[float]) -> Seen:
        """The seen-point to send for ``point`` (now), held back so that its
        cutoff is no later than that of the next rescan of a blind subtree."""
        marks = list(watch_limit_marks)
        if marks:
            held = min(marks) + self.margin
            point = Seen(min(point.wall, held), point.boot, point.offset)
        self.last, self.sent = point, True
        return point


@dataclass(frozen=True)
class RootVerdict:
    """What to do about the source root: ``watch`` it now (with ``say``,
    a line to log, if any), or not yet."""

    watch: bool
    say: str | None = None
    level: int = logging.INFO


class RootWatch:
    """The source root's rules: a root that is not a directory (missing,
    a symlink, a file) is waited for and looked at again every ``poll``
    seconds, said once per state; one that comes back is watched
    as at a fresh start, said as "back", or as "another directory" when its
    identity (device, inode) changed."""

    def __init__(self, source: str, name: str, poll: float) -> None:
        self.source, self.name, self.poll = source, name, poll
        self.state = sourceroot.OK
        self.ident: tuple[int, int] | None = None  # (st_dev, st_ino) last watched
        self.next_poll = 0.0

    def looked(self, now: float, state: str, ident: tuple[int, int] | None) -> RootVerdict:
        """The root was inspected (``ident`` when it is a directory)."""
        if ident is None:
            return self.lost(now, state, None)
        say, level = None, logging.INFO
        if self.ident is not None and ident != self.ident:
            what = "on another filesystem" if ident[0] != self.ident[0] else \
                "as another directory"
            say, level = (f"source {self.source} of {self.name} is back {what} than before: "
                          "treated as a fresh start, so the targets will mirror what it holds "
                          "now (an empty root never empties them)"), logging.WARNING
        elif self.state != sourceroot.OK:
            say = f"source {self.source} of {self.name} is back"
        self.state, self.ident = sourceroot.OK, ident
        return RootVerdict(True, say, level)

    def lost(self, now: float, state: str, why: str | None) -> RootVerdict:
        """The root is not a directory we may watch (``state``): stop
        watching, say so once per state, look again in ``poll`` seconds."""
        say = None
        if state != self.state:
            if state == sourceroot.SYMLINK:
                say = (f"source {self.source} of {self.name} is a symlink: a source root is "
                       "never followed; waiting for a directory there, nothing is sent to the "
                       "targets")
            else:
                what = "missing" if state == sourceroot.MISSING else "not a directory"
                say = (f"source {self.source} of {self.name} is {what}"
                       f"{f' ({why})' if why else ''}; waiting for it to come back, nothing "
                       "is deleted on the targets")
        self.state = state
        self.next_poll = now + self.poll
        return RootVerdict(False, say, logging.ERROR)

    def gone(self, now: float, state: str, why: str) -> RootVerdict:
        """The watched root went away (an event said so, or a check found
        something else there): missing, unless it is now a symlink or a file."""
        return self.lost(now, sourceroot.MISSING if state == sourceroot.OK else state, why)


@dataclass
class BlindNews:
    """What changed among the blind subtrees since the last report:
    ``rescan`` the subtrees that can be read again (or are gone), to look at
    now; ``new`` per reason the subtrees now blind and one example of the
    newly blind ones; ``cleared`` the reasons with no subtree left."""

    rescan: Changes = field(default_factory=Changes)
    new: list[tuple[str, set[bytes], bytes]] = field(default_factory=list)
    cleared: list[str] = field(default_factory=list)


class BlindReports:
    """The blind subtrees already reported, by reason: a line when a reason
    gets new subtrees, one when it has none left; the subtrees that a
    reason no longer covers are rescanned (what changed there while nobody
    could look), except the watch limit's and mounts, whose rescans run
    on their own schedule."""

    def __init__(self) -> None:
        self.reported: dict[str, set[bytes]] = {r: set() for r in BLIND_REASONS}

    def any(self) -> bool:
        return any(self.reported.values())

    def update(self, blind: Mapping[bytes, Blind]) -> BlindNews:
        """Compare the blind subtrees now with those last reported."""
        now_blind: dict[str, set[bytes]] = {r: set() for r in BLIND_REASONS}
        for rel, x in blind.items():
            now_blind[x.reason].add(rel)
        news = BlindNews()
        for reason in BLIND_REASONS:
            cur, old = now_blind[reason], self.reported[reason]
            if cur == old:
                continue
            self.reported[reason] = cur
            if reason in (TOO_LONG, UNREADABLE, ERROR):
                news.rescan.trees.update(old - cur)  # watched again, or gone: look now
            fresh = cur - old
            if fresh:
                news.new.append((reason, cur, min(fresh, key=len)))
            elif not cur:
                news.cleared.append(reason)
        return news


@dataclass(frozen=True)
class Rewalk:
    """One blind subtree to walk again: ``rescan`` what to release after
    the walk (None: only watch it), ``since`` the ctime cutoff of its
    content comparison, ``mark`` the cutoff to remember if it is still
    blind."""

    rel: bytes
    rescan: Changes | None
    since: float | None
    mark: float


def rewalk_blind(blind: Mapping[bytes, Blind], mounts_due: bool, mark: float) -> list[Rewalk]:
    """The blind subtrees to look at again on their periodic retry (watch
    first, then scan, as always). Those left out by the watch limit are
    rescanned, comparing the content of files changed since their mark;
    mounts (only when ``mounts_due``) are rescanned with the quick check;
    the others (a path too long, unreadable, an error) are only watched
    again: rsync cannot read them either, and they are rescanned once they
    can be (:class:`BlindReports`), with the files changed since their mark
    among the paths. ``mark`` (wall clock, less the margin)
    is the new cutoff of a subtree still blind after its rescan."""
    out = []
    for rel, x in blind.items():
        if x.reason == WATCH_LIMIT:
            out.append(Rewalk(rel, Changes(trees={rel}), x.mark, mark))
        elif x.reason == MOUNT:
            if mounts_due:
                out.append(Rewalk(rel, Changes(trees={rel}), None, mark))
        else:
            # what changed there while it could not be read: by content (its
            # rescan, once it is no longer blind, is a tree, and the target
            # holds the copy from before it went blind)
            out.append(Rewalk(rel, None, x.mark, x.mark))
    return out
