"""The watcher's outbox, pure: EVENTS messages kept until the collator acks
them, resent when the ack does not come, split so that no message exceeds
what the collator accepts.

Each sync has its own budget of unacked messages (:data:`MAX_INFLIGHT`):
when one sync's flood fills it, the watcher holds what it reads of that
sync's inotify queue until acks come, and past a bound of changes held
(``watcher.core.HELD_MAX``) stops reading that queue only (the kernel
queue absorbs the rest of the burst, and an overflow becomes a rescan);
the other syncs go on.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from syncsup.proto import Changes, Events
from syncsup.seen import Seen
from syncsup.timings import Timings

__all__ = ["MAX_INFLIGHT", "MAX_PATHS", "MAX_PATH_BYTES", "Outbox", "split"]

MAX_INFLIGHT = 8           # unacked EVENTS per sync before what is read is held
MAX_PATHS = 20_000         # entries per message
MAX_PATH_BYTES = 8 * 1024 * 1024  # path bytes per message


def split(changes: Changes, max_items: int = MAX_PATHS,
          max_bytes: int = MAX_PATH_BYTES) -> list[Changes]:
    """``changes`` as messages within the limits. Rescans and renames come
    first (renames keep their order); paths fill the rest."""
    out: list[Changes] = []
    cur = Changes()
    items = size = 0

    def room(n: int, nbytes: int) -> None:
        nonlocal cur, items, size
        if items and (items + n > max_items or size + nbytes > max_bytes):
            out.append(cur)
            cur, items, size = Changes(), 0, 0
        items += n
        size += nbytes

    for t in sorted(changes.trees):
        room(1, len(t) + 1)
        cur.trees.add(t)
    for v in sorted(changes.verify):
        room(1, len(v) + 1)
        cur.verify.add(v)
    for v in sorted(changes.prove):
        room(1, len(v) + 1)
        cur.prove.add(v)
    for a, b in changes.moves:
        room(2, len(a) + len(b) + 2)
        cur.moves.append((a, b))
    for p in sorted(changes.paths):
        created = p in changes.created
        room(2 if created else 1, (len(p) + 1) * (2 if created else 1))
        cur.paths.add(p)
        if created:
            cur.created.add(p)
    if cur or not out:
        out.append(cur)
    return out


@dataclass
class _Sent:
    sync: str
    at: float
    msg: Events


class Outbox:
    """Unacked messages by sequence number (unique across restarts: the
    first one is derived from the start time)."""

    def __init__(self, first_seq: int, resend_after: float = Timings.resend_after) -> None:
        self.seq = first_seq
        self.resend_after = resend_after  # seconds without an ack before a resend
        self.inflight: dict[int, _Sent] = {}
        self.per_sync: Counter[str] = Counter()
        self.changing: Counter[str] = Counter()  # of those, the ones carrying changes

    def add(self, sync: str, changes: Changes, now: float,
            seen: Seen | None = None, first: float | None = None) -> list[Events]:
        """Messages for ``changes`` of ``sync``, recorded as sent now; the
        last one carries ``seen``, each one ``first`` (when the oldest
        change was read, wall clock)."""
        msgs = []
        parts = split(changes)
        for i, part in enumerate(parts):
            self.seq += 1
            msg = Events(seq=self.seq, sync=sync, changes=part,
                         seen=seen if i == len(parts) - 1 else None, first=first)
            self.inflight[self.seq] = _Sent(sync, now, msg)
            self.per_sync[sync] += 1
            if part:
                self.changing[sync] += 1
            msgs.append(msg)
        return msgs

    def ack(self, seq: int) -> None:
        sent = self.inflight.pop(seq, None)
        if sent is not None:
            self.per_sync[sent.sync] -= 1
            if sent.msg.changes:
                self.changing[sent.sync] -= 1

    def full(self, sync: str) -> bool:
        return self.per_sync[sync] >= MAX_INFLIGHT

    def unacked_changes(self, sync: str) -> int:
        """Unacked messages of ``sync`` that carry changes (a seen-point
        alone is not activity: counting it would make every acknowledged
        seen-point start the wait for the next one, forever)."""
        return self.changing[sync]

    def due(self, now: float, everything: bool = False) -> list[Events]:
        """Messages to send again: unacked for ``resend_after``, or all of them
        (``everything``: the connection to the collator was made again)."""
        out = []
        for sent in self.inflight.values():
            if everything or now - sent.at >= self.resend_after:
                sent.at = now
                out.append(sent.msg)
        return out

    def next_resend(self) -> float | None:
        """When the oldest unacked message is due again (None: nothing unacked)."""
        oldest = min((s.at for s in self.inflight.values()), default=None)
        return None if oldest is None else oldest + self.resend_after
