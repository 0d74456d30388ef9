"""Run an Lsyncd config in the sandbox child and decode what it recorded.

The child (:mod:`syncsup.lsyncd._sandbox`) is a separate Python process so
that a config that defeats the Lua-level limits (work inside one C call)
is ended by the kernel, and so that the importing process never loads lupa
or runs untrusted Lua itself. This side reads nothing but the child's JSON.

The child's limits bound the child, not this process: a few lines of Lua
can return a table holding one 4 MiB string fifty times, which the child
encodes as 200 MB of JSON, and reading that whole and decoding it would
take this process to gigabytes. So the child's output is read with caps
(:data:`MAX_RESULT` of JSON, :data:`MAX_PRINTED` of printed text); past
one, the child is killed at once and the config refused in one line, like
any other sandbox limit.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["LuaBroken", "LuaFunction", "LuaOther", "Recorded", "RecordedSync", "decode",
           "run_config"]

# Generous: a config needs milliseconds; the child's own CPU limit is 5 s, so
# even a machine twelve times overloaded reports the CPU limit, not this one.
TIMEOUT = 60.0
# What this process reads from the child. A real config's result is a few
# KiB; print output is cut at 64 KiB by the sandbox's own print.
MAX_RESULT = 4 * 1024 * 1024
MAX_PRINTED = 1024 * 1024
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
                    settings_assigned=bool(raw.get("settings_assigned")),
                    syncs=syncs, getenv=getenv)


class _Overflow(Exception):
    """The child wrote more than a cap on one of its outputs."""


def _communicate(proc: subprocess.Popen[bytes], text: bytes,
                 deadline: float) -> tuple[bytes, bytes]:
    """Feed ``text`` to the child and read its stdout and stderr, each up to
    its cap (:class:`_Overflow` past one), until both end or the deadline
    passes (:class:`subprocess.TimeoutExpired`)."""
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    caps = {proc.stdout.fileno(): MAX_RESULT, proc.stderr.fileno(): MAX_PRINTED}
    got: dict[int, bytearray] = {fd: bytearray() for fd in caps}
    unwritten = memoryview(text)
    with selectors.DefaultSelector() as sel:
        for fd in caps:
            sel.register(fd, selectors.EVENT_READ)
        stdin_fd = proc.stdin.fileno()
        os.set_blocking(stdin_fd, False)
        if unwritten:
            sel.register(stdin_fd, selectors.EVENT_WRITE)
        else:
            proc.stdin.close()
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                raise subprocess.TimeoutExpired(proc.args, TIMEOUT)
            for key, _events in sel.select(left):
                fd = key.fd
                if fd == stdin_fd:
                    try:
                        unwritten = unwritten[os.write(fd, unwritten[:65536]):]
                    except BrokenPipeError:
                        unwritten = unwritten[:0]  # it stopped reading: its answer says why
                    if not unwritten:
                        sel.unregister(fd)
                        proc.stdin.close()
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:
                    sel.unregister(fd)
                    continue
                got[fd] += chunk
                if len(got[fd]) > caps[fd]:
                    raise _Overflow(fd == proc.stderr.fileno())
    return bytes(got[proc.stdout.fileno()]), bytes(got[proc.stderr.fileno()])


def _run_child(text: bytes, chunkname: str) -> tuple[int, bytes, bytes]:
    """The sandbox child's exit status, JSON output and printed output,
    bounded in time and size; the child is gone when this returns."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(_PACKAGE_ROOT) + (os.pathsep + env["PYTHONPATH"]
                                              if env.get("PYTHONPATH") else "")
    proc = subprocess.Popen([sys.executable, "-m", "syncsup.lsyncd._sandbox", chunkname],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd="/", env=env)
    try:
        out, err = _communicate(proc, text, time.monotonic() + TIMEOUT)
        return proc.wait(), out, err
    except subprocess.TimeoutExpired:
        raise LuaBroken(f"{chunkname}: the config did not finish within {TIMEOUT:.0f} s") from None
    except _Overflow as exc:
        what = (f"printed more than {MAX_PRINTED // 2**20} MiB" if exc.args[0] else
                f"built a result larger than {MAX_RESULT // 2**20} MiB of JSON")
        raise LuaBroken(f"{chunkname}: the config {what}, the importer's limit") from None
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def run_config(text: bytes, chunkname: str) -> tuple[Recorded, str]:
    """Evaluate the config; what it recorded and what it printed (its
    ``print`` output). Raises :class:`LuaBroken` with one line."""
    returncode, stdout, stderr = _run_child(text, chunkname)
    printed = stderr.decode("utf-8", "replace")
    if returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        raise LuaBroken(f"{chunkname}: the config used too much CPU time (stopped by the "
                        "importer's sandbox; an endless loop inside a string function?)")
    try:
        doc = json.loads(stdout)
    except (ValueError, RecursionError):
        tail = printed.strip().splitlines()[-1:] or [f"exit status {returncode}"]
        raise LuaBroken(f"{chunkname}: the Lua sandbox failed: {tail[0][:200]}") from None
    if not isinstance(doc, dict) or not doc.get("ok"):
        error = doc.get("error") if isinstance(doc, dict) else None
        raise LuaBroken(str(error or "unknown Lua error")[:1000])
    raw = decode(doc["result"])
    if not isinstance(raw, dict):
        raise LuaBroken(f"{chunkname}: the Lua sandbox returned nothing")
    return _recorded(raw), printed
