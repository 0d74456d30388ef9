"""A session over a target's ssh master with no ssh client process of its own.

An agent session used to be ``ssh -o ControlPath=... LOGIN COMMAND``: an ssh
client (about 8 MB of RSS, libcrypto and all) that does nothing but hand
its stdin, stdout and stderr to the master and wait for the exit code. The
master's control socket speaks OpenSSH's multiplexing protocol (its
``PROTOCOL.mux``, version 4, unchanged since OpenSSH 5.6), so the syncer
does that itself: a hello, a ``MUX_C_NEW_SESSION`` with the command, the
three descriptors passed over the socket (``SCM_RIGHTS``), then the
master's answers.

The master runs the channel: closing the control connection ends the
session exactly as killing an ssh client would (the master closes the
channel). Until the master says the session is open, the syncer keeps its
own copies of the far pipe ends: if the master refuses (the server's
``MaxSessions``), fails or dies first, an ssh client connecting directly is
started on the same pipes, so what was already written to the session is
not lost, as ssh itself falls back to a direct connection.

:class:`Replies` is the decoder of the master's messages (pure, bounded,
fuzzed); :class:`MuxSession` does the I/O, with the small part of
``subprocess.Popen`` the agent session uses.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

from syncsup.processes import stop_group
from syncsup.syncer.transfer import spawn

__all__ = ["MuxError", "MuxSession", "Replies", "hello", "new_session"]

log = logging.getLogger("syncsup.syncer")

VERSION = 4
MSG_HELLO = 0x00000001
C_NEW_SESSION = 0x10000002
S_PERMISSION_DENIED = 0x80000002
S_FAILURE = 0x80000003
S_EXIT_MESSAGE = 0x80000004
S_SESSION_OPENED = 0x80000006
S_TTY_ALLOC_FAIL = 0x80000008
MAX_PACKET = 16 * 1024  # the master's answers are a few dozen bytes
REQUEST_ID = 1          # one request per connection
NO_ESCAPE = 0xFFFFFFFF


class MuxError(Exception):
    """The other end of the control socket does not speak the protocol."""


def _u32(n: int) -> bytes:
    return n.to_bytes(4, "big")


def _string(b: bytes) -> bytes:
    return _u32(len(b)) + b


def _packet(body: bytes) -> bytes:
    return _u32(len(body)) + body


def hello() -> bytes:
    """The client's hello: protocol version 4, no extensions."""
    return _packet(_u32(MSG_HELLO) + _u32(VERSION))


def new_session(command: bytes) -> bytes:
    """``MUX_C_NEW_SESSION`` for ``command``: no tty, no X11, no agent
    forwarding, not a subsystem, no escape character, no environment. (The
    four flags are uint32 on the wire, as OpenSSH reads them, where its
    protocol note says "bool".)"""
    return _packet(_u32(C_NEW_SESSION) + _u32(REQUEST_ID) + _string(b"")
                   + _u32(0) * 4 + _u32(NO_ESCAPE) + _string(b"") + _string(command))


@dataclass(frozen=True)
class Reply:
    """One message of the master: ``kind`` is ``hello``, ``opened``,
    ``refused``, ``exit`` or ``tty``; ``value`` the exit code, or 0."""

    kind: str
    value: int = 0
    reason: str = ""


