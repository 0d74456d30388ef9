"""The watcher process: one inotify instance per sync, one outbox for all.

Each sync keeps its own inotify queue (an overflow is per sync), its own
watch table and walks, its own unacked-message budget; the loop serves them
in turn, each with a bounded amount of work per turn (one read of its queue,
a budget of new watches), so a flood or a huge walk in one sync delays the
others by milliseconds, not minutes. Nothing wakes the process when nothing
happens but its heartbeat.
"""

from __future__ import annotations

import logging
import os
import struct
import time

import zmq
from inotify_simple import INotify

from syncsup import config as cfg
from syncsup import proto
from syncsup.collator.journal import read_seen
from syncsup.logs import setup_logging
from syncsup.runtime import ChildRuntime, connections_made, drain_fd, new_socket, receive, send
from syncsup.seen import MARGIN, Seen
from syncsup.statedir import StateDir
from syncsup.status import StatusPart, WatchStatus
from syncsup.watcher.filters import DirFilter, exclude_patterns
from syncsup.watcher.outbox import Outbox
from syncsup.watcher.tree import WatchTree

__all__ = ["SyncWatch", "Watcher", "main"]

log = logging.getLogger("syncsup.watcher")

_EVENT = struct.Struct("iIII")
READ_SIZE = 1 << 20        # bytes of inotify events read per sync per turn
WALK_BUDGET = 2000         # watches placed per sync per turn
ROOT_POLL = 2.0            # seconds between checks for a missing source root
UNWATCHED_RESCAN = 10.0    # seconds between rescans of subtrees we could not watch
SEEN_DELAY = 6.0           # seconds idle before a seen-point is sent (more than MARGIN)
FINAL_ACK_WAIT = 2.0       # seconds a stopping watcher waits for its last acks


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

    def __init__(self, sync: cfg.Sync, state: StateDir) -> None:
        self.sync = sync
        self.journal = state.journal(sync.name)
        self.filter = DirFilter(exclude_patterns(sync))
        self.ino: INotify | None = None
        self.tree: WatchTree | None = None
        self.pending = proto.Changes()
        self.overflows = 0
        self.needed = 0                    # max_user_watches that would cover the tree
        self.reported: set[bytes] = set()  # blind subtrees already logged
        self.next_root_poll = 0.0
        self.next_unwatched = 0.0
        self.missing_logged = False
        self.walk_started = 0.0
        self.seen: Seen | None = None      # the last seen-point sent to the journal
        self.idle_since: float | None = None
        self.seen_sent = False             # a seen-point went out in this idle stretch

    @property
    def fd(self) -> int | None:
        return self.ino.fileno() if self.ino is not None else None

    def rescan(self, rel: bytes, why: str) -> None:
        """Queue a walk of ``rel`` that finds what changed while events were
        lost: a quick-check rescan plus the files whose ctime is not older
        than the last seen-point, or, with no seen-point, a rescan comparing
        every file's content."""
        assert self.tree is not None
        cutoff = self.seen.cutoff(Seen.now()) if self.seen is not None else None
        if cutoff is None:
            log.info("%s: %s: no earlier state is known, so the rescan compares content "
                     "(--checksum)", self.sync.name, why)
            self.tree.queue(rel, proto.Changes(verify={rel}))
        else:
            log.info("%s: %s: rescanning, comparing the content of files changed since %s",
                     self.sync.name, why,
                     time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(cutoff)))
            self.tree.queue(rel, proto.Changes(trees={rel}), since=cutoff)

    def start(self, now: float) -> bool:
        """Open the inotify instance and queue the walk of the whole tree;
        its rescan follows the walk. False if the source root is not there
        (retried every ROOT_POLL)."""
        if not os.path.isdir(self.sync.source):
            if not self.missing_logged:
                log.error("source %s of %s is missing; waiting for it to come back, nothing "
                          "is deleted on the targets", self.sync.source, self.sync.name)
                self.missing_logged = True
            self.next_root_poll = now + ROOT_POLL
            return False
        self.missing_logged = False
        if self.seen is None:
            self.seen = read_seen(self.journal)
        self.ino = INotify(nonblocking=True)
        self.tree = WatchTree(os.fsencode(self.sync.source), self.ino.add_watch,
                              self.ino.rm_watch, self.filter.excluded)
        self.rescan(b"", "start")
        self.walk_started = now
        self.next_unwatched = now + UNWATCHED_RESCAN
        return True

    def idle(self, outbox: Outbox) -> bool:
        """Every change this sync's watcher saw is acknowledged."""
        return (self.tree is not None and not self.tree.walking and not self.tree.writing
                and not self.pending and outbox.unacked_changes(self.sync.name) == 0)

    def seen_due(self, now: float, outbox: Outbox) -> float | None:
        """When a seen-point should be sent: SEEN_DELAY after the sync went
        idle (once per stretch of idleness: nothing is sent while idle)."""
        if not self.idle(outbox):
            self.idle_since, self.seen_sent = None, False
            return None
        if self.idle_since is None:
            self.idle_since = now
        return None if self.seen_sent else self.idle_since + SEEN_DELAY

    def next_seen(self) -> Seen:
        """A seen-point for now (called when the queue was just found empty),
        held back so that its cutoff is no later than that of the next
        rescan of a blind subtree: their changes are seen only by rescans."""
        point = Seen.now()
        assert self.tree is not None
        if self.tree.failed:
            held = min(self.tree.failed.values()) + MARGIN
            point = Seen(min(point.wall, held), point.boot, point.offset)
        self.seen, self.seen_sent = point, True
        return point

    def stop(self) -> None:
        if self.ino is not None:
            self.ino.close()
        self.ino = self.tree = None

    def read(self, now: float) -> None:
        """One read of the inotify queue into ``pending`` (files still being
        written are held in the tree until closed)."""
        assert self.ino is not None and self.tree is not None
        try:
            data = os.read(self.ino.fileno(), READ_SIZE)
        except BlockingIOError:
            return
        signals = self.tree.apply(parse(data), self.pending, now)
        if signals.overflow:
            self.overflows += 1
            log.warning("%s: inotify queue overflowed (fs.inotify.max_queued_events): "
                        "watching new directories, then rescanning the source",
                        self.sync.name)
            # Directories created while events were dropped have no watch
            # yet: walk again (existing watches are kept), then rescan.
            self.rescan(b"", "events were lost")
        if signals.root_gone:
            log.error("source %s of %s is missing (moved or deleted); waiting for it to "
                      "come back, nothing is deleted on the targets", self.sync.source,
                      self.sync.name)
            self.stop()
            self.missing_logged = True
            self.next_root_poll = time.monotonic() + ROOT_POLL

    def walk(self, now: float) -> None:
        assert self.tree is not None
        was = self.tree.walking
        self.tree.step(self.pending, WALK_BUDGET)
        if was and not self.tree.walking and self.walk_started:
            log.info("%s: watching %s: %d directories in %.1fs", self.sync.name,
                     self.sync.source, len(self.tree.paths), now - self.walk_started)
            self.walk_started = 0.0
        if not self.tree.walking and not self.tree.failed.keys() <= self.reported:
            self.report_watch_limit()

    def report_watch_limit(self) -> None:
        """One clear error when the watch limit left (new) parts of the tree
        blind; not repeated while the same subtrees stay blind."""
        assert self.tree is not None
        self.reported = set(self.tree.failed)
        if not self.tree.failed:
            self.needed = 0
            return

        missing = self.tree.unwatched_dirs()
        self.needed = _current_watch_limit() + missing
        log.error("inotify watch limit reached: %d directories of %s are not watched; "
                  "raise fs.inotify.max_user_watches to at least %d (sysctl -w "
                  "fs.inotify.max_user_watches=%d). Until then they are rescanned every %.0fs",
                  missing, self.sync.source, self.needed, self.needed, UNWATCHED_RESCAN)

    def rescan_unwatched(self, now: float) -> None:
        """Try to watch the blind subtrees again (the limit may have been
        raised), then rescan them: watch first, then scan, as always. Only
        files changed since their previous scan are compared by content."""
        assert self.tree is not None
        self.next_unwatched = now + UNWATCHED_RESCAN
        failed = dict(self.tree.failed)
        self.tree.failed.clear()
        mark = time.time() - MARGIN
        for rel, since in failed.items():
            self.tree.queue(rel, proto.Changes(trees={rel}), since=since, mark=mark)

    def status(self) -> WatchStatus:
        tree = self.tree
        return WatchStatus(sync=self.sync.name, watches=len(tree.paths) if tree else 0,
                           unwatched=len(tree.failed) if tree else 0,
                           watch_limit_needed=self.needed or None, overflows=self.overflows,
                           seen=self.seen.wall if self.seen is not None else None)


