"""Replaying renames on a target (modes ``direct`` and ``rsyncssh``).

A replayed rename is an optimisation, never the source of truth: both ends
of every rename are also dirty paths, so whatever a rename gets wrong (the
source was not on the target yet, the destination is a non-empty directory)
the transfer that follows repairs. Hence failures here are logged at debug
level and never fail a batch; only "could not reach the target at all" does.
"""

from __future__ import annotations

import logging
import os
import shlex

__all__ = ["local_renames", "remote_rename_command"]

log = logging.getLogger("syncsup.syncer")


def _inside(root: bytes, path: bytes) -> bool:
    """Is ``path``'s parent directory really inside ``root`` (no symlink in
    the way)? Renaming through a symlinked directory on the target could
    write outside the mirror."""
    parent = os.path.realpath(os.path.dirname(path))
    return parent == root or parent.startswith(root + b"/")


def local_renames(target_root: str, moves: list[list[bytes]]) -> int:
    """Apply ``moves`` (relative ``[from, to]`` pairs) under ``target_root``
    with rename(2), which keeps inodes and costs no data. Returns how many
    were applied."""
    root = os.path.realpath(os.fsencode(target_root))
    done = 0
    for src_rel, dst_rel in moves:
        src, dst = os.path.join(root, src_rel), os.path.join(root, dst_rel)
        if not (_inside(root, src) and _inside(root, dst)):
            log.warning("not replaying rename %r -> %r: a symlink on the target leads outside",
                        src_rel, dst_rel)
            continue
        try:
            os.rename(src, dst)
            done += 1
        except OSError as exc:
            log.debug("rename %r -> %r not replayed (%s); the transfer repairs it",
                      src_rel, dst_rel, exc.strerror)
    return done


def remote_rename_command(target_path: str) -> str:
    """The remote command that renames NUL-separated ``from\\0to\\0`` pairs read
    from stdin, relative to ``target_path``.

    File names travel on stdin, never on a command line, so the remote shell
    never sees them; ``--`` keeps a name starting with ``-`` from being read
    as an option; ``-T`` makes ``mv`` rename onto the destination instead of
    moving into it when it is a directory.
    """
    return f"cd -- {shlex.quote(target_path)} && xargs -0 -r -n 2 mv -f -T --"
