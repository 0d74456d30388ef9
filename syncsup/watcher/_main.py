"""The watcher process: the inotify fd and the ingest socket.

Every EVENTS message stays in ``inflight`` until the collator acks it, and
is resent when the ack does not come (the collator may have restarted). When
too many messages are unacked the watcher stops reading inotify: the kernel
queue absorbs the burst, and if it overflows, the overflow becomes a rescan.
"""

from __future__ import annotations

import logging
import os
import struct
import time
from typing import Any

import zmq
from inotify_simple import INotify

from syncsup import config as cfg
from syncsup import proto
from syncsup._runtime import ChildRuntime, decode_logged, endpoint, new_socket, setup_logging
from syncsup.watcher.filters import DirFilter, exclude_patterns
from syncsup.watcher.tree import Changes, WatchTree

__all__ = ["Watcher", "main"]

log = logging.getLogger("syncsup.watcher")

_EVENT = struct.Struct("iIII")
MAX_INFLIGHT = 8           # unacked EVENTS messages before we stop reading
RESEND_AFTER = 2.0         # seconds without ack before a resend
MAX_PATHS_PER_MSG = 20_000
ROOT_POLL = 2.0            # seconds between checks for a missing source root
SETTLE = 0.002             # seconds to let an event's companions arrive
UNWATCHED_RESCAN = 10.0    # seconds between rescans of subtrees we could not watch


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


