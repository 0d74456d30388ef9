"""A deliberately naive agent, to show that the kernel layer holds alone.

It joins paths as strings (``ROOT + "/" + path``), follows every symlink,
checks nothing, and runs any Python it is sent (``op: python``): the state
of an agent whose code layer has failed completely and whose process runs
the attacker's code. Only :func:`syncsup.target._kernel.restrict` stands
between it and the host; ``--no-kernel`` leaves even that out, so that a
test can show its attacks really do escape without it. ``--read-only``
applies the kernel layer of a session that only reads (``stats``);
``--no-landlock`` applies it as on a kernel without Landlock (seccomp and
capabilities alone).

Run as ``python -I -S -B naive_agent.py ROOT [--no-kernel] [--read-only]
[--no-landlock] DIR...`` (DIRs are added to the module path: syncsup's and
msgpack's); it speaks the agent's frames on stdin and stdout.
"""

import os
import sys

ROOT = sys.argv[1]
KERNEL = "--no-kernel" not in sys.argv[2:]
READ_ONLY = "--read-only" in sys.argv[2:]
NO_LANDLOCK = "--no-landlock" in sys.argv[2:]
sys.path[:0] = [a for a in sys.argv[2:] if not a.startswith("--")]

import ctypes  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402, F401  (an attacker's imports, made before the restriction)
import subprocess  # noqa: E402, F401
import sysconfig  # noqa: E402

from syncsup.target import _kernel  # noqa: E402
from syncsup.target._protocol import encode_frame, read_frame  # noqa: E402

root_fd = os.open(ROOT, os.O_RDONLY | os.O_DIRECTORY)
how = "none"
if KERNEL:
    paths = sysconfig.get_paths()
    if NO_LANDLOCK:
        _kernel.landlock_abi = lambda: 0  # as on a kernel without it
    how = _kernel.restrict(root_fd, [paths["stdlib"], paths["platstdlib"]],
                           frozenset({"landlock"} if NO_LANDLOCK else ()),
                           read_only=READ_ONLY).describe()


def at(rel: bytes) -> bytes:
    return os.path.join(os.fsencode(ROOT), rel)  # an absolute rel wins: naive on purpose


def handle(req: dict) -> dict:
    op = req.get("op")
    if op == "hello":
        return {"ok": True, "confinement": how}
    if op == "python":
        scope = {"os": os, "ctypes": ctypes, "ROOT": ROOT, "root_fd": root_fd, "result": None}
        exec(req["code"], scope)
        return {"ok": True, "result": repr(scope["result"])[:4000]}
    p = at(req.get("path", b""))
    if op == "put":
        with open(p, "wb") as fh:
            fh.write(req["data"])
        os.chmod(p, req.get("mode", 0o644))
    elif op == "mkdir":
        os.makedirs(p, exist_ok=True)
    elif op == "symlink":
        os.symlink(req["target"], p)
    elif op == "delete":
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p)
        else:
            os.unlink(p)
    elif op == "rename":
        os.rename(p, at(req["dst"]))
    elif op == "time":
        os.utime(p, ns=(req["mtime"], req["mtime"]))
    elif op == "chown":
        os.chown(p, req["uid"], req["gid"])
    elif op == "chmod":
        os.chmod(p, req["mode"])
    elif op == "read":
        with open(p, "rb") as fh:
            return {"ok": True, "data": fh.read()}
    return {"ok": True}


while (request := read_frame(sys.stdin.buffer)) is not None:
    try:
        answer = handle(request)
    except BaseException as exc:  # the naive agent survives anything, to go on attacking
        answer = {"ok": False, "error": repr(exc)[:4000]}
    sys.stdout.buffer.write(encode_frame(answer))
    sys.stdout.buffer.flush()
