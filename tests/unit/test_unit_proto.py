"""Wire protocol: encode/decode round trips, and strict rejection of bad input."""

from __future__ import annotations

import dataclasses
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncsup import proto
from syncsup.proto import (
    MAX_BODY,
    VERSION,
    Ack,
    Batch,
    Done,
    Events,
    Heartbeat,
    Message,
    ProtocolError,
    Ready,
    StatusReply,
    StatusRequest,
    Stop,
    decode,
    encode,
)

WEIRD = [b"a\nb", b"\xff", b"-x", b"", b"dir/\x80\xfe/file", b"--delete"]

MESSAGES: list[Message] = [
    Heartbeat(role="collator", name="collator:www", pid=1234, incarnation="a1b2",
              info={"targets": [{"spec": "/m", "pending": 3, "oldest": 1.5, "state": "idle"}],
                    "flag": True, "none": None, "raw": b"\xff"}),
    Heartbeat(role="watcher", name="watcher:www", pid=1, incarnation="x"),
    StatusRequest(),
    StatusReply(status={"components": [{"name": "s", "role": "supervisor", "pid": 1,
                                        "state": "running", "restarts": 0}], "syncs": []}),
    Stop(reason="SIGTERM via CLI"),
    Stop(),
    Events(seq=0, paths=list(WEIRD), trees=[b"", b"new\ndir"]),
    Events(seq=2**62),
    Events(seq=3, paths=[b"old", b"new\n"], moves=[[b"old", b"new\n"], [b"\xff", b"-x"]]),
    Ack(seq=17),
    Ready(target=3, incarnation="deadbeef"),
    Batch(batch_id=1_700_000_000_123, target=0, paths=list(WEIRD), trees=[b""], startup=True),
    Batch(batch_id=2, target=1),
    Batch(batch_id=3, target=0, paths=[b"a", b"b"], moves=[[b"a", b"b"]]),
    Done(batch_id=5, target=0, outcome="retry", rc=-9, error="killed: no progress",
         seconds=12.25),
    Done(batch_id=6, target=2, outcome="ok"),
    Done(batch_id=7, target=2, outcome="fatal", rc=1, moves_done=3),
]

ALL_TYPES = [Ack, Batch, Done, Events, Heartbeat, Ready, StatusReply, StatusRequest, Stop]


def frames(mtype: bytes, body: Any) -> list[bytes]:
    return [VERSION, mtype, msgpack.packb(body, use_bin_type=True)]


def test_every_message_type_is_covered() -> None:
    assert {type(m) for m in MESSAGES} == set(ALL_TYPES)
    assert {cls.__name__ for cls in ALL_TYPES} <= set(proto.__all__)


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip(msg: Message) -> None:
    wire = encode(msg)
    assert len(wire) == 3
    assert wire[0] == VERSION == b"syncsup/1"
    assert wire[1] == msg.TYPE
    assert all(isinstance(f, bytes) for f in wire)
    back = decode(wire)
    assert type(back) is type(msg)
    assert back == msg


def test_paths_travel_as_msgpack_bin() -> None:
    wire = encode(Events(seq=1, paths=[b"\xff\n"], trees=[]))
    # bin 8 header 0xc4, not a str header: paths are never decoded as text.
    assert b"\xc4\x02\xff\n" in wire[2]
    body = msgpack.unpackb(wire[2], raw=False)
    assert body["paths"] == [b"\xff\n"]


def test_decode_accepts_a_tuple_of_frames() -> None:
    assert decode(tuple(encode(Ack(seq=1)))) == Ack(seq=1)  # type: ignore[arg-type]


def test_missing_optional_fields_take_defaults() -> None:
    assert decode(frames(b"EVENTS", {"seq": 4})) == Events(seq=4, paths=[], trees=[])
    assert decode(frames(b"DONE", {"batch_id": 1, "target": 0, "outcome": "ok"})) == Done(
        batch_id=1, target=0, outcome="ok", rc=0, error="", seconds=0.0)
    assert decode(frames(b"STOP", {})) == Stop(reason="")


def test_unknown_extra_fields_are_ignored() -> None:
    assert decode(frames(b"ACK", {"seq": 1, "future": [1, 2]})) == Ack(seq=1)


def test_int_accepted_where_float_expected() -> None:
    msg = decode(frames(b"DONE", {"batch_id": 1, "target": 0, "outcome": "ok", "seconds": 3}))
    assert isinstance(msg, Done)
    assert msg.seconds == 3


# ---------------------------------------------------------------- rejects
GOOD_ACK = msgpack.packb({"seq": 1})


