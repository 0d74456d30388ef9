"""Run an Lsyncd config in the sandbox child and decode what it recorded.

The child (:mod:`syncsup.lsyncd._sandbox`) is a separate Python process so
that a config that defeats the Lua-level limits (work inside one C call)
is ended by the kernel, and so that the importing process never loads lupa
or runs untrusted Lua itself. This side reads nothing but the child's JSON.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["LuaBroken", "LuaFunction", "LuaOther", "Recorded", "RecordedSync", "decode",
           "run_config"]

# Generous: a config needs milliseconds; the child's own CPU limit is 20 s.
TIMEOUT = 60.0
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]


class LuaBroken(Exception):
    """The config cannot be evaluated: syntax or runtime error, a sandbox
    limit, or a call the sandbox refuses. ``args[0]`` is one line."""


@dataclass(frozen=True)
class LuaFunction:
    """A function value: ``builtin`` names a default layer's function (e.g.
    ``default.rsync.action``); otherwise ``line`` is where the config
    defined it (None if unknown, e.g. a standard library function)."""

    builtin: str | None = None
    line: int | None = None

    def describe(self) -> str:
        if self.builtin:
            return f"Lsyncd's {self.builtin}"
        return f"a Lua function (line {self.line})" if self.line else "a Lua function"


@dataclass(frozen=True)
class LuaOther:
    """A value TOML cannot hold (a coroutine, userdata, a table cycle)."""

    kind: str


@dataclass
class RecordedSync:
    """One ``sync{...}`` call: the config after Lsyncd's inheritance
    (layers merged in), the line of the call, and which of delay /
    maxDelays / maxProcesses came from ``settings`` (which overrides them)."""

    index: int
    line: int | None
    config: dict[Any, Any]
    from_settings: frozenset[str] = frozenset()


@dataclass
class Recorded:
    """Everything the config did that the importer maps."""

    settings: dict[Any, Any] = field(default_factory=dict)
    unknown_settings: frozenset[str] = frozenset()
    settings_assigned: bool = False
    syncs: list[RecordedSync] = field(default_factory=list)
    getenv: list[tuple[str, str | None]] = field(default_factory=list)


def decode(value: Any) -> Any:
    """The child's JSON encoding back to Python: tables become dicts (keys
    str or int, array entries under 1..n), functions :class:`LuaFunction`."""
    if isinstance(value, dict):
        if "__table__" in value:
            return {k: decode(v) for k, v in value["__table__"]}
        if "__function__" in value:
            fn = value["__function__"]
            return LuaFunction(builtin=fn.get("builtin"), line=fn.get("line"))
        if "__cycle__" in value:
            return LuaOther("table cycle")
        return LuaOther(str(value.get("__other__", "value")))
    return value


def array(table: Any) -> list[Any]:
    """The 1..n part of a decoded table, as Lua's ``ipairs`` sees it."""
    out: list[Any] = []
    if isinstance(table, dict):
        while len(out) + 1 in table:
            out.append(table[len(out) + 1])
    return out


def _recorded(raw: dict[Any, Any]) -> Recorded:
    syncs = []
    for i, entry in enumerate(array(raw.get("syncs")), start=1):
        from_settings = entry.get("from_settings") or {}
        line = entry.get("line")
        syncs.append(RecordedSync(index=i, line=line if isinstance(line, int) else None,
                                  config=entry.get("config") or {},
                                  from_settings=frozenset(str(k) for k in from_settings)))
    getenv = []
    for pair in array(raw.get("getenv")):
        value = pair.get(2)
        getenv.append((str(pair.get(1)), value if isinstance(value, str) else None))
    settings = raw.get("settings") or {}
    return Recorded(settings=settings if isinstance(settings, dict) else {},
                    unknown_settings=frozenset(str(k) for k in raw.get("unknown_settings") or {}),
                    settings_assigned=bool(raw.get("settings_assigned")),
                    syncs=syncs, getenv=getenv)


def run_config(text: bytes, chunkname: str) -> tuple[Recorded, str]:
    """Evaluate the config; what it recorded and what it printed (its
    ``print`` output). Raises :class:`LuaBroken` with one line."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(_PACKAGE_ROOT) + (os.pathsep + env["PYTHONPATH"]
                                              if env.get("PYTHONPATH") else "")
    try:
        proc = subprocess.run([sys.executable, "-m", "syncsup.lsyncd._sandbox", chunkname],
                              input=text, capture_output=True, timeout=TIMEOUT, cwd="/",
                              env=env)
    except subprocess.TimeoutExpired:
        raise LuaBroken(f"{chunkname}: the config did not finish within {TIMEOUT:.0f} s") from None
    printed = proc.stderr.decode("utf-8", "replace")
    if proc.returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        raise LuaBroken(f"{chunkname}: the config used too much CPU time (stopped by the "
                        "importer's sandbox; an endless loop inside a string function?)")
    try:
        doc = json.loads(proc.stdout)
    except ValueError:
        tail = printed.strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
        raise LuaBroken(f"{chunkname}: the Lua sandbox failed: {tail[0]}") from None
    if not doc.get("ok"):
        raise LuaBroken(str(doc.get("error") or "unknown Lua error"))
    raw = decode(doc["result"])
    if not isinstance(raw, dict):
        raise LuaBroken(f"{chunkname}: the Lua sandbox returned nothing")
    return _recorded(raw), printed
