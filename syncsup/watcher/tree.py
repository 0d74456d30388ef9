"""The watch table: which inotify watch descriptor is which directory, and
the translation of raw events into dirty paths and subtrees.

Pure apart from the two callables it is given (``add_watch``, ``rm_watch``)
so the logic is testable without a kernel. Paths are bytes relative to the
source root; the root itself is ``b""``.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from inotify_simple import flags as F

__all__ = ["MASK", "Changes", "WatchTree", "join"]

log = logging.getLogger("syncsup.watcher")

MASK = (F.MODIFY | F.ATTRIB | F.CLOSE_WRITE | F.MOVED_FROM | F.MOVED_TO | F.CREATE | F.DELETE
        | F.DELETE_SELF | F.MOVE_SELF | F.ONLYDIR | F.DONT_FOLLOW | F.EXCL_UNLINK)


def join(parent: bytes, name: bytes) -> bytes:
    return name if not parent else parent + b"/" + name


@dataclass
class Changes:
    """What one read of the inotify queue amounts to."""

    paths: set[bytes] = field(default_factory=set)
    trees: set[bytes] = field(default_factory=set)
    moves: list[tuple[bytes, bytes]] = field(default_factory=list)
    created: set[bytes] = field(default_factory=set)  # new names (for command mode)
    verify: set[bytes] = field(default_factory=set)  # rescans after lost events
    root_gone: bool = False
    overflow: bool = False

    def __bool__(self) -> bool:
        return bool(self.paths or self.trees or self.verify)


class WatchTree:
    """Watch descriptors of one source tree."""

    def __init__(self, root: bytes, add_watch: Callable[[bytes, int], int],
                 rm_watch: Callable[[int], None],
                 progress: Callable[[int], None] | None = None,
                 excluded: Callable[[bytes], bool] | None = None) -> None:
        """``progress(n_watches)`` is called after each new watch, so a long
        walk of a big tree can log and keep heartbeating. ``excluded(rel)``
        says a directory needs no watch (rsync excludes it)."""
        self.root = root
        self.progress = progress
        self.excluded = excluded or (lambda rel: False)
        self._add = add_watch
        self._rm = rm_watch
        self.paths: dict[int, bytes] = {}
        self.failed: set[bytes] = set()   # subtrees left unwatched (ENOSPC)
        self.watch_errors = 0

    def abspath(self, rel: bytes) -> bytes:
        return join(self.root, rel) if rel else self.root

    def watch(self, rel: bytes) -> None:
        """Watch ``rel`` and every directory below it (symlinks not followed)."""
        stack = [rel]
        while stack:
            d = stack.pop()
            try:
                wd = self._add(self.abspath(d), MASK)
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EACCES):
                    continue  # gone meanwhile (an event says so) or unreadable
                if exc.errno == errno.ENOSPC:
                    self.failed.add(d)  # rescanned periodically by the watcher
                    self.watch_errors += 1
                    continue
                raise
            self.paths[wd] = d
            if self.progress is not None:
                self.progress(len(self.paths))
            try:
                with os.scandir(self.abspath(d)) as it:
                    for entry in it:
                        try:
                            if entry.is_dir(follow_symlinks=False):
                                sub = join(d, entry.name)
                                if not self.excluded(sub):
                                    stack.append(sub)
                        except OSError:
                            continue
            except OSError:
                continue

    def unwatched_dirs(self) -> int:
        """How many directories the failed subtrees hold (what a raised
        watch limit would have to cover)."""
        return sum(1 for rel in self.failed for _ in os.walk(self.abspath(rel)))

    def forget(self, rel: bytes) -> None:
        """Drop the watches of ``rel`` and below (moved out of sight)."""
        prefix = rel + b"/"
        gone = [wd for wd, p in self.paths.items() if p == rel or p.startswith(prefix)]
        for wd in gone:
            del self.paths[wd]
            try:
                self._rm(wd)
            except OSError:
                pass  # the kernel dropped it already

    def apply(self, events: Iterable[tuple[int, int, int, bytes]], changes: Changes) -> None:
        """Fold raw ``(wd, mask, cookie, name)`` events into ``changes``.

        A MOVED_FROM and MOVED_TO with the same cookie in one read are a
        rename inside the tree and are recorded in ``changes.moves`` too; an
        unpaired one is just a delete or a create.
        """
        moved_from: dict[int, bytes] = {}
        for wd, mask, cookie, name in events:
            if mask & F.Q_OVERFLOW:
                changes.overflow = True  # the watcher re-walks, then verifies the root
                continue
            parent = self.paths.get(wd)
            if parent is None:
                continue  # a watch we dropped; its subtree is covered elsewhere
            if mask & F.IGNORED:
                del self.paths[wd]
                continue
            if not name:
                if mask & (F.DELETE_SELF | F.MOVE_SELF):
                    if parent == b"":
                        changes.root_gone = True
                    continue  # the parent directory's event reports it
                changes.paths.add(parent)  # attributes of the directory itself
                continue
            path = join(parent, name)
            is_dir = bool(mask & F.ISDIR)
            if is_dir and mask & (F.CREATE | F.MOVED_TO) and self.excluded(path):
                continue  # rsync never sends it: nothing to watch, replay or report
            if mask & (F.CREATE | F.MOVED_TO):
                changes.created.add(path)
            if mask & F.MOVED_FROM:
                moved_from[cookie] = path
            elif mask & F.MOVED_TO and cookie in moved_from:
                changes.moves.append((moved_from.pop(cookie), path))
            if is_dir and mask & (F.CREATE | F.MOVED_TO):
                # Watch first, then rescan: a change in between is seen by one.
                self.watch(path)
                changes.trees.add(path)
            elif is_dir and mask & F.MOVED_FROM:
                # A tree, not a path: if something comes back at this name
                # its whole content must be compared, not just the entry.
                self.forget(path)
                changes.trees.add(path)
            else:
                changes.paths.add(path)
