"""File content read for one target's agent step, kept a moment for the
other targets of the same change, so a change is read from the source once
and not once per target.

An entry is found by what identifies one version of a file: device, inode,
size, modification and change times (``st_ctime`` moves with every write
and attribute change). That identity is only as fine as the kernel's
timestamps, which tick (a jiffy, or coarser): two writes within one tick
leave the same ctime. So content is kept only if its read began a
:data:`SETTLE` later than the file's ctime: a write the ctime does not show
happened within the tick of that ctime, before the read began, and the read
saw it; any later write moves the ctime past it. Content read sooner is used
once and not kept (the next target reads again). A ctime on a whole second
is taken for a filesystem that keeps whole seconds (ext3's small inodes,
FAT keeps two), whose tick is that long: :data:`COARSE_SETTLE`. A
clock stepped back only
makes reads look sooner; one stepped forward also moves the ctimes of the
writes that follow.

Entries live :data:`TTL` seconds (the targets of one change take their
batches within that, or read again) and at most :data:`MAX_BYTES` in all, so
the syncer at rest holds no file content once it has pruned (every turn of
its loop, at least once a heartbeat).
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["COARSE_SETTLE", "MAX_BYTES", "SETTLE", "SHARED", "TTL", "ContentCache", "Identity",
           "identity"]

SETTLE = 0.1   # seconds: far above a timestamp tick (1-10 ms), far below a batch's wait
COARSE_SETTLE = 2.1  # seconds, for a ctime on a whole second: a coarse filesystem's tick
TTL = 5.0      # seconds an entry is kept for the other targets
MAX_BYTES = 16 * 1024 * 1024

Identity = tuple[int, int, int, int, int]


def identity(st: os.stat_result) -> Identity:
    """What tells one version of a file from another, as far as stat can."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class ContentCache:
    """Content by :func:`identity`, oldest first; ``clock`` is the wall
    clock (ctimes are wall-clock times), ``tick`` the monotonic one."""

    def __init__(self, max_bytes: int = MAX_BYTES, ttl: float = TTL, settle: float = SETTLE,
                 clock: Callable[[], float] = time.time,
                 tick: Callable[[], float] = time.monotonic) -> None:
        self.max_bytes, self.ttl, self.settle = max_bytes, ttl, settle
        self.clock, self.tick = clock, tick
        self.entries: OrderedDict[Identity, tuple[float, bytes]] = OrderedDict()
        self.size = 0
        self.hits = self.hit_bytes = 0
        self.readers = 0  # agent channels that write through this cache

    def join(self) -> None:
        """One more target's agent reads through this cache."""
        self.readers += 1

    @property
    def worth(self) -> bool:
        """Is keeping content of use? With one target's agent in the
        process no other step reads the same version of a file (a retry
        reads again), and every file read would pay a lookup, a clock read
        and a prune for nothing."""
        return self.readers > 1

    def get(self, st: os.stat_result) -> bytes | None:
        """The content of this version of the file, if another target read it."""
        self.prune()
        entry = self.entries.get(identity(st))
        if entry is None:
            return None
        self.hits += 1
        self.hit_bytes += len(entry[1])
        return entry[1]

    def put(self, st: os.stat_result, data: bytes, read_began: float) -> None:
        """Keep ``data``, read from the version ``st`` in a read that began at
        wall-clock ``read_began``, if that read was late enough to be sure
        of it (see the module's docstring) and it fits."""
        settle = self.settle if st.st_ctime_ns % 1_000_000_000 else max(self.settle,
                                                                         COARSE_SETTLE)
        if len(data) > self.max_bytes or read_began - st.st_ctime_ns / 1e9 < settle:
            return
        key = identity(st)
        if key in self.entries:
            return
        self.entries[key] = (self.tick(), data)
        self.size += len(data)
        while self.size > self.max_bytes:
            self._drop_oldest()

    def prune(self) -> None:
        """Drop the entries older than the TTL."""
        limit = self.tick() - self.ttl
        while self.entries and next(iter(self.entries.values()))[0] <= limit:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        _, (_, data) = self.entries.popitem(last=False)
        self.size -= len(data)


SHARED = ContentCache()
"""The syncer's cache: one process serves every target."""
