"""Framing and validation: ``encode`` turns a message into ZeroMQ frames,
``decode`` turns frames from an untrusted peer into a message or raises
:class:`ProtocolError`.

Why so strict: every socket lives in ``state_dir`` and any local process
with access could write to it; a bug in one component must not crash
another. Each message type has its own size budget (bytes, objects, nesting)
checked on the encoded bytes before anything is allocated (``_scan``), then
msgpack's own limits apply inside the unpacker, and field kinds are checked
before any handler sees the message. Sockets also set ``ZMQ_MAXMSGSIZE``
(:data:`MAX_FRAME`), so libzmq drops a peer that sends a larger frame before
it is ever buffered whole.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import msgpack

from syncsup.proto._messages import (
    Ack,
    Batch,
    Control,
    Done,
    Events,
    Heartbeat,
    Message,
    Ready,
    StatusReply,
    StatusRequest,
    Stop,
)
from syncsup.proto._scan import StructureError, check

__all__ = ["MAX_BODY", "MAX_FRAME", "VERSION", "ProtocolError", "decode", "encode"]

VERSION = b"syncsup/1"
MAX_BODY = max(cls.MAX_BODY for cls in (Ack, Batch, Control, Done, Events, Heartbeat, Ready,
                                        StatusReply, StatusRequest, Stop))
MAX_FRAME = MAX_BODY + 64  # ZMQ_MAXMSGSIZE for every socket

_TYPES: dict[bytes, type[Message]] = {
    cls.TYPE: cls
    for cls in (Ack, Batch, Control, Done, Events, Heartbeat, Ready, StatusReply, StatusRequest,
                Stop)
}


class ProtocolError(ValueError):
    """A message that cannot be trusted: wrong version, type, size or field."""


def encode(msg: Message) -> list[bytes]:
    """Frames for ``msg``: version, type, msgpack body."""
    body = {f.name: getattr(msg, f.name) for f in dataclasses.fields(msg)}
    return [VERSION, msg.TYPE, msgpack.packb(body, use_bin_type=True)]


def _check(kind: str, value: Any) -> bool:
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    if kind == "bytes":
        return isinstance(value, bytes)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "bytes_list":
        return isinstance(value, list) and all(isinstance(v, bytes) for v in value)
    if kind == "pair_list":
        return isinstance(value, list) and all(
            isinstance(v, list) and len(v) == 2 and all(isinstance(x, bytes) for x in v)
            for v in value)
    if kind == "map":
        return isinstance(value, dict)
    if kind == "opt_str":
        return value is None or isinstance(value, str)
    if kind == "opt_float":
        return value is None or _check("float", value)
    raise AssertionError(f"unknown field kind {kind}")


def decode(frames: list[bytes]) -> Message:
    """Parse ``[version, type, body]``; raise ProtocolError on anything else."""
    if len(frames) != 3:
        raise ProtocolError(f"expected 3 frames, got {len(frames)}")
    version, mtype, body = frames
    if version != VERSION:
        raise ProtocolError(f"unsupported protocol version {version[:32]!r}")
    cls = _TYPES.get(mtype)
    if cls is None:
        raise ProtocolError(f"unknown message type {mtype[:32]!r}")
    if len(body) > cls.MAX_BODY:
        raise ProtocolError(f"{cls.__name__} body of {len(body)} bytes exceeds {cls.MAX_BODY}")
    try:
        check(body, cls.MAX_OBJECTS, cls.MAX_DEPTH)
    except StructureError as exc:
        raise ProtocolError(f"{cls.__name__} body refused: {exc}") from None
    try:
        data = msgpack.unpackb(
            body,
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_bin_len=cls.MAX_BODY,
            max_str_len=min(cls.MAX_BODY, 1024 * 1024),
            max_array_len=cls.MAX_OBJECTS,
            max_map_len=cls.MAX_OBJECTS,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises many types for bad input
        raise ProtocolError(f"undecodable {mtype.decode('ascii', 'replace')} body: {exc}") from None
    if not isinstance(data, dict):
        raise ProtocolError("body is not a map")
    kwargs: dict[str, Any] = {}
    for name, kind in cls.FIELDS.items():
        if name not in data:
            has_default = any(
                f.name == name
                and (f.default is not dataclasses.MISSING
                     or f.default_factory is not dataclasses.MISSING)
                for f in dataclasses.fields(cls)
            )
            if has_default:
                continue
            raise ProtocolError(f"{cls.__name__}: missing field {name!r}")
        value = data[name]
        if not _check(kind, value):
            raise ProtocolError(f"{cls.__name__}: field {name!r} has the wrong type")
        kwargs[name] = value
    return cls(**kwargs)
