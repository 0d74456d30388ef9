"""Plumbing shared by every process: socket addresses, logging, parent-death
signals and the heartbeat a child sends to its supervisor.

Kept deliberately small: policy lives in the role packages, this module only
does I/O the roles would otherwise each write again.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import secrets
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from syncsup import proto
from syncsup.config import Settings

__all__ = [
    "ChildRuntime",
    "bind_private",
    "child_exit_fd",
    "decode_logged",
    "drain",
    "endpoint",
    "new_incarnation",
    "new_socket",
    "recv_trusted",
    "set_pdeathsig",
    "setup_logging",
]

_PR_SET_PDEATHSIG = 1
HEARTBEAT_INTERVAL = 2.0  # the supervisor's timeout (7 s) allows two lost beats and a late one
# Unix socket paths are limited to 107 bytes (sun_path); fail early and clearly.
_SUN_PATH_MAX = 107


def endpoint(state_dir: Path, name: str) -> str:
    """The ``ipc://`` address of socket ``name`` inside ``state_dir``."""
    path = f"{state_dir}/{name}.sock"
    if len(path.encode()) > _SUN_PATH_MAX:
        raise OSError(f"socket path too long for a unix socket ({len(path)} bytes): {path}; "
                      "choose a shorter settings.state_dir")
    return f"ipc://{path}"


def new_socket(ctx: zmq.Context[zmq.Socket[bytes]], kind: int) -> zmq.Socket[bytes]:
    """A socket with our defaults: no linger at close (a dead peer must not
    hold up a stop), and ``ZMQ_MAXMSGSIZE`` so that libzmq itself drops a
    peer sending a frame larger than any message we accept."""
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, proto.MAX_FRAME)
    return sock


def bind_private(sock: zmq.Socket[bytes], state_dir: Path, name: str) -> None:
    """Bind ``sock`` to socket ``name`` in ``state_dir``, readable and
    writable by our user only (0600, inside a 0700 directory)."""
    addr = endpoint(state_dir, name)
    old = os.umask(0o077)
    try:
        sock.bind(addr)
    finally:
        os.umask(old)
    os.chmod(addr[len("ipc://"):], 0o600)


_refused: dict[int, float] = {}


def recv_trusted(sock: zmq.Socket[bytes], log: logging.Logger) -> list[bytes] | None:
    """Receive one message without blocking (raises zmq.Again if none), and
    return it only if the peer runs as our user (or root).

    The peer's credentials come from the kernel (SO_PEERCRED on the unix
    socket, which libzmq exposes as the ``Peer-Address`` property
    ``host:uid:gid:pid``), not from anything the peer says. A refusal is
    logged (at most once a minute per uid) and the message dropped.
    """
    frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
    try:
        uid = int(str(frames[0].get("Peer-Address")).rsplit(":", 3)[1])
    except (zmq.ZMQError, IndexError, ValueError, TypeError):
        uid = -1
    if uid not in (os.getuid(), 0):
        now = time.monotonic()
        if now - _refused.get(uid, -1e9) > 60:
            _refused[uid] = now
            log.warning("refused a message on %s from uid %d: only uid %d may talk to "
                        "this daemon", sock.getsockopt_string(zmq.LAST_ENDPOINT), uid,
                        os.getuid())
        return None
    return [f.bytes for f in frames]


def child_exit_fd() -> int:
    """A file descriptor that becomes readable when a child exits (or any
    signal arrives), for the poll loop: reacting to SIGCHLD at once instead of
    polling children every few milliseconds saves both latency and idle CPU.
    Read it empty with :func:`drain`."""
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    signal.signal(signal.SIGCHLD, lambda _signum, _frame: None)
    return r


def drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def decode_logged(frames: list[bytes], log: logging.Logger, where: str) -> proto.Message | None:
    """Decode a message from a peer, or log why it is dropped and return
    None: garbage on a socket must never crash the receiver."""
    try:
        return proto.decode(frames)
    except proto.ProtocolError as exc:
        log.warning("dropped malformed message on %s: %s", where, exc)
        return None


def new_incarnation() -> str:
    """A random token naming one run of one process."""
    return secrets.token_hex(8)


def set_pdeathsig(sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to send ``sig`` when our parent dies.

    Used as ``preexec_fn`` for every child (it survives exec), so that a
    SIGKILLed supervisor or syncer never leaves an rsync writing behind it.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:  # pragma: no cover - kernel refused
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


_JOURNAL_PRIORITY = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}


