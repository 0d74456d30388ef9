"""The syncer process: one slot per target, each running at most one rsync.

Single-threaded: rsync children are polled, never waited on, so one hung
transfer cannot stall the other targets, the heartbeats or a stop request.
Every rsync runs in its own process group with PR_SET_PDEATHSIG, so killing
the syncer (or its whole group) never leaves a transfer behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import zmq

from syncsup import config as cfg
from syncsup import proto
from syncsup._runtime import ChildRuntime, endpoint, set_pdeathsig, setup_logging
from syncsup.syncer.argv import rsync_argv
from syncsup.syncer.exitcodes import Outcome, classify

__all__ = ["Syncer", "main"]

log = logging.getLogger("syncsup.syncer")

READY_REPEAT = 2.0   # seconds between repeated credits while idle
STOP_GRACE = 2.0     # seconds between SIGTERM and SIGKILL of an rsync group


@dataclass
class Slot:
    """One target's transfer in progress, if any."""

    index: int
    target: cfg.Target
    batch: proto.Batch | None = None
    phases: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    errfile: IO[bytes] | None = None
    started: float = 0.0
    last_ready: float = 0.0


def _names(paths: list[bytes]) -> bytes:
    return b"".join((p or b".") + b"\0" for p in paths)


class Syncer:
    def __init__(self, conf: cfg.Config, sync: cfg.Sync) -> None:
        self.sync = sync
        self.rt = ChildRuntime(conf.settings.state_dir, "syncer", f"syncer:{sync.name}")
        self.tmp = conf.settings.state_dir / "tmp"
        self.tmp.mkdir(mode=0o700, exist_ok=True)
        self.sock = self.rt.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint(conf.settings.state_dir, f"dispatch-{sync.name}"))
        self.slots = [Slot(i, t) for i, t in enumerate(sync.targets)]
        self.transfers = 0

    def send(self, msg: proto.Message) -> None:
        try:
            self.sock.send_multipart(proto.encode(msg), flags=zmq.NOBLOCK)
        except zmq.Again:
            log.debug("dispatch socket full, dropped %s", type(msg).__name__)

    def ready(self, slot: Slot, now: float) -> None:
        slot.last_ready = now
        self.send(proto.Ready(target=slot.index, incarnation=self.rt.incarnation))

    # -- transfers ---------------------------------------------------------

    def on_batch(self, batch: proto.Batch) -> None:
        if not 0 <= batch.target < len(self.slots):
            log.warning("dropped batch for unknown target %d", batch.target)
            return
        slot = self.slots[batch.target]
        if slot.batch is not None:
            log.warning("target %s busy, dropped batch %d", slot.target.spec, batch.batch_id)
            return
        slot.batch = batch
        slot.phases = (["tree"] if batch.trees else []) + (["paths"] if batch.paths else [])
        slot.started = time.monotonic()
        self.next_phase(slot)

    def list_file(self, slot: Slot, kind: str) -> Path:
        return self.tmp / f"{self.sync.name}-{slot.index}-{kind}.list"

    def next_phase(self, slot: Slot) -> None:
        assert slot.batch is not None
        if not slot.phases:
            self.finish(slot, Outcome.OK, 0, "")
            return
        kind = slot.phases.pop(0)
        names = slot.batch.trees if kind == "tree" else slot.batch.paths
        lst = self.list_file(slot, kind)
        lst.write_bytes(_names(names))
        argv = rsync_argv(self.sync, slot.target, kind, str(lst), slot.batch.startup)
        log.debug("target %s: %s", slot.target.spec, argv)
        slot.errfile = open(self.tmp / f"{self.sync.name}-{slot.index}.err", "w+b")  # noqa: SIM115
        try:
            slot.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slot.errfile,
                start_new_session=True, preexec_fn=set_pdeathsig, close_fds=True)
        except OSError as exc:
            self.finish(slot, Outcome.FATAL, 127, f"cannot run rsync: {exc}")

    def poll_slot(self, slot: Slot) -> None:
        if slot.proc is None:
            return
        rc = slot.proc.poll()
        if rc is None:
            return
        slot.proc = None
        outcome = classify(rc)
        if outcome is Outcome.OK:
            self.next_phase(slot)
            return
        self.finish(slot, outcome, rc, self.stderr_tail(slot) or f"rsync exited with {rc}")

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
        log.log(level, "target %s: batch %d, %d paths, %d trees, %.2fs: %s%s",
                slot.target.spec, batch.batch_id, len(batch.paths), len(batch.trees), seconds,
                outcome.value, f" (rc {rc}: {error})" if outcome is not Outcome.OK else "")
        self.send(proto.Done(batch_id=batch.batch_id, target=slot.index, outcome=outcome.value,
                             rc=rc, error=error, seconds=seconds))
        if slot.errfile is not None:
            slot.errfile.close()
            slot.errfile = None
        slot.batch = None
        slot.phases = []
        self.ready(slot, time.monotonic())

    def kill_all(self) -> None:
        """TERM every rsync group, give them STOP_GRACE, then KILL."""
        procs = [s.proc for s in self.slots if s.proc is not None]
        for p in procs:
            _killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(max(0.0, deadline - time.monotonic()))
            _killpg(p.pid, signal.SIGKILL)
            p.wait()

    # -- main loop -------------------------------------------------------------

    def run(self) -> int:
        now = time.monotonic()
        for slot in self.slots:
            self.ready(slot, now)
        while not self.rt.stopping and self.rt.parent_alive():
            busy = any(s.proc is not None for s in self.slots)
            if self.sock.poll(50 if busy else 200, zmq.POLLIN):
                for _ in range(100):
                    try:
                        frames = self.sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    try:
                        msg = proto.decode(frames)
                    except proto.ProtocolError as exc:
                        log.warning("dropped malformed message: %s", exc)
                        continue
                    if isinstance(msg, proto.Batch):
                        self.on_batch(msg)
                    else:
                        log.warning("dropped unexpected %s", type(msg).__name__)
            now = time.monotonic()
            for slot in self.slots:
                self.poll_slot(slot)
                if slot.batch is None and now - slot.last_ready >= READY_REPEAT:
                    self.ready(slot, now)
            self.rt.heartbeat(self.info)
        self.kill_all()
        self.rt.close()
        return 0

    def info(self) -> dict[str, Any]:
        return {"sync": self.sync.name, "transfers": self.transfers,
                "busy": [s.target.spec for s in self.slots if s.proc is not None]}


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def main(argv: list[str]) -> int:
    config_path, sync_name, *_ = argv
    conf = cfg.load_for_child(config_path, sync_name)
    setup_logging(conf.settings.log_level, "syncer", sync_name)
    return Syncer(conf, conf.sync(sync_name)).run()
