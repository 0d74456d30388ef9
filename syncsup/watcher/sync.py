"""One sync's watch: its inotify instance, its watch table and walks, the
changes it holds until they go, its root, its blind subtrees and its
seen-points. The watcher process (:mod:`syncsup.watcher._main`) serves
every sync's watch in turn; the rules each follows are in
:mod:`syncsup.watcher.core`, and this module does the reading and the
logging around them.
"""

from __future__ import annotations

import logging
import os
import struct
import time

from inotify_simple import INotify

from syncsup import config as cfg
from syncsup import proto, sourceroot
from syncsup.filters import DirFilter, exclude_patterns
from syncsup.seen import Seen, read_seen
from syncsup.statedir import StateDir
from syncsup.status import MAX_BLIND_LISTED, BlindStatus, WatchStatus, shorten
from syncsup.timings import Timings
from syncsup.watcher.core import (
    BlindReports,
    Coalescer,
    RootVerdict,
    RootWatch,
    SeenPoints,
    hold_window,
    rewalk_blind,
)
from syncsup.watcher.mounts import ancestors, under
from syncsup.watcher.outbox import Outbox
from syncsup.watcher.tree import (
    BLIND_REASONS,
    MOUNT,
    REASON_WORDS,
    WATCH_LIMIT,
    WatchTree,
    show,
)

__all__ = ["SyncWatch", "parse", "say"]

log = logging.getLogger("syncsup.watcher")

_EVENT = struct.Struct("iIII")
READ_SIZE = 1 << 20        # bytes of inotify events read per sync per turn
# the largest event a read returns (the header, NAME_MAX + 1 bytes of name):
# a read that left less than this of its buffer unused may have left events
_EVENT_MAX = _EVENT.size + 256
WALK_BUDGET = 2000         # watches placed per sync per turn


