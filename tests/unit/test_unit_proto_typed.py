"""Dataclasses to plain msgpack values and back (proto/_typed.py): every
annotation shape it supports, and what it refuses."""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings

from syncsup.proto._typed import WireError, from_wire, to_wire
from tests.helpers.unit import strategy_for


class Color(StrEnum):
    RED = "red"
    BLUE = "blue"


class Level(IntEnum):
    LOW = 1
    HIGH = 2


@dataclass(frozen=True)
class Inner:
    name: str
    n: int = 0


@dataclass
class Everything:
    i: int
    f: float
    s: str
    b: bytes
    flag: bool
    nothing: None
    maybe: int | None
    items: list[bytes]
    tags: set[str]
    pair: tuple[bytes, int]
    counts: dict[str, int]
    color: Color
    level: Level
    inner: Inner
    inners: list[Inner]
    maybe_inner: Inner | None
    anything: Any
    later: list[int] = field(default_factory=list)
    hidden: int = field(default=5, init=False)


SAMPLE = Everything(
    i=-(2**63), f=0.5, s="é\n", b=b"\xff\x00", flag=False, nothing=None, maybe=None,
    items=[b"b", b"a", b"a"], tags={"z", "a"}, pair=(b"-x", 2**64 - 1), counts={"ok": 3},
    color=Color.BLUE, level=Level.HIGH, inner=Inner("in"), inners=[Inner("a", 1), Inner("b")],
    maybe_inner=Inner("m", -1), anything={"free": [1, b"x"]}, later=[3, 1])
WIRE = {
    "i": -(2**63), "f": 0.5, "s": "é\n", "b": b"\xff\x00", "flag": False, "nothing": None,
    "maybe": None, "items": [b"b", b"a", b"a"], "tags": ["a", "z"], "pair": [b"-x", 2**64 - 1],
    "counts": {"ok": 3}, "color": "blue", "level": 2, "inner": {"name": "in", "n": 0},
    "inners": [{"name": "a", "n": 1}, {"name": "b", "n": 0}],
    "maybe_inner": {"name": "m", "n": -1}, "anything": {"free": [1, b"x"]}, "later": [3, 1],
    "hidden": 5,
}


def test_to_wire_gives_plain_data() -> None:
    assert to_wire(SAMPLE) == WIRE
    # sets sorted, tuples as lists, enums as their values: msgpack can pack it
    assert msgpack.unpackb(msgpack.packb(WIRE, use_bin_type=True), raw=False) == WIRE
    assert to_wire(frozenset({b"b", b"a"})) == [b"a", b"b"]
    assert to_wire(Color.RED) == "red" and type(to_wire(Level.LOW)) is int


def test_from_wire_inverts_to_wire() -> None:
    back = from_wire(Everything, WIRE)
    assert back == SAMPLE
    assert type(back.pair) is tuple and type(back.tags) is set
    assert back.color is Color.BLUE and back.level is Level.HIGH
    assert type(back.inner) is Inner


@settings(max_examples=60, deadline=None)
@given(value=strategy_for(Everything))
def test_round_trip_of_any_value(value: Everything) -> None:
    wire = msgpack.unpackb(msgpack.packb(to_wire(value), use_bin_type=True), raw=False)
    assert from_wire(Everything, wire) == value


@pytest.mark.parametrize(("tp", "data", "want"), [
    (int, 0, 0), (int, 2**64 - 1, 2**64 - 1),
    (float, 3, 3.0), (float, -1.5, -1.5),
    (str, "", ""), (bytes, b"", b""), (bool, True, True),
    (type(None), None, None),
    (int | None, None, None), (int | None, 4, 4),
    (typing.Optional[int], None, None),  # noqa: UP045 - the typing spelling too
    (list[int], [], []), (set[bytes], [b"a", b"a"], {b"a"}),
    (tuple[int, str], [1, "x"], (1, "x")), (tuple[()], [], ()),
    (dict[str, list[int]], {"a": [1]}, {"a": [1]}),
    (Color, "red", Color.RED), (Level, 1, Level.LOW),
    (Any, {"x": [None]}, {"x": [None]}),
    (Inner, {"name": "n"}, Inner("n")),
    (list[Inner | None], [None, {"name": "x", "n": 2}], [None, Inner("x", 2)]),
])
def test_accepted(tp: Any, data: Any, want: Any) -> None:
    got = from_wire(tp, data)
    assert got == want
    assert type(got) is type(want)


