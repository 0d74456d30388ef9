"""The supervisor process: spawning, reaping, heartbeats, status, stop."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import IO, Any

import zmq

from syncsup import config as cfg
from syncsup import proto
from syncsup._runtime import endpoint, new_incarnation, set_pdeathsig
from syncsup.supervisor.policy import RestartPolicy, State

__all__ = ["StartError", "Supervisor"]

log = logging.getLogger("syncsup.supervisor")

ROLES_IN_START_ORDER = ("collator", "syncer", "watcher")
HEARTBEAT_TIMEOUT = 8.0   # seconds of silence before a child is killed (beats are 1/s)
STOP_GRACE = 6.0          # seconds between SIGTERM and SIGKILL at stop


class StartError(RuntimeError):
    """The daemon cannot start (already running, unusable state_dir, ...)."""


@dataclass
class Component:
    """One supervised child and what the supervisor knows of it."""

    name: str
    role: str
    sync: str
    argv: list[str]
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    proc: subprocess.Popen[bytes] | None = None
    spawned: float = 0.0
    last_beat: float = 0.0
    incarnation: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None


def acquire_lock(state_dir: os.PathLike[str] | str) -> IO[str]:
    """Hold an exclusive flock on ``state_dir/lock`` for the life of the
    process; the kernel drops it however we die, so no stale lock is possible."""
    path = os.path.join(state_dir, "lock")
    fh = open(path, "a+")  # noqa: SIM115 - held until exit
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        other = fh.read().strip() or "?"
        fh.close()
        raise StartError(f"syncsup is already running with state_dir {state_dir} "
                         f"(pid {other})") from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"{os.getpid()}\n")
    fh.flush()
    return fh


def is_running(state_dir: os.PathLike[str] | str) -> bool:
    """True if a supervisor holds the lock of ``state_dir``."""
    path = os.path.join(state_dir, "lock")
    try:
        with open(path) as fh:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
    except FileNotFoundError:
        return False
    except BlockingIOError:
        return True


class Supervisor:
    def __init__(self, conf: cfg.Config) -> None:
        self.conf = conf
        self.run_id = new_incarnation()
        self.started = time.time()
        self.stopping = False
        state_dir = conf.settings.state_dir
        try:
            state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(state_dir, 0o700)
        except OSError as exc:
            raise StartError(f"cannot use state_dir {state_dir}: {exc.strerror}") from None
        self.lock = acquire_lock(state_dir)
        if shutil.which("rsync") is None:
            raise StartError("rsync is not installed (apt-get install rsync)")
        self.components: list[Component] = []
        for role in ROLES_IN_START_ORDER:
            for sync in conf.syncs:
                argv = [sys.executable, "-m", f"syncsup.{role}", str(conf.path), sync.name,
                        self.run_id]
                self.components.append(Component(f"{role}:{sync.name}", role, sync.name, argv))
        self.by_name = {c.name: c for c in self.components}
        self.ctx = zmq.Context()
        self.control = self.ctx.socket(zmq.ROUTER)
        self.control.setsockopt(zmq.LINGER, 0)
        old = os.umask(0o077)
        try:
            self.control.bind(endpoint(state_dir, "control"))
        finally:
            os.umask(old)

    # -- children --------------------------------------------------------------

    def spawn(self, c: Component, now: float) -> None:
        try:
            c.proc = subprocess.Popen(c.argv, stdin=subprocess.DEVNULL, start_new_session=True,
                                      preexec_fn=set_pdeathsig, close_fds=True)
        except OSError as exc:
            log.error("cannot start %s: %s", c.name, exc)
            c.policy.start(now)
            c.policy.exited(127, now)
            return
        c.spawned = c.last_beat = now
        c.incarnation = None
        c.policy.start(now)
        log.debug("started %s (pid %d)", c.name, c.proc.pid)

    def reap(self, c: Component, now: float) -> None:
        if c.proc is None:
            return
        pid = c.proc.pid
        # Peek without reaping: while the zombie exists its pid (and so its
        # process group id) cannot be reused, so the killpg below is safe.
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
            if now - c.last_beat > HEARTBEAT_TIMEOUT:
                log.error("%s (pid %d) sent no heartbeat for %.0fs: killing it",
                          c.name, pid, now - c.last_beat)
                _killpg(pid, signal.SIGKILL)
            return
        _killpg(pid, signal.SIGKILL)  # anything it left in its group
        rc = c.proc.wait()
        c.proc = None
        c.policy.exited(rc, now)
        if c.policy.state is State.FATAL:
            log.error("%s exited with a configuration error (78): not restarting; "
                      "fix the config and restart syncsup", c.name)
        else:
            how = f"signal {-rc}" if rc < 0 else f"exit code {rc}"
            log.warning("%s (pid %d) died (%s); restart #%d in %.1fs%s", c.name, pid, how,
                        c.policy.restarts, max(0.0, (c.policy.next_start or now) - now),
                        " [degraded: restarting too often]"
                        if c.policy.state is State.DEGRADED else "")

    def stop_children(self) -> None:
        """TERM in reverse start order, wait up to STOP_GRACE, then KILL."""
        live = [c for c in reversed(self.components) if c.proc is not None]
        for c in live:
            c.policy.stop()
            assert c.proc is not None
            _killpg(c.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for c in live:
            assert c.proc is not None
            try:
                c.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0fs: killing it", c.name, STOP_GRACE)
            _killpg(c.proc.pid, signal.SIGKILL)
            c.proc.wait()
            c.proc = None

    # -- control socket ------------------------------------------------------------

    def on_control(self, frames: list[bytes]) -> None:
        peer, body = frames[0], frames[1:]
        try:
            msg = proto.decode(body)
        except proto.ProtocolError as exc:
            log.warning("dropped malformed control message: %s", exc)
            return
        if isinstance(msg, proto.Heartbeat):
            c = self.by_name.get(msg.name)
            if c is None or c.proc is None or c.proc.pid != msg.pid:
                return  # a stale incarnation, or a stranger
            c.last_beat = time.monotonic()
            if c.incarnation != msg.incarnation:
                c.policy.up(c.last_beat)
            c.incarnation = msg.incarnation
            c.info = msg.info
        elif isinstance(msg, proto.StatusRequest):
            self._reply(peer, proto.StatusReply(status=self.status()))
        elif isinstance(msg, proto.Stop):
            log.info("stop requested over the control socket%s",
                     f": {msg.reason}" if msg.reason else "")
            self.stopping = True
        else:
            log.warning("dropped unexpected %s on control", type(msg).__name__)

    def _reply(self, peer: bytes, msg: proto.Message) -> None:
        try:
            self.control.send_multipart([peer, *proto.encode(msg)], flags=zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            log.debug("could not answer %r: %s", peer, exc)

    def status(self) -> dict[str, Any]:
        """The document ``syncsup status --json`` prints (see docs/status.md)."""
        now_wall, now = time.time(), time.monotonic()
        comps: list[dict[str, Any]] = [{
            "name": "supervisor", "role": "supervisor", "pid": os.getpid(), "state": "running",
            "restarts": 0, "uptime": now_wall - self.started, "last_exit": None,
        }]
        for c in self.components:
            comps.append({
                "name": c.name, "role": c.role, "pid": c.pid, "state": c.policy.state.value,
                "restarts": c.policy.restarts,
                "uptime": now - c.spawned if c.proc is not None else None,
                "last_exit": c.policy.last_exit,
            })
        syncs = []
        for s in self.conf.syncs:
            collator = self.by_name[f"collator:{s.name}"].info
            watcher = self.by_name[f"watcher:{s.name}"].info
            known = {t["target"]: t for t in collator.get("targets", [])
                     if isinstance(t, dict) and "target" in t}
            targets = [known.get(t.spec) or {
                "target": t.spec, "state": "startup", "pending": 0, "lag": None,
                "last_sync": None, "last_error": None} for t in s.targets]
            syncs.append({
                "name": s.name, "source": str(s.source), "mode": s.mode,
                "watches": watcher.get("watches"), "unwatched": watcher.get("unwatched"),
                "watch_limit_needed": watcher.get("watch_limit_needed") or None,
                "overflows": watcher.get("overflows"), "targets": targets,
            })
        return {"version": 1, "config": str(self.conf.path), "started": self.started,
                "components": comps, "syncs": syncs}

    # -- main loop ---------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if not self.stopping:
            log.info("received %s: stopping", signal.Signals(signum).name)
        self.stopping = True

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        log.info("syncsup starting: %d sync(s), state in %s", len(self.conf.syncs),
                 self.conf.settings.state_dir)
        now = time.monotonic()
        for c in self.components:
            self.spawn(c, now)
        try:
            while not self.stopping:
                if self.control.poll(200, zmq.POLLIN):
                    for _ in range(1000):
                        try:
                            self.on_control(self.control.recv_multipart(zmq.NOBLOCK))
                        except zmq.Again:
                            break
                now = time.monotonic()
                for c in self.components:
                    self.reap(c, now)
                    c.policy.tick(now)
                    if c.proc is None and c.policy.due(now) and not self.stopping:
                        self.spawn(c, now)
        finally:
            self.stop_children()
            self.ctx.destroy(linger=0)
            log.info("syncsup stopped")
        return 0


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
