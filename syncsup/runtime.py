"""Plumbing shared by every process: sockets with our limits, receiving from
trusted peers only, SIGCHLD as a file descriptor, process groups, and what
every child of the supervisor does (heartbeats, status queries, stop).

Kept deliberately small: policy lives in the role packages, this module only
does I/O the roles would otherwise each write again.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import zmq

from syncsup import proto
from syncsup.statedir import StateDir
from syncsup.status import StatusPart

__all__ = [
    "ChildRuntime",
    "Reconnects",
    "bind_private",
    "child_exit_fd",
    "drain_fd",
    "killpg",
    "new_incarnation",
    "new_socket",
    "receive",
    "send",
    "set_pdeathsig",
    "signal_fd",
    "stop_group",
    "trim_memory",
]

_PR_SET_PDEATHSIG = 1


def new_incarnation() -> str:
    """A random token naming one run of one process."""
    return os.urandom(8).hex()


def new_socket(ctx: zmq.Context[zmq.Socket[bytes]], kind: int) -> zmq.Socket[bytes]:
    """A socket with our defaults: no linger at close (a dead peer must not
    hold up a stop), and ``ZMQ_MAXMSGSIZE`` so that libzmq itself drops a
    peer sending a frame larger than any message we accept."""
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, proto.MAX_FRAME)
    return sock


def bind_private(sock: zmq.Socket[bytes], state: StateDir, name: str) -> None:
    """Bind ``sock`` to socket ``name`` in ``state_dir``, readable and
    writable by our user only (0600, inside a 0700 directory)."""
    addr = state.endpoint(name)
    old = os.umask(0o077)
    try:
        sock.bind(addr)
    finally:
        os.umask(old)
    os.chmod(addr[len("ipc://"):], 0o600)


_refused: dict[int, float] = {}


def receive(sock: zmq.Socket[bytes], log: logging.Logger, limit: int = 1000
            ) -> Iterator[tuple[bytes | None, proto.Message]]:
    """Every message waiting on ``sock`` (at most ``limit``, so that one busy
    socket cannot starve the others), without blocking, as ``(peer,
    message)``; ``peer`` is the routing id on a ROUTER socket, else None.

    Only peers running as our user (or root) are heard: the uid comes from
    the kernel (SO_PEERCRED on the unix socket, which libzmq exposes as the
    ``Peer-Address`` property ``host:uid:gid:pid``), not from anything the
    peer says. A refusal is logged at most once a minute per uid. Garbage
    is logged and dropped: it must never crash the receiver.
    """
    router = sock.type == zmq.ROUTER
    for _ in range(limit):
        try:
            parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return
        try:
            uid = int(str(parts[0].get("Peer-Address")).rsplit(":", 3)[1])
        except (zmq.ZMQError, IndexError, ValueError, TypeError):
            uid = -1
        if uid not in (os.getuid(), 0):
            now = time.monotonic()
            if now - _refused.get(uid, -1e9) > 60:
                _refused[uid] = now
                log.warning("refused a message on %s from uid %d: only uid %d may talk to "
                            "this daemon", _where(sock), uid, os.getuid())
            continue
        frames = [p.bytes for p in parts]
        peer = frames.pop(0) if router and frames else None
        try:
            msg = proto.decode(frames)
        except proto.ProtocolError as exc:
            log.warning("dropped malformed message on %s: %s", _where(sock), exc)
            continue
        yield peer, msg


def _where(sock: zmq.Socket[bytes]) -> str:
    return sock.getsockopt_string(zmq.LAST_ENDPOINT).rsplit("/", 1)[-1]


def send(sock: zmq.Socket[bytes], msg: proto.Message, peer: bytes | None = None,
         log: logging.Logger | None = None) -> bool:
    """Send without blocking; False (and a debug line) if it could not go."""
    frames = proto.encode(msg)
    try:
        sock.send_multipart([peer, *frames] if peer is not None else frames, flags=zmq.NOBLOCK)
        return True
    except zmq.ZMQError as exc:
        if log is not None:
            log.debug("could not send %s: %s", type(msg).__name__, exc)
        return False


class Reconnects:
    """Whether a socket's connection to the collator was made *again*: read
    from its monitor (``EVENT_CONNECTED``). The first connection is the
    start; any later one means a restarted collator, which knows nothing
    unacknowledged (the watcher resends) and no credits (the syncer gives
    them again). The one place both children ask it."""

    def __init__(self, monitor: zmq.Socket[bytes]) -> None:
        self.monitor = monitor
        self.connections = 0

    def again(self) -> bool:
        """Did the monitor report a connection, not the first, since the last
        call? Its queue is left empty."""
        made = 0
        while True:
            try:
                self.monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            made += 1
        reconnected = made > 0 and self.connections + made > 1
        self.connections += made
        return reconnected


def signal_fd() -> int:
    """A file descriptor that becomes readable when any signal with a Python
    handler arrives, for the poll loop: a ZeroMQ poll resumes after a
    signal instead of returning, so without it a SIGTERM would be noticed
    only when the poll times out. Empty it with :func:`drain_fd`."""
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    return r


def child_exit_fd() -> int:
    """:func:`signal_fd`, also woken when a child exits: reacting to
    SIGCHLD at once instead of polling children saves both latency and
    idle CPU."""
    r = signal_fd()
    signal.signal(signal.SIGCHLD, lambda _signum, _frame: None)
    return r


def drain_fd(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def killpg(pgid: int, sig: int) -> None:
    """Signal a process group that may be gone already (or, in a user
    namespace, no longer ours)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def stop_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    """End the process group led by ``proc``: TERM (and CONT, should it be
    stopped), ``grace`` seconds to exit, then KILL; reaped either way."""
    killpg(proc.pid, signal.SIGTERM)
    killpg(proc.pid, signal.SIGCONT)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def trim_memory() -> None:
    """Give freed heap memory back to the system: glibc keeps it otherwise,
    and a daemon at rest after a busy start should not hold its peak."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc


def set_pdeathsig(sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to send ``sig`` when our parent dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:  # pragma: no cover - kernel refused
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


class ChildRuntime:
    """What every child of the supervisor shares: the ZeroMQ context, the
    control socket, heartbeats, status answers and the stop flag (set by
    SIGTERM or SIGINT).

    Children beat every ``heartbeat_interval`` (``Timings``); the supervisor
    kills one silent for ``heartbeat_timeout`` (by default two lost beats and
    a late one). No status travels with a beat (status is asked for on
    demand), but each one still wakes two processes and their ZeroMQ
    threads: about half a millisecond of CPU, which is what an idle daemon
    spends. The default ten seconds keeps that near 0.02 CPU seconds a
    minute; a hung child is still replaced within half a minute."""

    def __init__(self, state: StateDir, role: str, heartbeat_interval: float) -> None:
        self.role = role
        self.heartbeat_interval = heartbeat_interval
        self.incarnation = new_incarnation()
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.control = new_socket(self.ctx, zmq.DEALER)
        self.control.setsockopt(zmq.SNDHWM, 10)
        self.control.connect(state.endpoint("control"))
        self.stopping = False
        self.next_beat = 0.0
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        # Readable when a signal arrived: every child polls it with its
        # sockets, so that TERM ends the loop at once.
        self.wakeup = signal_fd()

    def watch_children(self) -> int:
        """Make :attr:`wakeup` readable when a child process exits, too."""
        signal.signal(signal.SIGCHLD, lambda _signum, _frame: None)
        return self.wakeup

    def _on_signal(self, _signum: int, _frame: Any) -> None:
        self.stopping = True

    def heartbeat(self, now: float) -> float:
        """Beat if due; return the seconds until the next beat (for the
        poll timeout, so that an idle child sleeps until then)."""
        if now >= self.next_beat:
            if self.next_beat:
                trim_memory()  # cheap, and what a busy stretch freed goes back
            self.next_beat = now + self.heartbeat_interval
            send(self.control, proto.Heartbeat(role=self.role, pid=os.getpid(),
                                               incarnation=self.incarnation))
        return max(0.0, self.next_beat - now)

    def on_control(self, log: logging.Logger, status: Callable[[], StatusPart],
                   other: Callable[[proto.Message], None] | None = None) -> None:
        """Handle what the supervisor sent: status queries are answered
        here; anything else goes to ``other`` (the collator's Control)."""
        for _peer, msg in receive(self.control, log, limit=100):
            if isinstance(msg, proto.StatusQuery):
                send(self.control, proto.StatusAnswer(query=msg.query, part=status()))
            elif other is not None:
                other(msg)
            else:
                log.warning("dropped unexpected %s on control", type(msg).__name__)

    def close(self) -> None:
        self.ctx.destroy(linger=0)
