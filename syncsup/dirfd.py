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
from collections.abc import Callable, Iterator, Sequence

__all__ = ["DIR_FLAGS", "DirCache", "lstat_below", "open_below", "split_path", "walk_below"]

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def split_path(rel: bytes) -> tuple[list[bytes], bytes]:
    """``a/b/c`` -> (``[a, b]``, ``c``). Raises OSError(EINVAL) for anything
    but plain names: empty, absolute, ``.``, ``..`` or NUL."""
    parts = rel.split(b"/")
    # list membership rather than a generator over the parts: this runs for
    # every path of every batch, on both sides (an absolute or empty path
    # has an empty part)
    if b"\0" in rel or b"" in parts or b"." in parts or b".." in parts:
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


class DirCache:
    """Descriptors of the directories below ``root_fd`` that one batch
    works in, each opened once (component by component, with
    ``O_NOFOLLOW``, and ``guard`` before each step, as :func:`open_below`)
    and kept until :meth:`clear`.

    Why: a batch of small changes spends more on opening the same few
    directories again for every path (two or three ``openat`` and as many
    ``close`` per path, on each side) than on the changes themselves.

    A kept descriptor stays on the directory it opened, wherever that
    directory is moved: the same guarantee as a descriptor opened for one
    operation, held for the batch instead of a few calls. Whoever changes
    the tree through this cache must say so: :meth:`forget` a path that is
    removed, renamed or replaced, and the descriptors of it and everything
    below it are closed (a later use opens the new directory of that
    name). :meth:`trim` between operations keeps it to ``limit``
    descriptors (never in the middle of one: its borrowed descriptors
    would be closed under it)."""

    def __init__(self, root_fd: int, guard: Callable[[int, bytes], None] | None = None,
                 limit: int = 64) -> None:
        self.root_fd = root_fd
        self.guard = guard
        self.limit = limit
        self.fds: dict[tuple[bytes, ...], int] = {}

    def get(self, parts: Sequence[bytes]) -> int:
        """The directory ``parts`` below the root, borrowed: valid until
        :meth:`forget` of it or above it, :meth:`trim` or :meth:`clear`.
        Raises OSError as :func:`open_below` does."""
        key = tuple(parts)
        if not key:
            return self.root_fd
        fd = self.fds.get(key)
        if fd is not None:
            return fd
        # down from the nearest directory open already, one component at a
        # time (iterative: a path may have thousands); past ``limit`` only
        # the directory asked for is kept, those on the way are closed
        n = len(key) - 1
        while n and key[:n] not in self.fds:
            n -= 1
        parent = self.fds[key[:n]] if n else self.root_fd
        owned = False  # ``parent`` is ours to close, not kept
        try:
            for i in range(n, len(key)):
                if self.guard is not None:
                    self.guard(parent, key[i])
                fd = os.open(key[i], DIR_FLAGS, dir_fd=parent)
                if owned:
                    os.close(parent)
                parent, owned = fd, True
                if i + 1 == len(key) or len(self.fds) < self.limit:
                    self.fds[key[:i + 1]] = fd
                    owned = False
        except BaseException:
            if owned:
                os.close(parent)
            raise
        return parent

    def take(self, parts: Sequence[bytes]) -> int:
        """The directory ``parts``, owned by the caller (who closes it)."""
        key = tuple(parts)
        fd = self.get(key)
        return os.dup(fd) if not key else self.fds.pop(key)

    def forget(self, parts: Sequence[bytes]) -> None:
        """``parts`` is being removed, renamed or replaced: close what is
        kept of it and of everything below it."""
        key = tuple(parts)
        n = len(key)
        for k in [k for k in self.fds if k[:n] == key]:
            os.close(self.fds.pop(k))

    def trim(self) -> None:
        """Between operations: start again if ``limit`` are kept (with a
        ``limit`` of 0, every operation looks its directories up afresh)."""
        if len(self.fds) >= self.limit:
            self.clear()

    def clear(self) -> None:
        fds, self.fds = self.fds, {}
        for fd in fds.values():
            os.close(fd)


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
