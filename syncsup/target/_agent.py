"""The agent: applies syncsup's own operations (renames, deletes) on a
target, one request at a time, over its stdin and stdout.

It starts confined (a chroot of ROOT, see ``_confine``) and works only
through :class:`~syncsup.target._apply.Applier`, so a request can name
nothing outside ROOT and can follow no symlink. Requests are answered in
order; a failed operation is answered ``ok: false`` and the session goes on
(the transfer that follows repairs what a rename could not do), while a
malformed frame ends the session.
"""

from __future__ import annotations

import os
import sys
from typing import IO, Any

from syncsup import __version__
from syncsup.target._apply import Applier, ApplyError
from syncsup.target._protocol import VERSION, FrameError, encode_frame, read_frame

__all__ = ["serve"]


def _path(req: dict[str, Any], key: str) -> bytes:
    value = req.get(key)
    if not isinstance(value, bytes):
        raise ApplyError(22, f"{key!r} must be bytes")
    return value


def handle(applier: Applier, req: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    """The answer to one request."""
    op = req.get("op")
    try:
        if op == "hello":
            if req.get("version") != VERSION:
                return {"ok": False, "error": f"protocol version {req.get('version')!r} is "
                        f"not supported (this agent speaks {VERSION})", "fatal": True}
            return {"ok": True, "version": VERSION, **info}
        if op == "rename":
            applier.rename(_path(req, "src"), _path(req, "dst"))
        elif op == "delete":
            applier.delete(_path(req, "path"))
        else:
            return {"ok": False, "error": f"unknown operation {op!r}"}
    except OSError as exc:
        return {"ok": False, "error": exc.strerror or str(exc)}
    return {"ok": True}


def serve(applier: Applier, info: dict[str, Any], stdin: IO[bytes] | None = None,
          stdout: IO[bytes] | None = None) -> int:
    """Answer requests until the client closes the stream. Exit codes: 0
    after a clean end, 2 after a malformed frame."""
    rin = stdin or sys.stdin.buffer
    out = stdout or sys.stdout.buffer
    info = {"agent": __version__, "pid": os.getpid(), **info}
    while True:
        try:
            req = read_frame(rin)
        except FrameError as exc:
            out.write(encode_frame({"ok": False, "error": str(exc), "fatal": True}))
            out.flush()
            return 2
        if req is None or req.get("op") == "bye":
            return 0
        out.write(encode_frame(handle(applier, req, info)))
        out.flush()
