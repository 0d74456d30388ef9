"""What every child of the supervisor does besides its role: its ZeroMQ
context and control socket, heartbeats, status answers and the stop flag.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from typing import Any

import zmq

from syncsup import proto
from syncsup.processes import new_incarnation, signal_fd, trim_memory
from syncsup.sockets import new_socket, receive, send
from syncsup.statedir import StateDir
from syncsup.status import StatusPart

__all__ = ["ChildRuntime"]


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
