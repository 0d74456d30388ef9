"""The collator process: its two sockets around :class:`~syncsup.collator.core.Collator`.

It binds ``ingest`` (watcher EVENTS -> ACK after commit) and ``dispatch``
(syncer READY -> BATCH -> DONE) and sleeps until a message arrives or a
batch's delay or backoff runs out; an idle collator makes no query and
wakes only for its heartbeat.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import zmq

from syncsup import config as cfg
from syncsup import proto
from syncsup.child import ChildRuntime
from syncsup.collator.core import Collator
from syncsup.logs import setup_logging
from syncsup.processes import drain_fd
from syncsup.sockets import bind_private, new_socket, receive, send
from syncsup.statedir import StateDir

__all__ = ["main"]

log = logging.getLogger("syncsup.collator")


def run(conf: cfg.Config, run_id: str) -> int:
    state = StateDir(conf.settings.state_dir)
    rt = ChildRuntime(state, "collator", conf.timings.heartbeat_interval)
    sockets: dict[str, zmq.Socket[bytes]] = {}
    for name in ("ingest", "dispatch"):
        sock = new_socket(rt.ctx, zmq.ROUTER)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        bind_private(sock, state, name)
        sockets[name] = sock

    def send_to(where: str, peer: bytes, msg: proto.Message) -> bool:
        return send(sockets[where], msg, peer, log)

    core = Collator(conf, state, run_id, send_to)
    poller = zmq.Poller()
    for sock in (*sockets.values(), rt.control):
        poller.register(sock, zmq.POLLIN)
    poller.register(rt.wakeup, zmq.POLLIN)  # a signal: TERM ends the loop at once
    log.info("collator up: %d sync(s)", len(core.syncs))
    wake: float | None = time.time()
    full: float | None = None
    idle: float | None = None
    while not rt.stopping:
        mono = time.monotonic()
        due = [rt.heartbeat(mono)]
        if wake is not None:
            due.append(wake - time.time())
        if full is not None:
            due.append(full - mono)
        if idle is not None:
            due.append(idle - mono)
        events = dict(poller.poll(int(max(0.0, min(due)) * 1000) + 1))
        if rt.wakeup in events:
            drain_fd(rt.wakeup)
        if sockets["ingest"] in events:
            for peer, msg in receive(sockets["ingest"], log):
                if isinstance(msg, proto.Events) and peer is not None:
                    core.on_events(peer, msg)
                else:
                    log.warning("dropped unexpected %s on ingest", type(msg).__name__)
        if sockets["dispatch"] in events:
            for peer, msg in receive(sockets["dispatch"], log):
                if isinstance(msg, proto.Ready) and peer is not None:
                    core.on_ready(peer, msg)
                elif isinstance(msg, proto.Done):
                    core.on_done(msg, peer)
                else:
                    log.warning("dropped unexpected %s on dispatch", type(msg).__name__)
        if rt.control in events:
            rt.on_control(log, core.status, _control(core))
        full = core.periodic(time.monotonic())
        wake = core.dispatch_due()
        idle = core.release_idle(time.monotonic())
    core.close()
    rt.close()
    return 0


def _control(core: Collator) -> Callable[[proto.Message], None]:
    def handle(msg: proto.Message) -> None:
        if isinstance(msg, proto.Control):
            core.on_control(msg)
        else:
            log.warning("dropped unexpected %s on control", type(msg).__name__)
    return handle


def main(config_path: str, run_id: str) -> int:
    conf = cfg.load_for_child(config_path)
    setup_logging(conf.settings, "collator")
    return run(conf, run_id)
