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
from syncsup import proto, sourceroot
from syncsup.child import ChildRuntime
from syncsup.filters import DirFilter, exclude_patterns
from syncsup.logs import setup_logging
from syncsup.processes import drain_fd
from syncsup.seen import Seen, read_seen
from syncsup.sockets import Reconnects, new_socket, receive, send
from syncsup.statedir import StateDir
from syncsup.status import MAX_BLIND_LISTED, BlindStatus, StatusPart, WatchStatus, shorten
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
from syncsup.watcher.mounts import (
    ancestors,
    mount_points,
    open_mountinfo,
    read_mountinfo,
    under,
)
from syncsup.watcher.outbox import Outbox
from syncsup.watcher.tree import (
    BLIND_REASONS,
    MOUNT,
    REASON_WORDS,
    WATCH_LIMIT,
    WatchTree,
    show,
)

__all__ = ["SyncWatch", "Watcher", "main"]

log = logging.getLogger("syncsup.watcher")

_EVENT = struct.Struct("iIII")
READ_SIZE = 1 << 20        # bytes of inotify events read per sync per turn
WALK_BUDGET = 2000         # watches placed per sync per turn
ACK_LAZY = 0.25            # an ack wakes the loop only if it would sleep longer than this


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
        self.coalescer = Coalescer(hold_window(sync.delay))  # when to read, when to send
        self.overflows = 0
        self.needed = 0                    # max_user_watches that would cover the tree
        self.blind_reports = BlindReports()  # blind subtrees already logged
        self.next_unwatched = 0.0
        self.next_mount_rescan = 0.0
        self.root = RootWatch(str(sync.source), sync.name, self.t.root_poll)
        self.failure: str | None = None     # the last error that stopped this watch
        self.mounts: set[bytes] = set()     # mount points inside the source (relative)
        self.walk_started = 0.0
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
            _say(verdict)
            return False
        _say(verdict)
        if self.seen.last is None:
            self.seen.last = read_seen(self.journal)
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

    def read(self, now: float) -> None:
        """One read of the inotify queue into ``held`` (files still being
        written are held in the tree until closed)."""
        assert self.ino is not None and self.tree is not None
        try:
            data = os.read(self.ino.fileno(), READ_SIZE)
        except BlockingIOError:
            self.coalescer.read_done(now, 0)
            return
        self.coalescer.read_done(now, len(data))
        changes, signals = self.tree.apply(parse(data), now)
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

    def root_gone(self, now: float, why: str) -> None:
        """The watched root is gone (inotify said so, or the walk found no
        directory there): wait for one, as at a start."""
        state, _ = sourceroot.inspect(self.sync.source)
        self.stop()
        _say(self.root.gone(now, state, why))

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


