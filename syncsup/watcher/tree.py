"""The watch table of one source tree: which inotify watch descriptor is
which directory, the walks that place watches, and the translation of raw
events into dirty paths and subtrees.

Pure apart from the two callables it is given (``add_watch``, ``rm_watch``)
and directory reads, so the logic is testable without a kernel. Paths are
bytes relative to the source root; the root itself is ``b""``.

Walks are incremental (:meth:`WatchTree.step` places at most a budget of
watches per call): one watcher serves every sync, and placing a million
watches on one tree must not stop the others' events for minutes. A rescan
asked for while a walk is in progress is released only when the walk is
done: watch first, then scan, so a change in between is seen by one or the
other.

A walk after lost events (``since``: a ctime) also lists the regular files
whose ctime is not older than it: they changed while nobody was looking and
are sent as paths, compared by content; rsync's quick check is trusted for
the rest (see :mod:`syncsup.seen`). The walk of a directory moved in from
outside does the same from a moment before the event that announced it:
until its watch is placed, nobody looks there either. A directory renamed
within the tree keeps its watches. Every directory that arrives at a name
is rescanned as a proof (``Changes.prove``): what the target holds at that
name belonged to another directory, and the quick check proves nothing
about it.

A regular file being written is held back until it is closed (or for
``Timings.write_hold`` at most): a writer's CREATE or MODIFY often reaches us
before its data, and sending the path then costs a transfer of a partial
file and a second batch right after it.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from inotify_simple import flags as F

from syncsup.proto import Changes
from syncsup.status import BLIND_REASONS, ERROR, MOUNT, TOO_LONG, UNREADABLE, WATCH_LIMIT
from syncsup.timings import Timings

__all__ = ["BLIND_REASONS", "ERROR", "MASK", "MOUNT", "REASON_WORDS", "TOO_LONG", "UNREADABLE",
           "WATCH_LIMIT", "Blind", "Signals", "Walked", "WatchTree", "join", "show"]

log = logging.getLogger("syncsup.watcher")

MASK = (F.MODIFY | F.ATTRIB | F.CLOSE_WRITE | F.MOVED_FROM | F.MOVED_TO | F.CREATE | F.DELETE
        | F.DELETE_SELF | F.MOVE_SELF | F.ONLYDIR | F.DONT_FOLLOW | F.EXCL_UNLINK)


_WRITING = F.CREATE | F.MODIFY
_DONE = F.CLOSE_WRITE | F.DELETE | F.MOVED_FROM | F.MOVED_TO


# The ways a subtree can be out of sight (the ``reason`` of a Blind) are
# defined with the status schema, which reports them.
# Each reason in words, for the log.
REASON_WORDS = {WATCH_LIMIT: "inotify watch limit", TOO_LONG: "path too long",
                UNREADABLE: "permission denied", MOUNT: "mounted filesystem",
                ERROR: "error of the kernel"}


def show(rel: bytes) -> str:
    """A path for people and for status (bytes that are not UTF-8 as
    ``\\xNN``: a status document must stay valid text, and msgpack
    cannot carry lone surrogates)."""
    return rel.decode("utf-8", "backslashreplace")


def reason_of(exc: OSError) -> str:
    """Which kind of blindness an error of add_watch or of a scan means."""
    if exc.errno == errno.ENOSPC:
        return WATCH_LIMIT
    if exc.errno == errno.ENAMETOOLONG:
        return TOO_LONG
    if exc.errno in (errno.EACCES, errno.EPERM):
        return UNREADABLE
    return ERROR


@dataclass
class Blind:
    """A subtree out of sight: ``mark`` is the ctime cutoff its next rescan
    compares content from; ``detail`` the error as the kernel gave it."""

    reason: str
    mark: float
    detail: str = ""


def join(parent: bytes, name: bytes) -> bytes:
    return name if not parent else parent + b"/" + name


class Walked(NamedTuple):
    """What one step of a walk did: the rescans it released (once no walk
    is left) and how many directories it visited."""

    changes: Changes
    visited: int


@dataclass
class Signals:
    """What a batch of events says beyond paths: the queue overflowed
    (events were lost), or the source root itself went away."""

    overflow: bool = False
    root_gone: bool = False


@dataclass(frozen=True)
class _Walk:
    """A directory still to visit: ``since`` is the ctime cutoff of the
    candidate scan (None: no scan); ``mark`` what to remember for a subtree
    that cannot be watched (the cutoff of its next rescan); ``blind`` that it
    lies below such a subtree (scanned, not watched); ``dev`` the device of
    its parent (None: unknown), to find the mount points."""

    rel: bytes
    since: float | None
    mark: float
    blind: bool = False
    dev: int | None = None


@dataclass
class _Moving:
    """A directory whose MOVED_FROM came and whose MOVED_TO has not (yet)
    in the same read: its watches, walks to do and blind subtrees (by their
    path below it, ``b""`` for itself; none if the rules exclude it), set
    aside with the events that came on those watches meanwhile. A MOVED_TO
    puts them back under the new name and replays the events there; at the
    end of the read, what is left moved out of sight and is dropped."""

    rel: bytes
    watches: dict[int, bytes] = field(default_factory=dict)
    walks: list[_Walk] = field(default_factory=list)
    blind: dict[bytes, Blind] = field(default_factory=dict)
    events: list[tuple[int, int, int, bytes]] = field(default_factory=list)

    def watched(self) -> bool:
        """Was the directory itself in sight (watched, about to be, or
        blind with a rescan of its own)? An excluded one was not."""
        return (b"" in self.watches.values() or b"" in self.blind
                or any(w.rel == self.rel for w in self.walks))


def _below(path: bytes, rel: bytes) -> bytes | None:
    """``path`` relative to ``rel`` (``b""``: itself; None: not under it)."""
    if path == rel:
        return b""
    if path.startswith(rel + b"/"):
        return path[len(rel) + 1:]
    return None


class WatchTree:
    """Watch descriptors of one source tree."""

    def __init__(self, root: bytes, add_watch: Callable[[bytes, int], int],
                 rm_watch: Callable[[int], None],
                 excluded: Callable[[bytes], bool] | None = None,
                 clock: Callable[[], float] = time.time,
                 timings: Timings | None = None) -> None:
        """``excluded(rel)`` says a directory needs no watch (rsync excludes
        it); ``clock`` is the wall clock ctimes are compared with."""
        self.root = root
        self.timings = timings or Timings()
        self.excluded = excluded or (lambda rel: False)
        self.clock = clock
        self._add = add_watch
        self._rm = rm_watch
        self.paths: dict[int, bytes] = {}
        # Subtrees out of sight (see Blind), by their path. Only the top of
        # such a subtree is recorded: its rescan covers what lies below.
        self.blind: dict[bytes, Blind] = {}
        self.root_wd: int | None = None  # the root's watch (None: not watched)
        self.watch_errors = 0
        self._stack: list[_Walk] = []
        self._after_walk = Changes()      # rescans waiting for the walk to finish
        # Files open for writing, held back until their CLOSE_WRITE: path ->
        # the (monotonic) time they are sent anyway.
        self.writing: dict[bytes, float] = {}
        self._new: set[bytes] = set()  # held files that were created (command mode)

    def abspath(self, rel: bytes) -> bytes:
        return join(self.root, rel) if rel else self.root

    @property
    def walking(self) -> bool:
        return bool(self._stack)

    def queue(self, rel: bytes, rescan: Changes | None = None, since: float | None = None,
              mark: float | None = None) -> None:
        """Watch ``rel`` and every directory below it (symlinks not
        followed) in coming steps; ``rescan`` is released when they are done,
        with the regular files whose ctime is ``since`` or later among its
        paths. A subtree that cannot be watched is remembered with ``mark``
        (default: ``since``, or now minus the margin)."""
        if mark is None:
            mark = since if since is not None else self.clock() - self.timings.seen_margin
        parent = rel.rpartition(b"/")[0]
        dev = _device(self.abspath(parent)) if rel else None
        self._stack.append(_Walk(rel, since, mark, dev=dev))
        if rescan is not None:
            self._after_walk.update(rescan)

    def step(self, budget: int = 2000) -> Walked:
        """Visit up to ``budget`` directories; once no walk is left, the
        waiting rescans are released (returned)."""
        visited = 0
        while self._stack and visited < budget:
            self._visit(self._stack.pop())
            visited += 1
        released = Changes()
        if not self._stack and self._after_walk:
            released, self._after_walk = self._after_walk, Changes()
        return Walked(released, visited)

    def watch(self, rel: bytes) -> None:
        """Watch ``rel`` and below, now (a whole walk in one call)."""
        self.queue(rel)
        while self._stack:
            self._visit(self._stack.pop())

    def _visit(self, walk: _Walk) -> None:
        """Watch one directory and queue its subdirectories. Every error of
        the kernel on it is contained here: the directory becomes a blind
        subtree (recorded, reported by the watcher, retried by its rescans)
        and the walk goes on with the rest: a hostile tree must never stop
        the watching of anything else."""
        d, blind = walk.rel, walk.blind
        path = self.abspath(d)
        dev = walk.dev
        if not blind:
            try:
                wd = self._add(path, MASK)
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                    return  # gone or replaced meanwhile: its parent's event says so
                reason = reason_of(exc)
                self._blind(d, reason, walk.mark, exc)
                if reason != WATCH_LIMIT:
                    return  # a scan cannot read it either; its retry covers it
                blind = True  # scanned, not watched: rescanned periodically
            else:
                self.paths[wd] = d
                if not d:
                    self.root_wd = wd
                dev = _device(path)
                if walk.dev is not None and dev is not None and dev != walk.dev:
                    # inotify sees local changes there, but not those made
                    # from elsewhere (another host over NFS, a FUSE daemon):
                    # watched, and rescanned periodically by the watcher.
                    self._blind(d, MOUNT, walk.mark, None)
        if blind and walk.since is None:
            return  # nothing to look for below: its rescan covers it
        try:
            with os.scandir(path) as it:
                for entry in it:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            sub = join(d, os.fsencode(entry.name))
                            if not self.excluded(sub):
                                self._stack.append(
                                    _Walk(sub, walk.since, walk.mark, blind, dev))
                        elif walk.since is not None:
                            st = entry.stat(follow_symlinks=False)
                            if stat.S_ISREG(st.st_mode) and st.st_ctime >= walk.since:
                                self._after_walk.paths.add(join(d, os.fsencode(entry.name)))
                    except OSError:
                        continue  # this entry vanished or cannot be read: skip it
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                self._blind(d, reason_of(exc), walk.mark, exc)

    def _blind(self, rel: bytes, reason: str, mark: float, exc: OSError | None) -> None:
        old = self.blind.get(rel)
        if old is not None and old.reason == reason:
            mark = min(mark, old.mark)  # changes since the older cutoff are still unseen
        detail = "" if exc is None else (exc.strerror or str(exc))
        self.blind[rel] = Blind(reason, mark, detail)
        if reason == WATCH_LIMIT:
            self.watch_errors += 1

    def drop_blind(self, rel: bytes) -> None:
        """Forget the blind subtrees at or below ``rel`` (deleted or moved
        away: nothing is left there to look at)."""
        prefix = rel + b"/"
        for p in [p for p in self.blind if p == rel or p.startswith(prefix)]:
            del self.blind[p]

    def take_blind(self, reasons: Iterable[str]) -> dict[bytes, Blind]:
        """Remove and return the blind subtrees of these reasons (to be
        walked again: those still blind come back)."""
        wanted = set(reasons)
        out = {p: x for p, x in self.blind.items() if x.reason in wanted}
        for p in out:
            del self.blind[p]
        return out

    def unwatched_dirs(self) -> int:
        """How many directories the subtrees blind for the watch limit hold
        (what a raised limit would have to cover)."""
        return sum(1 for rel, x in self.blind.items() if x.reason == WATCH_LIMIT
                   for _ in os.walk(self.abspath(rel)))

    def _detach(self, rel: bytes) -> _Moving:
        """Set aside the watches, walks and blind subtrees of ``rel`` and
        below (a MOVED_FROM: whether it stays in the tree is not known yet)."""
        m = _Moving(rel)
        prefix = rel + b"/"
        for wd, p in [(wd, p) for wd, p in self.paths.items() if p == rel or p.startswith(prefix)]:
            m.watches[wd] = _below(p, rel) or b""
            del self.paths[wd]
        kept: list[_Walk] = []
        for w in self._stack:
            (kept if _below(w.rel, rel) is None else m.walks).append(w)
        self._stack = kept
        for p in [p for p in self.blind if _below(p, rel) is not None]:
            m.blind[_below(p, rel) or b""] = self.blind.pop(p)
        return m

    def _attach(self, m: _Moving, new: bytes) -> None:
        """Put what :meth:`_detach` set aside back under ``new``: the kernel's
        watches followed the directory, so nothing there was out of sight.
        A subdirectory that rules bound to its path exclude under the new
        name loses its watch, and what lies below it; one they excluded
        under the old name is for the walk that follows."""
        def moved(sub: bytes) -> bytes:
            return join(new, sub) if sub else new

        # excluded under the new name, or below a directory that is: each
        # path asked once (``new`` itself is in the tree: its MOVED_TO
        # passed the rules), without recursion (a tree may be deeper than
        # Python's stack)
        verdicts = {new: False}

        def out(p: bytes) -> bool:
            chain = []
            while p not in verdicts:
                chain.append(p)
                p = p.rpartition(b"/")[0]
            verdict = verdicts[p]
            for q in reversed(chain):
                verdict = verdict or self.excluded(q)
                verdicts[q] = verdict
            return verdict

        for wd, sub in m.watches.items():
            p = moved(sub)
            if out(p):
                try:
                    self._rm(wd)
                except OSError:
                    pass  # the kernel dropped it already
                continue
            self.paths[wd] = p
        for w in m.walks:
            p = moved(_below(w.rel, m.rel) or b"")
            if not out(p):
                self._stack.append(replace(w, rel=p))
        for sub, x in m.blind.items():
            p = moved(sub)
            if not out(p):
                self.blind[p] = x
        # files being written in it: their close comes under the new name
        for p in [p for p in self.writing if _below(p, m.rel)]:
            self.writing[join(new, _below(p, m.rel) or b"")] = self.writing.pop(p)
        for p in [p for p in self._new if _below(p, m.rel)]:
            self._new.discard(p)
            self._new.add(join(new, _below(p, m.rel) or b""))

    def _drop(self, m: _Moving) -> None:
        """What :meth:`_detach` set aside left the tree: its watches go."""
        for wd in m.watches:
            try:
                self._rm(wd)
            except OSError:
                pass  # the kernel dropped it already

    def apply(self, events: Iterable[tuple[int, int, int, bytes]],
              now: float | None = None, since: float | None = None
              ) -> tuple[Changes, Signals]:
        """The changes raw ``(wd, mask, cookie, name)`` events make, and what
        they say beyond paths.

        A MOVED_FROM and MOVED_TO with the same cookie in one read are a
        rename inside the tree and are recorded in ``changes.moves`` too; an
        unpaired one is just a delete or a create. A new directory is queued
        for watching; its rescan comes out of :meth:`step` after the walk.

        A directory renamed within the tree (both halves in this read)
        keeps its watches, walks to do and blind subtrees under its new
        name: the kernel's watches follow the inode, so nothing there was
        out of sight, and events on them, even one between the two halves,
        are read under the new name.

        A directory that arrives at a name (created, moved in from outside,
        renamed within the tree) is rescanned as a ``prove`` subtree, not a
        plain one: whatever the target holds at that name came from another
        directory (one deleted or renamed away, not yet mirrored) or was
        copied by a transfer of an enclosing directory before a rewrite that
        kept the size and put the mtime back, and rsync's quick check vouches
        for neither. The proof (:mod:`syncsup.syncer.prove`) compares the
        content of the target's copies not written after both the source
        file's last change and the directory's arrival; where the target
        holds nothing there it costs a look at an empty directory.

        ``since`` (a ctime, None: unknown) is a moment before every event
        of this read. A directory moved in from outside is out of sight
        from then until its walk places its watch: its walk also lists, as
        paths, the regular files whose ctime is ``since`` or later.

        With ``now`` (monotonic), a regular file created or modified and not
        yet closed is held in :attr:`writing` instead (see :meth:`release`);
        a new hard link, symlink or special file is never held: no close
        follows them.
        """
        signals = Signals()
        changes = Changes()
        moved_from: dict[int, bytes] = {}
        moving: dict[int, _Moving] = {}  # by cookie
        aside: dict[int, _Moving] = {}   # by the watches set aside
        redo: set[bytes] = set()  # names whose watches clashed: walked at the end
        pending = deque(events)
        while pending:
            event = pending.popleft()
            wd, mask, cookie, name = event
            if mask & F.Q_OVERFLOW:
                signals.overflow = True  # the watcher re-walks, then verifies the root
                continue
            parent = self.paths.get(wd)
            if parent is None:
                if wd in aside:
                    aside[wd].events.append(event)  # its name comes with its MOVED_TO
                continue  # a watch we dropped; its subtree is covered elsewhere
            if mask & (F.IGNORED | F.UNMOUNT):
                if parent == b"" and mask & F.UNMOUNT:
                    signals.root_gone = True  # its filesystem went: nothing is watched
                if mask & F.IGNORED:
                    del self.paths[wd]
                    if wd == self.root_wd:
                        self.root_wd = None
                continue
            if not name:
                if mask & (F.DELETE_SELF | F.MOVE_SELF):
                    if parent == b"":
                        signals.root_gone = True
                    continue  # the parent directory's event reports it
                changes.paths.add(parent)  # attributes of the directory itself
                continue
            path = join(parent, name)
            is_dir = bool(mask & F.ISDIR)
            if is_dir and mask & F.DELETE:
                self.drop_blind(path)  # nothing left there to be blind to
            if is_dir and mask & (F.CREATE | F.MOVED_TO) and self.excluded(path):
                continue  # rsync never sends it: nothing to watch, replay or report
            if mask & F.CREATE and not is_dir and now is not None and self._hold(
                    path, mask, now):
                self._new.add(path)  # "created" goes with the path when it is released
                continue
            if mask & (F.CREATE | F.MOVED_TO):
                changes.created.add(path)
            clashed = False
            if is_dir and mask & F.MOVED_TO:
                clash = self._detach(path)
                if clash.watches or clash.walks or clash.blind:
                    # Renamed over a directory (empty, dying) or exchanged with
                    # one (RENAME_EXCHANGE): which watch is which is not known
                    # by name. Both sides are dropped, and walked again at the
                    # end of the read, listing what changed since ``since``.
                    self._drop(clash)
                    redo.add(path)
                    clashed = True
            if mask & F.MOVED_FROM:
                moved_from[cookie] = path
            elif mask & F.MOVED_TO and cookie in moved_from:
                src = moved_from.pop(cookie)
                changes.moves.append((src, path))
                m = moving.pop(cookie, None)
                for w in m.watches if m is not None else ():
                    del aside[w]
                if clashed and m is not None and m.watched():
                    self._drop(m)
                    redo.add(src)
                    continue
                if is_dir and m is not None and m.watched():
                    # Renamed within the tree: its watches follow it (the
                    # kernel's did), with no moment out of sight; what came
                    # on them meanwhile is read under the new name. A walk
                    # without a ctime scan (nothing was out of sight) watches
                    # what rules bound to the old path left unwatched, then
                    # its content is rescanned at the new name.
                    self._attach(m, path)
                    # next, in this same loop: a rename's halves split between
                    # them and the rest of the read still pair
                    pending.extendleft(reversed(m.events))
                    self.queue(path, Changes(prove={path}))
                    continue
                if m is not None:
                    self._drop(m)  # not in sight there (excluded): it arrives as from outside
            if is_dir and mask & (F.CREATE | F.MOVED_TO):
                if clashed:
                    continue
                # Watch first, then rescan: a change in between is seen by one.
                # One before it in a directory moved in (since ``since``) is
                # listed by its ctime; a created one's files are all new (as
                # tar or cp -r into the source makes them): its proof finds
                # what the target holds there, with no file sent twice.
                self.queue(path, Changes(prove={path}),
                           since=since if mask & F.MOVED_TO else None)
            elif is_dir and mask & F.MOVED_FROM:
                # A tree, not a path: if something comes back at this name
                # its whole content must be compared, not just the entry.
                m = self._detach(path)
                moving[cookie] = m
                for w in m.watches:
                    aside[w] = m
                changes.trees.add(path)
            elif now is not None and not is_dir and self._hold(path, mask, now):
                continue
            else:
                changes.paths.add(path)
                if path in self._new:
                    self._new.discard(path)
                    changes.created.add(path)
        for m in moving.values():
            self._drop(m)  # moved out of the tree (or its MOVED_TO is in the next read)
        for p in sorted(redo):
            self.queue(p, Changes(prove={p}), since=since)
        return changes, signals

    def _hold(self, path: bytes, mask: int, now: float) -> bool:
        """Is ``path`` (not a directory) held back as being written?"""
        if mask & _DONE:
            self.writing.pop(path, None)  # closed, gone or renamed: send it now
            return False
        if path in self.writing:
            return True  # an ATTRIB or another write while open: the close sends it
        if not mask & _WRITING:
            return False
        if mask & F.CREATE:
            try:
                st = os.lstat(self.abspath(path))
            except OSError:
                return False
            if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
                return False  # no writer behind it: a link, a symlink, a fifo...
        self.writing[path] = now + self.timings.write_hold
        return True

    def release(self, now: float) -> tuple[Changes, float | None]:
        """The held files whose hold ran out, and when the next one runs out
        (None: nothing held)."""
        changes = Changes()
        due = [p for p, until in self.writing.items() if until <= now]
        for path in due:
            del self.writing[path]
            changes.paths.add(path)
            if path in self._new:
                self._new.discard(path)
                changes.created.add(path)
        return changes, min(self.writing.values(), default=None)


def _device(path: bytes) -> int | None:
    """The device of a directory (None: it cannot be stat'ed now)."""
    try:
        return os.lstat(path).st_dev
    except OSError:
        return None
