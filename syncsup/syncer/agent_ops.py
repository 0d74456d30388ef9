"""What the agent is asked to do for a batch's paths, read from the source.

The source is read the way the agent writes the target: through directory
descriptors opened with ``O_NOFOLLOW`` (:mod:`syncsup.dirfd`), so a
directory swapped for a symlink is an entry of its own, never a way out of
the source. Each path becomes one operation, in order (parents before their
entries): a regular file up to ``max_size`` is sent whole (``put``), a
directory is made (``mkdir``), a symlink made exactly (``symlink``; not to
a confined target, whose agent cannot set a link's time), a path gone from
the source deleted (``delete``, when the sync deletes; not a directory
listed only for its time). Anything else (a
larger file, a device, a fifo, a socket, a file that grew while it was
read) is left to rsync, which does it exactly. Directory times come
last (writing their entries changed them), then ``commit``.

Owners travel as numbers and names: the agent maps names when it can, as
``rsync -a`` does.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import stat
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from syncsup.dirfd import DirCache, split_path
from syncsup.syncer.readonce import ContentCache, identity

__all__ = ["STEP_BYTES", "Prepared", "prepare"]

# File content one agent step may carry: the step is read into memory whole
# (and framed once more for a remote agent), so a batch of a thousand
# 1 MiB files must not become a gigabyte in the syncer. What does not fit
# goes to rsync in the same batch, which streams it.
STEP_BYTES = 16 * 1024 * 1024


@dataclass
class Prepared:
    """The agent's operations for a batch, and the paths left to rsync."""

    ops: list[dict[str, Any]] = field(default_factory=list)
    fallback: list[bytes] = field(default_factory=list)
    size: int = 0  # bytes of file content in ``ops``


_names: dict[tuple[str, int], str] = {}


def _name(kind: str, number: int) -> str:
    key = (kind, number)
    if key not in _names:
        try:
            _names[key] = (pwd.getpwuid(number).pw_name if kind == "user"
                           else grp.getgrgid(number).gr_name)
        except KeyError:
            _names[key] = ""
    return _names[key]


def _attrs(st: os.stat_result) -> dict[str, Any]:
    return {"mode": stat.S_IMODE(st.st_mode), "mtime": st.st_mtime_ns, "uid": st.st_uid,
            "gid": st.st_gid, "user": _name("user", st.st_uid),
            "group": _name("group", st.st_gid)}