def parse(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """Raw inotify records to ``(wd, mask, cookie, name)``, names kept as bytes."""
    out = []
    pos = 0
    while pos + _EVENT.size <= len(data):
        wd, mask, cookie, size = _EVENT.unpack_from(data, pos)
        pos += _EVENT.size
        out.append((wd, mask, cookie, data[pos:pos + size].split(b"\0", 1)[0]))
        pos += size
    return out


class SyncWatch:
    """One sync's inotify instance and watch table."""

    def __init__(self, sync: cfg.Sync, state: StateDir, timings: Timings | None = None) -> None:
        self.sync = sync
        self.t = timings or Timings()
        self.journal = state.journal(sync.name)
        self.filter = DirFilter(exclude_patterns(sync))
        self.ino: INotify | None = None
        self.tree: WatchTree | None = None
        self.held = proto.Changes()
        # when to read, when to send (max_delays changes flush a batch: they
        # go at once)
        self.coalescer = Coalescer(hold_window(sync.delay), sync.max_delays,
                                   count_created=sync.runs_commands)
        self.overflows = 0
        self.needed = 0                    # max_user_watches that would cover the tree
        self.blind_reports = BlindReports()  # blind subtrees already logged
        self.next_unwatched = 0.0
        self.next_mount_rescan = 0.0
        self.root = RootWatch(str(sync.source), sync.name, self.t.root_poll)
        self.failure: str | None = None     # the last error that stopped this watch
        self.mounts: set[bytes] = set()     # mount points inside the source (relative)
        self.walk_started = 0.0
        # when a read of the queue last found it empty or emptied it: every
        # event still queued came after it
        self.drained = Seen.now()
        # the last seen-point, and when the next one goes
        self.seen = SeenPoints(self.t.seen_delay, self.t.seen_margin)

    @property
    def fd(self) -> int | None:
        return self.ino.fileno() if self.ino is not None else None

    def rescan(self, rel: bytes, why: str) -> None:
        """Queue a walk of ``rel`` that finds what changed while events were
        lost: a quick-check rescan plus the files whose ctime is not older
        than the last seen-point, or, with no seen-point, a rescan comparing
        the content of every file the targets cannot prove current (of
        every file with ``startup_checksum``)."""
        assert self.tree is not None
        last = self.seen.last
        cutoff = last.cutoff(Seen.now(), self.t) if last is not None else None
        if cutoff is None and self.sync.startup_checksum:
            log.info("%s: %s: no earlier state is known, so the rescan compares content "
                     "(--checksum; startup_checksum = true)", self.sync.name, why)
            self.tree.queue(rel, proto.Changes(verify={rel}))
        elif cutoff is None:
            log.info("%s: %s: no earlier state is known, so the rescan compares the content "
                     "of the files the targets' ctimes cannot prove current", self.sync.name, why)
            self.tree.queue(rel, proto.Changes(prove={rel}))
        else:
            log.info("%s: %s: rescanning, comparing the content of files changed since %s",
                     self.sync.name, why,
                     time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(cutoff)))
            self.tree.queue(rel, proto.Changes(trees={rel}), since=cutoff)

    def start(self, now: float) -> bool:
        """Open the inotify instance and queue the walk of the whole tree;
        its rescan follows the walk. False if the source root is not a
        directory (retried every ``root_poll``): the same rule at the first start
        and after the root went away (syncsup.sourceroot)."""
        state, st = sourceroot.inspect(self.sync.source)
        verdict = self.root.looked(now, state, None if st is None else (st.st_dev, st.st_ino))
        if not verdict.watch:
            self.stop()
            say(verdict)
            return False
        say(verdict)
        if self.seen.last is None:
            self.seen.last = read_seen(self.journal)
        self.drained = Seen.now()  # nothing is queued before the instance exists
        self.ino = INotify(nonblocking=True)
        if self.failure is not None:
            log.info("%s: watching %s again", self.sync.name, self.sync.source)
            self.failure = None
        self.tree = WatchTree(os.fsencode(self.sync.source), self.ino.add_watch,
                              self.ino.rm_watch, self.filter.excluded, timings=self.t)
        self.rescan(b"", "start")
        self.walk_started = now
        self.next_unwatched = now + self.t.unwatched_rescan
        self.next_mount_rescan = now + self.t.mount_rescan
        return True

    def mounts_changed(self, points: set[bytes]) -> None:
        """The mount table changed: walk and rescan each mount point inside
        the source that came or went (inotify says nothing of either)."""
        inside = under(os.fsencode(self.sync.source), points)
        changed, self.mounts = inside ^ self.mounts, inside
        if self.tree is None:
            return
        if b"" in changed:
            changed.discard(b"")
            _, st = sourceroot.inspect(self.sync.source)
            if st is None or (st.st_dev, st.st_ino) != self.root.ident:
                # Mounted over (or uncovered): the watches are on a directory
                # nobody sees any more. Start again, as after a root that went.
                log.info("%s: a filesystem was mounted or unmounted at the source root %s: "
                         "watching it again", self.sync.name, self.sync.source)
                self.stop()
                self.root.next_poll = 0.0
                return
        for rel in sorted(changed):
            if any(self.filter.excluded(p) for p in ancestors(rel)):
                continue
            if os.path.isdir(self.tree.abspath(rel)):
                log.info("%s: a filesystem was mounted or unmounted at %s: rescanning it",
                         self.sync.name, shorten(show(rel), 120))
                if (x := self.tree.blind.get(rel)) is not None and x.reason == MOUNT:
                    del self.tree.blind[rel]  # the walk says whether it still is one
                self.tree.queue(rel, proto.Changes(trees={rel}))

    def idle(self, outbox: Outbox) -> bool:
        """Every change this sync's watcher saw is acknowledged."""
        return (self.tree is not None and not self.tree.walking and not self.tree.writing
                and not self.held and outbox.unacked_changes(self.sync.name) == 0)

    def seen_due(self, now: float, outbox: Outbox) -> float | None:
        """When a seen-point should be sent (see SeenPoints)."""
        return self.seen.due(now, self.idle(outbox))

    def next_seen(self) -> Seen:
        """A seen-point for now (called when the queue was just found empty)."""
        assert self.tree is not None
        # Only the watch limit's subtrees: their rescans compare what changed
        # since their mark. The others are not read at all while blind, and
        # get a whole rescan when they can be read again.
        return self.seen.take(Seen.now(), (x.mark for x in self.tree.blind.values()
                                           if x.reason == WATCH_LIMIT))

    def stop(self) -> None:
        if self.ino is not None:
            self.ino.close()
        self.ino = self.tree = None
        self.coalescer.reset()

    def read(self, now: float) -> int:
        """One read of the inotify queue into ``held`` (files still being
        written are held in the tree until closed); the bytes read (0: the
        queue was empty)."""
        assert self.ino is not None and self.tree is not None
        before = Seen.now()
        try:
            data = os.read(self.ino.fileno(), READ_SIZE)
        except BlockingIOError:
            self.coalescer.read_done(now, 0)
            self.drained = before
            return 0
        self.coalescer.read_done(now, len(data))
        # Every event read now was queued after the last read that emptied
        # the queue began: the new directories' walks look for files changed
        # since then (less the margin of coarse timestamps and clocks, and
        # any backward step of the wall clock since).
        since = self.drained.cutoff(before, self.t)
        if len(data) <= READ_SIZE - _EVENT_MAX:
            self.drained = before  # the whole queue fitted: it was empty after this read
        changes, signals = self.tree.apply(parse(data), now, since=since)
        self.held.update(changes)
        if signals.overflow:
            self.overflows += 1
            log.warning("%s: inotify queue overflowed (fs.inotify.max_queued_events): "
                        "watching new directories, then rescanning the source",
                        self.sync.name)
            # Directories created while events were dropped have no watch
            # yet: walk again (existing watches are kept), then rescan.
            self.rescan(b"", "events were lost")
        if signals.root_gone:
            self.root_gone(now, "moved, deleted or unmounted")
        return len(data)

    def root_gone(self, now: float, why: str) -> None:
        """The watched root is gone (inotify said so, or the walk found no
        directory there): wait for one, as at a start."""
        state, _ = sourceroot.inspect(self.sync.source)
        self.stop()
        say(self.root.gone(now, state, why))

    def walk(self, now: float) -> None:
        assert self.tree is not None
        was = self.tree.walking
        self.held.update(self.tree.step(WALK_BUDGET).changes)
        if self.tree.walking:
            return
        if self.tree.root_wd is None and b"" not in self.tree.blind:
            # The root could not be watched and is not merely blind: it was
            # replaced (by a symlink, a file) between our look and the walk.
            self.root_gone(now, "replaced while it was being watched")
            return
        if was and self.walk_started:
            log.info("%s: watching %s: %d directories in %.1fs", self.sync.name,
                     self.sync.source, len(self.tree.paths), now - self.walk_started)
            self.walk_started = 0.0
        self.report_blind()

    def blind_reported(self) -> bool:
        return self.blind_reports.any()

    def report_blind(self) -> None:
        """Log what changed among the blind subtrees, and look now at those
        that can be read again (see BlindReports). Called between walks
        only: a subtree being walked again is neither blind nor watched yet."""
        assert self.tree is not None
        news = self.blind_reports.update(self.tree.blind)
        self.held.update(news.rescan)
        for reason, subtrees, example in news.new:
            self.log_blind(reason, subtrees, example)
        for reason in news.cleared:
            if reason == WATCH_LIMIT:
                self.needed = 0
            log.info("%s: %s: every such subtree is watched again", self.sync.name,
                     REASON_WORDS[reason])

    def log_blind(self, reason: str, subtrees: set[bytes], example: bytes) -> None:
        assert self.tree is not None
        name = self.sync.name
        if reason == WATCH_LIMIT:
            missing = self.tree.unwatched_dirs()
            limit = _current_watch_limit()
            if limit is None:  # /proc/sys hidden, as the unit's ProcSubset=pid does
                self.needed = 0
                log.error("inotify watch limit reached: %d directories of %s are not watched; "
                          "raise fs.inotify.max_user_watches by at least %d (its value "
                          "cannot be read here: sysctl fs.inotify.max_user_watches shows "
                          "it). Until then they are rescanned every %.0fs", missing,
                          self.sync.source, missing, self.t.unwatched_rescan)
                return
            self.needed = limit + missing
            log.error("inotify watch limit reached: %d directories of %s are not watched; "
                      "raise fs.inotify.max_user_watches to at least %d (sysctl -w "
                      "fs.inotify.max_user_watches=%d). Until then they are rescanned every "
                      "%.0fs", missing, self.sync.source, self.needed, self.needed,
                      self.t.unwatched_rescan)
            return
        where = shorten(show(example) or ".", 120)
        if reason == MOUNT:
            log.warning("%s: %d filesystem(s) mounted inside the source, e.g. %s: changes made "
                        "there from elsewhere (another host, a FUSE daemon) are not seen; "
                        "rescanned every %.0fs", name, len(subtrees), where, self.t.mount_rescan)
            return
        detail = self.tree.blind[example].detail
        log.warning("%s: %d subtree(s) cannot be watched (%s: %s), e.g. %s: not mirrored; "
                    "retried every %.0fs", name, len(subtrees), REASON_WORDS[reason], detail, where,
                    self.t.unwatched_rescan)

    def rescan_blind(self, now: float) -> None:
        """Look at the blind subtrees again: watch first, then scan, as
        always. Subtrees left out by the watch limit are rescanned (only
        files changed since their previous scan are compared by content);
        the others are only watched again (a path too long or unreadable
        cannot be read by rsync either), and rescanned once they can be
        (:meth:`report_blind`). Mounts are rescanned every ``mount_rescan``."""
        assert self.tree is not None
        self.next_unwatched = now + self.t.unwatched_rescan
        mounts_due = now >= self.next_mount_rescan
        if mounts_due:
            self.next_mount_rescan = now + self.t.mount_rescan
        blind = self.tree.take_blind(BLIND_REASONS if mounts_due else
                                     [r for r in BLIND_REASONS if r != MOUNT])
        for again in rewalk_blind(blind, mounts_due, time.time() - self.t.seen_margin):
            self.tree.queue(again.rel, again.rescan, since=again.since, mark=again.mark)

    def status(self) -> WatchStatus:
        tree = self.tree
        blind = tree.blind if tree is not None else {}
        counts: dict[str, int] = {}
        for x in blind.values():
            counts[x.reason] = counts.get(x.reason, 0) + 1
        listed = [BlindStatus(path=show(rel), reason=x.reason, error=x.detail)
                  for rel, x in sorted(blind.items())[:MAX_BLIND_LISTED]]
        return WatchStatus(sync=self.sync.name, watches=len(tree.paths) if tree else 0,
                           unwatched=sum(n for r, n in counts.items() if r != MOUNT),
                           watch_limit_needed=self.needed or None,
                           overflows=self.overflows,
                           seen=self.seen.last.wall if self.seen.last is not None else None,
                           root=self.root.state, blind_counts=counts, blind=listed)


def say(verdict: RootVerdict) -> None:
    if verdict.say is not None:
        log.log(verdict.level, "%s", verdict.say)


def _current_watch_limit() -> int | None:
    """fs.inotify.max_user_watches, or None where it cannot be read."""
    try:
        with open("/proc/sys/fs/inotify/max_user_watches") as fh:
            return int(fh.read())
    except (OSError, ValueError):
        return None
