"""The agent's requests, checked against a schema before anything is done.

Whoever holds a confined key writes these requests, and whoever can write
in a source tree chooses the paths, modes and symlink targets in them. The
applier below is written for plain names and values in range; a value out
of range would not reach the filesystem but a Python exception of a kind
no one catches on purpose (``ValueError`` for a NUL, ``OverflowError`` for
a uid of 2**32, ``RecursionError``...). So every field is checked here
first, against exactly what syncsup's own client sends
(``syncsup.syncer.agent_ops`` and ``syncsup.syncer.agents``), and a request
that does not fit is refused whole, with a message that names the field
(ours) and never repeats the value (the peer's).

Unknown keys are refused, not ignored: the protocol version in ``hello``
covers any change of the request format, so a key this agent does not know
means a peer that does not speak its protocol, and refusing it keeps a
misspelt option from being silently dropped.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["MAX_DATA", "MAX_NAME", "MAX_PATH", "MAX_STATS", "MAX_TIME_NS", "MIN_TIME_NS",
           "OPS", "BadRequest", "Request", "validate"]

MAX_PATH = 4095              # bytes in a path (PATH_MAX less the terminating NUL)
MAX_NAME = 255               # bytes in one component (NAME_MAX)
MAX_DATA = 4 * 1024 * 1024   # a file's content in one ``put`` (config's agent_max_size limit)
MAX_ID = 2**32 - 2           # (uid_t)-1 means "leave it"; -1 is sent for that
MAX_MODE = 0o7777            # permission bits only: the syncer sends S_IMODE
MIN_TIME_NS = -(2**63)       # a signed 64-bit nanosecond count, what utimensat takes
MAX_TIME_NS = 2**63 - 1
MAX_ID_NAME = 255            # an account or group name (``user``, ``group``)


class BadRequest(OSError):
    """A request that does not fit the schema (EINVAL); ``strerror`` names
    the field and the rule, never the value."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EINVAL, message)


@dataclass(frozen=True)
class Request:
    """A request whose fields all passed the schema. Absent optional fields
    hold their defaults (owner -1: leave it; ``tree`` true)."""

    op: str
    path: bytes = b""
    src: bytes = b""
    dst: bytes = b""
    target: bytes = b""
    data: bytes = b""
    mode: int = 0
    mtime: int = 0
    uid: int = -1
    gid: int = -1
    user: str = ""
    group: str = ""
    tree: bool = True
    version: object = None
    paths: tuple[bytes, ...] = ()


def _path(value: Any, key: str, *, root_ok: bool = False) -> bytes:
    """A relative path of plain names; ``root_ok``: the empty path (ROOT
    itself) is allowed too."""
    if not isinstance(value, bytes):
        raise BadRequest(f"{key!r} must be bytes")
    if value == b"" and root_ok:
        return value
    if len(value) > MAX_PATH:
        raise BadRequest(f"{key!r} is longer than {MAX_PATH} bytes")
    if b"\0" in value:
        raise BadRequest(f"{key!r} contains a NUL byte")
    if value.startswith(b"/"):
        raise BadRequest(f"{key!r} is absolute")
    for part in value.split(b"/"):
        if part in (b"", b".", b".."):
            raise BadRequest(f"{key!r} has an empty, '.' or '..' component")
        if len(part) > MAX_NAME:
            raise BadRequest(f"{key!r} has a component longer than {MAX_NAME} bytes")
    return value


def _target(value: Any, key: str) -> bytes:
    """A symlink's target: stored verbatim, never resolved, so anything but
    empty, NUL or longer than a path."""
    if not isinstance(value, bytes):
        raise BadRequest(f"{key!r} must be bytes")
    if not value or len(value) > MAX_PATH:
        raise BadRequest(f"{key!r} must hold 1 to {MAX_PATH} bytes")
    if b"\0" in value:
        raise BadRequest(f"{key!r} contains a NUL byte")
    return value


