"""The agent: applies syncsup's own operations on a target (small files,
directories and symlinks written whole, deletes, renames, directory times),
one request at a time, over its stdin and stdout; and, in-process, for a
local target (the same :func:`handle`).

Behind a confined key it runs under the kernel layer (``_confined``,
``_kernel``: Landlock, seccomp) and works only through
:class:`~syncsup.target._apply.Applier`, so a request can name
nothing outside ROOT and can follow no symlink. Requests are answered in
order; a failed operation is answered ``ok: false`` and the session goes on
(the transfer that follows repairs what a rename could not do), while a
malformed frame ends the session.

Every request is checked against a schema (``_schema``) before anything
is done, and every request is answered: whatever goes wrong while one is
handled, of whatever kind, becomes ``ok: false`` with a fixed message. No
exception leaves :func:`handle` or :func:`serve`, because the
interpreter's way of reporting one (a traceback) opens source files by
path, and a path is exactly what the peer may have planted.
"""

from __future__ import annotations

import grp
import os
import pwd
import select
import sys
import time
from typing import IO, Any

from syncsup import __version__
from syncsup.target._apply import Applier, Attrs
from syncsup.target._protocol import VERSION, FrameError, encode_frame, read_frame
from syncsup.target._schema import Request, validate

__all__ = ["FAILED", "READ_ONLY", "Ids", "handle", "serve"]

MAX_NAMES = 1024    # owner and group names remembered
MAX_ERROR = 300     # characters of an error message sent back
FAILED = "the agent failed on this request"  # what an unexpected exception is answered


class Ids:
    """Owner and group as ``rsync -a`` maps them: by name when the name is
    known here, else by number. In a chroot names cannot be looked up, and
    the number is kept (as rsync's chrooted daemon does)."""

    def __init__(self, by_name: bool) -> None:
        self.by_name = by_name
        self._cache: dict[tuple[str, str], int] = {}

    def resolve(self, kind: str, name: Any, number: int) -> int:
        if not self.by_name or not isinstance(name, str) or not name:
            return number
        key = (kind, name)
        if key not in self._cache:
            if len(self._cache) >= MAX_NAMES:
                self._cache.clear()  # names are the peer's: never an unbounded cache
            try:
                found = pwd.getpwnam(name).pw_uid if kind == "user" else grp.getgrnam(name).gr_gid
            except KeyError:
                found = number
            self._cache[key] = found
        return self._cache[key]


def _attrs(req: Request, ids: Ids) -> Attrs:
    return Attrs(mode=req.mode, mtime_ns=req.mtime,
                 uid=ids.resolve("user", req.user, req.uid),
                 gid=ids.resolve("group", req.group, req.gid))


def _peer_gone(out: IO[bytes]) -> bool:
    """Has the reader of our answers gone (the other end of the pipe or
    socket closed)?"""
    try:
        fd = out.fileno()
    except (OSError, ValueError):
        return False  # not a descriptor (tests): nothing to ask
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(ev & (select.POLLERR | select.POLLHUP) for _fd, ev in poller.poll(0))




def _act(applier: Applier, req: Request, ids: Ids) -> None:
    if req.op == "put":
        applier.put(req.path, req.data, _attrs(req, ids), req.tree)
    elif req.op == "mkdir":
        applier.mkdir(req.path, _attrs(req, ids))
    elif req.op == "symlink":
        applier.symlink(req.path, req.target, _attrs(req, ids), req.tree)
    elif req.op == "time":
        applier.set_time(req.path, req.mtime)
    elif req.op == "delete":
        applier.delete(req.path, req.tree)
    elif req.op == "rename":
        applier.rename(req.src, req.dst)
    elif req.op == "commit":
        applier.commit()
    # ping, bye: nothing to do


def _error(exc: OSError) -> str:
    """What a failed request is answered: the system's reason (or the
    schema's, or the applier's own), cut short; a name in it is at most
    one component, but nothing the peer sent is echoed at length."""
    text = exc.strerror or (os.strerror(exc.errno) if exc.errno else FAILED)
    return text[:MAX_ERROR]


