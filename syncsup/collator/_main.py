"""The collator process: sockets and journal I/O around the pure policy in
``journal`` and ``target``."""

from __future__ import annotations

import logging
import time
from typing import Any

import zmq

from syncsup import config as cfg
from syncsup import proto
from syncsup._runtime import (
    ChildRuntime,
    bind_private,
    decode_logged,
    new_socket,
    recv_trusted,
    setup_logging,
)
from syncsup.collator.journal import CREATED, PATH, TREE, VERIFY, Journal
from syncsup.collator.target import TargetQueue

__all__ = ["Collator", "main"]

log = logging.getLogger("syncsup.collator")

BATCH_LIMIT = 20_000          # paths per transfer
BATCH_BYTES = 4 * 1024 * 1024  # path bytes per transfer
MAX_PENDING = 500_000         # rows per target before collapsing to a rescan


class Collator:
    def __init__(self, conf: cfg.Config, sync: cfg.Sync, run_id: str) -> None:
        self.sync = sync
        self.run_id = run_id
        state_dir = conf.settings.state_dir
        self.rt = ChildRuntime(state_dir, "collator", f"collator:{sync.name}")
        self.journal = Journal(state_dir / f"journal-{sync.name}.db")
        self.journal.forget_targets(t.spec for t in sync.targets)
        self.targets = [TargetQueue(spec=t.spec, delay=sync.delay) for t in sync.targets]
        for q in self.targets:
            q.synced_this_run = self.journal.get_meta(f"synced:{q.spec}") == run_id
            q.paused = self.journal.get_meta(f"paused:{q.spec}") == run_id
        self.ingest = new_socket(self.rt.ctx, zmq.ROUTER)
        self.dispatch = new_socket(self.rt.ctx, zmq.ROUTER)
        for sock, name in ((self.ingest, "ingest"), (self.dispatch, "dispatch")):
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
            bind_private(sock, state_dir, f"{name}-{sync.name}")
        self.next_batch = int(time.time() * 1000)  # unique across restarts
        self.malformed = 0
        self.rescans = 0

    # -- message handlers -------------------------------------------------

    def on_ingest(self, frames: list[bytes]) -> None:
        peer, body = frames[0], frames[1:]
        msg = decode_logged(body, log, "ingest")
        if msg is None:
            self.malformed += 1
            return
        if not isinstance(msg, proto.Events):
            log.warning("dropped unexpected %s on ingest", type(msg).__name__)
            return
        trees, verify = msg.trees, msg.verify
        if b"" in trees + verify and not self.sync.init and not self.init_skipped():
            trees = [t for t in trees if t != b""]
            verify = [t for t in verify if t != b""]
        moves = msg.moves if self.sync.moves_on_target or self.sync.mode == "command" else []
        for q in self.targets:
            q.marked += len(msg.paths) + len(trees) + len(verify)
            q.maybe_pending = True
        self.journal.mark((t.spec for t in self.sync.targets), msg.paths, trees, time.time(),
                          moves=moves, seq=msg.seq,
                          created=msg.created if self.sync.mode == "command" else (),
                          verify=verify)
        self._send(self.ingest, peer, proto.Ack(seq=msg.seq))
        self.rescans += len(trees) + len(verify)
        if trees or verify:
            log.info("rescan requested: %s", ", ".join(
                repr(t.decode(errors="replace") or "/") + (" (verify)" if t in verify else "")
                for t in (verify + trees)[:5]))

    def init_skipped(self) -> bool:
        """``init = false``: the first full rescan of this run is dropped (the
        user vouches that the targets are current); later ones, which follow
        lost events, are kept. Returns True if it was dropped before."""
        key = "init_skipped"
        if self.journal.get_meta(key) == self.run_id:
            return True
        log.info("init = false: skipping the startup sync")
        self.journal.set_meta(key, self.run_id)
        for q in self.targets:
            q.synced_this_run = True
            self.journal.set_meta(f"synced:{q.spec}", self.run_id)
        return False

    def on_dispatch(self, frames: list[bytes]) -> None:
        peer, body = frames[0], frames[1:]
        msg = decode_logged(body, log, "dispatch")
        if msg is None:
            self.malformed += 1
            return
        if isinstance(msg, (proto.Ready, proto.Done)) and not 0 <= msg.target < len(self.targets):
            log.warning("dropped %s for unknown target %d", type(msg).__name__, msg.target)
            return
        if isinstance(msg, proto.Ready):
            released = self.targets[msg.target].on_ready(peer, msg.incarnation)
            if released is not None:
                log.info("target %s: syncer restarted, batch %d goes back to pending",
                         self.targets[msg.target].spec, released.batch_id)
        elif isinstance(msg, proto.Done):
            self.on_done(msg)
        else:
            log.warning("dropped unexpected %s on dispatch", type(msg).__name__)

    def on_control(self, frames: list[bytes]) -> None:
        """An operator command relayed by the supervisor."""
        msg = decode_logged(frames, log, "control")
        if not isinstance(msg, proto.Control):
            return
        queues = [q for q in self.targets if msg.target in ("", q.spec)]
        if msg.command == "resync":
            log.info("resync requested for %s", ", ".join(q.spec for q in queues))
            self.journal.mark((q.spec for q in queues), [], [], time.time(), verify=[b""])
            for q in queues:
                q.maybe_pending = True
                q.release_halt()
        elif msg.command in ("pause", "resume"):
            paused = msg.command == "pause"
            for q in queues:
                q.paused = paused
                if not paused:
                    q.release_halt()
                self.journal.set_meta(f"paused:{q.spec}", self.run_id if paused else "")
            log.info("%s: %s", "paused (changes are still recorded)" if paused else "resumed",
                     ", ".join(q.spec for q in queues))

    def on_done(self, msg: proto.Done) -> None:
        q = self.targets[msg.target]
        now = time.time()
        lease = q.lease
        if lease is not None and lease.batch_id == msg.batch_id:
            q.outcomes[msg.outcome] = q.outcomes.get(msg.outcome, 0) + 1
            q.bytes_sent += max(0, msg.bytes)
        ok = q.finish(msg.batch_id, msg.outcome, msg.error, now)
        if lease is None or lease.batch_id != msg.batch_id:
            log.debug("ignored DONE for unknown batch %d", msg.batch_id)
            return
        if lease.moves and msg.moves_done > 0:
            done = lease.moves[:msg.moves_done]
            self.journal.drop_moves(q.spec, done[-1][0])
            if ok is None and self.sync.moves_on_target:
                # Replayed, but the transfer after it failed: the retry will
                # not carry these renames, so have it verify their
                # destinations itself (see the syncer's --checksum rule).
                self.journal.mark([q.spec], [], [], now, verify=[dst for _, _, dst in done])
        if ok is not None:
            self.journal.complete(q.spec, ok.rows)
            if any(r.kind in (TREE, VERIFY) and r.path == b"" for r in ok.rows):
                q.synced_this_run = True
                self.journal.set_meta(f"synced:{q.spec}", self.run_id)
        else:
            if q.halted:
                log.error("target %s: transfer halted (rc %d): %s; not retrying until "
                          "`syncsup resync` or `syncsup resume`", q.spec, msg.rc, msg.error)
            else:
                log.warning("target %s: transfer %s (rc %d): %s; retrying in %.1fs",
                            q.spec, msg.outcome, msg.rc, msg.error, max(0.0, q.next_try - now))

    # -- dispatch -----------------------------------------------------------

    def dispatch_due(self) -> float:
        """Hand out every batch that is due; return when the next one may
        become due (a delay or backoff running out), for the poll timeout."""
        now = time.time()
        wake = now + 0.5
        for index, q in enumerate(self.targets):
            if q.ready_peer is None or q.lease is not None or q.paused:
                continue
            if not q.maybe_pending:
                continue  # nothing was marked since the journal was last empty
            oldest = self.journal.oldest(q.spec)
            if oldest is None:
                q.maybe_pending = False
                continue
            # max_delays: enough changes flush the batch before its delay;
            # the initial sync never waits for it either.
            flush = q.marked >= self.sync.max_delays or not q.synced_this_run
            if not q.due(oldest, now, flush=flush):
                wake = min(wake, max(oldest + q.delay, q.next_try))
                continue
            rows = self.journal.take(q.spec, BATCH_LIMIT, BATCH_BYTES)
            if not rows:
                continue
            moves = self.journal.take_moves(q.spec, BATCH_LIMIT)
            self.next_batch += 1
            peer = q.ready_peer
            lease = q.start(self.next_batch, rows, now, moves)
            q.marked = 0
            batch = proto.Batch(
                batch_id=lease.batch_id, target=index,
                paths=[r.path for r in rows if r.kind == PATH],
                trees=[r.path for r in rows if r.kind == TREE],
                created=[r.path for r in rows if r.kind == CREATED],
                verify=[r.path for r in rows if r.kind == VERIFY],
                startup=not q.synced_this_run,
                moves=[[a, b] for _, a, b in moves],
            )
            if not self._send(self.dispatch, peer, batch):
                q.lease = None  # syncer gone; wait for its next READY
        return wake

    def _send(self, sock: zmq.Socket[bytes], peer: bytes, msg: proto.Message) -> bool:
        try:
            sock.send_multipart([peer, *proto.encode(msg)], flags=zmq.NOBLOCK)
            return True
        except (zmq.Again, zmq.ZMQError) as exc:
            log.debug("could not send %s: %s", type(msg).__name__, exc)
            return False

    # -- status ----------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        now = time.time()
        targets = []
        for q in self.targets:
            pending = self.journal.pending(q.spec)
            if pending > MAX_PENDING and q.lease is None:
                log.warning("target %s: %d pending paths, collapsing into one rescan",
                            q.spec, pending)
                self.journal.collapse(q.spec, now)
                pending = 1
            oldest = self.journal.oldest(q.spec) if pending else None
            targets.append({
                "target": q.spec,
                "state": q.state(pending, self.journal.has_tree(q.spec)),
                "pending": pending,
                "lag": None if oldest is None else max(0.0, now - oldest),
                "last_sync": q.last_ok,
                "last_error": q.last_error,
                "transfers": dict(q.outcomes),
                "bytes_sent": q.bytes_sent,
            })
        return {"sync": self.sync.name, "targets": targets, "malformed": self.malformed,
                "rescans": self.rescans}

    def run(self) -> int:
        poller = zmq.Poller()
        poller.register(self.ingest, zmq.POLLIN)
        poller.register(self.dispatch, zmq.POLLIN)
        poller.register(self.rt.control, zmq.POLLIN)
        log.info("collator for %s up (%d targets)", self.sync.name, len(self.targets))
        interval = self.sync.full_sync_interval
        next_full = time.monotonic() + interval
        wake = time.time()
        while not self.rt.stopping and self.rt.parent_alive():
            if interval and time.monotonic() >= next_full:
                # A full comparison (with --checksum, as any later rescan) to
                # repair what changed behind our back on either side.
                log.info("full_sync_interval: scheduling a full comparison")
                self.journal.mark((t.spec for t in self.sync.targets), [], [], time.time(),
                                  verify=[b""])
                for q in self.targets:
                    q.maybe_pending = True
                next_full = time.monotonic() + interval
            # Messages wake us at once; otherwise sleep until a batch's delay
            # or backoff runs out, or half a second.
            timeout_ms = min(500, max(1, int((wake - time.time()) * 1000) + 1))
            events = dict(poller.poll(timeout_ms))
            if self.ingest in events:
                for _ in range(1000):
                    try:
                        frames = recv_trusted(self.ingest, log)
                        if frames is not None:
                            self.on_ingest(frames)
                    except zmq.Again:
                        break
            if self.dispatch in events:
                for _ in range(1000):
                    try:
                        frames = recv_trusted(self.dispatch, log)
                        if frames is not None:
                            self.on_dispatch(frames)
                    except zmq.Again:
                        break
            if self.rt.control in events:
                for _ in range(100):
                    try:
                        self.on_control(self.rt.control.recv_multipart(zmq.NOBLOCK))
                    except zmq.Again:
                        break
            wake = self.dispatch_due()
            self.rt.heartbeat(self.info)
        self.journal.close()
        self.rt.close()
        return 0


def main(argv: list[str]) -> int:
    config_path, sync_name, run_id, *_ = argv
    conf = cfg.load_for_child(config_path, sync_name)
    setup_logging(conf.settings, "collator", f"collator:{sync_name}")
    return Collator(conf, conf.sync(sync_name), run_id).run()
