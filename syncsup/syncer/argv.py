"""Building rsync command lines, pure.

File names never appear on a command line: they go NUL-separated into a
``--files-from`` list, so no name is ever parsed as an option or seen by a
shell (local or remote). The only strings on the command line come from the
config file.

Two kinds of transfer (design, section 4):

* ``tree``: subtrees rescanned whole, recursively, with ``--delete``
  (startup, overflow, new directories). No ``-I``: rsync's quick check is
  right for a full comparison and makes it cheap.
* ``paths``: entries named by events, one by one (``-d``, no recursion).
  ``-I`` because the quick check would skip a same-size rewrite made within
  one timestamp tick; ``--delete-missing-args`` so that a path gone from
  the source is deleted on the target; ``--force`` so that this works for
  non-empty directories too.
"""

from __future__ import annotations

import shlex

from syncsup.config import Sync, Target

__all__ = ["SSH_DEFAULTS", "rsync_argv", "ssh_command"]

# Fail fast on a dead host and notice a dead connection, instead of hanging.
SSH_DEFAULTS = ("BatchMode=yes", "ConnectTimeout=10", "ServerAliveInterval=15",
                "ServerAliveCountMax=3")


def ssh_command(sync: Sync) -> str:
    """The ``-e`` argument for rsync. rsync splits it itself (spaces, with
    single or double quotes), so every part is quoted."""
    parts = ["ssh"]
    if sync.ssh.port is not None:
        parts += ["-p", str(sync.ssh.port)]
    if sync.ssh.identity_file is not None:
        parts += ["-i", str(sync.ssh.identity_file), "-o", "IdentitiesOnly=yes"]
    user_keys = {o.split("=", 1)[0].strip().lower() for o in sync.ssh.options}
    for opt in SSH_DEFAULTS:
        if opt.split("=", 1)[0].lower() not in user_keys:
            parts += ["-o", opt]
    for opt in sync.ssh.options:
        parts += ["-o", opt]
    return " ".join(shlex.quote(p) for p in parts)


def rsync_argv(sync: Sync, target: Target, kind: str, list_file: str, startup: bool,
               rsync: str = "rsync") -> list[str]:
    """argv for one transfer of ``kind`` (``tree`` or ``paths``) of ``sync``
    to ``target``, reading NUL-separated relative names from ``list_file``."""
    if kind not in ("tree", "paths"):
        raise ValueError(f"unknown transfer kind {kind!r}")
    deletes = sync.delete is True or sync.delete == ("startup" if startup else "running")
    argv = [rsync, "-a", "--from0", f"--files-from={list_file}", "--force"]
    if kind == "tree":
        argv += ["-r"]
        if deletes:
            argv += ["--delete"]
    else:
        argv += ["-d", "-I"]
    argv += ["--delete-missing-args" if deletes else "--ignore-missing-args"]
    argv += [f"--exclude={pattern}" for pattern in sync.exclude]
    if target.is_remote:
        argv += ["-e", ssh_command(sync)]
    argv += [str(sync.source).rstrip("/") + "/", target.rsync_dest()]
    return argv