READ_ONLY = frozenset({"hello", "stats", "ping", "bye"})  # a ``stats`` session's operations


def handle(applier: Applier, req: dict[Any, Any], info: dict[str, Any],
           ids: Ids | None = None, ops: frozenset[str] | None = None,
           own: bool = False) -> dict[str, Any]:
    """The answer to one request; never raises. The request is checked
    whole against the schema first; any exception while it is acted on,
    whatever its kind, is answered ``ok: false`` with a fixed message: an
    exception that escaped would end the agent through the interpreter's
    error printing, which reads files, and must never be reachable.

    ``own``: a request built in this very process (the syncer's local
    agent, from what it read in the source with ``os.lstat``): no peer
    wrote it, so there is nothing for the schema to refuse, and checking
    every field of every path of every batch was about a tenth of the
    local agent's CPU. A field it does not know still fails the request."""
    try:
        request = Request(**req) if own else validate(req)
        if ops is not None and request.op not in ops:
            return {"ok": False, "error": "not served in this session: it only reads"}
        if request.op == "hello":
            if request.version != VERSION:
                return {"ok": False, "error": f"protocol version not supported (this agent "
                        f"speaks {VERSION})", "fatal": True}
            return {"ok": True, "version": VERSION, **info}
        if request.op == "stats":
            # "now": this host's clock, read while answering, so that the
            # client can bound the skew between the two clocks.
            found = applier.stats(list(request.paths))
            return {"ok": True, "ctimes": [f[0] for f in found], "sizes": [f[1] for f in found],
                    "mtimes": [f[2] for f in found], "now": time.time_ns()}
        _act(applier, request, ids or Ids(by_name=False))
    except OSError as exc:
        return {"ok": False, "error": _error(exc)}
    except Exception:  # the point: nothing escapes, whatever it is
        return {"ok": False, "error": FAILED}
    return {"ok": True}


def serve(applier: Applier, info: dict[str, Any], stdin: IO[bytes] | None = None,
          stdout: IO[bytes] | None = None, ids: Ids | None = None,
          ops: frozenset[str] | None = None) -> int:
    """Answer requests until the client closes the stream. Exit codes: 0
    after a clean end, 2 after a malformed frame, a fatal answer or a
    failure outside any request, 3 when the client is gone (nothing more is
    applied). Never raises: every way out is one of these."""
    try:
        return _serve(applier, info, stdin or sys.stdin.buffer, stdout or sys.stdout.buffer,
                      ids or Ids(by_name=False), ops)
    except (BrokenPipeError, ConnectionError):
        return 3  # the reader of our answers is gone
    except Exception:  # as in handle(): nothing may escape
        return 2


def _serve(applier: Applier, info: dict[str, Any], rin: IO[bytes], out: IO[bytes],
           ids: Ids, ops: frozenset[str] | None = None) -> int:
    info = {"agent": __version__, "pid": os.getpid(), **info}
    greeted = False
    while True:
        try:
            req = read_frame(rin)
        except FrameError as exc:
            out.write(encode_frame({"ok": False, "error": str(exc)[:MAX_ERROR], "fatal": True}))
            out.flush()
            return 2
        if req is None or req.get("op") == "bye":
            return 0
        if _peer_gone(out):
            # The client gave up on us (it killed its end after a deadline:
            # we were stopped or stuck) and has sent these paths another
            # way since; applying what is still buffered could put back
            # older content.
            return 3
        if not greeted and req.get("op") != "hello":
            req = {"op": "hello", "version": None}  # answered as a wrong version: fatal
        answer = handle(applier, req, info, ids, ops)
        out.write(encode_frame(answer))
        out.flush()
        if answer.get("fatal"):
            return 2  # a peer speaking another protocol: nothing it sends can be trusted
        greeted = True