class Replies:
    """The master's messages, fed as they arrive, checked against the order
    OpenSSH's master sends them in: one hello, then the session opened or
    refused, then (only once opened) a tty notice and the exit. Anything
    else (an oversized or short packet, an unknown type, an answer to
    another request, a version other than 4, a message out of its order)
    raises :class:`MuxError`: the caller then gives up on the master, never
    guesses."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.seen: set[str] = set()

    def feed(self, data: bytes) -> list[Reply]:
        self.buf += data
        out = []
        while len(self.buf) >= 4:
            size = int.from_bytes(self.buf[:4], "big")
            if size > MAX_PACKET or size < 4:
                raise MuxError(f"a packet of {size} bytes")
            if len(self.buf) < 4 + size:
                break
            body = bytes(self.buf[4:4 + size])
            del self.buf[:4 + size]
            reply = self._one(body)
            self._in_order(reply.kind)
            out.append(reply)
        return out

    def _in_order(self, kind: str) -> None:
        after = {"hello": set(), "opened": {"hello"}, "refused": {"hello"},
                 "tty": {"opened"}, "exit": {"opened"}}[kind]
        if kind in self.seen or not after <= self.seen or (
                kind in ("opened", "refused") and self.seen & {"opened", "refused"}):
            raise MuxError(f"{kind} out of order")
        self.seen.add(kind)

    @staticmethod
    def _one(body: bytes) -> Reply:
        def u32(at: int) -> int:
            if len(body) < at + 4:
                raise MuxError("a packet too short for its type")
            return int.from_bytes(body[at:at + 4], "big")

        kind = u32(0)
        if kind == MSG_HELLO:
            if u32(4) != VERSION:
                raise MuxError(f"protocol version {u32(4)}, not {VERSION}")
            return Reply("hello")  # extensions, if any, are ignored
        if kind in (S_PERMISSION_DENIED, S_FAILURE, S_SESSION_OPENED) and u32(4) != REQUEST_ID:
            raise MuxError("an answer to a request never made")
        if kind == S_SESSION_OPENED:
            u32(8)
            return Reply("opened")
        if kind in (S_PERMISSION_DENIED, S_FAILURE):
            size = u32(8)
            if len(body) < 12 + size:
                raise MuxError("a reason longer than its packet")
            return Reply("refused", reason=body[12:12 + size].decode(errors="replace")[:200])
        if kind == S_EXIT_MESSAGE:
            u32(4)
            return Reply("exit", u32(8) & 0xFF)
        if kind == S_TTY_ALLOC_FAIL:
            u32(4)
            return Reply("tty")
        raise MuxError(f"message type {kind:#x}")


CONNECT_TIMEOUT = 0.2
"""Seconds the syncer's loop may wait to hand a session to the master: a
local socket takes the request at once unless the master is stopped with a
full backlog, and then connecting directly is the better way anyway."""

READS_PER_POLL = 4  # the master's answers fit in one read; a flood waits its turn

# Control paths whose master has been said to refuse or fail a session: said
# at INFO once a run, then at DEBUG. A stock sshd carries 10 sessions a
# connection, and a busy login past that would log every session it refuses.
_TOLD: set[str] = set()


class MuxSession:
    """``command`` run over the master at ``control_path``, or, if that
    master cannot be reached or will not open it, by ``direct`` (an ssh
    argv that connects by itself) on the same pipes.

    ``stdin_fd`` (to write) and ``stdout_fd`` (to read) are the session's;
    ``control_fd`` is to be watched while :attr:`pending` (the master's
    answer is due). Popen's ``wait`` and the exit codes of ssh: the
    command's own, or 255 where the connection failed. Raises OSError,
    with nothing left open, where not even the direct ssh can be run."""

    def __init__(self, control_path: str | None, command: str, direct: list[str],
                 errfile: IO[bytes]) -> None:
        self.direct, self.errfile = direct, errfile
        self.control_path = control_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None
        self.replies = Replies()
        self.sock: socket.socket | None = None
        self.far: tuple[int, int] | None = None  # held until the master opens
        self.stdin_fd = self.stdout_fd = -1
        self.given_up = False  # see give_up
        try:
            in_r, self.stdin_fd = os.pipe2(os.O_CLOEXEC)
            self.far = (in_r, -1)
            self.stdout_fd, out_w = os.pipe2(os.O_CLOEXEC)
            self.far = (in_r, out_w)
            if control_path is not None:
                self.sock = self._connect(control_path, command)
            if self.sock is None:
                self._fall_back("", raising=True)
        except BaseException:
            self.kill(0.0)
            raise

    @property
    def control_fd(self) -> int | None:
        return self.sock.fileno() if self.sock is not None and self.pending else None

    @property
    def opened(self) -> bool:
        """The master said the session is open."""
        return "opened" in self.replies.seen

    @property
    def pending(self) -> bool:
        return self.far is not None and self.proc is None

    def _connect(self, path: str, command: str) -> socket.socket | None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        deadline = time.monotonic() + CONNECT_TIMEOUT

        def step() -> None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the master did not take the session in time")
            sock.settimeout(left)

        try:
            step()
            sock.connect(path)
            step()
            sock.sendall(hello() + new_session(os.fsencode(command)))
            assert self.far is not None
            for fd in (*self.far, self.errfile.fileno()):
                step()
                socket.send_fds(sock, [b"\0"], [fd])
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            if not isinstance(exc, (FileNotFoundError, ConnectionRefusedError)):
                self._say(str(exc))
            return None  # no master (yet): ssh connects by itself
        return sock

    def give_up(self) -> None:
        """End the session from another thread than its owner's: its control
        connection is shut down (never closed, so no descriptor number is
        freed under the owner), and it will not connect directly instead.
        The owner then sees it end, as a connection that failed (255)."""
        self.given_up = True
        sock = self.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # closed by the owner meanwhile: ending anyway

    def _fall_back(self, why: str, raising: bool = False) -> None:
        """The master will not carry it: a direct ssh on the held pipes.
        Where ssh cannot be run, the constructor raises (the caller says so
        and leaves the agent alone for a while); later, the session ends as
        a connection that failed (255). Not once given up."""
        if self.given_up:
            self.returncode = 255
            self._close_sock()
            self._release_far()
            return
        if why:
            self._say(why)
        self._close_sock()
        assert self.far is not None
        in_r, out_w = self.far
        try:
            self.proc = spawn(self.direct, stdin=in_r, stdout=out_w, stderr=self.errfile)
        except (OSError, subprocess.SubprocessError):
            if raising:
                raise
            self.returncode = 255
        finally:
            self._release_far()

    def _say(self, why: str) -> None:
        key = self.control_path or ""
        first = key not in _TOLD
        _TOLD.add(key)
        log.log(logging.INFO if first else logging.DEBUG,
                "ssh master %s: %s; this session connects directly%s", self.control_path, why,
                " (said once; the server's MaxSessions bounds the sessions of one connection)"
                if first else "")

    def _release_far(self) -> None:
        if self.far is not None:
            for fd in self.far:
                if fd >= 0:
                    os.close(fd)
            self.far = None

    def _close_sock(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def poll(self) -> int | None:
        """Read what the master said; the exit code once there is one."""
        if self.proc is not None:
            return self.proc.poll()
        for _ in range(READS_PER_POLL):
            if self.sock is None or self.returncode is not None or self.proc is not None:
                break
            try:
                data = self.sock.recv(4096)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                data = b""
            if not data:
                self._lost("the master closed the connection")
                break
            try:
                replies = self.replies.feed(data)
            except MuxError as exc:
                self._lost(f"the master spoke no multiplexing protocol ({exc})")
                break
            for reply in replies:
                self._on(reply)
        return self.proc.poll() if self.proc is not None else self.returncode

    def _on(self, reply: Reply) -> None:
        if reply.kind == "opened":
            self._release_far()  # the master's copies are the far ends now
        elif reply.kind == "refused":
            self._fall_back(f"the session was refused ({reply.reason})")
        elif reply.kind == "exit":
            self.returncode = reply.value
            self._close_sock()

    def _lost(self, why: str) -> None:
        """The control connection ended or went wrong: before the session
        opened, it connects directly; after, it has ended as ssh's sessions
        do when their connection is gone (255: the master closes the
        channel, and the agent's stdout ends)."""
        if self.opened:
            self.returncode = 255
            self._close_sock()
        elif self.far is not None:
            self._fall_back(why)

    def settle(self, cancelled: Callable[[], bool]) -> None:
        """Block until the master has opened the session, or refused it and
        a direct ssh runs on its pipes instead (or it ended, or
        ``cancelled()``): until then the far ends are ours, and a blocking
        read would never see the end of a session that never began. For an
        owner that reads and writes the pipes blocking, in a thread."""
        while self.pending and not cancelled():
            if self.poll() is not None:
                return
            fd = self.control_fd
            if fd is not None:
                waiter = select.poll()  # not select(): any descriptor number
                waiter.register(fd, select.POLLIN)
                waiter.poll(100)

    def wait(self, timeout: float) -> int:
        """The exit code within ``timeout`` seconds, or TimeoutExpired."""
        deadline = time.monotonic() + timeout
        while True:
            rc = self.poll()
            if rc is not None:
                return rc
            left = deadline - time.monotonic()
            if left <= 0:
                raise subprocess.TimeoutExpired(self.direct, timeout)
            if self.proc is not None:
                return self.proc.wait(left)
            if self.sock is not None:
                waiter = select.poll()  # not select(): any descriptor number
                waiter.register(self.sock, select.POLLIN)
                waiter.poll(left * 1000)

    def kill(self, grace: float) -> None:
        """End the session: the direct ssh and its group, or the control
        connection (the master then closes the channel); our pipe ends."""
        if self.proc is not None:
            stop_group(self.proc, grace)
        elif self.returncode is None:
            self.returncode = -9
        self._close_sock()
        self._release_far()
        for fd in (self.stdin_fd, self.stdout_fd):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.stdin_fd = self.stdout_fd = -1
