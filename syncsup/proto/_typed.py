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


def to_wire(value: Any) -> Any:
    """Plain msgpack-able data for ``value`` (dataclasses become maps, enums
    their values, sets sorted lists)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_wire(getattr(value, f.name)) for f in dataclasses.fields(value)}
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
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _fields(cls: type) -> tuple[dataclasses.Field[Any], ...]:
    return tuple(f for f in dataclasses.fields(cls) if f.init)


def from_wire(tp: Any, data: Any, where: str = "") -> Any:
    """``data`` as a value of type ``tp``; raises WireError."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return data
    if origin in (typing.Union, types.UnionType):
        if data is None and type(None) in args:
            return None
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:
            raise WireError(f"{where}: unsupported union {tp}")
        return from_wire(rest[0], data, where)
    if tp is type(None):
        if data is not None:
            raise WireError(f"{where}: expected nil")
        return None
    if tp is bool:
        if type(data) is not bool:
            raise WireError(f"{where}: expected a boolean")
        return data
    if tp is int:
        if type(data) is not int:
            raise WireError(f"{where}: expected an integer")
        return data
    if tp is float:
        if type(data) not in (int, float):
            raise WireError(f"{where}: expected a number")
        return float(data)
    if tp in (str, bytes):
        if type(data) is not tp:
            raise WireError(f"{where}: expected {tp.__name__}")
        return data
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        if not any(type(data) is type(m.value) for m in tp):
            raise WireError(f"{where}: {data!r} is not a {tp.__name__}")
        try:
            return tp(data)
        except ValueError:
            raise WireError(f"{where}: {data!r} is not a {tp.__name__}") from None
    if origin in (list, set):
        if type(data) is not list:
            raise WireError(f"{where}: expected a list")
        items = [from_wire(args[0], v, f"{where}[{i}]") for i, v in enumerate(data)]
        return items if origin is list else set(items)
    if origin is tuple:
        if type(data) is not list or len(data) != len(args):
            raise WireError(f"{where}: expected a list of {len(args)}")
        return tuple(from_wire(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(
            zip(args, data, strict=True)))
    if origin is dict:
        if type(data) is not dict:
            raise WireError(f"{where}: expected a map")
        return {from_wire(args[0], k, f"{where} key"): from_wire(args[1], v, f"{where}[{k!r}]")
                for k, v in data.items()}
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _dataclass(tp, data, where)
    raise WireError(f"{where}: unsupported type {tp}")


def _dataclass(cls: type, data: Any, where: str) -> Any:
    if type(data) is not dict:
        raise WireError(f"{where or cls.__name__}: expected a map")
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for f in _fields(cls):
        path = f"{where}.{f.name}" if where else f"{cls.__name__}.{f.name}"
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise WireError(f"{path}: missing")
            continue
        kwargs[f.name] = from_wire(hints[f.name], data[f.name], path)
    return cls(**kwargs)