class Watcher:
    def __init__(self, conf: cfg.Config) -> None:
        state = StateDir(conf.settings.state_dir)
        self.rt = ChildRuntime(state, "watcher")
        self.sock = new_socket(self.rt.ctx, zmq.DEALER)
        self.monitor = self.sock.get_monitor_socket(zmq.EVENT_CONNECTED)
        self.sock.connect(state.endpoint("ingest"))
        self.syncs = [SyncWatch(s, state) for s in conf.syncs]
        self.outbox = Outbox(int(time.time() * 1000) << 16)  # unique across restarts
        self.connections = 0

    def send(self, msgs: list[proto.Events]) -> None:
        for msg in msgs:
            send(self.sock, msg, log=log)

    def status(self) -> StatusPart:
        return StatusPart(role="watcher", watches=[w.status() for w in self.syncs])

    def busy(self) -> list[SyncWatch]:
        """Syncs with work of their own to do (a walk, a missing source,
        blind subtrees): only these are looked at when no event came, so an
        idle turn costs the same for 1 sync or 100."""
        return [w for w in self.syncs
                if w.tree is None or w.tree.walking or w.tree.failed or w.tree.writing]

    def timeout(self, now: float, beat_in: float, busy: list[SyncWatch]) -> float:
        due = [now + beat_in]
        resend = self.outbox.next_resend()
        if resend is not None:
            due.append(resend)
        for w in self.syncs:
            when = w.seen_due(now, self.outbox)
            if when is not None:
                due.append(when)
        for w in busy:
            if w.tree is None:
                due.append(w.next_root_poll)
            elif w.tree.walking:
                due.append(now)
            else:
                if w.tree.failed:
                    due.append(w.next_unwatched)
                if w.tree.writing:
                    due.append(min(w.tree.writing.values()))
        return max(0.0, min(due) - now)

    def turn(self, readable: list[SyncWatch], busy: list[SyncWatch], now: float) -> None:
        """One round over the syncs that have something to do, each with
        bounded work."""
        for w in dict.fromkeys(readable + busy):
            if w.tree is None:
                if now >= w.next_root_poll and w.start(now):
                    log.info("source %s of %s is back", w.sync.source, w.sync.name)
                continue
            if w in readable and not self.outbox.full(w.sync.name):
                w.read(now)
                if w.tree is None:
                    continue
            if w.tree.walking:
                w.walk(now)
            elif w.tree.failed and now >= w.next_unwatched:
                w.rescan_unwatched(now)
            if w.tree.writing:
                w.tree.release(now, w.pending)
            if w.pending:
                self.send(self.outbox.add(w.sync.name, w.pending, now))
                w.pending = proto.Changes()

    def run(self) -> int:
        now = time.monotonic()
        for w in self.syncs:
            w.start(now)
        poller = zmq.Poller()
        for sock in (self.sock, self.monitor, self.rt.control):
            poller.register(sock, zmq.POLLIN)
        poller.register(self.rt.wakeup, zmq.POLLIN)  # a signal: TERM ends the loop at once
        polled: dict[int, SyncWatch] = {}
        while not self.rt.stopping:
            now = time.monotonic()
            beat_in = self.rt.heartbeat(now)
            # A sync's inotify fd is polled unless too much of it is unacked
            # (polling it without reading would spin).
            wanted = {w.fd: w for w in self.syncs
                      if w.fd is not None and not self.outbox.full(w.sync.name)}
            if wanted.keys() != polled.keys():
                for fd in polled.keys() - wanted.keys():
                    poller.unregister(fd)
                for fd in wanted.keys() - polled.keys():
                    poller.register(fd, zmq.POLLIN)
                polled = wanted
            busy = self.busy()
            events = dict(poller.poll(int(self.timeout(now, beat_in, busy) * 1000) + 1))
            if self.rt.wakeup in events:
                drain_fd(self.rt.wakeup)
            now = time.monotonic()
            if self.sock in events:
                for _peer, msg in receive(self.sock, log):
                    if isinstance(msg, proto.Ack):
                        self.outbox.ack(msg.seq)
            if self.monitor in events:
                self.on_connected(now)
            if self.rt.control in events:
                self.rt.on_control(log, self.status)
            readable = [polled[fd] for fd in events if isinstance(fd, int) and fd in polled]
            self.turn(readable, busy, now)
            self.send(self.outbox.due(now))
            self.send_seen(now, readable)
        self.flush_writing()
        self.final_seen()
        for w in self.syncs:
            w.stop()
        self.monitor.close()
        self.rt.close()
        return 0

    def send_seen(self, now: float, readable: list[SyncWatch]) -> None:
        """Seen-points of the syncs that have been idle for SEEN_DELAY: their
        inotify queue was just found empty, so everything before now is in
        the journal (or in messages on their way to it)."""
        for w in self.syncs:
            due = w.seen_due(now, self.outbox)
            if due is not None and now >= due and w not in readable:
                self.send(self.outbox.add(w.sync.name, proto.Changes(), now,
                                          seen=w.next_seen()))

    def flush_writing(self) -> None:
        """At a clean stop: files still held as being written go now (the
        next start would find them by their ctime anyway; this is cheaper)."""
        now = time.monotonic()
        for w in self.syncs:
            if w.tree is not None and w.tree.writing:
                w.tree.release(float("inf"), w.pending)
                self.send(self.outbox.add(w.sync.name, w.pending, now))
                w.pending = proto.Changes()

    def final_seen(self) -> None:
        """At a clean stop: a seen-point for every idle sync, acknowledged
        before we go (a bounded wait), so that the next start compares only
        what changes while syncsup is not running."""
        now = time.monotonic()
        for w in self.syncs:
            if w.idle(self.outbox):
                self.send(self.outbox.add(w.sync.name, proto.Changes(), now,
                                          seen=w.next_seen()))
        deadline = time.monotonic() + FINAL_ACK_WAIT
        while self.outbox.inflight and time.monotonic() < deadline:
            if self.sock.poll(100, zmq.POLLIN):
                for _peer, msg in receive(self.sock, log):
                    if isinstance(msg, proto.Ack):
                        self.outbox.ack(msg.seq)

    def on_connected(self, now: float) -> None:
        """The connection to the collator was made (again): a restarted
        collator lost nothing committed, but everything unacked must go now."""
        made = connections_made(self.monitor)
        reconnected = self.connections + made > 1  # not only the first connection
        self.connections += made
        if made and reconnected:
            self.send(self.outbox.due(now, everything=True))


def _current_watch_limit() -> int:
    try:
        with open("/proc/sys/fs/inotify/max_user_watches") as fh:
            return int(fh.read())
    except (OSError, ValueError):
        return 0


def main(config_path: str, run_id: str) -> int:
    """Run the whole process; ``run_id`` names this run of the supervisor."""
    conf = cfg.load_for_child(config_path)
    setup_logging(conf.settings, "watcher")
    return Watcher(conf).run()
