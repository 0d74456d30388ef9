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
from syncsup._runtime import (
    bind_private,
    child_exit_fd,
    decode_logged,
    drain,
    new_incarnation,
    new_socket,
    recv_trusted,
)
from syncsup.rsync_version import MIN_SOURCE, format_version, rsync_version
from syncsup.supervisor.metrics import serve
from syncsup.supervisor.notify import Notifier
from syncsup.supervisor.policy import RestartPolicy, State
from syncsup.supervisor.status_file import write_status_file

__all__ = ["StartError", "Supervisor"]

log = logging.getLogger("syncsup.supervisor")

ROLES_IN_START_ORDER = ("collator", "syncer", "watcher")
HEARTBEAT_TIMEOUT = 7.0   # seconds of silence before a child is killed (beats every 2 s)
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
    peer: bytes | None = None  # its routing id on the control socket
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None


def acquire_lock(state_dir: os.PathLike[str] | str) -> IO[str]:
    """Hold an exclusive flock on ``state_dir/lock`` for the life of the
    process; the kernel drops it however we die, so no stale lock is possible."""
    path = os.path.join(state_dir, "lock")
    fh = open(path, "a+")  # noqa: SIM115 - held until exit
    # `syncsup status` takes a shared lock for an instant to see whether we
    # run; retry briefly so that a status poll never makes a start fail.
    for attempt in range(20):
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            fh.seek(0)
            other = fh.read().strip()
            if other or attempt == 19:
                fh.close()
                raise StartError(f"syncsup is already running with state_dir {state_dir} "
                                 f"(pid {other or '?'})") from None
            time.sleep(0.05)
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
        for binary in sorted({s.rsync.binary for s in conf.syncs}):
            if shutil.which(binary) is None:
                raise StartError(f"{binary} is not installed (apt-get install rsync)")
            version = rsync_version(binary)
            if version is None or version < MIN_SOURCE:
                raise StartError(
                    f"{binary} is version {format_version(version) if version else 'unknown'}; "
                    f"syncsup needs rsync {format_version(MIN_SOURCE)} or newer, whose sender "
                    "never follows a symlink raced into a parent directory of the source")
        self.components = self._components(conf)
        self.by_name = {c.name: c for c in self.components}
        self.pending_signal: str | None = None
        self.notifier = Notifier()
        self.metrics: Any = None
        self.last_periodic = 0.0
        self.next_status_file = 0.0
        self.ctx = zmq.Context()
        self.control = new_socket(self.ctx, zmq.ROUTER)
        bind_private(self.control, state_dir, "control")

    # -- children --------------------------------------------------------------

    def _components(self, conf: cfg.Config) -> list[Component]:
        out = []
        for role in ROLES_IN_START_ORDER:
            for sync in conf.syncs:
                # -P: the working directory is not put on the module path, so
                # a daemon started from a directory others can write (the
                # source tree, say) never imports their "syncsup" package.
                argv = [sys.executable, "-P", "-m", f"syncsup.{role}", str(conf.path),
                        sync.name, self.run_id]
                out.append(Component(f"{role}:{sync.name}", role, sync.name, argv))
        return out

    def spawn(self, c: Component, now: float) -> None:
        try:
            # No preexec_fn: the supervisor may run a metrics thread, and
            # running Python between fork and exec is unsafe with threads.
            # The child sets PR_SET_PDEATHSIG itself (syncsup._runtime).
            env = {**os.environ, "SYNCSUP_SUPERVISOR_PID": str(os.getpid())}
            c.proc = subprocess.Popen(c.argv, stdin=subprocess.DEVNULL, start_new_session=True,
                                      close_fds=True, env=env)
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
            _killpg(c.proc.pid, signal.SIGCONT)  # a stopped child acts on TERM only once continued
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
        msg = decode_logged(body, log, "control")
        if msg is None:
            return
        if isinstance(msg, proto.Heartbeat):
            c = self.by_name.get(msg.name)
            if c is None or c.proc is None or c.proc.pid != msg.pid:
                return  # a stale incarnation, or a stranger
            c.last_beat = time.monotonic()
            c.peer = peer
            if c.incarnation != msg.incarnation:
                c.policy.up(c.last_beat)
            c.incarnation = msg.incarnation
            c.info = msg.info
        elif isinstance(msg, proto.StatusRequest):
            self._reply(peer, proto.StatusReply(status=self.status()))
        elif isinstance(msg, proto.Control):
            ok, message = self.relay(msg)
            self._reply(peer, proto.StatusReply(status={"ok": ok, "message": message}))
        elif isinstance(msg, proto.Stop):
            log.info("stop requested over the control socket%s",
                     f": {msg.reason}" if msg.reason else "")
            self.stopping = True
        else:
            log.warning("dropped unexpected %s on control", type(msg).__name__)

    def relay(self, msg: proto.Control) -> tuple[bool, str]:
        """Check an operator command and pass it to the collators it concerns."""
        if msg.command not in ("resync", "pause", "resume"):
            return False, f"unknown command {msg.command!r}"
        syncs = [s for s in self.conf.syncs if msg.sync in ("", s.name)]
        if not syncs:
            return False, f"no sync named {msg.sync!r}"
        if msg.target and not any(t.spec == msg.target for s in syncs for t in s.targets):
            return False, f"no target {msg.target!r}" + (f" in sync {msg.sync!r}" if msg.sync
                                                        else "")
        sent = []
        for s in syncs:
            c = self.by_name[f"collator:{s.name}"]
            if c.peer is None or c.proc is None:
                return False, f"collator of {s.name} is not running; try again"
            if msg.target and not any(t.spec == msg.target for t in s.targets):
                continue
            fwd = proto.Control(command=msg.command, sync=s.name, target=msg.target)
            self.control.send_multipart([c.peer, *proto.encode(fwd)])
            sent.append(s.name)
        log.info("%s requested for %s%s", msg.command, ", ".join(sent),
                 f" target {msg.target}" if msg.target else "")
        return True, f"{msg.command}: {', '.join(sent)}"

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
            running = self.by_name[f"syncer:{s.name}"].info.get("running") or {}
            known = {t["target"]: t for t in collator.get("targets", [])
                     if isinstance(t, dict) and "target" in t}
            targets = [{**(known.get(t.spec) or {
                "target": t.spec, "state": "startup", "pending": 0, "lag": None,
                "last_sync": None, "last_error": None}), "transfer": running.get(t.spec)}
                for t in s.targets]
            syncs.append({
                "name": s.name, "source": str(s.source), "mode": s.mode,
                "rescans": collator.get("rescans", 0),
                "watches": watcher.get("watches"), "unwatched": watcher.get("unwatched"),
                "watch_limit_needed": watcher.get("watch_limit_needed") or None,
                "overflows": watcher.get("overflows"), "targets": targets,
            })
        return {"version": 1, "config": str(self.conf.path), "started": self.started,
                "components": comps, "syncs": syncs}

    # -- main loop ---------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if signum == signal.SIGHUP:
            self.pending_signal = "reload"
            return
        if signum == signal.SIGUSR1:
            self.pending_signal = "resync"
            return
        if not self.stopping:
            log.info("received %s: stopping", signal.Signals(signum).name)
        self.stopping = True

    def handle_signal(self) -> None:
        what, self.pending_signal = self.pending_signal, None
        if what == "resync":
            log.info("SIGUSR1: resync of every target")
            self.relay(proto.Control(command="resync"))
        elif what == "reload":
            self.reload()

    def reload(self) -> None:
        """SIGHUP: read the config again and restart the children on it.
        Pending work is in the journals, so nothing is lost; a bad new config
        is refused and the old one keeps running."""
        try:
            new = cfg.load(self.conf.path)
        except cfg.ConfigError as exc:
            log.error("SIGHUP: config error, keeping the running config: %s", exc)
            return
        if new.settings.state_dir != self.conf.settings.state_dir:
            log.error("SIGHUP: settings.state_dir changed; that needs a restart. "
                      "Keeping the running config")
            return
        log.info("SIGHUP: reloading %s (%d sync(s))", new.path, len(new.syncs))
        self.stop_children()
        self.conf = new
        self.components = self._components(new)
        self.by_name = {c.name: c for c in self.components}
        now = time.monotonic()
        for c in self.components:
            self.spawn(c, now)

    def summary(self) -> tuple[bool, str]:
        """(initial sync done everywhere, one-line summary) for systemd."""
        doc = self.status()
        targets = [t for s in doc["syncs"] for t in s["targets"]]
        starting = sum(t["state"] == "startup" for t in targets)
        failing = sum(t["state"] in ("retrying", "failed") for t in targets)
        pending = sum(t["pending"] for t in targets)
        down = [c["name"] for c in doc["components"] if c["state"] != "running"]
        parts = [f"{len(targets)} target(s)"]
        if starting:
            parts.append(f"{starting} in initial sync")
        parts.append(f"{pending} pending")
        if failing:
            parts.append(f"{failing} failing")
        if down:
            parts.append(f"not running: {', '.join(down)}")
        return starting == 0, ", ".join(parts)

    def periodic(self, now: float) -> None:
        """systemd notifications and the status file, at most once a second."""
        if now - self.last_periodic < 1.0:
            return
        self.last_periodic = now
        self.notifier.watchdog(now)
        if self.notifier.addr is not None:
            ready, summary = self.summary()
            if ready:
                self.notifier.ready(summary)
            if self.notifier.ready_sent:
                self.notifier.status(summary)
        settings = self.conf.settings
        if settings.status_file is not None and now >= self.next_status_file:
            self.next_status_file = now + settings.status_interval
            write_status_file(settings.status_file, self.status())

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGHUP, self._on_signal)
        signal.signal(signal.SIGUSR1, self._on_signal)
        log.info("syncsup starting: %d sync(s), state in %s", len(self.conf.syncs),
                 self.conf.settings.state_dir)
        if self.conf.settings.metrics:
            try:
                self.metrics = serve(self.conf.settings.metrics, self.status)
                log.info("metrics on http://%s/metrics", self.conf.settings.metrics)
            except OSError as exc:
                log.error("cannot serve metrics on %s: %s; running without",
                          self.conf.settings.metrics, exc)
        now = time.monotonic()
        for c in self.components:
            self.spawn(c, now)
        exits = child_exit_fd()
        poller = zmq.Poller()
        poller.register(self.control, zmq.POLLIN)
        poller.register(exits, zmq.POLLIN)
        try:
            while not self.stopping:
                if self.pending_signal:
                    self.handle_signal()
                events = dict(poller.poll(500))
                if exits in events:
                    drain(exits)
                if self.control in events:
                    for _ in range(1000):
                        try:
                            frames = recv_trusted(self.control, log)
                            if frames is not None:
                                self.on_control(frames)
                        except zmq.Again:
                            break
                now = time.monotonic()
                for c in self.components:
                    self.reap(c, now)
                    c.policy.tick(now)
                    if c.proc is None and c.policy.due(now) and not self.stopping:
                        self.spawn(c, now)
                self.periodic(now)
        finally:
            self.notifier.stopping()
            self.stop_children()
            if self.metrics is not None:
                self.metrics.shutdown()
            self.notifier.close()
            self.ctx.destroy(linger=0)
            log.info("syncsup stopped")
        return 0


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
