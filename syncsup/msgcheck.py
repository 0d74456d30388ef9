"""A structural pre-check of msgpack data, before anything is allocated.

msgpack's own limits bound each container's length and each string's size,
but not how many objects a body holds in total: 32 MiB of one-byte empty
arrays (``0x90``) unpack into 32 million lists, about 2 GiB, in tens of
seconds. :func:`check` walks the encoded bytes without building anything
and refuses a body whose object count or nesting exceeds a budget. It stops
at the first object over the budget, so refusing even a hostile 32 MiB body
costs at most ``max_objects`` steps, and a well-formed message costs one
step per object (strings and binaries are skipped in O(1)).

A module of its own, outside ``proto/``: the target's agent checks its
frames with it too, and a target host must not need the daemon's protocol
package (nor ZeroMQ) to run ``syncsup-target``.
"""

from __future__ import annotations

__all__ = ["StructureError", "check"]


class StructureError(ValueError):
    """The bytes are not one well-formed msgpack object within the budget."""


# Byte -> (payload size field width, fixed payload size): for the types whose
# size is in a length field after the type byte, or fixed.
_LEN_FIELD = {0xC4: 1, 0xC5: 2, 0xC6: 4, 0xD9: 1, 0xDA: 2, 0xDB: 4}  # bin8-32, str8-32
_EXT_FIELD = {0xC7: 1, 0xC8: 2, 0xC9: 4}
_FIXED = {0xC0: 0, 0xC2: 0, 0xC3: 0, 0xCA: 4, 0xCB: 8, 0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8,
          0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8, 0xD4: 2, 0xD5: 3, 0xD6: 5, 0xD7: 9, 0xD8: 17}
_CONTAINER = {0xDC: (2, 1), 0xDD: (4, 1), 0xDE: (2, 2), 0xDF: (4, 2)}  # width, items per entry


def check(data: bytes, max_objects: int, max_depth: int) -> int:
    """Validate that ``data`` is exactly one msgpack object with at most
    ``max_objects`` objects in all and containers nested at most
    ``max_depth`` deep. Returns the object count; raises StructureError."""
    view = memoryview(data)
    end = len(data)
    pos = 0
    count = 0
    # Each stack entry: objects still expected in an open container.
    stack: list[int] = [1]
    while stack:
        if stack[-1] == 0:
            stack.pop()
            continue
        stack[-1] -= 1
        if pos >= end:
            raise StructureError("truncated")
        count += 1
        if count > max_objects:
            raise StructureError(f"more than {max_objects} objects")
        b = view[pos]
        pos += 1
        items = -1
        if b <= 0x7F or b >= 0xE0:
            continue  # fixints
        if 0x80 <= b <= 0x8F:
            items = (b & 0x0F) * 2
        elif 0x90 <= b <= 0x9F:
            items = b & 0x0F
        elif 0xA0 <= b <= 0xBF:
            pos += b & 0x1F
        elif b in _FIXED:
            pos += _FIXED[b]
        elif b in _LEN_FIELD:
            width = _LEN_FIELD[b]
            pos += width + int.from_bytes(view[pos:pos + width], "big")
        elif b in _EXT_FIELD:
            width = _EXT_FIELD[b]
            pos += width + 1 + int.from_bytes(view[pos:pos + width], "big")
        elif b in _CONTAINER:
            width, per = _CONTAINER[b]
            items = int.from_bytes(view[pos:pos + width], "big") * per
            pos += width
        else:
            raise StructureError(f"invalid type byte 0x{b:02x}")
        if items >= 0:
            if items > max_objects:
                raise StructureError(f"a container of {items} objects")
            if len(stack) > max_depth:
                raise StructureError(f"nested deeper than {max_depth}")
            stack.append(items)
        if pos > end:
            raise StructureError("truncated")
    if pos != end:
        raise StructureError(f"{end - pos} bytes after the object")
    return count
