"""The watcher's seen-point: the moment before which every change of a sync
is known to be in its journal, and what a recovery may trust because of it.

Why it matters: when events are lost (the watcher was killed, the inotify
queue overflowed, syncsup was not running), something must find what
changed meanwhile. rsync's quick check (size and modification time) finds
almost everything, but not a rewrite that kept the size and put the old
mtime back. The kernel records more: a file's ctime moves on every write,
chmod, chown and rename, and no user can set it. So a file whose ctime is
older than the seen-point (minus a margin) is exactly as the journal last
knew it, and only the others — what changed in the gap — need their content
compared. A recovery then costs what changed, not a read of both trees.

The seen-point is committed in the journal in the same transaction as the
changes it vouches for (a power loss drops both together), with the boot it
belongs to and the offset of the wall clock to the boot-time clock, so that
a clock stepped backwards, or a reboot, widens the margin instead of hiding
a change.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from syncsup.timings import Timings

__all__ = ["Seen", "boot_id", "read_seen"]


def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return fh.read().strip()
    except OSError:
        return ""


@dataclass(frozen=True)
class Seen:
    """Everything that changed before ``wall`` (``time.time()``) is in the
    journal. ``boot`` is the kernel's boot id; ``offset`` the wall clock
    minus the boot-time clock when it was taken."""

    wall: float
    boot: str
    offset: float

    @classmethod
    def now(cls) -> Seen:
        wall = time.time()
        return cls(wall, boot_id(), wall - time.clock_gettime(time.CLOCK_BOOTTIME))

    def cutoff(self, current: Seen, timings: Timings) -> float:
        """The ctime from which a file must be compared by content, judged at
        ``current``: the seen-point minus ``seen_margin`` (timestamp
        granularity, a coarse clock, small skews), minus any backward step
        of the wall clock since (same boot), or minus the wider
        ``reboot_margin`` after a reboot."""
        if current.boot != self.boot or not self.boot:
            return self.wall - timings.reboot_margin
        stepped_back = max(0.0, self.offset - current.offset)
        return self.wall - timings.seen_margin - stepped_back

    def to_json(self) -> str:
        return json.dumps({"wall": self.wall, "boot": self.boot, "offset": self.offset})

    @classmethod
    def from_json(cls, text: str | None) -> Seen | None:
        """None for anything unreadable: the caller then compares everything."""
        if not text:
            return None
        try:
            doc = json.loads(text)
            return cls(float(doc["wall"]), str(doc["boot"]), float(doc["offset"]))
        except (ValueError, KeyError, TypeError):
            return None


def read_seen(path: Path | str) -> Seen | None:
    """The seen-point committed in the journal at ``path``, read without
    writing anything (the watcher reads it at start; the collator owns the
    file, keeping it under the ``seen`` key of its ``meta`` table). Here,
    not in the collator's package, because both roles need it and a role
    never imports another. None if there is none, or the journal cannot be
    read."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error:
        return None
    try:
        row = db.execute("SELECT value FROM meta WHERE key = 'seen'").fetchone()
    except sqlite3.Error:
        return None
    finally:
        db.close()
    return Seen.from_json(None if row is None else str(row[0]))