@pytest.mark.parametrize(("tp", "data"), [
    (int, True), (int, 1.0), (int, "1"), (int, None),
    (float, True), (float, "1.5"), (float, None),
    (bool, 1), (bool, 0), (bool, None), (bool, "true"),
    (str, b"x"), (str, 1), (bytes, "x"), (bytes, bytearray(b"x")),
    (type(None), 0), (type(None), False),
    (int | None, "x"), (int | None, True),
    (list[int], (1,)), (list[int], {1: 1}), (list[int], [1, "2"]), (list[int], b"ab"),
    (set[bytes], [b"a", "b"]), (set[bytes], b"a"),
    (tuple[int, str], [1]), (tuple[int, str], [1, "x", 2]), (tuple[int, str], ["x", 1]),
    (tuple[int, str], (1, "x")),
    (dict[str, int], [["a", 1]]), (dict[str, int], {b"a": 1}), (dict[str, int], {"a": "1"}),
    (Color, "RED"), (Color, b"red"), (Color, 1), (Color, None),
    (Level, 3), (Level, "1"), (Level, None),
    (Inner, ["n"]), (Inner, None), (Inner, {"name": 1}), (Inner, {"n": 1}),
    (Inner | None, {"name": b"x"}),
])
def test_refused(tp: Any, data: Any) -> None:
    with pytest.raises(WireError):
        from_wire(tp, data)


@pytest.mark.parametrize("data", [True, 1.0, 2.0])
def test_an_int_enum_accepts_only_ints(data: Any) -> None:
    with pytest.raises(WireError):
        from_wire(Level, data)


@pytest.mark.parametrize("tp", [int | str, int | str | None, complex, frozenset[int], list,
                                tuple[int, ...]])
def test_unsupported_annotations_are_errors_not_crashes(tp: Any) -> None:
    with pytest.raises(WireError):
        from_wire(tp, [1])


def test_missing_fields_take_their_defaults_or_are_errors() -> None:
    got = from_wire(Inner, {"name": "x"})
    assert got == Inner("x", 0)
    wire = dict(WIRE)
    del wire["later"]
    first, second = from_wire(Everything, wire), from_wire(Everything, wire)
    assert first.later == [] and first.later is not second.later  # a fresh default
    del wire["i"]
    with pytest.raises(WireError, match=r"^Everything\.i: missing$"):
        from_wire(Everything, wire)
    with pytest.raises(WireError, match=r"inner\.name: missing"):
        from_wire(Everything, {**WIRE, "inner": {}})


def test_unknown_keys_are_ignored() -> None:
    assert from_wire(Inner, {"name": "x", "future": {"a": [1]}, "n": 2}) == Inner("x", 2)
    assert from_wire(Everything, {**WIRE, "new_field": 1,
                                  "inner": {"name": "in", "extra": None}}) == SAMPLE


def test_fields_outside_init_are_not_read() -> None:
    got = from_wire(Everything, {**WIRE, "hidden": 99})
    assert got.hidden == 5


def test_errors_say_where() -> None:
    bad = {**WIRE, "inners": [{"name": "a"}, {"name": "b", "n": "1"}]}
    with pytest.raises(WireError, match=r"Everything\.inners\[1\]\.n: expected an integer"):
        from_wire(Everything, bad)
    with pytest.raises(WireError, match=r"Everything\.counts\['ok'\]: expected an integer"):
        from_wire(Everything, {**WIRE, "counts": {"ok": None}})
    with pytest.raises(WireError, match=r"Everything\.pair\[0\]: expected bytes"):
        from_wire(Everything, {**WIRE, "pair": ["x", 1]})
    with pytest.raises(WireError, match="is not a Color"):
        from_wire(Everything, {**WIRE, "color": "green"})
    with pytest.raises(WireError, match="Inner: expected a map"):
        from_wire(Inner, [])


def test_wire_error_is_a_value_error() -> None:
    assert issubclass(WireError, ValueError)