class Watcher:
    def __init__(self, conf: cfg.Config) -> None:
        state = StateDir(conf.settings.state_dir)
        self.rt = ChildRuntime(state, "watcher", conf.timings.heartbeat_interval)
        self.sock = new_socket(self.rt.ctx, zmq.DEALER)
        self.monitor = self.sock.get_monitor_socket(zmq.EVENT_CONNECTED)
        self.sock.connect(state.endpoint("ingest"))
        self.t = conf.timings
        self.syncs = [SyncWatch(s, state, conf.timings) for s in conf.syncs]
        self.outbox = Outbox(int(time.time() * 1000) << 16,  # unique across restarts
                             conf.timings.resend_after)
        self.reconnects = Reconnects(self.monitor)
        self.next_root_check = 0.0
        self.mountinfo = open_mountinfo()
        if self.mountinfo is not None:
            self.on_mounts()  # the mount points as they are now: nothing changed yet

    def on_mounts(self) -> None:
        """The mount table changed (or is read for the first time)."""
        assert self.mountinfo is not None
        try:
            points = mount_points(read_mountinfo(self.mountinfo))
        except OSError as exc:
            log.warning("cannot read the mount table: %s", exc)
            return
        for w in self.syncs:
            w.mounts_changed(points)

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
                if w.tree is None or w.tree.walking or w.tree.blind or w.tree.writing]

    def timeout(self, now: float, beat_in: float, busy: list[SyncWatch]) -> float:
        due = [now + beat_in]
        resend = self.outbox.next_resend()
        if resend is not None:
            due.append(resend)
        for w in self.syncs:
            when = w.seen_due(now, self.outbox)
            if when is not None:
                due.append(when)
            when = w.coalescer.wake_at(reading=w.fd is not None
                                       and not self.outbox.full(w.sync.name))
            if when is not None:
                due.append(when)
        for w in busy:
            if w.tree is None:
                due.append(w.root.next_poll)
            elif w.tree.walking:
                due.append(now)
            else:
                if w.tree.blind:
                    due.append(w.next_unwatched)
                if w.tree.writing:
                    due.append(min(w.tree.writing.values()))
        return max(0.0, min(due) - now)

    def turn(self, readable: list[SyncWatch], busy: list[SyncWatch], now: float) -> None:
        """One round over the syncs that have something to do, each with
        bounded work. An error of the kernel that escapes a sync's own
        handling stops that sync's watch only (logged in one line, started
        again like a missing root): one tree never costs the others theirs."""
        for w in dict.fromkeys(readable + busy):
            try:
                self.serve(w, w in readable, now)
            except OSError as exc:
                if str(exc) != w.failure:  # once, not every root_poll
                    log.error("%s: watching %s failed (%s); starting its watch again every "
                              "%.0fs", w.sync.name, w.sync.source, shorten(str(exc), 300),
                              self.t.root_poll)
                w.failure = str(exc)
                w.stop()
                w.root.next_poll = now + self.t.root_poll
            self.send_held(w, now)

    def send_held(self, w: SyncWatch, now: float, stopping: bool = False) -> None:
        """Send what ``w`` holds if its window ran out (or it stops, or its
        watch did): one message for every change read meanwhile."""
        first = w.coalescer.take(w.held, now, stopping or w.tree is None)
        if first is not None:
            wall = time.time() - (now - first)
            self.send(self.outbox.add(w.sync.name, w.held, now, first=wall))
            w.held = proto.Changes()

    def serve(self, w: SyncWatch, readable: bool, now: float) -> None:
        if w.tree is None:
            if now >= w.root.next_poll:
                w.start(now)
            return
        if readable and not self.outbox.full(w.sync.name):
            w.read(now)
            if w.tree is None:
                return
        if w.tree.walking:
            w.walk(now)
        elif w.tree.blind and now >= w.next_unwatched:
            w.rescan_blind(now)
        elif w.tree.blind or w.blind_reported():
            w.report_blind()  # an event may have ended some (a blind subtree deleted)
        if w.tree is not None and w.tree.writing:
            w.held.update(w.tree.release(now)[0])

    def run(self) -> int:
        now = time.monotonic()
        self.turn([], list(self.syncs), now)  # every sync's first start, contained
        poller = zmq.Poller()
        for sock in (self.monitor, self.rt.control):
            poller.register(sock, zmq.POLLIN)
        acks_polled = False
        poller.register(self.rt.wakeup, zmq.POLLIN)  # a signal: TERM ends the loop at once
        if self.mountinfo is not None:
            poller.register(self.mountinfo, zmq.POLLPRI)  # the mount table changed
        polled: dict[int, SyncWatch] = {}
        while not self.rt.stopping:
            now = time.monotonic()
            beat_in = self.rt.heartbeat(now)
            # A sync's inotify fd is polled unless too much of it is unacked
            # (polling it without reading would spin).
            # A queue read at the coalescer's pace is not polled meanwhile.
            wanted = {w.fd: w for w in self.syncs
                      if w.fd is not None and not self.outbox.full(w.sync.name)
                      and w.coalescer.polled()}
            if wanted.keys() != polled.keys():
                for fd in polled.keys() - wanted.keys():
                    poller.unregister(fd)
                for fd in wanted.keys() - polled.keys():
                    poller.register(fd, zmq.POLLIN)
                polled = wanted
            busy = self.busy()
            timeout = self.timeout(now, beat_in, busy)
            # Acks are read at every wake-up; one wakes the loop only when
            # something waits for it: a full outbox, or a sleep long enough
            # that an idle sync's seen-point would otherwise be late.
            want_acks = timeout > ACK_LAZY or any(self.outbox.full(w.sync.name)
                                                  for w in self.syncs)
            if want_acks != acks_polled:
                if want_acks:
                    poller.register(self.sock, zmq.POLLIN)
                else:
                    poller.unregister(self.sock)
                acks_polled = want_acks
            events = dict(poller.poll(int(timeout * 1000) + 1))
            if self.rt.wakeup in events:
                drain_fd(self.rt.wakeup)
            now = time.monotonic()
            for _peer, msg in receive(self.sock, log):
                if isinstance(msg, proto.Ack):
                    self.outbox.ack(msg.seq)
            if self.monitor in events:
                self.on_connected(now)
            if self.rt.control in events:
                self.rt.on_control(log, self.status)
            if self.mountinfo is not None and self.mountinfo in events:
                self.on_mounts()
            readable = [polled[fd] for fd in events if isinstance(fd, int) and fd in polled]
            readable += [w for w in self.syncs if w.fd is not None and w.coalescer.read_due(now)
                         and not self.outbox.full(w.sync.name)]
            held = [w for w in self.syncs if w.held]
            self.turn(readable, busy + held, now)
            if now >= self.next_root_check:
                self.check_roots(now)
            self.send(self.outbox.due(now))
            self.send_seen(now, readable)
        self.flush_held()
        self.final_seen()
        for w in self.syncs:
            w.stop()
        if self.mountinfo is not None:
            os.close(self.mountinfo)
        self.monitor.close()
        self.rt.close()
        return 0

    def check_roots(self, now: float) -> None:
        """Is each watched root still the directory at its path? A parent
        renamed or a bind mount changed above it sends no event to the
        root's watch. Checked at the pace of the heartbeat, which wakes the
        loop anyway: no extra wake-up for an idle daemon."""
        self.next_root_check = now + self.t.root_check
        for w in self.syncs:
            if w.tree is None:
                continue
            _, st = sourceroot.inspect(w.sync.source)
            if st is None or (st.st_dev, st.st_ino) != w.root.ident:
                w.root_gone(now, "not the directory watched any more: a directory above it "
                                 "moved, or it was replaced")

    def send_seen(self, now: float, readable: list[SyncWatch]) -> None:
        """Seen-points of the syncs that have been idle for ``seen_delay``: their
        inotify queue was just found empty, so everything before now is in
        the journal (or in messages on their way to it)."""
        for w in self.syncs:
            due = w.seen_due(now, self.outbox)
            if due is not None and now >= due and w not in readable:
                self.send(self.outbox.add(w.sync.name, proto.Changes(), now,
                                          seen=w.next_seen()))

    def flush_held(self) -> None:
        """At a clean stop: files still held as being written, and changes
        held to be sent together, go now (the next start would find them by
        their ctime anyway; this is cheaper)."""
        now = time.monotonic()
        for w in self.syncs:
            if w.tree is not None and w.tree.writing:
                w.held.update(w.tree.release(float("inf"))[0])
            self.send_held(w, now, stopping=True)

    def final_seen(self) -> None:
        """At a clean stop: a seen-point for every idle sync, acknowledged
        before we go (a bounded wait), so that the next start compares only
        what changes while syncsup is not running. What :meth:`flush_held`
        just sent is acknowledged first: a sync is idle only then."""
        deadline = time.monotonic() + self.t.final_ack_wait
        self.wait_acks(deadline)
        now = time.monotonic()
        for w in self.syncs:
            if w.idle(self.outbox):
                self.send(self.outbox.add(w.sync.name, proto.Changes(), now,
                                          seen=w.next_seen()))
        self.wait_acks(deadline)

    def wait_acks(self, deadline: float) -> None:
        """Read acks until none is outstanding or ``deadline`` passes."""
        while self.outbox.inflight and time.monotonic() < deadline:
            if self.sock.poll(100, zmq.POLLIN):
                for _peer, msg in receive(self.sock, log):
                    if isinstance(msg, proto.Ack):
                        self.outbox.ack(msg.seq)

    def on_connected(self, now: float) -> None:
        """The connection to the collator was made (again): a restarted
        collator lost nothing committed, but everything unacked must go now."""
        if self.reconnects.again():
            self.send(self.outbox.due(now, everything=True))


def _say(verdict: RootVerdict) -> None:
    if verdict.say is not None:
        log.log(verdict.level, "%s", verdict.say)


def _current_watch_limit() -> int | None:
    """fs.inotify.max_user_watches, or None where it cannot be read."""
    try:
        with open("/proc/sys/fs/inotify/max_user_watches") as fh:
            return int(fh.read())
    except (OSError, ValueError):
        return None


def main(config_path: str, run_id: str) -> int:
    """Run the whole process; ``run_id`` names this run of the supervisor."""
    conf = cfg.load_for_child(config_path)
    setup_logging(conf.settings, "watcher")
    return Watcher(conf).run()