class _JournalFormatter(logging.Formatter):
    """Under systemd: ``<N>`` priority prefixes that journald understands,
    no timestamp (journald adds its own)."""

    def format(self, record: logging.LogRecord) -> str:
        prio = _JOURNAL_PRIORITY.get(record.levelname, 6)
        return f"<{prio}>{super().format(record)}"


class _JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def __init__(self, role: str, name: str) -> None:
        super().__init__()
        self.role, self.name = role, name

    def format(self, record: logging.LogRecord) -> str:
        doc = {"time": record.created, "level": record.levelname.lower(), "role": self.role,
               "component": self.name, "pid": record.process, "message": record.getMessage()}
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc)


class _NoFollowFileHandler(logging.FileHandler):
    """Appends to ``log_file`` but never through a symlink at its name: a
    daemon running as root must not let someone who can write to the log's
    directory redirect its appends to another file."""

    def _open(self) -> Any:
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o640)
        return os.fdopen(fd, "a", encoding=self.encoding, errors=self.errors)


def setup_logging(settings: Settings | None, role: str, name: str = "") -> None:
    """Log one line per record, prefixed with the component, so that the
    interleaved output of all processes stays readable: to stderr (with
    journald priorities when systemd is reading it) and, if configured, to
    ``log_file`` too; ``log_format = "json"`` for machines."""
    level = settings.log_level if settings else "info"
    # "collator:www" is shown as "collator[www]" in text logs; JSON logs and
    # status use the component name as is.
    label = role
    if name and name != role:
        label = f"{role}[{name.split(':', 1)[-1]}]"
    text = f"%(levelname)-7s {label} %(process)d: %(message)s"
    stamped = f"%(asctime)s {text}"
    handlers: list[logging.Handler] = []
    err = logging.StreamHandler(sys.stderr)
    json_format = settings is not None and settings.log_format == "json"
    if json_format:
        err.setFormatter(_JsonFormatter(role, name or role))
    elif os.environ.get("JOURNAL_STREAM"):
        err.setFormatter(_JournalFormatter(text))
    else:
        err.setFormatter(logging.Formatter(stamped))
    handlers.append(err)
    if settings is not None and settings.log_file is not None:
        try:
            fh = _NoFollowFileHandler(settings.log_file)
            fh.setFormatter(_JsonFormatter(role, name or role) if json_format
                            else logging.Formatter(stamped))
            handlers.append(fh)
        except OSError as exc:
            print(f"syncsup: cannot open log_file {settings.log_file}: {exc}", file=sys.stderr)
    logging.basicConfig(level=level.upper(), handlers=handlers, force=True)


class ChildRuntime:
    """What every child of the supervisor shares: the ZeroMQ context, the
    control socket, heartbeats, and the stop flag set by SIGTERM/SIGINT.

    Children notice a dead supervisor two ways: PR_SET_PDEATHSIG (set by the
    supervisor at spawn) and ``parent_alive()``, checked in the main loop.
    """

    def __init__(self, state_dir: Path, role: str, name: str) -> None:
        self.role = role
        self.name = name
        self.incarnation = new_incarnation()
        self.ctx = zmq.Context()
        self.control = new_socket(self.ctx, zmq.DEALER)
        self.control.setsockopt(zmq.SNDHWM, 10)
        self.control.connect(endpoint(state_dir, "control"))
        self.stopping = False
        os.umask(0o077)  # journal, lists and sockets are ours alone
        # Die with the supervisor. Set here rather than between fork and
        # exec (the supervisor may have threads); the check closes the race
        # of a supervisor that died before the prctl.
        set_pdeathsig(signal.SIGKILL)
        self._parent = os.getppid()
        expected = os.environ.get("SYNCSUP_SUPERVISOR_PID")
        if expected and expected != str(self._parent):
            raise SystemExit("supervisor is gone")
        self._last_beat = 0.0
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.stopping = True

    def parent_alive(self) -> bool:
        return os.getppid() == self._parent

    def heartbeat(self, info: Callable[[], dict[str, Any]], force: bool = False) -> None:
        """Send a heartbeat if one is due (about once a second); ``info`` is
        only called then, so it may be costly."""
        now = time.monotonic()
        if not force and now - self._last_beat < HEARTBEAT_INTERVAL:
            return
        self._last_beat = now
        msg = proto.Heartbeat(role=self.role, name=self.name, pid=os.getpid(),
                              incarnation=self.incarnation, info=info())
        try:
            self.control.send_multipart(proto.encode(msg), flags=zmq.NOBLOCK)
        except zmq.Again:
            pass  # supervisor busy or gone; the next beat will do

    def close(self) -> None:
        self.ctx.destroy(linger=0)