def _data(value: Any, key: str) -> bytes:
    if not isinstance(value, bytes):
        raise BadRequest(f"{key!r} must be bytes")
    if len(value) > MAX_DATA:
        raise BadRequest(f"{key!r} is larger than {MAX_DATA} bytes")
    return value


def _ranged(low: int, high: int) -> Callable[[Any, str], int]:
    def check(value: Any, key: str) -> int:
        if type(value) is not int:  # bool is an int subclass: refused
            raise BadRequest(f"{key!r} must be an integer")
        if not low <= value <= high:
            raise BadRequest(f"{key!r} must be between {low} and {high}")
        return value
    return check


def _id(value: Any, key: str) -> int:
    """An owner or group number, or -1 (leave it)."""
    if type(value) is int and value == -1:
        return -1
    return _ranged(0, MAX_ID)(value, key)


def _id_name(value: Any, key: str) -> str:
    """An account or group name, "" when the source knows none."""
    if not isinstance(value, str):
        raise BadRequest(f"{key!r} must be a string")
    if len(value) > MAX_ID_NAME or "\0" in value:
        raise BadRequest(f"{key!r} must be a name of at most {MAX_ID_NAME} characters, "
                         "without NUL")
    return value


def _bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise BadRequest(f"{key!r} must be a boolean")
    return value


def _any(value: Any, key: str) -> object:
    return value  # ``hello``'s version: compared, never used


MAX_STATS = 1024  # paths in one ``stats`` request (its answer: 3 numbers a path, < 4096 objects)


def _paths(value: Any, key: str) -> list[bytes]:
    if not isinstance(value, list):
        raise BadRequest(f"{key!r} must be a list")
    if len(value) > MAX_STATS:
        raise BadRequest(f"{key!r} holds more than {MAX_STATS} paths")
    return [_path(v, key) for v in value]


_Check = Callable[[Any, str], Any]
_ATTRS: dict[str, tuple[_Check, bool]] = {
    "mode": (_ranged(0, MAX_MODE), True), "mtime": (_ranged(MIN_TIME_NS, MAX_TIME_NS), True),
    "uid": (_id, False), "gid": (_id, False), "user": (_id_name, False),
    "group": (_id_name, False),
}
_TREE: dict[str, tuple[_Check, bool]] = {"tree": (_bool, False)}

# op -> {key: (check, required)}
OPS: dict[str, dict[str, tuple[_Check, bool]]] = {
    "hello": {"version": (_any, False)},
    "put": {"path": (_path, True), "data": (_data, True), **_ATTRS, **_TREE},
    "mkdir": {"path": (_path, True), **_ATTRS},
    "symlink": {"path": (_path, True), "target": (_target, True), **_ATTRS, **_TREE},
    "time": {"path": (lambda v, k: _path(v, k, root_ok=True), True),
             "mtime": (_ranged(MIN_TIME_NS, MAX_TIME_NS), True)},
    "delete": {"path": (_path, True), **_TREE},
    "rename": {"src": (_path, True), "dst": (_path, True)},
    "commit": {},
    "stats": {"paths": (_paths, True)},
    "ping": {},
    "bye": {},
}


def validate(req: dict[Any, Any]) -> Request:
    """``req`` as a :class:`Request`, or BadRequest. Nothing of the request
    is acted on before this returns."""
    op = req.get("op")
    if not isinstance(op, str) or op not in OPS:
        raise BadRequest("unknown operation")
    fields = OPS[op]
    values: dict[str, Any] = {}
    for key in req:
        if key != "op" and key not in fields:
            raise BadRequest(f"unknown field for {op!r}" if not isinstance(key, str)
                             or len(key) > 32 else f"unknown field {key!r} for {op!r}")
    for key, (check, required) in fields.items():
        if key in req:
            values[key] = check(req[key], key)
        elif required:
            raise BadRequest(f"{key!r} is missing")
    if "paths" in values:
        values["paths"] = tuple(values["paths"])
    return Request(op=op, **values)
