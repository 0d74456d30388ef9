"""The structural pre-check of msgpack bodies (msgcheck.py) on its own,
against what msgpack-python's ``packb`` produces."""

from __future__ import annotations

import itertools
from typing import Any

import msgpack
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from syncsup.msgcheck import StructureError, check
from tests.helpers.unit import msgpack_shape

# One value per msgpack format family, with the type byte packb gives it.
FAMILIES: list[tuple[str, Any, int, dict[str, Any]]] = [
    ("positive-fixint", 7, 0x07, {}),
    ("negative-fixint", -3, 0xFD, {}),
    ("nil", None, 0xC0, {}),
    ("false", False, 0xC2, {}),
    ("true", True, 0xC3, {}),
    ("float32", 1.5, 0xCA, {"use_single_float": True}),
    ("float64", 1.5, 0xCB, {}),
    ("uint8", 200, 0xCC, {}),
    ("uint16", 60_000, 0xCD, {}),
    ("uint32", 2**32 - 1, 0xCE, {}),
    ("uint64", 2**64 - 1, 0xCF, {}),
    ("int8", -100, 0xD0, {}),
    ("int16", -30_000, 0xD1, {}),
    ("int32", -(2**31), 0xD2, {}),
    ("int64", -(2**63), 0xD3, {}),
    ("fixext1", msgpack.ExtType(1, b"x"), 0xD4, {}),
    ("fixext2", msgpack.ExtType(1, b"xy"), 0xD5, {}),
    ("fixext4", msgpack.ExtType(1, b"x" * 4), 0xD6, {}),
    ("fixext8", msgpack.ExtType(1, b"x" * 8), 0xD7, {}),
    ("fixext16", msgpack.ExtType(1, b"x" * 16), 0xD8, {}),
    ("ext8", msgpack.ExtType(1, b"x" * 3), 0xC7, {}),
    ("ext16", msgpack.ExtType(1, b"x" * 300), 0xC8, {}),
    ("ext32", msgpack.ExtType(1, b"x" * 70_000), 0xC9, {}),
    ("fixstr", "abc", 0xA3, {}),
    ("str8", "x" * 40, 0xD9, {}),
    ("str16", "x" * 300, 0xDA, {}),
    ("str32", "x" * 70_000, 0xDB, {}),
    ("bin8", b"x" * 10, 0xC4, {}),
    ("bin16", b"x" * 300, 0xC5, {}),
    ("bin32", b"x" * 70_000, 0xC6, {}),
    ("fixarray", [1, [2, None]], 0x92, {}),
    ("array16", list(range(20)), 0xDC, {}),
    ("array32", [0] * 70_000, 0xDD, {}),
    ("fixmap", {"a": 1, "b": [1]}, 0x82, {}),
    ("map16", {str(i): i for i in range(20)}, 0xDE, {}),
    ("map32", {i: None for i in range(70_000)}, 0xDF, {}),
]


@pytest.mark.parametrize(("value", "type_byte", "opts"), [f[1:] for f in FAMILIES],
                         ids=[f[0] for f in FAMILIES])
def test_every_format_family(value: Any, type_byte: int, opts: dict[str, Any]) -> None:
    data = msgpack.packb(value, use_bin_type=True, **opts)
    assert data[0] == type_byte
    objects, depth = msgpack_shape(value)
    assert check(data, objects, depth) == objects
    with pytest.raises(StructureError, match="objects"):
        check(data, objects - 1, depth) if objects > 1 else check(data, 0, depth)
    if depth:
        with pytest.raises(StructureError, match="nested deeper"):
            check(data, objects, depth - 1)
    for cut in {0, len(data) // 2, len(data) - 1}:
        with pytest.raises(StructureError, match="truncated"):
            check(data[:cut], objects, depth)
    with pytest.raises(StructureError, match="after the object"):
        check(data + b"\xc0", objects + 1, depth)


def test_the_never_used_byte_is_refused() -> None:
    with pytest.raises(StructureError, match="invalid type byte 0xc1"):
        check(b"\xc1", 10, 10)
    with pytest.raises(StructureError, match="invalid type byte"):
        check(b"\x92\x01\xc1", 10, 10)


def test_any_first_byte_is_decided_without_reading_past_the_end() -> None:
    for first, tail in itertools.product(range(256), (b"", b"\x00", b"\xff" * 9)):
        data = bytes([first]) + tail
        try:
            n = check(data, 1000, 10)
        except StructureError:
            continue
        try:
            value = msgpack.unpackb(data, raw=True, strict_map_key=False)
        except ValueError:
            continue  # e.g. a malformed timestamp (ext -1): msgpack's to refuse, not ours
        assert msgpack_shape(value)[0] == n


def test_a_container_larger_than_the_budget_is_refused_by_its_header() -> None:
    header = b"\xdd" + (10**6).to_bytes(4, "big")  # nothing follows
    with pytest.raises(StructureError, match="a container of 1000000 objects"):
        check(header, 1000, 3)
    with pytest.raises(StructureError, match="a container of 2000000 objects"):
        check(b"\xdf" + (10**6).to_bytes(4, "big"), 10**6 + 5, 3)  # a map: keys and values


# -------------------------------------------------------------- property
_scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
            | st.floats(allow_nan=False) | st.text(max_size=30) | st.binary(max_size=300)
            | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=20)))
_keys = st.text(max_size=5) | st.binary(max_size=5) | st.integers(-5, 300)


def _nest(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return (_scalars | st.lists(inner, max_size=8)
            | st.dictionaries(_keys, inner, max_size=8))


_values = _nest(_nest(_nest(_nest(_scalars))))


@settings(max_examples=100, deadline=None)
@given(value=_values, single=st.booleans())
def test_whatever_packb_makes_within_the_budget_is_accepted(value: Any, single: bool) -> None:
    try:
        data = msgpack.packb(value, use_bin_type=True, use_single_float=single)
    except OverflowError:  # a double beyond float32's range
        assume(False)
    objects, depth = msgpack_shape(value)
    assert check(data, objects, depth) == objects
    assert check(data, objects + 100, depth + 5) == objects
    with pytest.raises(StructureError):
        check(data, objects - 1, depth)
    if depth:
        with pytest.raises(StructureError):
            check(data, objects, depth - 1)
    with pytest.raises(StructureError):
        check(data[:-1], objects, depth)
    with pytest.raises(StructureError):
        check(data + b"\x00", objects + 1, depth)


def test_msgpack_shape_counts_like_msgpack() -> None:
    assert msgpack_shape(None) == (1, 0)
    assert msgpack_shape([]) == (1, 1)
    assert msgpack_shape({"a": [1, {}]}) == (5, 3)
    assert msgpack_shape((1, 2)) == (3, 1)
