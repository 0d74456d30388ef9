"""Wire protocol: encode/decode round trips of every message type, strict
rejection of bad input, and the per-type decode budgets."""

from __future__ import annotations

import copy
import dataclasses
import enum
import time
import types
import typing
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncsup import proto
from syncsup.msgcheck import check
from syncsup.proto import (
    MAX_BODY,
    MAX_FRAME,
    TYPES,
    VERSION,
    Ack,
    Batch,
    Changes,
    Command,
    Control,
    ControlReply,
    Done,
    Events,
    Heartbeat,
    Message,
    Outcome,
    ProtocolError,
    Ready,
    StatusAnswer,
    StatusQuery,
    StatusReply,
    StatusRequest,
    Stop,
    decode,
    encode,
)
from syncsup.status import (
    ComponentStatus,
    QueueStatus,
    Status,
    StatusPart,
    SyncStatus,
    TargetStatus,
    TransferStatus,
    WatchStatus,
)
from tests.helpers.unit import strategy_for

WEIRD = {b"a\nb", b"\xff", b"-x", b"", b"dir/\x80\xfe/file", b"--delete"}
ALL_TYPES = sorted(TYPES.values(), key=lambda cls: cls.__name__)

TARGET = TargetStatus(target="h:/www", state="retrying", pending=3, lag=1.5, last_sync=None,
                      last_error="ssh: refused", transfers={"ok": 2, "retry": 1},
                      bytes_sent=7, transfer=TransferStatus(sync="www", target="h:/www",
                                                            phase="tree", seconds=12.5,
                                                            io_bytes=99))
STATUS = Status(config="/etc/s.toml", started=1.5, components=[
    ComponentStatus("supervisor", "supervisor", 1, "running", uptime=3.0),
    ComponentStatus("syncer", "syncer", None, "backoff", restarts=2, last_exit=-9)],
    syncs=[SyncStatus(name="www", source="/srv/www", mode="rsync", watches=None,
                      targets=[TARGET, TargetStatus(target="/m")])])

SAMPLES: list[Message] = [
    Ack(seq=17),
    Ack(seq=-(2**63)),
    Batch(batch_id=1_700_000_000_123, sync="www", target=0, startup=True,
          changes=Changes(paths=set(WEIRD), trees={b""}, verify={b"v\n"}, created={b"-x"},
                          moves=[(b"a", b"b"), (b"\xff", b"-x")])),
    Batch(batch_id=2, sync="www", target=1),
    Control(command=Command.RESYNC),
    Control(command=Command.PAUSE, sync="www", target_spec="backup@host:/srv/www"),
    ControlReply(ok=True, message="resync: www"),
    ControlReply(ok=False),
    Done(batch_id=5, sync="www", target=0, outcome=Outcome.RETRY, rc=-9,
         error="killed: no progress", seconds=12.25, moves_done=3, bytes=2**40),
    Done(batch_id=6, sync="db", target=2, outcome=Outcome.OK),
    Events(seq=0, sync="www", changes=Changes(paths=set(WEIRD), trees={b"", b"new\ndir"})),
    Events(seq=2**64 - 1, sync="www"),
    Events(seq=3, sync="s", changes=Changes(paths={b"old", b"new\n"},
                                            moves=[(b"old", b"new\n"), (b"\xff", b"-x")])),
    Heartbeat(role="collator", pid=1234, incarnation="a1b2"),
    Ready(sync="www", target=3, incarnation="deadbeef"),
    StatusAnswer(query=4, part=StatusPart(role="watcher", watches=[
        WatchStatus(sync="www", watches=10, unwatched=1, watch_limit_needed=None)])),
    StatusAnswer(query=5, part=StatusPart(role="collator", queues=[
        QueueStatus(sync="www", rescans=2, targets=[TARGET])], transfers=[TARGET.transfer]
        if TARGET.transfer else [])),
    StatusQuery(query=1),
    StatusReply(status=STATUS),
    StatusRequest(),
    Stop(reason="SIGTERM via CLI"),
    Stop(),
]


def frames(mtype: bytes, body: Any) -> list[bytes]:
    return [VERSION, mtype, msgpack.packb(body, use_bin_type=True)]


