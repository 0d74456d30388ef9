"""Talking to a running daemon from the command line: one request on the
supervisor's control socket, one reply (or none, for a stop)."""

from __future__ import annotations

import zmq

from syncsup import config as cfg
from syncsup import proto
from syncsup.sockets import new_socket
from syncsup.statedir import StateDir, is_running

__all__ = ["NotRunning", "request"]


class NotRunning(RuntimeError):
    """No supervisor holds the lock of this state_dir."""


def request(conf: cfg.Config, msg: proto.Message,
            timeout: float | None = None) -> proto.Message | None:
    """Send ``msg`` to the running supervisor and return its reply (None for
    a Stop, which has none). Raises NotRunning, or TimeoutError if it does
    not answer in ``timeout`` seconds (``[timings] command_timeout``)."""
    if timeout is None:
        timeout = conf.timings.command_timeout
    state = StateDir(conf.settings.state_dir)
    if not is_running(state.path):
        raise NotRunning(f"syncsup is not running (state_dir {state.path})")
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        sock = new_socket(ctx, zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 1000)
        sock.connect(state.endpoint("control"))
        sock.send_multipart(proto.encode(msg))
        if isinstance(msg, proto.Stop):
            return None
        if not sock.poll(int(timeout * 1000), zmq.POLLIN):
            raise TimeoutError(f"no answer from the daemon in {timeout:.0f}s")
        return proto.decode(sock.recv_multipart())
    finally:
        ctx.destroy(linger=1000)
