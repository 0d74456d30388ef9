"""Dataclasses to plain msgpack values and back, checked against the type
annotations.

The annotations are the schema: a field declared ``list[bytes]`` accepts a
list of ``bin`` and nothing else, a ``bool`` is not an ``int``, an enum
accepts only its values, a nested dataclass is a map with its own fields.
So a message's fields are written once, on the dataclass, and the receiver
can trust every value's type before any handler sees it.

Supported: ``int``, ``float`` (an int is accepted), ``str``, ``bytes``,
``bool``, ``None`` and ``X | None``, ``list[T]``, ``set[T]`` (a list on the
wire), ``tuple[A, B]``, ``dict[str, T]``, ``StrEnum`` / ``IntEnum``
subclasses and dataclasses. Unknown map keys are ignored (a newer peer may
add fields); a missing field takes its default, or is an error.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import types
import typing
from typing import Any

__all__ = ["WireError", "from_wire", "to_wire"]


class WireError(ValueError):
    """A value does not match its declared type; the message says where."""


_PLAIN = frozenset({str, bytes, int, float, bool, type(None)})


def to_wire(value: Any) -> Any:
    """Plain msgpack-able data for ``value`` (dataclasses become maps, enums
    their values, sets sorted lists). Every message sent goes through here,
    so the common cases are decided by the value's exact type, and a
    dataclass's field names are looked up once per class."""
    kind: type = type(value)
    if kind in _PLAIN:  # exact types: an enum member is none of these
        return value
    names = _field_names(kind)
    if names is not None:
        return {name: to_wire(getattr(value, name)) for name in names}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (set, frozenset)):
        return sorted(to_wire(v) for v in value)
    if isinstance(value, (list, tuple)):
        return [to_wire(v) for v in value]
    if isinstance(value, dict):
        return {k: to_wire(v) for k, v in value.items()}
    return value


@functools.cache
def _field_names(cls: type) -> tuple[str, ...] | None:
    """The fields of dataclass ``cls`` (None: not a dataclass)."""
    if not dataclasses.is_dataclass(cls):
        return None
    return tuple(f.name for f in dataclasses.fields(cls))


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _fields(cls: type) -> tuple[dataclasses.Field[Any], ...]:
    return tuple(f for f in dataclasses.fields(cls) if f.init)


Convert = typing.Callable[[Any, str], Any]


def from_wire(tp: Any, data: Any, where: str = "") -> Any:
    """``data`` as a value of type ``tp``; raises WireError."""
    return _converter(tp)(data, where)


@functools.cache
def _converter(tp: Any) -> Convert:
    """The checking converter for ``tp``, built once per type: the
    annotations are read when a message type is first seen, not on every
    value (decoding is on the path of every change)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return lambda data, where: data
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:
            return _fail(f"unsupported union {tp}")
        inner, nullable = _converter(rest[0]), type(None) in args

        def union(data: Any, where: str) -> Any:
            if data is None and nullable:
                return None
            return inner(data, where)
        return union
    if tp is type(None):
        return _exact(type(None), "expected nil")
    if tp is bool:
        return _exact(bool, "expected a boolean")
    if tp is int:
        return _exact(int, "expected an integer")
    if tp is float:
        def number(data: Any, where: str) -> float:
            if type(data) not in (int, float):
                raise WireError(f"{where}: expected a number")
            return float(data)
        return number
    if tp in (str, bytes):
        return _exact(tp, f"expected {tp.__name__}")
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _enum(tp)
    if origin in (list, set):
        return _sequence(_converter(args[0]), origin is set)
    if origin is tuple:
        return _tuple([_converter(a) for a in args])
    if origin is dict:
        key, val = _converter(args[0]), _converter(args[1])

        def mapping(data: Any, where: str) -> dict[Any, Any]:
            if type(data) is not dict:
                raise WireError(f"{where}: expected a map")
            return {key(k, f"{where} key"): val(v, f"{where}[{k!r}]") for k, v in data.items()}
        return mapping
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _dataclass(tp)
    return _fail(f"unsupported type {tp}")


def _fail(why: str) -> Convert:
    def fail(data: Any, where: str) -> Any:
        raise WireError(f"{where}: {why}")
    return fail


def _exact(tp: type, why: str) -> Convert:
    def exact(data: Any, where: str) -> Any:
        if type(data) is not tp:
            raise WireError(f"{where}: {why}")
        return data
    return exact


def _enum(tp: type[enum.Enum]) -> Convert:
    kinds = {type(m.value) for m in tp}

    def member(data: Any, where: str) -> Any:
        if type(data) not in kinds:
            raise WireError(f"{where}: {data!r} is not a {tp.__name__}")
        try:
            return tp(data)
        except ValueError:
            raise WireError(f"{where}: {data!r} is not a {tp.__name__}") from None
    return member


def _sequence(item: Convert, as_set: bool) -> Convert:
    def sequence(data: Any, where: str) -> Any:
        if type(data) is not list:
            raise WireError(f"{where}: expected a list")
        items = [item(v, f"{where}[{i}]") for i, v in enumerate(data)]
        return set(items) if as_set else items
    return sequence


def _tuple(items: list[Convert]) -> Convert:
    def fixed(data: Any, where: str) -> tuple[Any, ...]:
        if type(data) is not list or len(data) != len(items):
            raise WireError(f"{where}: expected a list of {len(items)}")
        return tuple(c(v, f"{where}[{i}]") for i, (c, v) in enumerate(
            zip(items, data, strict=True)))
    return fixed


def _dataclass(cls: type) -> Convert:
    hints = _hints(cls)
    # (name, converter, required): converters of nested types are built on
    # first use, so a recursive schema does not recurse here.
    fields = [(f.name, hints[f.name], f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING) for f in _fields(cls)]

    def instance(data: Any, where: str) -> Any:
        if type(data) is not dict:
            raise WireError(f"{where or cls.__name__}: expected a map")
        kwargs: dict[str, Any] = {}
        for name, tp, required in fields:
            if name not in data:
                if required:
                    path = f"{where}.{name}" if where else f"{cls.__name__}.{name}"
                    raise WireError(f"{path}: missing")
                continue
            path = f"{where}.{name}" if where else f"{cls.__name__}.{name}"
            kwargs[name] = _converter(tp)(data[name], path)
        return cls(**kwargs)
    return instance
