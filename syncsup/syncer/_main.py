"""The syncer process: one slot per target, each running at most one
transfer (a rename replay, then rsync for subtrees, then rsync for paths).

Single-threaded: children are polled, never waited on, so one hung transfer
cannot stall the other targets, the heartbeats or a stop request. Every
child runs in its own process group with PR_SET_PDEATHSIG, so killing the
syncer (or its whole group) never leaves a transfer behind.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import msgpack
import zmq

from syncsup import config as cfg
from syncsup import proto
from syncsup._runtime import (
    ChildRuntime,
    child_exit_fd,
    decode_logged,
    drain,
    endpoint,
    new_socket,
    set_pdeathsig,
    setup_logging,
)
from syncsup.syncer.argv import expand_rule_files, rsync_argv, ssh_argv
from syncsup.syncer.exitcodes import Outcome, classify
from syncsup.syncer.moves import (
    agent_command,
    agent_requests,
    local_renames,
    remote_rename_command,
)
from syncsup.syncer.tokens import Tokens

__all__ = ["Syncer", "main"]

log = logging.getLogger("syncsup.syncer")

READY_REPEAT = 2.0   # seconds between repeated credits while idle
STOP_GRACE = 2.0     # seconds between SIGTERM and SIGKILL of a child group
PROGRESS_LOG = 30.0  # seconds between progress lines of a long transfer
MASTER_RETRY = (2.0, 60.0)  # backoff of the ssh master connection: first, cap


@dataclass
class Slot:
    """One target: its transfer in progress, if any, and its ssh master."""

    index: int
    target: cfg.Target
    control_path: str | None = None
    batch: proto.Batch | None = None
    phases: list[str] = field(default_factory=list)
    phase: str = ""
    proc: subprocess.Popen[bytes] | None = None
    errfile: IO[bytes] | None = None
    outfile: IO[bytes] | None = None  # rsync's --stats
    sent: int = 0
    token: IO[str] | None = None
    started: float = 0.0
    moves_done: int = 0
    last_ready: float = 0.0
    io_seen: int = -1          # bytes read+written by the transfer's processes
    io_changed: float = 0.0    # when that last moved
    io_checked: float = 0.0    # when we last looked
    last_progress_log: float = 0.0
    killing: float = 0.0       # when we sent SIGTERM to a stalled transfer
    empty_guard: bool = False  # this phase runs with the empty-source guard
    master: subprocess.Popen[bytes] | None = None
    master_failures: int = 0
    master_next: float = 0.0


def _names(paths: list[bytes]) -> bytes:
    """The ``--files-from`` list. Every name gets a ``./`` prefix: rsync
    skips list entries starting with ``#`` or ``;`` as comments, even with
    ``--from0``, and ``./`` is harmless for every other name."""
    return b"".join((b"./" + p if p else b".") + b"\0" for p in paths)


def _effective(root: bytes, paths: list[bytes]) -> list[bytes]:
    """Replace each path whose parent is no longer a directory in the source
    by its first ancestor that is not one (a file, a symlink, or gone).

    rsync fails on ``a/b`` when ``a`` became a file ("Not a directory", exit
    23, retried forever), and must never be sent through ``a`` if ``a``
    became a symlink. Sending ``a`` itself is what the target needs: it
    replaces the old directory (``--force``) or deletes it.
    """
    is_dir: dict[bytes, bool] = {b"": True}
    out: dict[bytes, None] = {}
    for path in paths:
        parts = path.split(b"/")
        prefix = b""
        chosen = path
        for part in parts[:-1]:
            prefix = prefix + b"/" + part if prefix else part
            known = is_dir.get(prefix)
            if known is None:
                try:
                    known = stat.S_ISDIR(os.lstat(os.path.join(root, prefix)).st_mode)
                except OSError:
                    known = False
                is_dir[prefix] = known
            if not known:
                chosen = prefix
                break
        out[chosen] = None
    return list(out)


_SETPRIV = shutil.which("setpriv")


def _spawn(argv: list[str], stdin: Any = subprocess.DEVNULL, stderr: Any = subprocess.DEVNULL,
           stdout: Any = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
    """A child in its own process group that dies with us (PR_SET_PDEATHSIG).

    util-linux's ``setpriv --pdeathsig`` sets it and execs the command; that
    keeps Python out of the forked child, so CPython can use vfork (a spawn
    costs ~1.5 ms instead of ~4 ms with a ``preexec_fn``)."""
    if _SETPRIV is not None:
        return subprocess.Popen([_SETPRIV, "--pdeathsig", "KILL", "--", *argv], stdin=stdin,
                                stdout=stdout, stderr=stderr, start_new_session=True,
                                close_fds=True)
    return subprocess.Popen(argv, stdin=stdin, stdout=stdout, stderr=stderr,
                            start_new_session=True, preexec_fn=set_pdeathsig, close_fds=True)


class Syncer:
    def __init__(self, conf: cfg.Config, sync: cfg.Sync) -> None:
        self.sync = expand_rule_files(sync)
        self.config_path = conf.path
        state_dir = conf.settings.state_dir
        self.rt = ChildRuntime(state_dir, "syncer", f"syncer:{sync.name}")
        self.tmp = state_dir / "tmp"
        self.tmp.mkdir(mode=0o700, exist_ok=True)
        self.tokens = Tokens(state_dir / "slots", conf.settings.max_processes)
        self.sock = new_socket(self.rt.ctx, zmq.DEALER)
        self.sock.connect(endpoint(state_dir, f"dispatch-{sync.name}"))
        self.slots = [Slot(i, t) for i, t in enumerate(sync.targets)]
        for slot in self.slots:
            cp = f"{state_dir}/cm-{sync.name}-{slot.index}"
            if slot.target.is_remote and len(cp) < 100:
                slot.control_path = cp
        self.transfers = 0

    def send(self, msg: proto.Message) -> None:
        try:
            self.sock.send_multipart(proto.encode(msg), flags=zmq.NOBLOCK)
        except zmq.Again:
            log.debug("dispatch socket full, dropped %s", type(msg).__name__)

    def ready(self, slot: Slot, now: float) -> None:
        slot.last_ready = now
        self.send(proto.Ready(target=slot.index, incarnation=self.rt.incarnation))

    # -- ssh master ------------------------------------------------------------

    def tend_master(self, slot: Slot, now: float) -> None:
        """Keep one multiplexing ssh connection per remote target, so a
        transfer costs no handshake; if it is down, transfers connect
        directly (ControlMaster=no falls back) and it is retried with backoff."""
        if slot.control_path is None or slot.target.host is None:
            return
        if slot.master is not None:
            rc = slot.master.poll()
            if rc is None:
                return
            slot.master = None
            slot.master_failures += 1
            first, cap = MASTER_RETRY
            slot.master_next = now + min(cap, first * 2 ** (slot.master_failures - 1))
            log.info("target %s: ssh master connection ended (rc %d); direct connections "
                     "until it is back", slot.target.spec, rc)
            return
        if now < slot.master_next:
            return
        argv = [*ssh_argv(self.sync), "-M", "-N", "-o", f"ControlPath={slot.control_path}",
                "-o", "ControlPersist=no", "--", slot.target.login]
        try:
            slot.master = _spawn(argv)
        except OSError as exc:
            log.error("cannot run ssh: %s", exc)
            slot.master_next = now + MASTER_RETRY[1]

    # -- transfers ---------------------------------------------------------------

    def on_batch(self, batch: proto.Batch) -> None:
        if not 0 <= batch.target < len(self.slots):
            log.warning("dropped batch for unknown target %d", batch.target)
            return
        slot = self.slots[batch.target]
        if slot.batch is not None:
            log.warning("target %s busy, dropped batch %d", slot.target.spec, batch.batch_id)
            return
        slot.batch = batch
        if self.sync.mode == "command":
            slot.phases = ["command"]
        else:
            slot.phases = ((["moves"] if batch.moves and self.sync.moves_on_target else [])
                           + (["tree"] if batch.trees or batch.verify else [])
                           + (["paths"] if batch.paths else []))
        slot.moves_done = 0
        slot.started = time.monotonic()
        self.next_phase(slot)

    def next_phase(self, slot: Slot) -> None:
        """Start the slot's next phase, or finish the batch if none is left.
        Waits (returns with nothing started) while max_processes is reached."""
        assert slot.batch is not None
        if not slot.phases:
            self.finish(slot, Outcome.OK, 0, "")
            return
        if slot.token is None:
            slot.token = self.tokens.acquire()
            if slot.token is None:
                return  # every transfer token is taken; retried from the loop
        batch = slot.batch
        kind = slot.phases.pop(0)
        slot.phase = kind
        if slot.errfile is None:
            slot.errfile = open(self.tmp / f"{self.sync.name}-{slot.index}.err", "w+b")  # noqa: SIM115
        slot.errfile.seek(0)
        slot.errfile.truncate()
        if slot.outfile is None:
            slot.outfile = open(self.tmp / f"{self.sync.name}-{slot.index}.out", "w+b")  # noqa: SIM115
        slot.outfile.seek(0)
        slot.outfile.truncate()
        lst = self.tmp / f"{self.sync.name}-{slot.index}-{kind}.list"
        if kind == "moves":
            if not slot.target.is_remote:
                slot.moves_done = len(batch.moves)
                applied = local_renames(slot.target.path, batch.moves)
                log.debug("target %s: %d of %d renames replayed", slot.target.spec, applied,
                          len(batch.moves))
                self.next_phase(slot)
                return
            if slot.target.confined:
                lst.write_bytes(agent_requests(batch.moves))
                command = agent_command(slot.target.path)
            else:
                lst.write_bytes(b"".join(a + b"\0" + b + b"\0" for a, b in batch.moves))
                command = remote_rename_command(slot.target.path)
            argv = [*ssh_argv(self.sync, slot.control_path), "--", slot.target.login, command]
            self._start(slot, argv, stdin_path=lst)
            return
        if kind == "command":
            lst.write_bytes(msgpack.packb({
                "moves": batch.moves, "trees": batch.trees + batch.verify, "paths": batch.paths,
                "created": batch.created, "startup": batch.startup}, use_bin_type=True))
            slot.moves_done = len(batch.moves)  # reported again only if the batch fails
            self._start(slot, [sys.executable, "-P", "-m", "syncsup.syncer.action_runner",
                               str(self.config_path), self.sync.name, str(slot.index), str(lst)])
            return
        names = batch.trees + batch.verify if kind == "tree" else batch.paths
        lst.write_bytes(_names(_effective(os.fsencode(self.sync.source), names)))
        # --checksum for rescans that follow lost events, and for directories
        # a replayed rename just moved on the target: their contents were
        # changed under the old name (or between the rename and our watch on
        # the new one) may have kept size and mtime, and the quick check
        # would trust the moved copy. It reads, but sends nothing that matches.
        moved_to = {dst for _src, dst in batch.moves} if self.sync.moves_on_target else set()
        verify = kind == "tree" and (bool(batch.verify)
                                     or any(t in moved_to for t in batch.trees))
        argv = rsync_argv(self.sync, slot.target, kind, str(lst), batch.startup, verify,
                          slot.control_path)
        slot.empty_guard = (kind == "tree" and b"" in batch.trees + batch.verify
                            and _empty(self.sync.source))
        if slot.empty_guard:
            # An empty source root looks like an unmounted disk: never let it
            # wipe the mirror. --max-delete=0 deletes nothing and fails (25)
            # if there was anything to delete.
            argv.insert(1, "--max-delete=0")
        self._start(slot, argv)

    def _start(self, slot: Slot, argv: list[str], stdin_path: Path | None = None) -> None:
        log.debug("target %s: %s", slot.target.spec, argv)
        try:
            if stdin_path is not None:
                with open(stdin_path, "rb") as stdin:
                    slot.proc = _spawn(argv, stdin=stdin, stderr=slot.errfile)
            else:
                slot.proc = _spawn(argv, stderr=slot.errfile, stdout=slot.outfile)
        except OSError as exc:
            self.finish(slot, Outcome.FATAL, 127, f"cannot run {argv[0]}: {exc}")
            return
        slot.io_seen, slot.io_changed, slot.io_checked = -1, time.monotonic(), 0.0
        slot.last_progress_log = time.monotonic()
        slot.killing = 0.0

    def poll_slot(self, slot: Slot) -> None:
        if slot.batch is not None and slot.proc is None and slot.token is None:
            self.next_phase(slot)  # was waiting for a transfer token
            return
        if slot.proc is None:
            return
        rc = slot.proc.poll()
        if rc is None:
            self.watch_progress(slot)
            return
        slot.proc = None
        slot.sent += _stats_sent(slot.outfile)
        if slot.killing:
            self.finish(slot, Outcome.RETRY, rc, f"no progress for {self.sync.rsync.timeout}s: "
                        "transfer killed, will retry")
            return
        if slot.empty_guard and rc == 25:
            log.error("source %s is empty but target %s is not: refusing to delete the "
                      "mirror (an unmounted disk?); retrying until the source is back",
                      self.sync.source, slot.target.spec)
            self.finish(slot, Outcome.RETRY, rc, f"source {self.sync.source} is empty: "
                        "refusing to delete the mirror")
            return
        if slot.phase == "moves":
            if rc == 255:  # ssh could not reach the target: nothing was renamed
                self.finish(slot, Outcome.RETRY, rc, self.stderr_tail(slot) or "ssh failed")
                return
            tail = self.stderr_tail(slot)
            if slot.target.confined and "syncsup-target: refused" in tail:
                # Wrong ROOT, no confinement possible on that host: a
                # configuration problem that retrying cannot fix.
                self.finish(slot, Outcome.FATAL, rc, tail)
                return
            slot.moves_done = len(slot.batch.moves) if slot.batch else 0
            self.next_phase(slot)
            return
        if slot.phase == "command":
            if rc != 0:
                slot.moves_done = 0
            outcome = Outcome.OK if rc == 0 else Outcome.RETRY
        else:
            outcome = classify(rc)
        if outcome is Outcome.OK:
            self.next_phase(slot)
            return
        self.finish(slot, outcome, rc,
                    self.stderr_tail(slot) or f"{slot.phase} transfer exited with {rc}")

    def watch_progress(self, slot: Slot) -> None:
        """Kill a transfer whose processes have read and written nothing for
        ``rsync.timeout`` seconds (a stopped rsync, a dead link): TERM the
        group, then KILL it STOP_GRACE later. It is retried like any failure."""
        timeout = self.sync.rsync.timeout
        if slot.proc is None:
            return
        now = time.monotonic()
        if slot.killing:
            if now - slot.killing >= STOP_GRACE:
                _killpg(slot.proc.pid, signal.SIGKILL)
            return
        if now - slot.io_checked < 1.0:
            return  # /proc is read at most once a second per transfer
        slot.io_checked = now
        seen = _io_bytes(slot.proc.pid)
        if now - slot.last_progress_log >= PROGRESS_LOG:
            # A long transfer (an initial sync of a big tree) says it is alive.
            slot.last_progress_log = now
            log.info("target %s: %s transfer running for %.0fs, %s read+written so far",
                     slot.target.spec, slot.phase, now - slot.started, _human(seen))
        if seen != slot.io_seen:
            slot.io_seen, slot.io_changed = seen, now
        elif timeout and now - slot.io_changed >= timeout:
            log.warning("target %s: %s transfer made no progress for %ds: killing it",
                        slot.target.spec, slot.phase, timeout)
            slot.killing = now
            _terminate(slot.proc.pid)

    def stderr_tail(self, slot: Slot) -> str:
        if slot.errfile is None:
            return ""
        slot.errfile.seek(0)
        lines = [ln for ln in slot.errfile.read()[-8192:].decode(errors="replace").splitlines()
                 if ln.strip() and not ln.startswith("file has vanished")]
        return " | ".join(lines[-3:])

    def finish(self, slot: Slot, outcome: Outcome, rc: int, error: str) -> None:
        batch = slot.batch
        assert batch is not None
        seconds = time.monotonic() - slot.started
        self.transfers += 1
        level = logging.INFO if outcome is Outcome.OK else logging.WARNING
        log.log(level, "target %s: batch %d, %d paths, %d trees, %d renames, %d bytes, %.2fs: %s%s",
                slot.target.spec, batch.batch_id, len(batch.paths), len(batch.trees),
                slot.moves_done, slot.sent, seconds, outcome.value,
                f" (rc {rc}: {error})" if outcome is not Outcome.OK else "")
        self.send(proto.Done(batch_id=batch.batch_id, target=slot.index, outcome=outcome.value,
                             rc=rc, error=error, seconds=seconds, moves_done=slot.moves_done,
                             bytes=slot.sent))
        slot.sent = 0
        for fh in (slot.errfile, slot.outfile):
            if fh is not None:
                fh.close()
        slot.errfile = slot.outfile = None
        if slot.token is not None:
            slot.token.close()  # releases the flock
            slot.token = None
        slot.batch = None
        slot.phases = []
        slot.phase = ""
        self.ready(slot, time.monotonic())

    def kill_all(self) -> None:
        """TERM every child group, give them STOP_GRACE, then KILL."""
        procs = [p for s in self.slots for p in (s.proc, s.master) if p is not None]
        for p in procs:
            _terminate(p.pid)
        deadline = time.monotonic() + STOP_GRACE
        for p in procs:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _killpg(p.pid, signal.SIGKILL)
            p.wait()

    # -- main loop -------------------------------------------------------------------

    def run(self) -> int:
        now = time.monotonic()
        for slot in self.slots:
            self.tend_master(slot, now)
            self.ready(slot, now)
        exits = child_exit_fd()
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(exits, zmq.POLLIN)
        while not self.rt.stopping and self.rt.parent_alive():
            # Children's exits wake us (SIGCHLD); otherwise wake for the
            # heartbeat, the stall check and slots waiting for a token.
            waiting = any(s.batch is not None and s.proc is None for s in self.slots)
            events = dict(poller.poll(100 if waiting else 1000))
            if exits in events:
                drain(exits)
            if self.sock in events:
                for _ in range(100):
                    try:
                        frames = self.sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    msg = decode_logged(frames, log, "dispatch")
                    if isinstance(msg, proto.Batch):
                        self.on_batch(msg)
                    elif msg is not None:
                        log.warning("dropped unexpected %s", type(msg).__name__)
            now = time.monotonic()
            for slot in self.slots:
                self.poll_slot(slot)
                self.tend_master(slot, now)
                if slot.batch is None and now - slot.last_ready >= READY_REPEAT:
                    self.ready(slot, now)
            self.rt.heartbeat(self.info)
        self.kill_all()
        self.rt.close()
        return 0

    def info(self) -> dict[str, Any]:
        now = time.monotonic()
        running = {s.target.spec: {"phase": s.phase, "seconds": now - s.started,
                                   "io_bytes": max(0, s.io_seen)}
                   for s in self.slots if s.batch is not None}
        return {"sync": self.sync.name, "transfers": self.transfers, "running": running}


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _stats_sent(out: IO[bytes] | None) -> int:
    """'Total bytes sent: 1,234' from rsync's --stats output, or 0."""
    if out is None:
        return 0
    out.seek(0)
    for line in out.read()[-16384:].splitlines():
        if line.startswith(b"Total bytes sent:"):
            try:
                return int(line.split(b":", 1)[1].strip().replace(b",", b""))
            except ValueError:
                return 0
    return 0