# ---------------------------------------------------------------- round trip
def test_every_message_type_is_covered() -> None:
    assert {type(m) for m in SAMPLES} == set(TYPES.values())
    assert {cls.__name__ for cls in ALL_TYPES} <= set(proto.__all__)
    assert all(TYPES[cls.TYPE] is cls for cls in ALL_TYPES)
    assert len({cls.TYPE for cls in ALL_TYPES}) == len(ALL_TYPES)


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(msg: Message) -> None:
    wire = encode(msg)
    assert len(wire) == 3
    assert wire[0] == VERSION == b"syncsup/1"
    assert wire[1] == msg.TYPE
    assert all(isinstance(f, bytes) for f in wire)
    back = decode(wire)
    assert type(back) is type(msg)
    assert back == msg


@pytest.mark.parametrize("cls", ALL_TYPES, ids=lambda c: c.__name__)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_round_trip_of_any_value(cls: type[Message], data: st.DataObject) -> None:
    msg = data.draw(strategy_for(cls))
    assert decode(encode(msg)) == msg


def test_paths_travel_as_msgpack_bin() -> None:
    wire = encode(Events(seq=1, sync="s", changes=Changes(paths={b"\xff\n"})))
    # bin 8 header 0xc4, not a str header: paths are never decoded as text.
    assert b"\xc4\x02\xff\n" in wire[2]
    body = msgpack.unpackb(wire[2], raw=False)
    assert body["changes"]["paths"] == [b"\xff\n"]


def test_sets_travel_sorted() -> None:
    body = msgpack.unpackb(encode(Events(seq=1, sync="s", changes=Changes(
        paths={b"c", b"a", b"b"})))[2], raw=False)
    assert body["changes"]["paths"] == [b"a", b"b", b"c"]


def test_enums_travel_as_their_values() -> None:
    body = msgpack.unpackb(encode(Control(command=Command.RESUME))[2], raw=False)
    assert body == {"command": "resume", "sync": "", "target_spec": ""}


def test_decode_accepts_a_tuple_of_frames() -> None:
    assert decode(tuple(encode(Ack(seq=1)))) == Ack(seq=1)


def test_missing_optional_fields_take_defaults() -> None:
    assert decode(frames(b"EVENTS", {"seq": 4, "sync": "s"})) == Events(seq=4, sync="s")
    assert decode(frames(b"EVENTS", {"seq": 4, "sync": "s", "changes": {"paths": [b"a"]}})
                  ) == Events(seq=4, sync="s", changes=Changes(paths={b"a"}))
    assert decode(frames(b"DONE", {"batch_id": 1, "sync": "s", "target": 0, "outcome": "ok"})
                  ) == Done(batch_id=1, sync="s", target=0, outcome=Outcome.OK, rc=0, error="",
                            seconds=0.0, moves_done=0, bytes=0)
    assert decode(frames(b"STOP", {})) == Stop(reason="")
    assert decode(frames(b"STATUS", {})) == StatusRequest()
    assert decode(frames(b"CONTROL", {"command": "pause"})) == Control(command=Command.PAUSE)
    assert decode(frames(b"STATUS_ANSWER", {"query": 1, "part": {"role": "syncer"}})
                  ) == StatusAnswer(query=1, part=StatusPart(role="syncer"))


def test_unknown_extra_fields_are_ignored() -> None:
    assert decode(frames(b"ACK", {"seq": 1, "future": [1, 2]})) == Ack(seq=1)
    assert decode(frames(b"EVENTS", {"seq": 1, "sync": "s",
                                      "changes": {"paths": [b"a"], "future": {"x": 1}}})
                  ) == Events(seq=1, sync="s", changes=Changes(paths={b"a"}))
    part = {"role": "collator", "queues": [{"sync": "s", "new": 1,
                                            "targets": [{"target": "t", "newer": None}]}]}
    assert decode(frames(b"STATUS_ANSWER", {"query": 2, "part": part})) == StatusAnswer(
        query=2, part=StatusPart(role="collator", queues=[
            QueueStatus(sync="s", targets=[TargetStatus(target="t")])]))


