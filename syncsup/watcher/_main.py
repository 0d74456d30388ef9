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
import time

import zmq

from syncsup import config as cfg
from syncsup import proto, sourceroot
from syncsup.child import ChildRuntime
from syncsup.logs import setup_logging
from syncsup.processes import drain_fd
from syncsup.seen import Seen
from syncsup.sockets import Reconnects, new_socket, receive, send
from syncsup.statedir import StateDir
from syncsup.status import StatusPart, shorten
from syncsup.watcher.core import HELD_MAX
from syncsup.watcher.mounts import mount_points, open_mountinfo, read_mountinfo
from syncsup.watcher.outbox import Outbox
from syncsup.watcher.sync import SyncWatch

__all__ = ["Watcher", "main"]

log = logging.getLogger("syncsup.watcher")

ACK_LAZY = 0.25  # an ack wakes the loop only if it would sleep longer than this
STOP_READS = 16  # reads of a queue at a clean stop (1 MiB each) before it counts as filling


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
            when = w.coalescer.wake_at(reading=self.reads(w),
                                       sending=not self.outbox.full(w.sync.name))
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

    def reads(self, w: SyncWatch) -> bool:
        """Is ``w``'s inotify queue read now? While the collator is behind
        (its unacked messages at their bound), what is read is held here
        rather than left in the kernel's queue: that queue holds a fraction
        of a second of a burst (``max_queued_events``), and an overflow
        costs a rescan of the whole source, where a held path costs about
        a hundred bytes and merges with the next change of the same path.
        Past :data:`HELD_MAX` entries held, the queue is left unread."""
        return w.fd is not None and (not self.outbox.full(w.sync.name)
                                     or w.held.size() < HELD_MAX)

    def send_held(self, w: SyncWatch, now: float, stopping: bool = False) -> None:
        """Send what ``w`` holds if its window ran out (or it stops, or its
        watch did): one message for every change read meanwhile. Not while
        its unacked messages are at their bound (the acks that free them
        wake the loop), unless it stops."""
        if not stopping and w.tree is not None and self.outbox.full(w.sync.name):
            w.coalescer.hold(w.held, now)
            return
        first = w.coalescer.take(w.held, now, stopping or w.tree is None)
        if first is not None:
            # the wall clock of ``first``: ``now`` may be the start of a
            # turn that served other syncs first
            wall = time.time() - (time.monotonic() - first)
            self.send(self.outbox.add(w.sync.name, w.held, now, first=wall))
            w.held = proto.Changes()

    def serve(self, w: SyncWatch, readable: bool, now: float) -> None:
        if w.tree is None:
            if now >= w.root.next_poll:
                w.start(now)
            return
        if readable and self.reads(w):
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
                      if w.fd is not None and self.reads(w) and w.coalescer.polled()}
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
            polled_at = Seen.now() if polled else None
            events = dict(poller.poll(int(timeout * 1000) + 1))
            for fd, w in polled.items():
                if fd not in events and polled_at is not None:
                    # found empty by this poll: what comes later came after
                    # (a directory moved in lists what changed since then)
                    w.drained = polled_at
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
            readable += [w for w in self.syncs if w.coalescer.read_due(now) and self.reads(w)]
            held = [w for w in self.syncs if w.held]
            self.turn(readable, busy + held, now)
            if now >= self.next_root_check:
                self.check_roots(now)
            self.send(self.outbox.due(now))
            self.send_seen(now, readable)
        self.final_seen(unread=self.flush_held())
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

    def flush_held(self) -> set[str]:
        """At a clean stop: what the kernel queue still holds is read (a
        queue read at the coalescer's pace holds what came since its last
        read), then files still held as being written, and changes held to
        be sent together, go now (the next start would find them by their
        ctime anyway; this is cheaper). Returns the syncs whose queue could
        not be emptied."""
        now = time.monotonic()
        unread = set()
        for w in self.syncs:
            if not self.read_at_stop(w, now):
                unread.add(w.sync.name)
            if w.tree is not None and w.tree.writing:
                w.held.update(w.tree.release(float("inf"))[0])
            self.send_held(w, now, stopping=True)
        return unread

    def read_at_stop(self, w: SyncWatch, now: float) -> bool:
        """Read what ``w``'s kernel queue holds into ``w.held``, at most
        :data:`STOP_READS` times; True when it was found empty (or ``w``
        has no queue). After each read the coalescer dates what was read,
        so that a message never says its changes came later than they did."""
        for _ in range(STOP_READS):
            if w.tree is None or w.ino is None:
                return True
            try:
                if w.read(now) == 0:
                    return True
            except OSError as exc:
                log.warning("%s: reading its inotify queue at the stop failed: %s", w.sync.name,
                            exc)
                return False
            self.send_held(w, now)
        return False  # still filling

    def final_seen(self, unread: set[str]) -> None:
        """At a clean stop: a seen-point for every idle sync, acknowledged
        before we go (a bounded wait), so that the next start compares only
        what changes while syncsup is not running. What :meth:`flush_held`
        just sent is acknowledged first: a sync is idle only then. Its queue
        is read once more right before: what came during that wait goes
        instead, and that sync gets no seen-point. A sync that gets none
        (changes still coming, a walk a read asked for, unacknowledged
        messages) is compared from its previous seen-point at the next
        start, as after a crash."""
        deadline = time.monotonic() + self.t.final_ack_wait
        self.wait_acks(deadline)
        now = time.monotonic()
        for w in self.syncs:
            # idle before the read and after it: what the read found may
            # have been sent at once (unacknowledged), or asked for a walk,
            # or stopped the watch
            if (w.idle(self.outbox) and w.sync.name not in unread
                    and self.read_at_stop(w, now) and w.idle(self.outbox)):
                self.send(self.outbox.add(w.sync.name, proto.Changes(), now,
                                          seen=w.next_seen()))
                continue
            self.send_held(w, now, stopping=True)
            if w.tree is not None:
                log.info("%s: still busy at the stop: no seen-point; the next start "
                         "compares what changed since the previous one", w.sync.name)
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


def main(config_path: str, run_id: str) -> int:
    """Run the whole process; ``run_id`` names this run of the supervisor."""
    conf = cfg.load_for_child(config_path)
    setup_logging(conf.settings, "watcher")
    return Watcher(conf).run()
