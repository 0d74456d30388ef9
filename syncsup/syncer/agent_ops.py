"""What the agent is asked to do for a batch's paths, read from the source.

The source is read the way the agent writes the target: through directory
descriptors opened with ``O_NOFOLLOW`` (:mod:`syncsup.dirfd`), so a
directory swapped for a symlink is an entry of its own, never a way out of
the source. Each path becomes one operation, in order (parents before their
entries): a regular file up to ``max_size`` is sent whole (``put``), a
directory is made (``mkdir``), a symlink made exactly (``symlink``; not to
a confined target, whose agent cannot set a link's time), a path gone from
the source deleted (``delete``, when the sync deletes). Anything else (a
larger file, a device, a fifo, a socket, a file that grew while it was
read) is left to rsync, which does it exactly. Directory times come
last (writing their entries changed them), then ``commit``.

Owners travel as numbers and names: the agent maps names when it can, as
``rsync -a`` does.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from syncsup.dirfd import open_below, split_path
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
        while True:
            chunk = os.read(fd, max_size + 1 - total)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > max_size:
                return None  # it grew while we read: rsync takes it
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
            cache: ContentCache | None = None) -> Prepared:
    """Operations for ``paths`` (relative to the source open as ``root_fd``),
    with at most ``max_bytes`` of file content (the rest goes to rsync).
    ``keep_trees`` (the sync has excludes): no operation may remove a
    non-empty directory on the target, which may hold excluded files that
    rsync would keep; the agent refuses such a removal and the path goes to
    rsync. ``links`` false: symlinks go to rsync too (a confined agent
    cannot set a link's time or owner: it may change metadata only through
    descriptors, and a symlink has none to open). ``cache``: file content
    shared with the other targets' steps (:mod:`syncsup.syncer.readonce`)."""
    out = Prepared()
    tree = {"tree": False} if keep_trees else {}
    dirs_done: set[bytes] = set()
    parents: set[bytes] = set()
    for path in sorted(paths):
        if path == b"":
            parents.add(b"")
            continue
        if _below_excluded(path, excluded):
            continue
        parts, name = split_path(path)
        parents.add(b"/".join(parts))
        try:
            dfd = open_below(root_fd, parts)
        except OSError:
            out.fallback.append(path)  # the parent changed under us: rsync decides
            continue
        try:
            try:
                st = os.lstat(name, dir_fd=dfd)
            except FileNotFoundError:
                if deletes and not excluded(path, False):
                    out.ops.append({"op": "delete", "path": path, **tree})
                continue
            if excluded(path, stat.S_ISDIR(st.st_mode)):
                continue  # rsync neither sends nor deletes it
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
        finally:
            os.close(dfd)
    for rel in sorted(dirs_done | parents, reverse=True):  # children's times first
        dst = _dir_stat(root_fd, rel)
        if dst is not None and not (rel and (_below_excluded(rel, excluded)
                                             or excluded(rel, True))):
            out.ops.append({"op": "time", "path": rel, "mtime": dst.st_mtime_ns})
    if out.ops:
        out.ops.append({"op": "commit"})
    return out


def _dir_stat(root_fd: int, rel: bytes) -> os.stat_result | None:
    try:
        fd = open_below(root_fd, rel.split(b"/")) if rel else os.dup(root_fd)
    except OSError:
        return None
    try:
        return os.fstat(fd)
    finally:
        os.close(fd)


def _below_excluded(path: bytes, excluded: Callable[[bytes, bool], bool]) -> bool:
    """Is a directory above ``path`` excluded (rsync sends nothing below it)?"""
    parts = path.split(b"/")
    return any(excluded(b"/".join(parts[:i]), True) for i in range(1, len(parts)))
