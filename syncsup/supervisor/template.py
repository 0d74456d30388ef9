"""The template: a preloaded, single-threaded process that forks the
supervisor's children.

Why: a fresh interpreter per child imports the same modules again into
private memory (about 15 MB each); a child forked from a process that has
already imported them shares those pages with its siblings until one writes
to them (``gc.freeze()`` keeps the garbage collector from touching them).
Why not fork from the supervisor itself: it may run a metrics thread, and
forking a threaded process is unsafe. The template never starts a thread
and never creates a ZeroMQ context (whose I/O threads would not survive a
fork): each child creates its own after the fork.

How a child comes to be the supervisor's: the template forks an
intermediate process, which forks the child and exits at once. The
supervisor is a child subreaper (``PR_SET_CHILD_SUBREAPER``), so the
orphaned child is re-parented to it and the supervisor reaps it, kills its
group and restarts it like any child. The child starts its own session
(process group), waits until its parent is the supervisor, then asks the
kernel to kill it when the supervisor dies (``PR_SET_PDEATHSIG``).

Protocol on a SOCK_SEQPACKET socket pair: the supervisor sends ``spawn
ROLE``; the template answers ``pid N`` or ``error TEXT``; the template exits
when the supervisor closes its end, which it does once the children it
needed are started: a template at rest would only cost memory.

At start the supervisor forks the template from itself, before it has any
thread or ZeroMQ context, so that the supervisor, the template and the
children all share one image. A later restart of a child needs a new
template, and by then the supervisor may run threads: that template is a
fresh interpreter, ``python -P -m syncsup.supervisor.template --fd N
--supervisor PID --run RUN_ID CONFIG`` (``-P`` keeps the working directory
off the module path, so nothing in the directory the daemon was started
from can be imported).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import importlib

# What the roles use: imported once here, shared by all children (a module
# imported after the fork costs each child that imports it private memory;
# inotify_simple and subprocess alone cost ~3 MB each).
import logging  # noqa: F401
import os
import signal
import socket
import sqlite3  # noqa: F401
import subprocess  # noqa: F401
import sys
import time
import traceback

import inotify_simple
import msgpack  # noqa: F401
import setproctitle
import zmq  # noqa: F401

from syncsup import config, logs, processes, proto, sockets, status  # noqa: F401

__all__ = ["ROLES", "main", "preload", "serve"]

ROLES = ("collator", "syncer", "watcher")


def _set_title(role: str, config_path: str) -> None:
    """Name the child after its role: ``ps``, ``top`` and /proc/PID/cmdline
    show ``syncsup.ROLE CONFIG`` instead of the template's command line, and
    ``ps -o comm`` (15 bytes) ``syncsup-ROLE``. setproctitle does it the way
    each platform allows (on Linux it rewrites the argument area and sets
    the thread name), where writing our own memory would need more than a
    cosmetic deserves."""
    setproctitle.setproctitle(f"syncsup.{role} {config_path}")
    setproctitle.setthreadtitle(f"syncsup-{role}")


def _adopt(supervisor: int) -> None:
    """In the new child: wait to be re-parented to the supervisor, then die
    with it. Exits if the supervisor is gone."""
    deadline = time.monotonic() + 5.0
    while os.getppid() != supervisor:
        if time.monotonic() > deadline:
            os._exit(1)
        time.sleep(0.0005)
    processes.set_pdeathsig(signal.SIGKILL)
    if os.getppid() != supervisor:  # it died between the check and the prctl
        os._exit(1)


def _run_child(role: str, config_path: str, run_id: str, supervisor: int) -> int:
    _adopt(supervisor)
    _set_title(role, config_path)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_DFL)
    gc.enable()
    module = importlib.import_module(f"syncsup.{role}._main")
    code: int = module.main(config_path, run_id)
    return code


def _spawn(role: str, config_path: str, run_id: str, supervisor: int,
           chan: socket.socket) -> str:
    """Fork ``role`` via an intermediate process; return the reply."""
    r, w = os.pipe()
    middle = os.fork()
    if middle == 0:
        os.close(r)
        try:
            child = os.fork()
        except OSError:
            os._exit(1)
        if child == 0:
            os.close(w)
            chan.close()
            os.setsid()
            code = 1
            try:
                code = _run_child(role, config_path, run_id, supervisor)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except config.ConfigError as exc:
                # Found after the config was loaded (a rule file read at the
                # role's start): one line, and the exit code that says
                # "do not restart", as for a config the child could not load.
                print(f"syncsup: config error: {exc}", file=sys.stderr)
                code = config.EX_CONFIG
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)
        os.write(w, str(child).encode())
        os._exit(0)
    os.close(w)
    data = os.read(r, 64)
    os.close(r)
    os.waitpid(middle, 0)
    return f"pid {int(data)}" if data.isdigit() else "error fork failed"


def _hand_libc_to_inotify() -> None:
    """inotify_simple finds libc with ``ctypes.util.find_library`` at its
    first call, which runs ``ldconfig -p`` in a subprocess: in the watcher,
    at every start, before its first watch (on the way to the first sync).
    This interpreter has libc loaded already, so it is handed over once
    here, for every watcher forked from the template. Left alone where the
    library resolved it itself or no longer keeps it there."""
    if getattr(inotify_simple, "_libc", False) is None:
        inotify_simple._libc = ctypes.CDLL(None, use_errno=True)


def preload() -> None:
    """Import what the children run, so that they share it."""
    for role in ROLES:
        importlib.import_module(f"syncsup.{role}._main")
    _hand_libc_to_inotify()
    proto.warm_up()  # the schema of every message, resolved once for all children
    gc.collect()
    gc.freeze()  # inherited objects stay in shared pages: the GC never writes to them


def serve(chan: socket.socket, config_path: str, run_id: str, supervisor: int) -> int:
    """Answer spawn requests until the supervisor closes its end."""
    setproctitle.setthreadtitle("syncsup-template")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when we stop
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    while True:
        try:
            request = chan.recv(256).decode(errors="replace").split()
        except OSError:
            return 0
        if not request:
            return 0  # the supervisor closed its end
        if len(request) == 2 and request[0] == "spawn" and request[1] in ROLES:
            reply = _spawn(request[1], config_path, run_id, supervisor, chan)
        else:
            reply = f"error bad request {' '.join(request)[:80]}"
        chan.send(reply.encode())


def main(argv: list[str] | None = None) -> int:
    """A template started as a fresh interpreter (when the supervisor can no
    longer fork one from itself)."""
    parser = argparse.ArgumentParser(prog="syncsup-template")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--supervisor", type=int, required=True)
    parser.add_argument("--run", required=True)
    parser.add_argument("config")
    args = parser.parse_args(argv)
    processes.set_pdeathsig(signal.SIGKILL)
    if os.getppid() != args.supervisor:
        return 1
    preload()
    return serve(socket.socket(fileno=args.fd), args.config, args.run, args.supervisor)


if __name__ == "__main__":
    sys.exit(main())