@pytest.mark.parametrize("version", [b"syncsup/2", b"syncsup/", b"", b"SYNCSUP/1", b"syncsup/1\0"])
def test_wrong_version(version: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode([version, b"ACK", GOOD_ACK])


@pytest.mark.parametrize("mtype", [b"NOPE", b"ack", b"", b"ACK\0", b"\xff" * 100])
def test_unknown_type(mtype: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode([VERSION, mtype, GOOD_ACK])


@pytest.mark.parametrize("n", [0, 1, 2, 4, 5])
def test_wrong_frame_count(n: int) -> None:
    wire = [VERSION, b"ACK", GOOD_ACK, b"extra", b"more"][:n]
    with pytest.raises(ProtocolError):
        decode(wire)


@pytest.mark.parametrize("body", [
    b"",                                 # empty
    b"\xc1",                             # never-used msgpack byte
    GOOD_ACK[:-1],                       # truncated
    GOOD_ACK + b"\x01",                  # trailing data
    b"\x81\xa3seq\xc6\xff\xff\xff\xff",  # bin32 claiming 4 GiB, not there
    b"\xdd\xff\xff\xff\xff",             # array32 claiming 4G items
    b"\x81\xa3seq\xa2\xff\xfe",          # invalid UTF-8 in a str
    b"\x81\x01\x02",                     # int map key (strict_map_key)
    msgpack.packb({"seq": msgpack.ExtType(1, b"xy")}),  # ext types are not allowed
    b"\x91" * 5000 + b"\xc0",            # very deep nesting
], ids=["empty", "c1", "truncated", "trailing", "huge-bin", "huge-array", "bad-utf8",
        "int-key", "ext", "deep"])
def test_garbage_body(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode([VERSION, b"ACK", body])


@pytest.mark.parametrize("body", [[1, 2], 5, "seq", None, b"\x00", True, 1.5])
def test_body_not_a_map(body: Any) -> None:
    with pytest.raises(ProtocolError):
        decode(frames(b"ACK", body))


@pytest.mark.parametrize(("mtype", "body"), [
    (b"ACK", {}),
    (b"READY", {"target": 1}),
    (b"READY", {"incarnation": "x"}),
    (b"DONE", {"batch_id": 1, "target": 0}),
    (b"BATCH", {"target": 0}),
    (b"HEARTBEAT", {"role": "watcher", "name": "w", "pid": 1}),
    (b"STATUS_REPLY", {}),
    (b"EVENTS", {"paths": [b"a"]}),
    (b"ACK", {b"seq": 1}),  # a bytes key is not the field name
])
def test_missing_required_field(mtype: bytes, body: dict[Any, Any]) -> None:
    with pytest.raises(ProtocolError):
        decode(frames(mtype, body))


@pytest.mark.parametrize(("mtype", "body"), [
    (b"EVENTS", {"seq": 1, "paths": ["a"]}),                 # str inside a paths list
    (b"EVENTS", {"seq": 1, "paths": [b"a", "b"]}),
    (b"EVENTS", {"seq": 1, "paths": b"a"}),                  # not a list
    (b"EVENTS", {"seq": 1, "trees": [None]}),
    (b"EVENTS", {"seq": 1, "trees": [[b"a"]]}),
    (b"EVENTS", {"seq": True}),                              # bool where int expected
    (b"EVENTS", {"seq": 1.0}),
    (b"ACK", {"seq": "1"}),
    (b"ACK", {"seq": None}),
    (b"READY", {"target": False, "incarnation": "x"}),
    (b"READY", {"target": 0, "incarnation": b"x"}),          # bytes where str expected
    (b"BATCH", {"batch_id": 1, "target": 0, "startup": 1}),  # int where bool expected
    (b"BATCH", {"batch_id": 1, "target": 0, "paths": {"a": 1}}),
    (b"DONE", {"batch_id": 1, "target": 0, "outcome": "ok", "seconds": True}),
    (b"DONE", {"batch_id": 1, "target": 0, "outcome": "ok", "seconds": "1"}),
    (b"DONE", {"batch_id": 1, "target": 0, "outcome": b"ok"}),
    (b"DONE", {"batch_id": 1, "target": 0, "outcome": "ok", "rc": 1.0}),
    (b"HEARTBEAT", {"role": "w", "name": "w", "pid": 1, "incarnation": "i", "info": []}),
    (b"HEARTBEAT", {"role": "w", "name": "w", "pid": True, "incarnation": "i"}),
    (b"STATUS_REPLY", {"status": [1]}),
    (b"STOP", {"reason": None}),
    (b"EVENTS", {"seq": 1, "moves": [[b"a"]]}),                # not a pair
    (b"EVENTS", {"seq": 1, "moves": [[b"a", b"b", b"c"]]}),
    (b"EVENTS", {"seq": 1, "moves": [[b"a", "b"]]}),           # str in a pair
    (b"EVENTS", {"seq": 1, "moves": [b"ab"]}),
    (b"BATCH", {"batch_id": 1, "target": 0, "moves": [[b"a", None]]}),
    (b"DONE", {"batch_id": 1, "target": 0, "outcome": "ok", "moves_done": False}),
])
def test_wrong_field_type(mtype: bytes, body: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError):
        decode(frames(mtype, body))


def test_oversized_body() -> None:
    body = msgpack.packb({"seq": 1, "pad": b"\0" * MAX_BODY})
    assert len(body) > MAX_BODY
    with pytest.raises(ProtocolError):
        decode([VERSION, b"ACK", body])


def test_protocol_error_is_a_value_error() -> None:
    # Callers catch ProtocolError; it must not be confused with a crash.
    assert issubclass(ProtocolError, ValueError)


# -------------------------------------------------------------- property
FIELD_NAMES = sorted({name for cls in ALL_TYPES for name in cls.FIELDS})
TYPE_NAMES = [cls.TYPE for cls in ALL_TYPES]

_leaves = (st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
           | st.floats(allow_nan=False) | st.text(max_size=20) | st.binary(max_size=20))
_keys = (st.text(max_size=8) | st.sampled_from(FIELD_NAMES) | st.binary(max_size=4)
         | st.integers(-(2**63), 2**64 - 1))
_values = st.recursive(
    _leaves,
    lambda children: (st.lists(children, max_size=5)
                      | st.dictionaries(_keys, children, max_size=5)),
    max_leaves=30,
)
_bodies = st.one_of(
    st.binary(max_size=200),
    _values.map(lambda v: msgpack.packb(v, use_bin_type=True)),
    st.dictionaries(st.sampled_from(FIELD_NAMES), _values, max_size=8).map(
        lambda v: msgpack.packb(v, use_bin_type=True)),
    # Valid bodies with a few bytes flipped or cut.
    st.tuples(st.sampled_from(MESSAGES), st.integers(0, 300), st.integers(0, 255)).map(
        lambda t: _mutate(encode(t[0])[2], t[1], t[2])),
)


def _mutate(body: bytes, pos: int, byte: int) -> bytes:
    if pos >= len(body):
        return body[: pos % (len(body) + 1)]
    return body[:pos] + bytes([byte]) + body[pos + 1:]


_KINDS: dict[str, Any] = {
    "int": lambda v: type(v) is int,
    "float": lambda v: type(v) in (int, float),
    "str": lambda v: type(v) is str,
    "bytes": lambda v: type(v) is bytes,
    "bool": lambda v: type(v) is bool,
    "bytes_list": lambda v: type(v) is list and all(type(x) is bytes for x in v),
    "pair_list": lambda v: type(v) is list and all(
        type(x) is list and len(x) == 2 and all(type(y) is bytes for y in x) for x in v),
    "map": lambda v: type(v) is dict,
    "opt_str": lambda v: v is None or type(v) is str,
    "opt_float": lambda v: v is None or type(v) in (int, float),
}


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    version=st.one_of(st.just(VERSION), st.binary(max_size=12)),
    mtype=st.one_of(st.sampled_from(TYPE_NAMES), st.binary(max_size=12)),
    body=_bodies,
)
def test_decode_never_raises_anything_but_protocol_error(
        version: bytes, mtype: bytes, body: bytes) -> None:
    try:
        msg = decode([version, mtype, body])
    except ProtocolError:
        return
    assert isinstance(msg, Message)
    assert version == VERSION
    assert mtype == msg.TYPE
    # Whatever got through has exactly the declared field kinds.
    for f in dataclasses.fields(msg):
        kind = type(msg).FIELDS[f.name]
        assert _KINDS[kind](getattr(msg, f.name)), (f.name, kind, getattr(msg, f.name))


@settings(max_examples=200, deadline=None)
@given(
    seq=st.integers(min_value=-(2**63), max_value=2**64 - 1),
    paths=st.lists(st.binary(max_size=40), max_size=20),
    trees=st.lists(st.binary(max_size=40), max_size=5),
)
def test_events_round_trip_property(seq: int, paths: list[bytes], trees: list[bytes]) -> None:
    msg = Events(seq=seq, paths=paths, trees=trees)
    assert decode(encode(msg)) == msg
