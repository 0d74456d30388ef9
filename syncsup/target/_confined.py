"""The confined agent: what runs behind the forced command once
``syncsup-target`` has chosen the agent.

It is a fresh interpreter, started by :func:`start` as
``python -I -S -B -c BOOT``: isolated (no environment variable, working
directory or user site decides what it imports), no ``site`` (nothing but
the standard library and the two directories named on its command line,
syncsup's and msgpack's, computed from the running code, never from the
request), and no bytecode written anywhere.

Before the first request it:

1. makes any exception end the process with one fixed line (``BOOT`` sets
   ``sys.excepthook`` and ``sys.unraisablehook`` first of all): CPython's
   traceback printer opens each frame's source file by name, and a crash
   must never read, let alone import, anything;
2. imports everything it will ever need;
3. opens ROOT once, as a directory descriptor; every later path is a plain
   name below that descriptor (the applier, with ``O_NOFOLLOW`` at each
   step). There is no chroot: inside a chroot into ROOT the interpreter's
   own paths would resolve to files the key can write;
4. applies the kernel layer (:mod:`._kernel`): Landlock, capabilities,
   no_new_privs, seccomp. It holds no descriptor outside ROOT from then on.

Each of the applier, the schema of requests and this kernel layer is meant
to hold alone; the tests build the agent with one of them at a time.
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn

__all__ = ["BOOT", "CRASH_LINE", "NOT_SERVED", "start"]

CRASH_LINE = b"syncsup-target: the agent stopped on an internal error\n"
CRASH_EXIT = 70

# Run by ``python -I -S -B -c``; argv: ROOT, allowed-missing mechanisms
# (comma-separated), the service (``agent``, or ``stats``: reading only),
# then the directories to import syncsup and msgpack from.
# They go after the standard library's: a package installed beside syncsup
# (a backport named like a standard module) cannot stand in for one.
BOOT = (
    "import os, sys\n"
    "def _crash(*_a):\n"
    f"    os.write(2, {CRASH_LINE!r})\n"
    f"    os._exit({CRASH_EXIT})\n"
    "sys.excepthook = _crash\n"
    "sys.unraisablehook = _crash\n"
    "sys.path.extend(sys.argv[4:])\n"
    "from syncsup.target._confined import run\n"
    "os._exit(run(sys.argv[1], frozenset(filter(None, sys.argv[2].split(','))),\n"
    "             sys.argv[3] == 'stats'))\n"
)


def _package_parent(module_file: str | None, depth: int) -> str:
    assert module_file is not None
    path = os.path.realpath(module_file)
    for _ in range(depth):
        path = os.path.dirname(path)
    return path


def import_dirs() -> list[str]:
    """Where syncsup and msgpack are imported from, by this very process."""
    import msgpack

    import syncsup

    dirs = [_package_parent(syncsup.__file__, 2), _package_parent(msgpack.__file__, 2)]
    return list(dict.fromkeys(dirs))


def start(root: str, allow_without: frozenset[str], read_only: bool = False) -> NoReturn:
    """Replace this process by the confined agent serving ``root`` (never
    returns); ``read_only``: a session that answers only ``stats``."""
    sys.stdout.flush()
    sys.stderr.flush()
    argv = [sys.executable, "-I", "-S", "-B", "-c", BOOT, root, ",".join(sorted(allow_without)),
            "stats" if read_only else "agent", *import_dirs()]
    os.execv(sys.executable, argv)


def _readable_dirs() -> list[str]:
    """The interpreter's own files: what it may read, never write or run."""
    import sysconfig

    paths = sysconfig.get_paths()
    dirs = [paths["stdlib"], paths["platstdlib"], *(p for p in sys.path if os.path.isabs(p))]
    return list(dict.fromkeys(os.path.realpath(d) for d in dirs))


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


NOT_SERVED = "syncsup-target: agent not served"


def _refuse(text: str) -> int:
    """The agent is not available here (rsync transfers still are): said on
    stderr, where the source's syncer logs it and falls back to rsync, and
    in syslog. Not "refused": that is for requests the key may not make."""
    import syslog

    msg = f"{NOT_SERVED}: {text}"
    os.write(2, (msg + "\n").encode(errors="replace"))
    try:
        syslog.syslog(syslog.LOG_WARNING, msg)
    except OSError:
        pass  # no syslog here; stderr reached the client
    return 1


def run(root: str, allow_without: frozenset[str], read_only: bool = False) -> int:
    """The agent's whole life: prepare, confine, serve. Returns its exit
    code (see ``syncsup-target --help``). ``read_only``: only ``stats`` is
    answered (a first start's proof needs nothing else)."""
    import pwd
    import signal

    # Importing the agent imports everything a session uses (msgpack, the
    # applier, the protocol): nothing is imported after the restriction.
    from syncsup.target import _agent, _apply, _kernel

    readable = _readable_dirs()
    for path in readable:
        if _inside(path, root):
            return _refuse(f"ROOT {root} contains the interpreter's own files ({path}): a key "
                           "that can write them runs code on this host")
    home = ""
    try:
        home = pwd.getpwuid(os.geteuid()).pw_dir
    except KeyError:
        pass
    protection = _apply.Protection.for_home(root, home) if home else _apply.Protection()
    if protection.home is not None:
        # Landlock grants rights on a tree, never "all of ROOT but this":
        # the kernel could not keep a failed agent from the home's start-up
        # files (.ssh/authorized_keys). rsync's daemon, which excludes them
        # and runs no code of the client's, serves such a target alone.
        return _refuse(f"the account's home {home} is inside ROOT {root}: the agent is not "
                       "served there (the kernel cannot keep it from the home's start-up "
                       "files); rsync transfers still are. Give the account a home outside "
                       "ROOT to use the agent")
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    os.chdir("/")
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a hang-up ends the session at end of input
    try:
        how = _kernel.restrict(root_fd, readable, allow_without, read_only=read_only)
    except OSError as exc:
        return _refuse(f"cannot confine the agent to {root}: {exc.strerror}")
    # The same mode rules as the rsync module beside it (its incoming chmod).
    applier = _apply.Applier(root_fd, protection, None, _apply.Clear(files=0o6000))
    return _agent.serve(applier, {"root": root, "confinement": how.describe()},
                        ids=_agent.Ids(by_name=False),
                        ops=_agent.READ_ONLY if read_only else None)
