"""The agent behind a key that is not confined (``syncsup-target ROOT
agent`` run as the remote command, with no forced command): confined by
its descriptors alone, owners mapped by name, like a plain ``rsync -a``
over ssh.

Why a fresh interpreter: choosing a service (the command line, its help,
the confinement helpers, the site's start-up hooks) imports what a
session never uses, and a session stays open for ``[sync.ssh]
agent_idle`` after its last batch, one for each remote target at work:
at a first start to many targets those sessions are most of the target
host's memory. So :func:`start` replaces ``syncsup-target`` by ``python
-I -S -B -c BOOT``, as the confined agent does (without its kernel layer):
the standard library and the two directories syncsup and msgpack were
imported from, nothing else (about 4 MB less per session, measured on
the bench machine, where the site's hooks import more than most).
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn

__all__ = ["BOOT", "run", "start"]

# Run by ``python -I -S -B -c``; argv: ROOT, the service (``agent``, or
# ``stats``: reading only), then the directories to import from.
# They go after the standard library's: a package installed beside syncsup
# (a backport named like a standard module) cannot stand in for one.
BOOT = (
    "import sys\n"
    "sys.path.extend(sys.argv[3:])\n"
    "from syncsup.target._plain import run\n"
    "sys.exit(run(sys.argv[1], sys.argv[2] == 'stats'))\n"
)


def start(root: str, read_only: bool) -> NoReturn:
    """Replace this process by the agent serving ``root``."""
    from syncsup.target._confined import import_dirs

    sys.stdout.flush()
    sys.stderr.flush()
    argv = [sys.executable, "-I", "-S", "-B", "-c", BOOT, root,
            "stats" if read_only else "agent", *import_dirs()]
    os.execv(sys.executable, argv)


def run(root: str, read_only: bool) -> int:
    """Serve the agent's protocol on stdin and stdout until the end of
    input; returns the exit code."""
    import pwd
    import signal

    from syncsup.target._agent import READ_ONLY, Ids, serve
    from syncsup.target._apply import Applier, Protection

    try:
        home = pwd.getpwuid(os.geteuid()).pw_dir
    except KeyError:
        home = ""
    # empty unless the home is ROOT or inside it
    protection = Protection.for_home(root, home) if home else Protection()
    applier = Applier(os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), protection)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    return serve(applier, {"root": root, "confinement": "descriptors only (no forced "
                           "command)"}, ids=Ids(by_name=True),
                 ops=READ_ONLY if read_only else None)
