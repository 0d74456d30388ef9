"""systemd's notify protocol, without libsystemd: one datagram per message
on the unix socket named by ``$NOTIFY_SOCKET``.

The supervisor sends ``READY=1`` once every target finished its initial sync
and changes flow, ``STATUS=`` with a one-line summary when it changes, and
``WATCHDOG=1`` at half the ``$WATCHDOG_USEC`` period when systemd asks for
it. Outside systemd every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket

__all__ = ["Notifier"]

log = logging.getLogger("syncsup.supervisor")


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        addr = env.get("NOTIFY_SOCKET", "")
        self.addr: str | None = None
        if addr.startswith("@"):
            self.addr = "\0" + addr[1:]  # abstract namespace
        elif addr.startswith("/"):
            self.addr = addr
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        self.watchdog_interval: float | None = None
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 1e6 / 2
        self.sock: socket.socket | None = None
        if self.addr is not None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.ready_sent = False
        self.last_status = ""
        self.last_watchdog = 0.0

    def send(self, *fields: str) -> None:
        if self.sock is None or self.addr is None:
            return
        try:
            self.sock.sendto("\n".join(fields).encode(), self.addr)
        except OSError as exc:
            log.debug("sd_notify failed: %s", exc)

    def ready(self, summary: str) -> None:
        if not self.ready_sent:
            self.ready_sent = True
            self.last_status = summary
            self.send("READY=1", f"STATUS={summary}")

    def status(self, summary: str) -> None:
        if summary != self.last_status:
            self.last_status = summary
            self.send(f"STATUS={summary}")

    def watchdog(self, now: float) -> None:
        if self.watchdog_interval is not None and now - self.last_watchdog >= (
                self.watchdog_interval):
            self.last_watchdog = now
            self.send("WATCHDOG=1")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping")

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