def test_int_accepted_where_float_expected() -> None:
    msg = decode(frames(b"DONE", {"batch_id": 1, "sync": "s", "target": 0, "outcome": "ok",
                                  "seconds": 3}))
    assert isinstance(msg, Done)
    assert msg.seconds == 3 and type(msg.seconds) is float


def test_duplicates_in_a_set_field_collapse() -> None:
    msg = decode(frames(b"EVENTS", {"seq": 1, "sync": "s",
                                    "changes": {"paths": [b"a", b"a"]}}))
    assert isinstance(msg, Events)
    assert msg.changes.paths == {b"a"}


# -------------------------------------------------------------------- rejects
GOOD_ACK = msgpack.packb({"seq": 1})


@pytest.mark.parametrize("version", [b"syncsup/2", b"syncsup/", b"", b"SYNCSUP/1", b"syncsup/1\0",
                                     b"syncsup/0"])
def test_wrong_version(version: bytes) -> None:
    with pytest.raises(ProtocolError, match="version"):
        decode([version, b"ACK", GOOD_ACK])


@pytest.mark.parametrize("mtype", [b"NOPE", b"ack", b"", b"ACK\0", b"\xff" * 100, b"STATUS "])
def test_unknown_type(mtype: bytes) -> None:
    with pytest.raises(ProtocolError, match="unknown message type"):
        decode([VERSION, mtype, GOOD_ACK])


@pytest.mark.parametrize("n", [0, 1, 2, 4, 5])
def test_wrong_frame_count(n: int) -> None:
    wire = [VERSION, b"ACK", GOOD_ACK, b"extra", b"more"][:n]
    with pytest.raises(ProtocolError, match="frames"):
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
    b"\x81\xa3seq\xcb" + b"\x00" * 8,    # a float where an int is declared
], ids=["empty", "c1", "truncated", "trailing", "huge-bin", "huge-array", "bad-utf8",
        "int-key", "ext", "deep", "float"])