class Watcher:
    def __init__(self, conf: cfg.Config, sync: cfg.Sync) -> None:
        self.sync = sync
        self.rt = ChildRuntime(conf.settings.state_dir, "watcher", f"watcher:{sync.name}")
        self.sock = new_socket(self.rt.ctx, zmq.DEALER)
        self.sock.connect(endpoint(conf.settings.state_dir, f"ingest-{sync.name}"))
        self.ino = INotify(nonblocking=True)
        self.filter = DirFilter(exclude_patterns(sync))
        self.tree = WatchTree(os.fsencode(sync.source), self.ino.add_watch, self.ino.rm_watch,
                              self.progress, self.filter.excluded)
        self._last_progress = time.monotonic()
        self.seq = int(time.time() * 1000) << 16  # unique across restarts
        self.inflight: dict[int, tuple[float, list[bytes]]] = {}
        self.pending = Changes()
        self.overflows = 0
        self.commands = sync.mode == "command"
        self.clean_mark = conf.settings.state_dir / f"clean-{sync.name}"
        self.needed = 0  # max_user_watches that would cover the whole tree
        self.reported: set[bytes] = set()  # blind subtrees already logged

    def send(self, changes: Changes) -> None:
        paths, trees = sorted(changes.paths), sorted(changes.trees)
        for i in range(0, max(len(paths), 1), MAX_PATHS_PER_MSG):
            self.seq += 1
            frames = proto.encode(proto.Events(
                seq=self.seq, paths=paths[i:i + MAX_PATHS_PER_MSG], trees=trees if i == 0 else [],
                moves=[[a, b] for a, b in changes.moves] if i == 0 else [],
                verify=sorted(changes.verify) if i == 0 else [],
                created=sorted(changes.created) if i == 0 and self.commands else []))
            self.inflight[self.seq] = (time.monotonic(), frames)
            self.sock.send_multipart(frames)

    def on_ack(self, frames: list[bytes]) -> None:
        msg = decode_logged(frames, log, "ingest")
        if isinstance(msg, proto.Ack):
            self.inflight.pop(msg.seq, None)

    def resend(self) -> None:
        now = time.monotonic()
        for seq, (sent, frames) in list(self.inflight.items()):
            if now - sent >= RESEND_AFTER:
                log.debug("resending unacked message %d", seq)
                self.inflight[seq] = (now, frames)
                self.sock.send_multipart(frames)

    def read_events(self) -> None:
        while len(self.inflight) < MAX_INFLIGHT:
            try:
                data = os.read(self.ino.fileno(), 1 << 20)
            except BlockingIOError:
                break
            changes = Changes()
            self.tree.apply(parse(data), changes)
            if changes.overflow:
                self.overflows += 1
                log.warning("inotify queue overflowed (fs.inotify.max_queued_events): "
                            "watching new directories, then rescanning the whole source")
                # Directories created while events were dropped have no watch
                # yet: walk again (existing watches are kept), then verify.
                self.tree.watch(b"")
                changes.verify.add(b"")
            if changes.root_gone:
                raise SystemExit(f"source root {self.sync.source} was moved or deleted")
            self.pending.paths |= changes.paths
            self.pending.trees |= changes.trees
            self.pending.verify |= changes.verify
            self.pending.moves += changes.moves
            self.pending.created |= changes.created
            if len(self.pending.paths) >= MAX_PATHS_PER_MSG:
                break
        if self.pending:
            self.send(self.pending)
            self.pending = Changes()

    def report_watch_limit(self) -> None:
        """One clear error when the watch limit left (new) parts of the tree
        blind; not repeated while the same subtrees stay blind."""
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

    def rescan_unwatched(self) -> None:
        """Try to watch the blind subtrees again (the limit may have been
        raised), then rescan them: watch first, then scan, as always."""
        failed = set(self.tree.failed)
        self.tree.failed.clear()
        for rel in failed:
            self.tree.watch(rel)
        if not self.tree.failed:
            log.info("all directories of %s are watched again", self.sync.source)
            self.needed = 0
        self.send(Changes(verify=failed))

    def info(self) -> dict[str, Any]:
        return {"sync": self.sync.name, "watches": len(self.tree.paths),
                "unwatched": len(self.tree.failed), "watch_limit_needed": self.needed,
                "overflows": self.overflows,
                "inflight": len(self.inflight)}

    def _take_clean_mark(self) -> bool:
        """Did the previous watcher of this sync stop with nothing unacked?
        The mark is consumed: only a clean stop writes it again."""
        try:
            self.clean_mark.unlink()
            return True
        except FileNotFoundError:
            return False

    def progress(self, watches: int) -> None:
        """Called per new watch: log progress of long walks, keep beating."""
        now = time.monotonic()
        if now - self._last_progress >= 5:
            self._last_progress = now
            log.info("placing watches: %d directories so far", watches)
        self.rt.heartbeat(self.info)

    def wait_for_source(self) -> bool:
        """Block (heartbeating) until the source root is a directory."""
        warned = False
        while not os.path.isdir(self.sync.source):
            if not warned:
                log.error("source %s is missing; waiting for it to come back, "
                          "nothing is deleted on the targets", self.sync.source)
                warned = True
            self.rt.heartbeat(self.info)
            time.sleep(ROOT_POLL)
            if self.rt.stopping or not self.rt.parent_alive():
                return False
        return True

    def run(self) -> int:
        if not self.wait_for_source():
            return 0
        started = time.monotonic()
        self.tree.watch(b"")
        log.info("watching %s: %d directories in %.1fs", self.sync.source, len(self.tree.paths),
                 time.monotonic() - started)
        self.report_watch_limit()
        next_unwatched = time.monotonic() + UNWATCHED_RESCAN
        # Watches first, then the full rescan: nothing falls in between. After
        # an unclean end (crash, kill, unacked events) events were lost, so
        # the rescan compares content, not just size and mtime.
        clean = self._take_clean_mark()
        if not clean:
            log.info("previous watcher did not stop cleanly: the startup rescan compares "
                     "content (--checksum)")
        self.send(Changes(trees={b""}) if clean else Changes(verify={b""}))
        # Two pollers: while too much is unacked, the inotify fd is not
        # polled at all (polling it without reading would spin).
        acks_only = zmq.Poller()
        acks_only.register(self.sock, zmq.POLLIN)
        both = zmq.Poller()
        both.register(self.sock, zmq.POLLIN)
        both.register(self.ino.fileno(), zmq.POLLIN)
        while not self.rt.stopping and self.rt.parent_alive():
            poller = both if len(self.inflight) < MAX_INFLIGHT else acks_only
            events = dict(poller.poll(1000))
            if self.sock in events:
                while True:
                    try:
                        self.on_ack(self.sock.recv_multipart(zmq.NOBLOCK))
                    except zmq.Again:
                        break
            self.read_events()
            if not self.tree.failed <= self.reported:
                self.report_watch_limit()
            if self.tree.failed and time.monotonic() >= next_unwatched:
                self.rescan_unwatched()
                next_unwatched = time.monotonic() + UNWATCHED_RESCAN
            self.resend()
            self.rt.heartbeat(self.info)
        if not self.inflight and not self.pending and not self.tree.failed:
            self.clean_mark.touch()  # every event we saw is in the journal
        self.ino.close()
        self.rt.close()
        return 0


def _current_watch_limit() -> int:
    try:
        with open("/proc/sys/fs/inotify/max_user_watches") as fh:
            return int(fh.read())
    except (OSError, ValueError):
        return 0


def main(argv: list[str]) -> int:
    config_path, sync_name, *_ = argv
    conf = cfg.load_for_child(config_path, sync_name)
    setup_logging(conf.settings, "watcher", f"watcher:{sync_name}")
    return Watcher(conf, conf.sync(sync_name)).run()
