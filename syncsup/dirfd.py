"""Reading a tree without ever following a symlink: paths relative to an
open directory, resolved one component at a time with ``O_NOFOLLOW``.

Whoever can write to a tree can replace any directory in it by a symlink at
any moment. A check on a path string followed by a use of the same string
loses that race; a descriptor does not: each component is opened relative
to the descriptor of its parent, refusing symlinks, and the final operation
works on a name inside a directory that is already open. Used on the source
side (command mode's walks, the agent's reads) and, through
:mod:`syncsup.target`, on targets.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator

__all__ = ["DIR_FLAGS", "lstat_below", "open_below", "split_path", "walk_below"]

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def split_path(rel: bytes) -> tuple[list[bytes], bytes]:
    """``a/b/c`` -> (``[a, b]``, ``c``). Raises OSError(EINVAL) for anything
    but plain names: empty, absolute, ``.``, ``..`` or NUL."""
    parts = rel.split(b"/")
    if not rel or rel.startswith(b"/") or any(p in (b"", b".", b"..") or b"\0" in p
                                              for p in parts):
        raise OSError(errno.EINVAL, f"not a plain relative path: {rel!r}")
    return parts[:-1], parts[-1]


def open_below(root_fd: int, parts: list[bytes],
               guard: Callable[[int, bytes], None] | None = None) -> int:
    """A new descriptor of the directory ``parts`` below ``root_fd``. Raises
    OSError (ELOOP or ENOTDIR for a symlink on the way, ENOENT if gone).
    ``guard(parent_fd, name)``, if given, is called before each step and may
    raise to refuse walking into ``name``."""
    fd = os.dup(root_fd)
    try:
        for part in parts:
            if guard is not None:
                guard(fd, part)
            nxt = os.open(part, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nxt
    except OSError:
        os.close(fd)
        raise
    return fd


def lstat_below(root_fd: int, rel: bytes) -> os.stat_result | None:
    """``lstat`` of ``rel`` below ``root_fd``, or None if it is not in the
    tree: gone, or reached only through a symlink or a non-directory."""
    if rel == b"":
        return os.fstat(root_fd)
    parts, name = split_path(rel)
    try:
        fd = open_below(root_fd, parts)
    except OSError:
        return None
    try:
        return os.lstat(name, dir_fd=fd)
    except OSError:
        return None
    finally:
        os.close(fd)


def walk_below(root_fd: int, top: bytes) -> Iterator[bytes]:
    """``top`` and every entry below it (parents before their children,
    names sorted), relative to ``root_fd``; nothing behind a symlink. Yields
    nothing if ``top`` is not in the tree."""
    st = lstat_below(root_fd, top)
    if st is None:
        return
    yield top
    if not stat.S_ISDIR(st.st_mode):
        return
    try:
        fd = open_below(root_fd, top.split(b"/")) if top else os.dup(root_fd)
    except OSError:
        return
    stack = [(top, fd)]
    try:
        while stack:
            rel, dfd = stack.pop()
            subdirs: list[tuple[bytes, int]] = []
            try:
                with os.scandir(dfd) as it:
                    entries = sorted(it, key=lambda e: e.name)
                for entry in entries:
                    name = os.fsencode(entry.name)
                    child = rel + b"/" + name if rel else name
                    yield child
                    if entry.is_dir(follow_symlinks=False):
                        try:
                            subdirs.append((child, os.open(name, DIR_FLAGS, dir_fd=dfd)))
                        except OSError:
                            continue
            except OSError:
                pass
            finally:
                os.close(dfd)
                # whatever happened, the outer finally closes what was opened
                stack.extend(reversed(subdirs))
    finally:
        for _rel, dfd in stack:
            os.close(dfd)
