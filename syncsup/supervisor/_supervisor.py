"""The supervisor process: children, heartbeats, status, operator commands,
stop. Restart decisions are made by the pure :mod:`policy`; status queries
are tracked by the pure :mod:`queries`; this module is the I/O around them.

One watcher, one collator and one syncer serve every sync, so the set of
processes is fixed whatever the config's length: the supervisor, the
template that forks the children (``template``) and the three children.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import zmq

from syncsup import config as cfg
from syncsup import proto, registry
from syncsup.processes import child_exit_fd, drain_fd, new_incarnation, trim_memory
from syncsup.rsync_probe import judge, sender_follows
from syncsup.rsync_version import rsync_version
from syncsup.sockets import bind_private, new_socket, receive, send
from syncsup.statedir import AlreadyRunning, StateDir
from syncsup.status import ComponentStatus, Status, assemble, summary
from syncsup.supervisor._spawner import Spawner, become_subreaper
from syncsup.supervisor.core import ROLES_IN_START_ORDER, Children, Component, ProcessPort
from syncsup.supervisor.notify import Notifier
from syncsup.supervisor.queries import Queries
from syncsup.supervisor.status_file import write_status_file

__all__ = ["ROLES_IN_START_ORDER", "StartError", "StartRefused", "Supervisor"]

log = logging.getLogger("syncsup.supervisor")



class StartError(RuntimeError):
    """The daemon cannot start (already running, unusable state_dir, ...)."""

    exit_code = 1


class StartRefused(StartError):
    """A refusal that a restart cannot change (the source's rsync follows a
    raced symlink where another user can write, or ``strict_rsync``): a
    configuration-class error, exit 78, so that a service manager that
    never restarts on 78 does not restart it forever."""

    exit_code = cfg.EX_CONFIG


class Supervisor:
    def __init__(self, conf: cfg.Config, clock: Callable[[], float] = time.monotonic) -> None:
        self.conf = conf
        self.clock = clock
        self.started = time.time()
        self.stopping = False
        self.state = StateDir(conf.settings.state_dir)
        try:
            self.state.create()
            self.lock = self.state.acquire_lock()
        except AlreadyRunning as exc:
            raise StartError(str(exc)) from None
        except OSError as exc:
            raise StartError(f"cannot use state_dir {self.state.path}: {exc.strerror}") from None
        try:
            become_subreaper()
        except OSError as exc:
            raise StartError(str(exc)) from None
        self.run_id = new_incarnation()
        self.spawner = Spawner(conf.path, self.run_id, conf.timings.spawn_answer_timeout)
        # Fork the template now, while this process has a single thread: the
        # children then share the supervisor's image (imports and all). Its
        # imports overlap with the check of rsync below, which is mostly
        # waiting for rsync.
        self.spawner.fork(close=[self.lock.fileno()])
        try:
            self._init_after_fork(conf)
        except BaseException:
            self.spawner.abandon()
            raise

    def _init_after_fork(self, conf: cfg.Config) -> None:
        """The rest of the start, with the template running: a refusal or a
        failure here is the caller's to clean up (the template is let go and
        reaped)."""
        _check_rsync(conf)
        self.children = Children(conf.timings, ProcessPort(self.spawner))
        self.requested: str | None = None
        self.notifier = Notifier()
        self.metrics: Any = None
        self.queries = Queries(conf.timings.status_query_timeout)
        self.next_notify = 0.0
        self.next_status_file = 0.0
        self.last_status: Status | None = None
        self._waiters: list[tuple[threading.Event, list[Status]]] = []
        self._waiters_lock = threading.Lock()
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.control = new_socket(self.ctx, zmq.ROUTER)
        bind_private(self.control, self.state, "control")

    @property
    def components(self) -> dict[str, Component]:
        return self.children.components

    def _reap(self, now: float) -> None:
        for role in self.children.reap(now):
            for consumer in self.queries.forget(role):
                consumer()

    # -- control socket --------------------------------------------------------------

    def on_control(self, peer: bytes | None, msg: proto.Message, now: float) -> None:
        assert peer is not None
        if isinstance(msg, proto.Heartbeat):
            self.children.heartbeat(msg.role, msg.pid, msg.incarnation, peer, now)
        elif isinstance(msg, proto.StatusAnswer):
            for consumer in self.queries.answer(msg.query, msg.part):
                consumer()
        elif isinstance(msg, proto.StatusRequest):
            def reply() -> None:
                send(self.control, proto.StatusReply(status=self.status()), peer, log)
            self.ask_status(reply)
        elif isinstance(msg, proto.Control):
            ok, message = self.relay(msg)
            send(self.control, proto.ControlReply(ok=ok, message=message), peer, log)
        elif isinstance(msg, proto.Stop):
            log.info("stop requested over the control socket%s",
                     f": {msg.reason}" if msg.reason else "")
            self.stopping = True
        else:
            log.warning("dropped unexpected %s on control", type(msg).__name__)

    def ask_status(self, consumer: Callable[[], None]) -> None:
        """Call ``consumer`` once the children's parts are fresh (or late)."""
        running = {c.role: c.peer for c in self.components.values()
                   if c.pid is not None and c.peer is not None}
        qid = self.queries.ask(set(running), self.clock(), consumer)
        if qid is not None:
            for peer in running.values():
                assert peer is not None
                send(self.control, proto.StatusQuery(query=qid), peer, log)

    def relay(self, msg: proto.Control) -> tuple[bool, str]:
        """Check an operator command and pass it to the collator."""
        syncs = [s for s in self.conf.syncs if msg.sync in ("", s.name)]
        if not syncs:
            return False, f"no sync named {msg.sync!r}"
        if msg.target_spec:
            syncs = [s for s in syncs if any(t.spec == msg.target_spec for t in s.targets)]
            if not syncs:
                return False, f"no target {msg.target_spec!r}" + (
                    f" in sync {msg.sync!r}" if msg.sync else "")
        collator = self.components["collator"]
        if collator.peer is None or collator.pid is None:
            return False, "the collator is not running; try again"
        send(self.control, msg, collator.peer, log)
        names = ", ".join(s.name for s in syncs)
        log.info("%s requested for %s%s", msg.command.value, names,
                 f" target {msg.target_spec}" if msg.target_spec else "")
        return True, f"{msg.command.value}: {names}"

    def status(self) -> Status:
        """The document ``syncsup status --json`` prints (see docs/status.md)."""
        now = self.clock()
        comps = [ComponentStatus(name="supervisor", role="supervisor", pid=os.getpid(),
                                 state="running", uptime=time.time() - self.started)]
        comps += [ComponentStatus(
            name=c.role, role=c.role, pid=c.pid, state=c.policy.state.value,
            restarts=c.policy.restarts, uptime=now - c.spawned if c.pid is not None else None,
            last_exit=c.policy.last_exit) for c in self.components.values()]
        syncs = [(s.name, str(s.source), s.mode.value, [t.spec for t in s.targets])
                 for s in self.conf.syncs]
        self.last_status = assemble(str(self.conf.path), self.started, comps, syncs,
                                    list(self.queries.parts.values()))
        return self.last_status

    def metrics_status(self) -> Status:
        """For the metrics thread: a fresh status from the main loop (woken
        through a pipe), or the last one if the loop does not answer."""
        event, box = threading.Event(), list[Status]()
        with self._waiters_lock:
            self._waiters.append((event, box))
        try:
            os.write(self.wake_w, b"m")
        except BlockingIOError:
            pass
        event.wait(2.0)
        return box[0] if box else (self.last_status or self.status_placeholder())

    def status_placeholder(self) -> Status:
        return Status(config=str(self.conf.path), started=self.started, components=[], syncs=[])

    def _serve_waiters(self) -> None:
        drain_fd(self.wake_r)
        with self._waiters_lock:
            waiters, self._waiters = self._waiters, []
        for event, box in waiters:
            def done(event: threading.Event = event, box: list[Status] = box) -> None:
                box.append(self.status())
                event.set()
            self.ask_status(done)

    # -- signals and periodic work -----------------------------------------------------

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if signum == signal.SIGHUP:
            self.requested = "reload"
        elif signum == signal.SIGUSR1:
            self.requested = "resync"
        else:
            if not self.stopping:
                log.info("received %s: stopping", signal.Signals(signum).name)
            self.stopping = True

    def handle_signal(self) -> None:
        what, self.requested = self.requested, None
        if what == "resync":
            log.info("SIGUSR1: resync of every target")
            self.relay(proto.Control(command=proto.Command.RESYNC))
        elif what == "reload":
            self.reload()

    def reload(self) -> None:
        """SIGHUP: read the config again and restart the children on it.
        Pending work is in the journals, so nothing is lost; a bad new config
        is refused and the old one keeps running."""
        try:
            new = cfg.load(self.conf.path)
            cfg.check_output_files(new)
            cfg.check_sources(new, missing_ok=True)
        except cfg.ConfigError as exc:
            log.error("SIGHUP: config error, keeping the running config: %s", exc)
            return
        if new.settings.state_dir != self.conf.settings.state_dir:
            log.error("SIGHUP: settings.state_dir changed; that needs a restart. "
                      "Keeping the running config")
            return
        log.info("SIGHUP: reloading %s (%d sync(s))", new.path, len(new.syncs))
        self.children.stop_all()
        self.conf = new
        self.children = Children(new.timings, self.children.port)
        self.queries.timeout = new.timings.status_query_timeout
        self.children.start_all(self.clock())
        self.spawner.release()

    def periodic(self, now: float) -> None:
        """systemd notifications and the status file, when they are due."""
        self.notifier.watchdog(now)
        if self.notifier.addr is not None and now >= self.next_notify:
            self.next_notify = now + self.conf.timings.notify_interval
            self.ask_status(self._notify)
        settings = self.conf.settings
        if settings.status_file is not None and now >= self.next_status_file:
            self.next_status_file = now + settings.status_interval
            path = settings.status_file
            self.ask_status(lambda: write_status_file(path, self.status()))

    def _notify(self) -> None:
        """READY=1 once every sync whose source is there finished its
        initial sync (a missing source, say a network mount that is late,
        does not hold the others up); STATUS= before and after, naming the
        sources waited for."""
        st = self.status()
        _ready, line = summary(st)
        waiting = [s for s in self.conf.syncs if not s.source.is_dir()]
        ready = all(t.state != "startup" for s in st.syncs for t in s.targets
                    if s.name not in {w.name for w in waiting})
        if waiting:
            line = (f"waiting for source {', '.join(str(w.source) for w in waiting)} "
                    f"(nothing deleted); {line}")
        if ready:
            self.notifier.ready(line)
        self.notifier.status(line)

    def timeout(self, now: float) -> float:
        """Seconds until something is due: a restart, a heartbeat deadline,
        a status query's deadline, a periodic task. None of these exist in
        an idle daemon except the heartbeat deadlines (every few seconds)."""
        due = [now + 60.0, *self.children.deadlines()]
        deadline = self.queries.next_deadline()
        if deadline is not None:
            due.append(deadline)
        if self.notifier.addr is not None:
            due.append(self.next_notify)
        if self.notifier.watchdog_interval is not None:
            due.append(self.notifier.last_watchdog + self.notifier.watchdog_interval)
        if self.conf.settings.status_file is not None:
            due.append(self.next_status_file)
        return max(0.0, min(due) - now)

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
            signal.signal(sig, self._on_signal)
        log.info("syncsup starting: %d sync(s), state in %s", len(self.conf.syncs),
                 self.state.path)
        name = registry.register(self.conf)
        if name is None:
            log.warning("cannot record this daemon in %s: `syncsup status` without a config "
                        "will not list it", registry.registry_dir())
        try:
            return self._run()
        finally:
            if name is not None:
                registry.unregister(name, self.conf)

    def _run(self) -> int:
        exits = child_exit_fd()
        self.children.start_all(self.clock())
        self.spawner.release()
        if self.conf.settings.metrics:
            from syncsup.supervisor.metrics import serve

            try:
                self.metrics = serve(self.conf.settings.metrics, self.metrics_status)
                log.info("metrics on http://%s/metrics", self.conf.settings.metrics)
            except OSError as exc:
                log.error("cannot serve metrics on %s: %s; running without",
                          self.conf.settings.metrics, exc)
        poller = zmq.Poller()
        poller.register(self.control, zmq.POLLIN)
        poller.register(exits, zmq.POLLIN)
        poller.register(self.wake_r, zmq.POLLIN)
        try:
            while not self.stopping:
                if self.requested:
                    self.handle_signal()
                events = dict(poller.poll(int(self.timeout(self.clock()) * 1000) + 1))
                now = self.clock()
                if exits in events:
                    drain_fd(exits)
                if self.control in events:
                    for peer, msg in receive(self.control, log):
                        self.on_control(peer, msg, now)
                if self.wake_r in events:
                    self._serve_waiters()
                self.children.stopping = self.stopping
                if exits in events or self.children.silent(now):
                    self._reap(now)
                self.children.restart_due(now)
                self.spawner.release()  # the template is not needed until a restart
                if exits in events:
                    trim_memory()
                for consumer in self.queries.expire(now):
                    consumer()
                self.periodic(now)
        finally:
            self.notifier.stopping()
            self.children.stopping = True
            self.children.stop_all()
            self.spawner.stop()
            self._reap(self.clock())
            if self.metrics is not None:
                self.metrics.shutdown()
            self.notifier.close()
            self.ctx.destroy(linger=0)
            log.info("syncsup stopped")
        return 0


def _check_rsync(conf: cfg.Config) -> None:
    """Each sync's rsync must run; one whose sender follows a symlink raced
    into the source (probed, not read from its version) is refused where
    another user can write in that source, or everywhere with
    ``strict_rsync``, and otherwise logged once as a warning."""
    probed: dict[str, bool | None] = {}
    for sync in conf.syncs:
        binary = sync.rsync.binary
        if binary not in probed:
            if rsync_version(binary) is None:
                raise StartError(f"{binary} does not run (is rsync installed? "
                                 "apt-get install rsync)")
            probed[binary] = sender_follows(binary, conf.timings.probe_timeout)
        if sync.runs_commands:
            continue  # command mode runs no rsync on the source
        verdict = judge(binary, probed[binary], sync.source, conf.settings.strict_rsync)
        if verdict.refuse:
            raise StartRefused(f"{sync.name}: {verdict.refuse}")
        if verdict.warn:
            log.warning("%s: %s", sync.name, verdict.warn)
