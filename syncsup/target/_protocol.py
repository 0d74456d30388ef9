"""The agent's wire protocol: length-prefixed msgpack maps over a byte stream
(the ssh channel's stdin and stdout).

A frame is a 4-byte big-endian length and a msgpack map of at most
:data:`MAX_FRAME` bytes. The client sends requests ``{"op": NAME, ...}``; the
agent answers each one, in order, with ``{"ok": true, ...}`` or
``{"ok": false, "error": "..."}``. The first request is ``hello`` with the
protocol ``version``; the answer carries the agent's version and ROOT. Paths
are msgpack ``bin``, relative to ROOT, never absolute and never containing
``.`` or ``..`` components.

Decoding is bounded like every other socket of syncsup: the length is
checked before anything is read, the structure (object count, nesting)
before anything is unpacked, so a peer cannot make the agent hold more than
one frame's bytes in memory.
"""

from __future__ import annotations

import struct
from typing import IO, Any

import msgpack

from syncsup.msgcheck import StructureError, check

__all__ = ["MAX_FRAME", "VERSION", "FrameError", "encode_frame", "read_frame"]

VERSION = 1
MAX_FRAME = 8 * 1024 * 1024
MAX_OBJECTS = 4096
_LEN = struct.Struct(">I")


class FrameError(ValueError):
    """A frame that cannot be trusted: too large, malformed, or cut short."""


def encode_frame(doc: dict[str, Any]) -> bytes:
    body: bytes = msgpack.packb(doc, use_bin_type=True)
    if len(body) > MAX_FRAME:
        raise FrameError(f"frame of {len(body)} bytes exceeds {MAX_FRAME}")
    return _LEN.pack(len(body)) + body


def _read_exact(stream: IO[bytes], n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = stream.read(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def decode_body(body: bytes) -> dict[str, Any]:
    try:
        check(body, MAX_OBJECTS, 3)
        doc = msgpack.unpackb(body, raw=False, strict_map_key=True, max_ext_len=0,
                              max_bin_len=MAX_FRAME, max_str_len=64 * 1024,
                              max_array_len=MAX_OBJECTS, max_map_len=MAX_OBJECTS)
    except StructureError as exc:
        raise FrameError(f"frame refused: {exc}") from None
    except Exception as exc:  # msgpack raises many types for bad input
        raise FrameError(f"undecodable frame: {exc}") from None
    if not isinstance(doc, dict):
        raise FrameError("frame is not a map")
    return doc


def read_frame(stream: IO[bytes]) -> dict[str, Any] | None:
    """The next frame from ``stream``, or None at a clean end of stream."""
    head = _read_exact(stream, _LEN.size)
    if not head:
        return None
    if len(head) < _LEN.size:
        raise FrameError("stream ended inside a frame header")
    (size,) = _LEN.unpack(head)
    if size > MAX_FRAME:
        raise FrameError(f"frame of {size} bytes exceeds {MAX_FRAME}")
    body = _read_exact(stream, size)
    if len(body) < size:
        raise FrameError("stream ended inside a frame")
    return decode_body(body)
