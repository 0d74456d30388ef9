"""The collator's core: journals and target queues of every sync, and the
decisions on them (what to record, what to hand out, what a DONE means).
No sockets: replies go through the ``send`` callable it is given, time
comes from ``clock``, so a test drives it message by message.

Per sync: one journal (``journal-NAME.db``) and one :class:`TargetQueue` per
target. Dispatch looks at every target on every turn, so one sync's huge
batch or failing target never delays another's.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from syncsup import config as cfg
from syncsup import proto
from syncsup.collator.journal import (
    PROVE,
    TREE,
    VERIFY,
    Journal,
    is_damage,
    move_aside,
    to_changes,
)
from syncsup.collator.queue import REPEATS, Retries, TargetQueue
from syncsup.processes import trim_memory
from syncsup.seen import Seen
from syncsup.statedir import StateDir
from syncsup.status import QueueStatus, StatusPart, TargetStatus, shorten

__all__ = ["BATCH_BYTES", "BATCH_LIMIT", "MAX_PENDING", "Collator", "SyncQueues"]

log = logging.getLogger("syncsup.collator")

BATCH_LIMIT = 20_000           # paths per transfer
BATCH_BYTES = 4 * 1024 * 1024  # path bytes per transfer
MAX_PENDING = 500_000          # rows per target before collapsing to a rescan

Send = Callable[[str, bytes, proto.Message], bool]  # (socket, peer, message) -> sent


@dataclass
class SyncQueues:
    """One sync: its journal and a queue per target."""

    sync: cfg.Sync
    journal: Journal
    queues: list[TargetQueue]
    rescans: int = 0
    next_full: float = 0.0  # monotonic time of the next full_sync_interval comparison
    specs: list[str] = field(default_factory=list)
    health: str = "ok"      # the journal's state, for status: ok, rebuilt..., error...
    idle_since: float | None = None  # monotonic: nothing pending since
    recorded: RecentSeqs = field(default_factory=lambda: RecentSeqs())


class RecentSeqs:
    """The sequence numbers of the watcher messages recorded lately. The
    watcher sends a message again when its ack is late (a collator held up
    longer than the resend interval); recording it again would mark its
    paths anew after their batch was already handed out, and each change
    would be transferred, and logged, twice. Sequence numbers are unique
    across watcher restarts; after a collator restart the set starts empty
    and a resent message may be recorded once more, which costs a transfer,
    never a change."""

    KEEP = 4096

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.order: deque[int] = deque()

    def __contains__(self, seq: int) -> bool:
        return seq in self.seen

    def add(self, seq: int) -> None:
        if seq in self.seen:
            return
        self.seen.add(seq)
        self.order.append(seq)
        if len(self.order) > self.KEEP:
            self.seen.discard(self.order.popleft())


def _no_space(path: str) -> bool:
    """Is the file system holding ``path`` (nearly) full? SQLite reports a
    full disk as an I/O error when the WAL index cannot grow."""
    try:
        st = os.statvfs(os.path.dirname(path))
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 1024 * 1024


def _brief(error: str) -> str:
    """An error for a log line: one line, bounded, cut in the middle (status
    --json keeps the whole text)."""
    return shorten(" | ".join(error.splitlines()), 300)


def _raise(exc: BaseException) -> Callable[[SyncQueues], None]:
    def again(_s: SyncQueues) -> None:
        raise exc
    return again


class Collator:
    def __init__(self, conf: cfg.Config, state: StateDir, run_id: str, send: Send,
                 clock: Callable[[], float] = time.time) -> None:
        self.run_id = run_id
        self.send = send
        self.clock = clock
        self.journal_idle = conf.timings.journal_idle
        self.syncs: dict[str, SyncQueues] = {}
        now = clock()
        for sync in conf.syncs:
            journal = Journal(state.journal(sync.name))
            specs = [t.spec for t in sync.targets]
            queues = [TargetQueue(spec=spec, delay=sync.delay,
                                  backoff=Retries.of(conf.timings)) for spec in specs]
            s = self.syncs[sync.name] = SyncQueues(sync, journal, queues, specs=specs)
            self._safely(s, self._load)
        self.next_batch = int(now * 1000)  # unique across restarts

    def _load(self, s: SyncQueues) -> None:
        """What this run already did for the sync (a collator restart)."""
        s.journal.forget_targets(s.specs)
        for q in s.queues:
            q.synced_this_run = s.journal.get_meta(f"synced:{q.spec}") == self.run_id
            q.paused = s.journal.get_meta(f"paused:{q.spec}") == self.run_id

    # -- the journal's health ---------------------------------------------------------

    def _safely(self, s: SyncQueues, op: Callable[..., object], *args: object,
                heals: bool = True) -> bool:
        """Run ``op`` on the sync's journal. A damaged journal is moved aside
        and rebuilt; a full disk (or any other SQLite error) is reported in
        status and left to be retried: the caller does not ack, commit or
        forget anything, so nothing is lost. True if ``op`` succeeded.
        Only an ``op`` that writes ``heals`` the journal's health: reads
        still work on a full disk, and an error that a read cleared would be
        logged again at the next failed write."""
        try:
            op(s, *args)
        except sqlite3.Error as exc:
            if is_damage(exc):
                self._rebuild(s, exc)
            else:
                self._trouble(s, exc)
            return False
        if heals and s.health.startswith("error"):
            log.info("%s: the journal works again", s.sync.name)
            s.health = "ok"
        return True

    def _trouble(self, s: SyncQueues, exc: sqlite3.Error) -> None:
        name = getattr(exc, "sqlite_errorname", "") or ""
        full = name == "SQLITE_FULL" or (name.startswith("SQLITE_IOERR") and _no_space(
            s.journal.path))
        what = "disk full under state_dir" if full else f"{exc} ({name or type(exc).__name__})"
        health = f"error: {what}; retrying"
        if s.health != health:
            log.error("%s: cannot write the journal %s: %s; changes are kept by the "
                      "watcher and retried", s.sync.name, s.journal.path, what)
        s.health = health
        s.journal.release()

    def _rebuild(self, s: SyncQueues, exc: sqlite3.Error) -> None:
        s.journal.release()
        stamp = time.strftime("%Y%m%d-%H%M%S")
        try:
            aside = str(move_aside(s.journal.path, stamp))
        except OSError as err:
            self._trouble(s, sqlite3.OperationalError(f"cannot move the damaged journal "
                                                      f"aside: {err.strerror}"))
            return
        log.error("%s: the journal was damaged (%s): moved to %s; a new one starts, and "
                  "every target is compared in full", s.sync.name, exc, aside)
        s.journal = Journal(s.journal.path)
        s.health = f"rebuilt {time.strftime('%Y-%m-%d %H:%M:%S')}: the damaged journal " \
                   f"was moved to {aside}"
        for q in s.queues:
            q.synced_this_run = False
            q.lease = None
        try:
            self.mark(s, proto.Changes(verify={b""}))
        except sqlite3.Error as again:
            self._trouble(s, again)

    def close(self) -> None:
        for s in self.syncs.values():
            s.journal.close()

    # -- ingest ------------------------------------------------------------------

    def on_events(self, peer: bytes, msg: proto.Events) -> None:
        """Record a watcher's changes in one transaction, then ack."""
        s = self.syncs.get(msg.sync)
        if s is None:
            log.warning("dropped EVENTS for unknown sync %r", msg.sync)
            return
        if msg.seq and msg.seq in s.recorded:
            log.debug("%s: message %d sent again, already recorded", s.sync.name, msg.seq)
            self.send("ingest", peer, proto.Ack(seq=msg.seq))
            return
        changes = msg.changes
        if not s.sync.records_moves:
            changes.moves = []
        if not s.sync.runs_commands:
            changes.created = set()

        def record(s: SyncQueues) -> None:
            if b"" in changes.trees | changes.verify | changes.prove and not s.sync.init and (
                    not self._init_skipped(s)):
                changes.trees.discard(b"")
                changes.verify.discard(b"")
                changes.prove.discard(b"")
            self.mark(s, changes, seq=msg.seq, seen=msg.seen, first=msg.first)

        if not self._safely(s, record):
            return  # not acked: the watcher sends it again
        if msg.seq:
            s.recorded.add(msg.seq)
        # The batch first: the ack wakes the watcher, which would compete
        # for a CPU with the syncer starting on the change.
        self.dispatch_due()
        self.send("ingest", peer, proto.Ack(seq=msg.seq))
        rescans = sorted(changes.verify) + sorted(changes.prove) + sorted(changes.trees)
        s.rescans += len(rescans)
        if rescans:
            log.info("%s: rescan requested: %s", s.sync.name, ", ".join(
                repr(shorten(t.decode(errors="replace"), 120) or "/")
                + (" (verify)" if t in changes.verify else " (prove)" if t in changes.prove
                   else "") for t in rescans[:5]))

    def mark(self, s: SyncQueues, changes: proto.Changes, seq: int = 0,
             queues: list[TargetQueue] | None = None, seen: Seen | None = None,
             first: float | None = None) -> None:
        """Record ``changes`` for ``queues`` (default: every target). Their
        ``delay`` counts from ``first`` (when the watcher read the oldest of
        them, before holding them to send together), never from later than
        now."""
        now = self.clock()
        stamp = now if first is None else min(now, first)
        targets = s.queues if queues is None else queues
        s.journal.mark((q.spec for q in targets), changes, stamp, seq=seq, seen=seen,
                       follow_moves=not s.sync.runs_commands)
        if not changes:
            return
        for q in targets:
            q.marked += changes.size()
            q.maybe_pending = True
            q.note_change(now)

    def _init_skipped(self, s: SyncQueues) -> bool:
        """``init = false``: the first full rescan of this run is dropped (the
        user vouches that the targets are current); later ones, which follow
        lost events, are kept. Returns True if it was dropped before."""
        key = "init_skipped"
        if s.journal.get_meta(key) == self.run_id:
            return True
        log.info("%s: init = false: skipping the startup sync", s.sync.name)
        s.journal.set_meta(key, self.run_id)
        for q in s.queues:
            q.synced_this_run = True
            s.journal.set_meta(f"synced:{q.spec}", self.run_id)
        return False

    # -- dispatch ------------------------------------------------------------------

    def _queue(self, sync: str, target: int, what: str) -> tuple[SyncQueues, TargetQueue] | None:
        s = self.syncs.get(sync)
        if s is None or not 0 <= target < len(s.queues):
            log.warning("dropped %s for unknown target %s/%d", what, sync, target)
            return None
        return s, s.queues[target]

    def on_ready(self, peer: bytes, msg: proto.Ready) -> None:
        found = self._queue(msg.sync, msg.target, "READY")
        if found is None:
            return
        _s, q = found
        released = q.on_ready(peer, msg.incarnation)
        if released is not None:
            log.info("target %s: syncer restarted, batch %d goes back to pending", q.spec,
                     released.batch_id)

    def on_done(self, msg: proto.Done, peer: bytes | None = None) -> None:
        """A batch's outcome; with an incarnation (and the syncer's ``peer``)
        also the target's next credit, taken once the outcome is recorded."""
        found = self._queue(msg.sync, msg.target, "DONE")
        if found is None:
            return
        self._done(found, msg)
        if peer is not None and msg.incarnation:
            self.on_ready(peer, proto.Ready(sync=msg.sync, target=msg.target,
                                            incarnation=msg.incarnation))

    def _done(self, found: tuple[SyncQueues, TargetQueue], msg: proto.Done) -> None:
        s, q = found
        now = self.clock()
        lease = q.lease
        if lease is None or lease.batch_id != msg.batch_id:
            log.debug("ignored DONE for unknown batch %d", msg.batch_id)
            return
        q.bytes_sent += max(0, msg.bytes)
        ok = q.finish(msg.batch_id, msg.outcome, msg.error, now, msg.rc)

        def settle(s: SyncQueues) -> None:
            if lease.moves and msg.moves_done > 0:
                done = lease.moves[:msg.moves_done]
                s.journal.drop_moves(q.spec, done[-1][0])
                if ok is None and s.sync.moves_on_target:
                    # Replayed, but the transfer after it failed: the retry
                    # will not carry these renames, so have it verify their
                    # destinations itself (see the syncer's --checksum rule).
                    self.mark(s, proto.Changes(verify={dst for _, _, dst in done}), queues=[q])
            if ok is not None:
                s.journal.complete(q.spec, ok.rows)
                if any(r.kind in (TREE, VERIFY, PROVE) and r.path == b"" for r in ok.rows):
                    q.synced_this_run = True
                    s.journal.set_meta(f"synced:{q.spec}", self.run_id)

        # If the journal cannot be written now, the rows stay and are sent
        # again later: at-least-once, never lost. Later, not at once: the
        # same batch handed out again straight away would loop for as long
        # as the disk stays full.
        settled = self._safely(s, settle)
        if ok is not None:
            if not settled:
                q.defer(now, f"journal: {s.health}")
            return
        if q.halted:
            log.error("target %s: transfer halted (rc %d): %s; not retrying until "
                      "`syncsup resync` or `syncsup resume`", q.spec, msg.rc, _brief(msg.error))
        elif q.stuck and q.repeats == REPEATS:
            log.error("target %s: the same failure %d times in a row (rc %d): %s; retried "
                      "only when something changes for it, or in %.0fs", q.spec, q.repeats,
                      msg.rc, _brief(msg.error), max(0.0, q.next_try - now))
        elif not q.stuck:
            log.warning("target %s: transfer %s (rc %d): %s; retrying in %.1fs", q.spec,
                        msg.outcome.value, msg.rc, _brief(msg.error),
                        max(0.0, q.next_try - now))

    def dispatch_due(self) -> float | None:
        """Hand out every batch that is due; return when the next one may
        become due (a delay or backoff running out), or None if nothing is
        waiting for time (for the poll timeout: an idle collator sleeps)."""
        now = self.clock()
        wake: float | None = None
        for s in self.syncs.values():
            for index, q in enumerate(s.queues):
                if q.ready_peer is None or q.lease is not None or q.paused or q.halted:
                    continue
                if not q.maybe_pending:
                    continue  # nothing was marked since the journal was last empty
                if q.delay == 0 and now >= q.next_try:
                    # Nothing to wait for: take what is there (one query
                    # fewer on the path of every change).
                    self._safely(s, self._hand_out, index, q, now, heals=False)
                    continue
                try:
                    oldest = s.journal.oldest(q.spec)
                except sqlite3.Error as exc:
                    self._safely(s, _raise(exc))
                    continue
                if oldest is None:
                    q.maybe_pending = False
                    continue
                # max_delays: enough changes flush the batch before its delay;
                # the initial sync never waits for it either.
                flush = q.marked >= s.sync.max_delays or not q.synced_this_run
                if not q.due(oldest, now, flush=flush):
                    at = q.next_try if flush else max(oldest + q.delay, q.next_try)
                    wake = at if wake is None else min(wake, at)
                    continue
                self._safely(s, self._hand_out, index, q, now, heals=False)
        return wake

    def release_idle(self, now: float) -> float | None:
        """Close the journals of syncs with nothing pending for
        ``journal_idle`` seconds (an open connection costs 0.2 MB; reopening one
        costs a millisecond, so not after every change). Returns when to look
        again (None: nothing open)."""
        released, wake = False, None
        for s in self.syncs.values():
            if not s.journal.is_open:
                continue
            if any(q.maybe_pending or q.lease for q in s.queues):
                s.idle_since = None
                continue
            if s.idle_since is None:
                s.idle_since = now
            if now - s.idle_since >= self.journal_idle:
                s.journal.release()  # empty: no need to hold a connection open
                released = True
            else:
                due = s.idle_since + self.journal_idle
                wake = due if wake is None else min(wake, due)
        if released:
            trim_memory()  # the closed connections' memory
        return wake

    def _hand_out(self, s: SyncQueues, index: int, q: TargetQueue, now: float) -> None:
        rows = s.journal.take(q.spec, BATCH_LIMIT, BATCH_BYTES)
        if not rows:
            q.maybe_pending = False
            return
        # Counting is for big queues only: with more than MAX_PENDING rows,
        # take() returns at least this many (paths are at most 4096 bytes).
        if len(rows) >= min(MAX_PENDING, BATCH_LIMIT, BATCH_BYTES // 4096):
            pending = s.journal.pending(q.spec)
            if pending > MAX_PENDING:
                log.warning("target %s: %d pending paths, collapsing into one rescan", q.spec,
                            pending)
                s.journal.collapse(q.spec, now)
                rows = s.journal.take(q.spec, BATCH_LIMIT, BATCH_BYTES)
        moves = s.journal.take_moves(q.spec, BATCH_LIMIT, BATCH_BYTES)
        self.next_batch += 1
        peer = q.ready_peer
        assert peer is not None
        lease = q.start(self.next_batch, rows, now, moves)
        q.marked = 0
        batch = proto.Batch(batch_id=lease.batch_id, sync=s.sync.name, target=index,
                            startup=not q.synced_this_run, changes=to_changes(rows, moves),
                            generation=max((r.gen for r in rows), default=0),
                            journal=s.journal.epoch)
        if not self.send("dispatch", peer, batch):
            q.lease = None  # syncer gone; wait for its next READY

    # -- operators and time ---------------------------------------------------------

    def on_control(self, msg: proto.Control) -> None:
        """An operator command relayed by the supervisor."""
        for s in self.syncs.values():
            if msg.sync not in ("", s.sync.name):
                continue
            queues = [q for q in s.queues if msg.target_spec in ("", q.spec)]
            if not queues:
                continue
            if msg.command is proto.Command.RESYNC:
                log.info("resync requested for %s", ", ".join(q.spec for q in queues))
                self._safely(s, self.mark, proto.Changes(verify={b""}), 0, queues)
                for q in queues:
                    q.release_halt()
            else:
                paused = msg.command is proto.Command.PAUSE
                for q in queues:
                    q.paused = paused
                    if not paused:
                        q.release_halt()
                    self._safely(s, self._remember_pause, q.spec, paused)
                log.info("%s: %s", "paused (changes are still recorded)" if paused else "resumed",
                         ", ".join(q.spec for q in queues))

    def _remember_pause(self, s: SyncQueues, spec: str, paused: bool) -> None:
        s.journal.set_meta(f"paused:{spec}", self.run_id if paused else "")

    def periodic(self, now_mono: float) -> float | None:
        """``full_sync_interval``: schedule a full comparison when due; the
        monotonic time of the next one (None if none is configured)."""
        wake: float | None = None
        for s in self.syncs.values():
            interval = s.sync.full_sync_interval
            if not interval:
                continue
            if s.next_full == 0.0:
                s.next_full = now_mono + interval
            if now_mono >= s.next_full:
                # A full comparison (with --checksum, as any later rescan) to
                # repair what changed behind our back on either side.
                log.info("%s: full_sync_interval: scheduling a full comparison", s.sync.name)
                self._safely(s, self.mark, proto.Changes(verify={b""}))
                s.next_full = now_mono + interval
            wake = s.next_full if wake is None else min(wake, s.next_full)
        return wake

    # -- status (never changes anything) ---------------------------------------------

    def status(self) -> StatusPart:
        now = self.clock()
        out = []
        for s in self.syncs.values():
            targets = []
            for q in s.queues:
                # A queue with nothing marked since it was seen empty is
                # empty: no need to open its journal to say so.
                known = q.maybe_pending or q.lease is not None
                pending, oldest, tree = 0, None, False
                try:
                    if known:
                        pending = s.journal.pending(q.spec)
                    if pending:
                        oldest = s.journal.oldest(q.spec)
                        tree = s.journal.has_tree(q.spec)
                except sqlite3.Error:
                    pass  # its health says why (status never changes anything)
                targets.append(TargetStatus(
                    target=q.spec, state=q.state(pending, tree),
                    pending=pending, lag=None if oldest is None else max(0.0, now - oldest),
                    last_sync=q.last_ok, last_error=q.last_error, transfers=dict(q.outcomes),
                    bytes_sent=q.bytes_sent))
            out.append(QueueStatus(sync=s.sync.name, rescans=s.rescans, journal=s.health,
                                   targets=targets))
        return StatusPart(role="collator", queues=out)
