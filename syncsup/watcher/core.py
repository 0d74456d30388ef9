"""The watcher's decisions, pure: driven by what was read and by time,
with no socket, no inotify instance and no clock of its own.

:class:`Coalescer` decides when one sync's inotify queue is read and when
the changes read from it go to the collator. Under steady churn the cost
of an event is almost all fixed cost per wake-up and per message (a poll,
a ZeroMQ round trip, a journal transaction in the collator, an ack), not
per path: a blocking poll that wakes costs 50 to 100 µs of CPU by itself
on a virtual machine, more than the Python work for a few events. So
with a ``delay`` the watcher holds what it read for a short window (a
fifth of ``delay``, at most :data:`HOLD_MAX`) and sends it as one message,
and reads its queue at most every :data:`READ_EVERY` meanwhile: one
wake-up then covers every event that arrived in between.

Why this keeps every guarantee:

* nothing is lost if the watcher is killed while it holds changes: a
  seen-point is only sent when nothing is held or unacknowledged, so the
  next start rescans everything changed since a moment older than any held
  change;
* the message carries when its oldest change was read (``first``), and the
  collator counts the delay from then, so a batch is not later than it was
  without the window (the window is well below ``delay``);
* ``delay = 0`` holds nothing and reads at once: the latency path is the
  same as before;
* the kernel queue absorbs what arrives while the queue is not read; a
  read that comes back nearly full (a flood) is followed by the next read
  at once, so the queue is never left unread for long while it fills.
"""

from __future__ import annotations

from syncsup.proto import Changes

__all__ = ["FLOOD_BYTES", "HOLD_MAX", "HOLD_SHARE", "READ_EVERY", "SEND_NOW", "Coalescer",
           "hold_window"]

HOLD_SHARE = 0.2    # the window's share of the sync's delay
HOLD_MAX = 1.0      # seconds changes are held at most, whatever the delay
READ_EVERY = 0.1    # seconds between reads of a queue while changes keep coming
FLOOD_BYTES = 64 * 1024  # a read this big is a flood: read again at once
SEND_NOW = 5000     # entries held that go at once, window or not (memory, message size)


def hold_window(delay: float) -> float:
    """How long a sync with this ``delay`` holds changes before sending them."""
    return max(0.0, min(delay * HOLD_SHARE, HOLD_MAX))


class Coalescer:
    """When one sync's queue is read and its held changes are sent.

    ``held_since`` is when the oldest held change was read (``None``:
    nothing held); ``next_read`` when the queue may be read again (0: at
    once, by polling its descriptor). Times are the watcher's monotonic
    clock; the caller passes ``now``.
    """

    def __init__(self, window: float) -> None:
        self.window = window
        self.read_every = min(window, READ_EVERY)
        self.held_since: float | None = None
        self.next_read = 0.0

    def read_done(self, now: float, nbytes: int) -> None:
        """A read of the queue returned ``nbytes`` (0: it was empty). An
        empty queue is polled from now on, a busy one read again after
        :attr:`read_every`, a flooded one at once."""
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

    def take(self, pending: Changes, now: float, stopping: bool = False) -> float | None:
        """Do the changes in ``pending`` go now? If so, when the oldest of
        them was read (for the message's ``first``); None while they are
        held. They go when there is nothing to wait for: no window, the
        window ran out, too much held, a rescan, or a stop. The window
        starts with the first change held."""
        if not pending:
            self.held_since = None
            return None
        first = now if self.held_since is None else self.held_since
        if (stopping or self.window <= 0 or now >= first + self.window
                or pending.size() >= SEND_NOW or pending.trees or pending.verify):
            self.held_since = None
            return first
        self.held_since = first
        return None

    def wake_at(self) -> float | None:
        """The next time this sync needs the loop (a read or a send), or None."""
        due = [t for t in (self.next_read or None,
                           None if self.held_since is None else self.held_since + self.window)
               if t is not None]
        return min(due) if due else None