def _read(dfd: int, name: bytes, max_size: int,
          cache: ContentCache | None = None) -> tuple[bytes, os.stat_result] | None:
    """The content of regular file ``name`` and its status as read, or None
    if it is no longer a regular file up to ``max_size``. With ``cache``,
    content another target's step read from this very version of the file
    is taken from there, and what is read here is offered to it."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                     dir_fd=dfd)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > max_size:
            return None
        if cache is not None:
            kept = cache.get(st)
            if kept is not None:
                return kept, st
        began = cache.clock() if cache is not None else 0.0
        chunks, total = [], 0
        # one byte more than its size, so that one read finds the end: a
        # buffer of max_size for a small file cost a map, a remap and an
        # unmap of a megabyte, and a second read for the end
        want = st.st_size + 1
        while True:
            chunk = os.read(fd, min(want, max_size + 1) - total)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > max_size:
                return None  # it grew while we read: rsync takes it
            if total == want:
                want = total + (1 << 16)  # more than its size: it grew, read on
            elif total == st.st_size:
                break  # all it held: the size is checked again below
        after = os.fstat(fd)
        if after.st_size != total:
            return None  # changed while we read: rsync takes it, an event follows anyway
        data = b"".join(chunks)
        if cache is not None and identity(after) == identity(st):
            cache.put(after, data, began)
        return data, after
    finally:
        os.close(fd)


def prepare(root_fd: int, paths: Iterable[bytes], *, max_size: int, deletes: bool,
            excluded: Callable[[bytes, bool], bool], keep_trees: bool = False,
            max_bytes: int = STEP_BYTES, links: bool = True,
            cache: ContentCache | None = None,
            times: Collection[bytes] = frozenset()) -> Prepared:
    """Operations for ``paths`` (relative to the source open as ``root_fd``),
    with at most ``max_bytes`` of file content (the rest goes to rsync).
    ``keep_trees`` (the sync has excludes): no operation may remove a
    non-empty directory on the target, which may hold excluded files that
    rsync would keep; the agent refuses such a removal and the path goes to
    rsync. ``links`` false: symlinks go to rsync too (a confined agent
    cannot set a link's time or owner: it may change metadata only through
    descriptors, and a symlink has none to open). ``cache``: file content
    shared with the other targets' steps (:mod:`syncsup.syncer.readonce`).
    ``times``: paths that are there only for their directory's time (the
    parents of the batch's entries): one still a directory in the source
    gets a ``time`` operation and no ``mkdir``, which would look at and set
    again a mode, owner and time that nothing changed (two thirds of an
    agent step's operations under steady churn were such directories)."""
    out = Prepared()
    dirs = DirCache(root_fd)  # each source directory opened once for the batch, not per path
    try:
        _prepare(out, dirs, paths, max_size=max_size, deletes=deletes, excluded=excluded,
                 keep_trees=keep_trees, max_bytes=max_bytes, links=links, cache=cache,
                 times=times)
    finally:
        dirs.clear()
    if out.ops:
        out.ops.append({"op": "commit"})
    return out


def _prepare(out: Prepared, dirs: DirCache, paths: Iterable[bytes], *, max_size: int,
             deletes: bool, excluded: Callable[[bytes, bool], bool], keep_trees: bool,
             max_bytes: int, links: bool, cache: ContentCache | None,
             times: Collection[bytes]) -> None:
    tree = {"tree": False} if keep_trees else {}
    dirs_done: set[bytes] = set()
    parents: set[bytes] = set()
    below = _Below(excluded)
    for path in sorted(paths):
        if path == b"":
            if b"" in times:
                parents.add(b"")
            else:
                # the root changed itself (its mode or owner): no operation
                # sets those on the target's root; rsync's times step sends
                # it whole, its time too
                out.fallback.append(b"")
            continue
        if below(path):
            continue
        parts, name = split_path(path)
        parents.add(b"/".join(parts))
        dirs.trim()
        try:
            dfd = dirs.get(parts)
        except OSError as exc:
            if path in times and exc.errno not in (errno.EACCES, errno.EPERM):
                continue  # its parent is gone or replaced: an event of its own
            out.fallback.append(path)  # the parent changed under us: rsync decides
            continue
        try:
            st = os.lstat(name, dir_fd=dfd)
        except OSError as exc:
            if not isinstance(exc, FileNotFoundError):
                # not ours to look at (a directory readable but not
                # searchable): rsync's turn, the rest of the step goes on
                out.fallback.append(path)
                continue
            # A name there only for its directory's time is no change of its
            # own: gone, it is left alone as rsync's times step leaves it
            # (its deletion is an event, with its batch). Deleted here, a
            # source root emptied (unmounted) between a burst's rsync run and
            # this step would take every listed directory with it.
            if deletes and path not in times and not excluded(path, False):
                out.ops.append({"op": "delete", "path": path, **tree})
            continue
        if excluded(path, stat.S_ISDIR(st.st_mode)):
            continue  # rsync neither sends nor deletes it
        if stat.S_ISDIR(st.st_mode) and path in times:
            dirs_done.add(path)  # its time, below; a missing one fails there, for rsync
            continue
        if stat.S_ISREG(st.st_mode):
            room = min(max_size, max_bytes - out.size)
            got = _read(dfd, name, room, cache) if st.st_size <= room else None
            if got is None:
                out.fallback.append(path)
                continue
            data, st = got
            out.ops.append({"op": "put", "path": path, "data": data, **_attrs(st), **tree})
            out.size += len(data)
        elif stat.S_ISDIR(st.st_mode):
            out.ops.append({"op": "mkdir", "path": path, **_attrs(st)})
            dirs_done.add(path)
        elif stat.S_ISLNK(st.st_mode) and not links:
            out.fallback.append(path)
        elif stat.S_ISLNK(st.st_mode):
            target = os.readlink(name, dir_fd=dfd)
            out.ops.append({"op": "symlink", "path": path, "target": os.fsencode(target),
                            **_attrs(st), **tree})
        else:
            out.fallback.append(path)  # devices, fifos, sockets: rsync's job
    for rel in sorted(dirs_done | parents, reverse=True):  # children's times first
        if rel and (below(rel) or excluded(rel, True)):
            continue
        dirs.trim()
        try:
            dst = os.fstat(dirs.get(rel.split(b"/") if rel else []))
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM):
                # not ours to open (a drop-box directory, mode 0311, for a
                # syncer that is not root): rsync's times step reads its
                # time by name
                out.fallback.append(rel)
            continue  # gone, or no longer a directory: an event of its own
        out.ops.append({"op": "time", "path": rel, "mtime": dst.st_mtime_ns})


class _Below:
    """Is a directory above a path excluded (rsync sends nothing below
    it)? Asked of every path of a batch, whose paths share a few parents:
    each directory's answer is kept for the batch."""

    def __init__(self, excluded: Callable[[bytes, bool], bool]) -> None:
        self.excluded = excluded
        self.known: dict[bytes, bool] = {b"": False}

    def __call__(self, path: bytes) -> bool:
        parent = path.rpartition(b"/")[0]
        known = self.known.get(parent)
        if known is not None:
            return known
        # up to the nearest directory already answered (iterative: a path
        # may have thousands of components), then down again
        todo = [parent]
        while (up := todo[-1].rpartition(b"/")[0]) not in self.known:
            todo.append(up)
        known = self.known[up]
        for rel in reversed(todo):
            known = known or self.excluded(rel, True)
            self.known[rel] = known
        return known
