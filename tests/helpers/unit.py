"""Shared helpers for the unit tests (``tests/unit``): small file and config
builders, a fake clock, a descriptor counter, and hypothesis strategies
derived from type annotations (the same shapes :mod:`syncsup.proto._typed`
supports), so that a new message field is generated without anyone having to
remember it.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import types
import typing
from pathlib import Path
from typing import Any

import msgpack
from hypothesis import strategies as st

from syncsup import config as cfg
from tests.helpers.tree import b, write

__all__ = [
    "FakeClock",
    "b",
    "fd_count",
    "make_config",
    "msgpack_shape",
    "strategy_for",
    "write",
]


def make_config(tmp_path: Path, syncs: list[dict[str, Any]],
                **settings: Any) -> cfg.Config:
    """A real :class:`syncsup.config.Config` built with ``config.parse``;
    ``state_dir`` defaults to ``tmp_path/state``. Sources are created."""
    for s in syncs:
        Path(s["source"]).mkdir(parents=True, exist_ok=True)
    doc = {"settings": {"state_dir": str(tmp_path / "state"), **settings}, "sync": syncs}
    return cfg.parse(doc, tmp_path / "syncsup.toml")


class FakeClock:
    """A clock a test moves by hand: ``clock()`` is the time, ``advance`` moves it."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def fd_count() -> int:
    """Open descriptors of this process."""
    return len(os.listdir("/proc/self/fd"))


def msgpack_shape(value: Any) -> tuple[int, int]:
    """(objects, nesting depth of containers) of a value as msgpack sees it:
    every scalar, container, map key and map value is one object."""
    if isinstance(value, msgpack.ExtType):
        return 1, 0
    if isinstance(value, (list, tuple)):
        inner = [msgpack_shape(v) for v in value]
        return 1 + sum(n for n, _ in inner), 1 + max((d for _, d in inner), default=0)
    if isinstance(value, dict):
        inner = [msgpack_shape(x) for kv in value.items() for x in kv]
        return 1 + sum(n for n, _ in inner), 1 + max((d for _, d in inner), default=0)
    return 1, 0


# -------------------------------------------------------------- hypothesis
_INT = st.integers(min_value=-(2**63), max_value=2**64 - 1)  # what msgpack can carry
_NAMES = st.binary(max_size=12) | st.sampled_from(
    [b"", b"a\nb", b"\xff", b"-x", b"--delete", b"dir/sub/\x80name", b"sp ace"])


def strategy_for(tp: Any) -> st.SearchStrategy[Any]:
    """Values of annotation ``tp``, small: every shape ``_typed`` accepts.
    Floats exclude NaN (it never compares equal after a round trip)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return st.none() | st.booleans() | _INT | st.text(max_size=5) | st.binary(max_size=5)
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*(strategy_for(a) for a in args))
    if tp is type(None):
        return st.none()
    if tp is bool:
        return st.booleans()
    if tp is int:
        return _INT
    if tp is float:
        return st.floats(allow_nan=False)
    if tp is str:
        return st.text(max_size=12)
    if tp is bytes:
        return _NAMES
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return st.sampled_from(list(tp))
    if origin is list:
        return st.lists(strategy_for(args[0]), max_size=3)
    if origin is set:
        return st.sets(strategy_for(args[0]), max_size=3)
    if origin is tuple:
        return st.tuples(*(strategy_for(a) for a in args))
    if origin is dict:
        return st.dictionaries(strategy_for(args[0]), strategy_for(args[1]), max_size=3)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        found = typing.get_type_hints(tp)
        return st.builds(tp, **{f.name: strategy_for(found[f.name])
                                for f in dataclasses.fields(tp) if f.init})
    raise TypeError(f"no strategy for {tp!r}")
