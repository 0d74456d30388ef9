"""The child process that runs an Lsyncd config in a real Lua 5.3 (lupa).

Lsyncd 2.2 embeds Lua 5.3, so configs are executed, not parsed: loops,
variables, string functions and user layers evaluate exactly as Lsyncd
would evaluate them. The config is untrusted input, so it runs here, in a
process of its own, behind three fences:

* the Lua environment (``prelude.lua``): only harmless globals, no file,
  process or bytecode access;
* Lua-level limits: lupa's ``max_memory`` and an instruction-count hook,
  which turn ``string.rep`` bombs and endless loops into clean errors;
* process limits (CPU seconds, no file writes, address space), because some
  work happens inside C functions that no hook sees (a pathological
  ``string.find`` pattern): the kernel ends those and the parent reports it.

Protocol: the config text on stdin, the chunk name (for error messages) as
argv[1]; one JSON document on stdout: ``{"ok": true, "result": VALUE}`` or
``{"ok": false, "error": "conf.lua:3: message"}``. Lua tables are encoded as
``{"__table__": [[key, value], ...]}``, functions as ``{"__function__":
{"builtin": name}}`` (a default layer's) or ``{"line": n}`` (the config's),
anything else as ``{"__other__": type}``. Print output goes to stderr.

Only this module imports lupa; the daemon and the CLI never do.
"""

from __future__ import annotations

import json
import resource
import sys
from importlib import resources
from typing import Any

MAX_MEMORY = 64 * 1024 * 1024
INSTRUCTION_LIMIT = 200_000_000
CPU_SECONDS = 5
ADDRESS_SPACE = 2 * 1024 * 1024 * 1024
MAX_NODES = 200_000
MAX_DEPTH = 64


class _TooLarge(Exception):
    pass


def _limit_process() -> None:
    """Kernel limits for work no Lua hook can interrupt."""
    resource.setrlimit(resource.RLIMIT_CPU, (CPU_SECONDS, CPU_SECONDS + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard == resource.RLIM_INFINITY or hard > ADDRESS_SPACE:
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


class _Encoder:
    """Lua values to JSON-able Python values, bounded in size and depth,
    cycles cut (a table met again on its own path becomes ``__cycle__``)."""

    def __init__(self, lupa: Any, lua: Any, describe: Any) -> None:
        self.lua_type = lupa.lua_type
        self.describe = describe
        self.ident = lua.execute(
            "local ids, n = setmetatable({}, {__mode = 'k'}), 0\n"
            "return function(t) local i = ids[t]\n"
            "  if not i then n = n + 1; ids[t] = n; i = n end\n"
            "  return i end")
        self.nodes = 0

    def key(self, k: Any) -> Any:
        if isinstance(k, bytes):
            return k.decode("utf-8", "surrogateescape")
        if isinstance(k, bool) or not isinstance(k, (int, float)):
            return f"<{self.lua_type(k) or type(k).__name__} key>"
        if isinstance(k, float):
            return int(k) if k.is_integer() else repr(k)
        return k

    def value(self, v: Any, path: tuple[int, ...] = ()) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES or len(path) > MAX_DEPTH:
            raise _TooLarge
        if v is None or isinstance(v, (bool, int, float)):
            return v
        if isinstance(v, bytes):
            return v.decode("utf-8", "surrogateescape")
        kind = self.lua_type(v)
        if kind == "table":
            ident = self.ident(v)
            if ident in path:
                return {"__cycle__": True}
            inner = (*path, ident)
            return {"__table__": [[self.key(k), self.value(x, inner)] for k, x in v.items()]}
        if kind == "function":
            name, line = self.describe(v)
            if name is not None:
                return {"__function__": {"builtin": name.decode()}}
            return {"__function__": {"line": line}}
        return {"__other__": kind or type(v).__name__}


def _first_line(message: str) -> str:
    return message.strip().splitlines()[0] if message.strip() else "unknown Lua error"


def run(text: bytes, chunkname: str) -> dict[str, Any]:
    """Execute ``text``; the protocol document (see the module docstring)."""
    import lupa.lua53 as lupa  # only here: the sandbox child is its sole user

    lua = lupa.LuaRuntime(max_memory=MAX_MEMORY, register_eval=False, register_builtins=False,
                          unpack_returned_tuples=True, encoding=None)
    prelude = resources.files("syncsup.lsyncd").joinpath("prelude.lua").read_bytes()
    runner = lua.execute(prelude)
    try:
        returned = runner(text, chunkname.encode(), INSTRUCTION_LIMIT)
    except lupa.LuaMemoryError:
        return {"ok": False, "error": f"{chunkname}: memory limit exceeded "
                f"({MAX_MEMORY // 2**20} MiB): the config builds something huge"}
    except lupa.LuaError as exc:
        return {"ok": False, "error": _first_line(str(exc))}
    finally:
        lua.globals().debug.sethook()
    result, error, describe = (*returned, None, None)[:3] if isinstance(returned, tuple) \
        else (returned, None, None)
    if result is None:
        message = error.decode("utf-8", "replace") if isinstance(error, bytes) else str(error)
        if message.startswith("not enough memory"):
            message = (f"{chunkname}: memory limit exceeded ({MAX_MEMORY // 2**20} MiB): "
                       "the config builds something huge")
        return {"ok": False, "error": _first_line(message)}
    try:
        return {"ok": True, "result": _Encoder(lupa, lua, describe).value(result)}
    except _TooLarge:
        return {"ok": False, "error": f"{chunkname}: the config's tables are too large or too "
                f"deep to import (over {MAX_NODES} values or {MAX_DEPTH} levels)"}


def main(argv: list[str]) -> int:
    _limit_process()
    chunkname = argv[1] if len(argv) > 1 else "lsyncd.conf.lua"
    text = sys.stdin.buffer.read()
    try:
        doc = run(text, chunkname)
    except MemoryError:
        doc = {"ok": False, "error": f"{chunkname}: memory limit exceeded"}
    sys.stdout.write(json.dumps(doc))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