def _empty(source: Path) -> bool:
    """True if the source root has no entries (or is not there at all)."""
    try:
        with os.scandir(source) as it:
            return next(it, None) is None
    except OSError:
        return True


def _io_bytes(pid: int) -> int:
    """Bytes read and written so far by ``pid`` and its descendants (rchar +
    wchar from /proc): a transfer whose total does not move is stalled."""
    total = 0
    stack = [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/io", "rb") as fh:
                for line in fh:
                    if line.startswith((b"rchar:", b"wchar:")):
                        total += int(line.split()[1])
            with open(f"/proc/{p}/task/{p}/children", "rb") as fh:
                stack += [int(c) for c in fh.read().split()]
        except (OSError, ValueError):
            continue
    return total


def _terminate(pgid: int) -> None:
    """SIGTERM a process group, then SIGCONT it: a stopped rsync only acts on
    the TERM once continued, and then removes its temporary file on the way
    out, where a KILL would leave it on the target."""
    _killpg(pgid, signal.SIGTERM)
    _killpg(pgid, signal.SIGCONT)


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def main(argv: list[str]) -> int:
    config_path, sync_name, *_ = argv
    conf = cfg.load_for_child(config_path, sync_name)
    setup_logging(conf.settings, "syncer", f"syncer:{sync_name}")
    return Syncer(conf, conf.sync(sync_name)).run()
