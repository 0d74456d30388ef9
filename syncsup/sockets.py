"""ZeroMQ sockets as every syncsup process uses them: our limits on each
socket, a private bind inside state_dir, receiving from trusted peers only,
non-blocking sends, and the one check for a collator that came back
(:class:`Reconnects`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator

import zmq

from syncsup import proto
from syncsup.statedir import StateDir

__all__ = ["Reconnects", "bind_private", "new_socket", "receive", "send"]


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
