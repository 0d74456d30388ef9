"""Framing and validation: ``encode`` turns a message into ZeroMQ frames,
``decode`` turns frames from an untrusted peer into a message or raises
:class:`ProtocolError`.

Why so strict: every socket lives in ``state_dir`` and any local process
with access could write to it; a bug in one component must not crash
another. Each message type has its own size budget (bytes, objects, nesting)
checked on the encoded bytes before anything is allocated (``_scan``), then
msgpack's own limits apply inside the unpacker, and every field is checked
against its annotation (``_typed``) before any handler sees the message.
Sockets also set ``ZMQ_MAXMSGSIZE`` (:data:`MAX_FRAME`), so libzmq drops a
peer that sends a larger frame before it is ever buffered whole.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import msgpack

from syncsup.msgcheck import StructureError, check
from syncsup.proto._messages import (
    Ack,
    Batch,
    Control,
    ControlReply,
    Done,
    Events,
    Heartbeat,
    Message,
    Ready,
    StatusAnswer,
    StatusQuery,
    StatusReply,
    StatusRequest,
    Stop,
)
from syncsup.proto._typed import WireError, from_wire, to_wire

__all__ = [
    "MAX_BODY", "MAX_FRAME", "TYPES", "VERSION", "ProtocolError", "decode", "encode", "warm_up",
]

VERSION = b"syncsup/1"
TYPES: dict[bytes, type[Message]] = {
    cls.TYPE: cls
    for cls in (Ack, Batch, Control, ControlReply, Done, Events, Heartbeat, Ready, StatusAnswer,
                StatusQuery, StatusReply, StatusRequest, Stop)
}
MAX_BODY = max(cls.MAX_BODY for cls in TYPES.values())
MAX_FRAME = MAX_BODY + 64  # ZMQ_MAXMSGSIZE for every socket


class ProtocolError(ValueError):
    """A message that cannot be trusted: wrong version, type, size or field."""


def warm_up() -> None:
    """Resolve every message's schema now (it is cached), so that processes
    forked afterwards share it instead of each building its own."""
    for cls in TYPES.values():
        _hints_of(cls)


def _hints_of(cls: type) -> None:
    from syncsup.proto._typed import _converter, _hints

    _converter(cls)
    hints = _hints(cls)
    for tp in hints.values():
        _converter(tp)
        for arg in (tp, *getattr(tp, "__args__", ())):
            if dataclasses.is_dataclass(arg) and isinstance(arg, type):
                _hints_of(arg)


def encode(msg: Message) -> list[bytes]:
    """Frames for ``msg``: version, type, msgpack body."""
    body: bytes = msgpack.packb(to_wire(msg), use_bin_type=True)
    return [VERSION, msg.TYPE, body]


def decode(frames: Sequence[bytes]) -> Message:
    """Parse ``[version, type, body]``; raise ProtocolError on anything else."""
    if len(frames) != 3:
        raise ProtocolError(f"expected 3 frames, got {len(frames)}")
    version, mtype, body = frames
    if version != VERSION:
        raise ProtocolError(f"unsupported protocol version {bytes(version[:32])!r}")
    cls = TYPES.get(bytes(mtype))
    if cls is None:
        raise ProtocolError(f"unknown message type {bytes(mtype[:32])!r}")
    if len(body) > cls.MAX_BODY:
        raise ProtocolError(f"{cls.__name__} body of {len(body)} bytes exceeds {cls.MAX_BODY}")
    try:
        check(body, cls.MAX_OBJECTS, cls.MAX_DEPTH)
    except StructureError as exc:
        raise ProtocolError(f"{cls.__name__} body refused: {exc}") from None
    try:
        data: Any = msgpack.unpackb(
            body, raw=False, strict_map_key=True, use_list=True,
            max_bin_len=cls.MAX_BODY, max_str_len=min(cls.MAX_BODY, 1024 * 1024),
            max_array_len=cls.MAX_OBJECTS, max_map_len=cls.MAX_OBJECTS, max_ext_len=0)
    except Exception as exc:  # msgpack raises many types for bad input
        raise ProtocolError(f"undecodable {cls.__name__} body: {exc}") from None
    try:
        msg: Message = from_wire(cls, data)
    except WireError as exc:
        raise ProtocolError(str(exc)) from None
    except TypeError as exc:  # a field name that is not a str key, etc.
        raise ProtocolError(f"{cls.__name__}: {exc}") from None
    return msg