def test_garbage_body(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode([VERSION, b"ACK", body])


@pytest.mark.parametrize("body", [[1, 2], 5, "seq", None, b"\x00", True, 1.5])
def test_body_not_a_map(body: Any) -> None:
    with pytest.raises(ProtocolError, match="expected a map"):
        decode(frames(b"ACK", body))


@pytest.mark.parametrize(("mtype", "body"), [
    (b"ACK", {}),
    (b"READY", {"target": 1, "sync": "s"}),
    (b"READY", {"incarnation": "x", "sync": "s"}),
    (b"READY", {"incarnation": "x", "target": 1}),
    (b"DONE", {"batch_id": 1, "sync": "s", "target": 0}),
    (b"BATCH", {"target": 0, "sync": "s"}),
    (b"EVENTS", {"seq": 1}),
    (b"EVENTS", {"sync": "s", "changes": {"paths": [b"a"]}}),
    (b"HEARTBEAT", {"role": "watcher", "pid": 1}),
    (b"CONTROL", {"sync": "s"}),
    (b"CONTROL_REPLY", {"message": "m"}),
    (b"STATUS_QUERY", {}),
    (b"STATUS_ANSWER", {"query": 1}),
    (b"STATUS_ANSWER", {"query": 1, "part": {}}),  # nested: role is required
    (b"STATUS_REPLY", {}),
    (b"STATUS_REPLY", {"status": {"config": "c", "started": 1.0, "components": []}}),
    (b"ACK", {b"seq": 1}),  # a bytes key is not the field name
])
def test_missing_required_field(mtype: bytes, body: dict[Any, Any]) -> None:
    with pytest.raises(ProtocolError, match="missing"):
        decode(frames(mtype, body))


EV = {"seq": 1, "sync": "s"}
BA = {"batch_id": 1, "sync": "s", "target": 0}
DO = {**BA, "outcome": "ok"}
GOOD_STATUS = msgpack.unpackb(encode(StatusReply(status=STATUS))[2], raw=False)["status"]


def _status_with(path: list[Any], value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(GOOD_STATUS)
    cur = doc
    for p in path[:-1]:
        cur = cur[p]
    cur[path[-1]] = value
    return {"status": doc}


@pytest.mark.parametrize(("mtype", "body"), [
    # Changes, nested
    (b"EVENTS", {**EV, "changes": {"paths": ["a"]}}),             # str inside a paths list
    (b"EVENTS", {**EV, "changes": {"paths": [b"a", "b"]}}),
    (b"EVENTS", {**EV, "changes": {"paths": b"a"}}),              # not a list
    (b"EVENTS", {**EV, "changes": {"trees": [None]}}),
    (b"EVENTS", {**EV, "changes": {"verify": [[b"a"]]}}),
    (b"EVENTS", {**EV, "changes": {"created": {"a": 1}}}),
    (b"EVENTS", {**EV, "changes": [b"a"]}),                        # not a map
    (b"EVENTS", {**EV, "changes": None}),
    (b"EVENTS", {**EV, "changes": {"moves": [[b"a"]]}}),           # not a pair
    (b"EVENTS", {**EV, "changes": {"moves": [[b"a", b"b", b"c"]]}}),
    (b"EVENTS", {**EV, "changes": {"moves": [[b"a", "b"]]}}),      # str in a pair
    (b"EVENTS", {**EV, "changes": {"moves": [b"ab"]}}),
    (b"BATCH", {**BA, "changes": {"moves": [[b"a", None]]}}),
    (b"BATCH", {**BA, "changes": {"paths": {"a": 1}}}),
    # scalars
    (b"EVENTS", {**EV, "seq": True}),                              # bool where int expected
    (b"EVENTS", {**EV, "seq": 1.0}),
    (b"EVENTS", {**EV, "sync": b"s"}),                             # bytes where str expected
    (b"ACK", {"seq": "1"}),
    (b"ACK", {"seq": None}),
    (b"READY", {"sync": "s", "target": False, "incarnation": "x"}),
    (b"READY", {"sync": "s", "target": 0, "incarnation": b"x"}),
    (b"BATCH", {**BA, "startup": 1}),                              # int where bool expected
    (b"BATCH", {**BA, "batch_id": True}),
    (b"DONE", {**DO, "seconds": True}),
    (b"DONE", {**DO, "seconds": "1"}),
    (b"DONE", {**DO, "rc": 1.0}),
    (b"DONE", {**DO, "rc": False}),
    (b"DONE", {**DO, "moves_done": False}),
    (b"DONE", {**DO, "bytes": None}),
    (b"HEARTBEAT", {"role": "w", "pid": True, "incarnation": "i"}),
    (b"HEARTBEAT", {"role": 1, "pid": 1, "incarnation": "i"}),
    (b"CONTROL_REPLY", {"ok": 1}),
    (b"STATUS_QUERY", {"query": True}),
    (b"STOP", {"reason": None}),
    # enums: only their values, as their type
    (b"DONE", {**DO, "outcome": "maybe"}),
    (b"DONE", {**DO, "outcome": "OK"}),
    (b"DONE", {**DO, "outcome": b"ok"}),
    (b"DONE", {**DO, "outcome": 0}),
    (b"DONE", {**DO, "outcome": None}),
    (b"CONTROL", {"command": "delete"}),
    (b"CONTROL", {"command": ["resync"]}),
    # status, nested
    (b"STATUS_REPLY", {"status": [1]}),
    (b"STATUS_REPLY", _status_with(["started"], "yesterday")),
    (b"STATUS_REPLY", _status_with(["version"], True)),
    (b"STATUS_REPLY", _status_with(["components", 0, "pid"], "1")),
    (b"STATUS_REPLY", _status_with(["components", 1], None)),
    (b"STATUS_REPLY", _status_with(["syncs", 0, "targets", 0, "pending"], 1.5)),
    (b"STATUS_REPLY", _status_with(["syncs", 0, "targets", 0, "transfers"], {"ok": "2"})),
    (b"STATUS_REPLY", _status_with(["syncs", 0, "targets", 0, "transfers"], [["ok", 2]])),
    (b"STATUS_REPLY", _status_with(["syncs", 0, "targets", 0, "transfer", "seconds"], None)),
    (b"STATUS_REPLY", _status_with(["syncs", 0, "targets", 0, "lag"], "1")),
    (b"STATUS_ANSWER", {"query": 1, "part": {"role": "w", "watches": [{"sync": 1}]}}),
    (b"STATUS_ANSWER", {"query": 1, "part": {"role": "w", "watches": {"sync": "s"}}}),
])
def test_wrong_field_type(mtype: bytes, body: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError):
        decode(frames(mtype, body))


def test_the_wrong_field_is_named() -> None:
    with pytest.raises(ProtocolError, match=r"Done\.outcome"):
        decode(frames(b"DONE", {**DO, "outcome": "maybe"}))
    with pytest.raises(ProtocolError, match=r"changes\.moves\[0\]\[1\]"):
        decode(frames(b"EVENTS", {**EV, "changes": {"moves": [[b"a", "b"]]}}))


def test_protocol_error_is_a_value_error() -> None:
    # Callers catch ProtocolError; it must not be confused with a crash.
    assert issubclass(ProtocolError, ValueError)


# ------------------------------------------------------------------- budgets
def test_budgets() -> None:
    assert max(cls.MAX_BODY for cls in ALL_TYPES) == MAX_BODY
    assert MAX_FRAME > MAX_BODY
    small = {Ack, Control, ControlReply, Done, Heartbeat, Ready, StatusQuery, StatusRequest,
             Stop}
    for cls in ALL_TYPES:
        assert cls.MAX_BODY <= MAX_BODY
        if cls in small:
            assert (cls.MAX_BODY, cls.MAX_OBJECTS, cls.MAX_DEPTH) == (64 * 1024, 1024, 3)


@pytest.mark.parametrize("cls", ALL_TYPES, ids=lambda c: c.__name__)
def test_oversized_body(cls: type[Message]) -> None:
    body = msgpack.packb({"pad": b"\0" * cls.MAX_BODY})
    assert len(body) > cls.MAX_BODY
    with pytest.raises(ProtocolError, match="exceeds"):
        decode([VERSION, cls.TYPE, body])


@pytest.fixture
def no_unpacking(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail if a body gets as far as msgpack (objects would be built)."""
    def refuse(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("msgpack.unpackb reached: objects would be built")

    monkeypatch.setattr("syncsup.proto._codec.msgpack.unpackb", refuse)
    yield


HOSTILE = {
    "32MiB-of-0x90": b"\x90" * (32 * 1024 * 1024),
    "1M-empty-arrays": b"\xdd" + (1_000_000).to_bytes(4, "big") + b"\x90" * 1_000_000,
    "1M-empty-arrays-in-a-field": (b"\x81\xa7changes\xdd" + (1_000_000).to_bytes(4, "big")
                                   + b"\x90" * 1_000_000),
    "deep": b"\x91" * 1_000_000 + b"\xc0",
    "deep-maps": b"\x81\xa1k" * 100_000 + b"\xc0",
}


@pytest.mark.parametrize("name", HOSTILE)
@pytest.mark.parametrize("cls", ALL_TYPES, ids=lambda c: c.__name__)
def test_hostile_bodies_are_refused_quickly_without_building_objects(
        no_unpacking: None, cls: type[Message], name: str) -> None:
    body = HOSTILE[name]
    start = time.perf_counter()
    with pytest.raises(ProtocolError, match=r"exceeds|refused"):
        decode([VERSION, cls.TYPE, body])
    # The structure check alone, even on bodies the size check would stop.
    with pytest.raises(ValueError):
        check(body, cls.MAX_OBJECTS, cls.MAX_DEPTH)
    assert time.perf_counter() - start < 1.0  # microseconds in fact


@pytest.mark.parametrize("cls", ALL_TYPES, ids=lambda c: c.__name__)
def test_object_budget_boundary(cls: type[Message]) -> None:
    # {"pad": [nil] * n}: n + 3 objects
    def body(n: int) -> bytes:
        return bytes(msgpack.packb({"pad": [None] * n}))

    at_limit = body(cls.MAX_OBJECTS - 3)
    try:
        decode([VERSION, cls.TYPE, at_limit])
    except ProtocolError as exc:  # past the budget: only the fields can be wrong
        assert "refused" not in str(exc) and "missing" in str(exc)
    with pytest.raises(ProtocolError, match=f"more than {cls.MAX_OBJECTS} objects"):
        decode([VERSION, cls.TYPE, body(cls.MAX_OBJECTS - 2)])


@pytest.mark.parametrize("cls", ALL_TYPES, ids=lambda c: c.__name__)
def test_depth_budget_boundary(cls: type[Message]) -> None:
    def body(depth: int) -> bytes:  # a map holding depth - 1 nested lists
        value: Any = None
        for _ in range(depth - 1):
            value = [value]
        return bytes(msgpack.packb({"pad": value}))

    try:
        decode([VERSION, cls.TYPE, body(cls.MAX_DEPTH)])
    except ProtocolError as exc:
        assert "refused" not in str(exc) and "missing" in str(exc)
    with pytest.raises(ProtocolError, match=f"nested deeper than {cls.MAX_DEPTH}"):
        decode([VERSION, cls.TYPE, body(cls.MAX_DEPTH + 1)])


def test_the_deepest_real_messages_fit_their_budget() -> None:
    for msg in SAMPLES:
        body = encode(msg)[2]
        assert check(body, type(msg).MAX_OBJECTS, type(msg).MAX_DEPTH) > 0


# ------------------------------------------------------------------ property
def conforms(tp: Any, value: Any) -> bool:
    """Is ``value`` exactly of annotation ``tp``? (written independently of _typed)"""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(conforms(a, value) for a in args)
    if tp is type(None):
        return value is None
    if tp in (int, str, bytes, bool, float):
        return type(value) is tp
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return type(value) is tp
    if origin in (list, set):
        return type(value) is origin and all(conforms(args[0], v) for v in value)
    if origin is tuple:
        return (type(value) is tuple and len(value) == len(args)
                and all(conforms(a, v) for a, v in zip(args, value, strict=True)))
    if origin is dict:
        return type(value) is dict and all(conforms(args[0], k) and conforms(args[1], v)
                                           for k, v in value.items())
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        return type(value) is tp and all(conforms(hints[f.name], getattr(value, f.name))
                                         for f in dataclasses.fields(tp))
    raise TypeError(tp)


def _mutate(body: bytes, pos: int, byte: int) -> bytes:
    if pos >= len(body):
        return body[: pos % (len(body) + 1)]
    return body[:pos] + bytes([byte]) + body[pos + 1:]


FIELD_NAMES = sorted({f.name for cls in [*ALL_TYPES, Changes, StatusPart, Status]
                      for f in dataclasses.fields(cls)})
_leaves = (st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
           | st.floats(allow_nan=False) | st.text(max_size=8)
           | st.sampled_from(["ok", "resync", "watcher"]) | st.binary(max_size=8))
_keys = st.sampled_from(FIELD_NAMES) | st.text(max_size=4)


def _nest(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return _leaves | st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=4)


_values = _nest(_nest(_nest(_leaves)))  # up to three levels (st.recursive is much slower)
_bodies = st.one_of(
    st.binary(max_size=100),
    st.dictionaries(st.sampled_from(FIELD_NAMES), _values, max_size=8).map(
        lambda v: msgpack.packb(v, use_bin_type=True)),
    # Valid bodies with a byte changed or cut.
    st.tuples(st.sampled_from(SAMPLES), st.integers(0, 300), st.integers(0, 255)).map(
        lambda t: _mutate(encode(t[0])[2], t[1], t[2])),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(version=st.one_of(st.just(VERSION), st.binary(max_size=10)),
       mtype=st.sampled_from([cls.TYPE for cls in ALL_TYPES]) | st.binary(max_size=10),
       body=_bodies)
def test_decode_never_raises_anything_but_protocol_error(
        version: bytes, mtype: bytes, body: bytes) -> None:
    try:
        msg = decode([version, mtype, body])
    except ProtocolError:
        return
    assert isinstance(msg, Message)
    assert version == VERSION
    assert mtype == msg.TYPE
    # Whatever got through has exactly the declared types, nested ones too.
    assert conforms(type(msg), msg), msg


def test_conforms_is_not_vacuous() -> None:
    assert all(conforms(type(m), m) for m in SAMPLES)
    assert not conforms(Ack, Ack(seq=True))
    assert not conforms(Events, Events(seq=1, sync="s", changes=Changes(paths={"a"})))  # type: ignore[arg-type]
    assert not conforms(Done, Done(batch_id=1, sync="s", target=0, outcome="ok"))  # type: ignore[arg-type]
