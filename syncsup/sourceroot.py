"""The one rule for a sync's source root, shared by the watcher (what it
watches) and the syncer (what rsync reads).

The root is the directory at the configured path, taken as it is: a
symlink there is never followed, at start (a config error) or while running
(reported and waited out). Following it would make the mirror a copy of
whatever tree the link points to, with no word about it, and rsync (which
reads ``SOURCE/``) would follow it where inotify (``IN_DONT_FOLLOW``) does
not: the targets would change while nothing is watched.

A root that is missing, moved away, unmounted or replaced is waited for; when
a directory is there again it is treated exactly like a fresh start (watched,
rescanned), and the watcher logs it, saying when it is another directory or
on another filesystem than before.
"""

from __future__ import annotations

import os
import stat

__all__ = ["MISSING", "NOT_DIRECTORY", "OK", "ROOT_STATES", "SYMLINK", "inspect", "root_problem"]

OK = "ok"
MISSING = "missing"              # nothing there (deleted, moved away, not mounted yet)
SYMLINK = "symlink"              # a symlink: never followed
NOT_DIRECTORY = "not_directory"  # a file, a device... or it cannot be looked at
ROOT_STATES = (OK, MISSING, SYMLINK, NOT_DIRECTORY)


def inspect(source: str | os.PathLike[str]) -> tuple[str, os.stat_result | None]:
    """(state, the root's lstat when it is a directory)."""
    try:
        st = os.lstat(source)
    except FileNotFoundError:
        return MISSING, None
    except OSError:
        return NOT_DIRECTORY, None
    if stat.S_ISLNK(st.st_mode):
        return SYMLINK, None
    if not stat.S_ISDIR(st.st_mode):
        return NOT_DIRECTORY, None
    return OK, st


def root_problem(source: str | os.PathLike[str]) -> str | None:
    """Why nothing may be read from ``source`` now, or None."""
    state, _ = inspect(source)
    if state == OK:
        return None
    if state == SYMLINK:
        return (f"the source root {os.fspath(source)} is a symlink: it is never followed; "
                "waiting for a directory there")
    if state == MISSING:
        return f"the source root {os.fspath(source)} is missing; waiting for it"
    return f"the source root {os.fspath(source)} is not a directory; waiting for one"
