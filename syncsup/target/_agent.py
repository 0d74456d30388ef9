"""The agent: applies syncsup's own operations on a target (small files,
directories and symlinks written whole, deletes, renames, directory times),
one request at a time, over its stdin and stdout; and, in-process, for a
local target (the same :func:`handle`).

It starts confined (a chroot of ROOT, see ``_confine``) and works only
through :class:`~syncsup.target._apply.Applier`, so a request can name
nothing outside ROOT and can follow no symlink. Requests are answered in
order; a failed operation is answered ``ok: false`` and the session goes on
(the transfer that follows repairs what a rename could not do), while a
malformed frame ends the session.
"""

from __future__ import annotations

import grp
import os
import pwd
import select
import sys
from typing import IO, Any

from syncsup import __version__
from syncsup.target._apply import Applier, ApplyError, Attrs
from syncsup.target._protocol import VERSION, FrameError, encode_frame, read_frame

__all__ = ["Ids", "handle", "serve"]


def _path(req: dict[str, Any], key: str) -> bytes:
    value = req.get(key)
    if not isinstance(value, bytes):
        raise ApplyError(22, f"{key!r} must be bytes")
    return value


def _int(req: dict[str, Any], key: str, default: int | None = None) -> int:
    value = req.get(key, default)
    if type(value) is not int:
        raise ApplyError(22, f"{key!r} must be an integer")
    return value


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
            try:
                found = pwd.getpwnam(name).pw_uid if kind == "user" else grp.getgrnam(name).gr_gid
            except KeyError:
                found = number
            self._cache[key] = found
        return self._cache[key]


def _attrs(req: dict[str, Any], ids: Ids) -> Attrs:
    return Attrs(mode=_int(req, "mode"), mtime_ns=_int(req, "mtime"),
                 uid=ids.resolve("user", req.get("user"), _int(req, "uid", -1)),
                 gid=ids.resolve("group", req.get("group"), _int(req, "gid", -1)))


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


def _tree(req: dict[str, Any]) -> bool:
    """``tree``: may a directory in the way go with what it holds (default)?"""
    tree = req.get("tree", True)
    if not isinstance(tree, bool):
        raise ApplyError(22, "'tree' must be a boolean")
    return tree


def handle(applier: Applier, req: dict[str, Any], info: dict[str, Any],
           ids: Ids | None = None) -> dict[str, Any]:
    """The answer to one request."""
    ids = ids or Ids(by_name=False)
    op = req.get("op")
    try:
        if op == "hello":
            if req.get("version") != VERSION:
                return {"ok": False, "error": f"protocol version {req.get('version')!r} is "
                        f"not supported (this agent speaks {VERSION})", "fatal": True}
            return {"ok": True, "version": VERSION, **info}
        if op == "put":
            data = req.get("data")
            if not isinstance(data, bytes):
                raise ApplyError(22, "'data' must be bytes")
            applier.put(_path(req, "path"), data, _attrs(req, ids), _tree(req))
        elif op == "mkdir":
            applier.mkdir(_path(req, "path"), _attrs(req, ids))
        elif op == "symlink":
            applier.symlink(_path(req, "path"), _path(req, "target"), _attrs(req, ids),
                            _tree(req))
        elif op == "time":
            rel = req.get("path")
            if not isinstance(rel, bytes):
                raise ApplyError(22, "'path' must be bytes")
            applier.set_time(rel, _int(req, "mtime"))
        elif op == "delete":
            applier.delete(_path(req, "path"), _tree(req))
        elif op == "rename":
            applier.rename(_path(req, "src"), _path(req, "dst"))
        elif op == "commit":
            applier.commit()
        elif op == "ping":
            pass
        else:
            return {"ok": False, "error": f"unknown operation {op!r}"}
    except OSError as exc:
        return {"ok": False, "error": exc.strerror or str(exc)}
    return {"ok": True}


def serve(applier: Applier, info: dict[str, Any], stdin: IO[bytes] | None = None,
          stdout: IO[bytes] | None = None, ids: Ids | None = None) -> int:
    """Answer requests until the client closes the stream. Exit codes: 0
    after a clean end, 2 after a malformed frame or a fatal answer, 3 when the
    client is gone (nothing more is applied)."""
    ids = ids or Ids(by_name=False)
    rin = stdin or sys.stdin.buffer
    out = stdout or sys.stdout.buffer
    info = {"agent": __version__, "pid": os.getpid(), **info}
    greeted = False
    while True:
        try:
            req = read_frame(rin)
        except FrameError as exc:
            out.write(encode_frame({"ok": False, "error": str(exc), "fatal": True}))
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
        answer = handle(applier, req, info, ids)
        out.write(encode_frame(answer))
        out.flush()
        if answer.get("fatal"):
            return 2  # a peer speaking another protocol: nothing it sends can be trusted
        greeted = True
