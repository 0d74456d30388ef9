"""The proof step: which files of the listed subtrees must have their
content compared, because nothing proves their target copy current. It
runs at a start with no earlier state (the whole source) and for each
directory that arrives at a name (created, moved in, renamed within the
source: what the target holds there came from elsewhere).

Why: with no seen-point nothing says what changed while syncsup was not
running, and rsync's quick check (size and mtime) misses a same-size
rewrite whose mtime was put back. Comparing every file by content
(``--checksum``) finds it, but reads both trees whole: hours of disk on a
populated target. The kernel keeps a time no user can set: a file's ctime
moves on every write, chmod, chown and rename. A target copy whose ctime is
after its source file's ctime was written after the source file last
changed, and if the quick check finds the two alike it holds that content
(rsync sets the mtime it read before the data, so a source written during
the copy shows a different mtime). Such a copy cannot be stale, unless
someone wrote to the target behind the daemon's back: ``full_sync_interval``,
``syncsup resync`` and ``startup_checksum`` are there for that.

So this step lists a target file only if it exists as a regular file, its
size and mtime match the source's (else the quick check sends it anyway),
and its ctime, taken to the source's clock, is not later than the source
file's ctime plus ``Timings.proof_margin``. The target's ctimes come from a local
``lstat`` (the same clock) or from the target's agent (a session of
``syncsup-target ROOT stats``, which answers only ``stats``), whose
answers carry the target's clock: the skew is measured over the same
channel, and the round trip bounds its error, which is counted against the
proof. Symlinks, directories and special files need no proof: the quick
check compares all they hold.

Each target's proof walks the source again (metadata only): the targets of
one sync may hold different copies. It runs in a thread of the syncer
(:mod:`syncsup.syncer.proof_step`), its remote session over the ssh master
like the agent's: a first start with many targets costs no interpreter
and no ssh client per target.

A proof that cannot be made (no agent there, an error, a stall) turns the
tree step into a full ``--checksum`` one.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import IO, Any

from syncsup import config as cfg
from syncsup.filters import RuleList
from syncsup.proto import Changes
from syncsup.syncer.mux import MuxSession
from syncsup.target import MAX_PATH, MAX_STATS, VERSION, Applier, encode_frame, read_frame

__all__ = ["NO_PROOF", "Clock", "cheaper_compared", "how_proven", "nothing_to_prove", "prove",
           "small", "unproven", "verdict"]

NO_PROOF = 3  # the step's rc where the target's ctimes cannot be read
SKEW_PROBES = 3

Stat = tuple[int, int, int]  # (ctime_ns, size, mtime_ns); -1s: not a regular file there
Chunk = list[tuple[bytes, Stat]]  # source files (name, status), one request's worth


class Clock:
    """The target's clock against ours: ``offset`` (target minus source, ns)
    known to within ``error`` ns (half the round trip it was read in)."""

    def __init__(self, offset: int = 0, error: int = 0) -> None:
        self.offset, self.error = offset, error

    def to_source(self, target_ns: int) -> int:
        """The earliest source-clock time a target timestamp can stand for."""
        return target_ns - self.offset - self.error


PROVEN, SENT, COMPARE = "proven", "sent", "compare"


def verdict(source: Stat, target: Stat, clock: Clock, margin_ns: int) -> str:
    """What this file needs: ``sent`` if the target has no regular file
    there or one of another size or mtime (the quick check sends it);
    ``proven`` if the target's copy has a ctime more than ``margin_ns``
    after the source file's (written after it last changed: the margin
    covers the kernel's coarse timestamps, filesystems that keep whole
    seconds, and a source file still being written when it was copied);
    else ``compare`` (its content)."""
    t_ctime, t_size, t_mtime = target
    if t_ctime < 0 or t_size != source[1] or t_mtime != source[2]:
        return SENT
    return COMPARE if clock.to_source(t_ctime) <= source[0] + margin_ns else PROVEN


def unproven(source: Stat, target: Stat, clock: Clock, margin_ns: int) -> bool:
    """Must this file's content be compared?"""
    return verdict(source, target, clock, margin_ns) == COMPARE


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_dir(name: bytes, dir_fd: int | None = None) -> int | None:
    """A directory opened without following a symlink, or None if ``name``
    is not one now (gone, swapped for a symlink or a file, unreadable).
    Out of descriptors is an error: a walk that skipped on it would leave
    files out of the proof, so the whole proof falls back to comparing."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            raise
        return None


def _open_below(root: bytes, top: bytes) -> int | None:
    """``top`` (relative to ``root``) opened one component at a time."""
    fd = _open_dir(root)
    for part in (p for p in top.split(b"/") if p):
        if fd is None:
            return None
        sub = _open_dir(part, fd)
        os.close(fd)
        fd = sub
    return fd


def _listing(fd: int, dirs: list[bytes], entry: Callable[[], None]
             ) -> Iterator[tuple[bytes, Stat]]:
    """The regular files (with their status) of the directory open as
    ``fd``, as they are read; its subdirectories go to ``dirs``; ``entry``
    is called for every entry read. An entry that vanished is left out.
    Never the whole directory in memory: the proof runs in the syncer, and
    one directory may hold millions."""
    try:
        with os.scandir(fd) as it:  # (scandir duplicates the descriptor)
            for e in it:
                entry()
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    dirs.append(os.fsencode(e.name))
                elif stat.S_ISREG(st.st_mode):
                    yield os.fsencode(e.name), (st.st_ctime_ns, st.st_size, st.st_mtime_ns)
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            raise  # see _open_dir: never a silent gap in the proof
        return  # unreadable (now): the rest of it is skipped


def _nothing() -> None:
    pass


Skip = Callable[[bytes, bool], bool]  # (relative path, is a directory) -> left out


def _walk(root: bytes, top: bytes, listed: Callable[[], None] = _nothing,
          entry: Callable[[], None] = _nothing, skip: Skip | None = None
          ) -> Iterator[tuple[bytes, Stat]]:
    """The regular files below ``top`` (relative to ``root``), with their
    status. A directory that cannot be read is skipped: rsync reports it
    in the tree step.

    Through directory descriptors only: each directory is opened relative
    to its parent's descriptor with ``O_NOFOLLOW | O_DIRECTORY``. A source
    writer who swaps a directory for a symlink during the walk makes it
    skip that directory, never list (nor open) what the symlink points to,
    so nothing about files outside the source reaches the target's stats
    session. Descriptors held: one per level of depth. ``listed`` is
    called after each directory is read (progress), ``entry`` for each
    entry. What ``skip`` says the sync's rules keep from the target (a
    file, or a directory and all below it) is left out: never compared,
    and its name never sent to the target's agent.

    Below a subtree other than the root, a file's ctime is taken as no
    earlier than its directory's floor: the latest ctime of that directory
    and of each one above it up to ``top``. Such a subtree is a directory
    that arrived at its name (created, moved in, renamed: each moves the
    directory's own ctime; so does a directory swapped in deeper while
    nobody watched), and what the target holds there may have been copied
    from another directory before that, however late that was after the
    file's own last change (two release directories built in turn, swapped
    by renames). A target copy counts as current only if it was written
    after both. (A floor is a directory's ctime now, not its arrival: any
    later entry made there moves it too, and its copies made before that
    are compared, never wrongly proven.) The root's walk, a start's, has
    no floor: its files' own ctimes are what the start's proof trusts."""
    top_fd = _open_below(root, top)
    if top_fd is None:
        return
    floors = bool(top)
    # (relative path, descriptor, subdirectories to visit, floor)
    stack: list[tuple[bytes, int, Iterator[bytes], int]] = []
    try:
        try:
            floor = os.fstat(top_fd).st_ctime_ns if floors else 0
        except BaseException:
            os.close(top_fd)
            raise
        rel, fd = top, top_fd
        while True:
            dirs: list[bytes] = []
            stack.append((rel, fd, iter(dirs), floor))  # held by the stack from here
            fd = -1
            for name, st in _listing(stack[-1][1], dirs, entry):
                path = rel + b"/" + name if rel else name
                if skip is not None and skip(path, False):
                    continue
                if st[0] < floor:
                    st = (floor, st[1], st[2])
                yield path, st
            listed()
            while stack:
                parent_rel, parent_fd, rest, parent_floor = stack[-1]
                sub_name = next(rest, None)
                if sub_name is None:
                    os.close(parent_fd)
                    stack.pop()
                    continue
                sub_rel = parent_rel + b"/" + sub_name if parent_rel else sub_name
                if skip is not None and skip(sub_rel, True):
                    continue
                sub = _open_dir(sub_name, parent_fd)
                if sub is not None:
                    rel = sub_rel
                    fd = sub
                    floor = parent_floor
                    if floors:
                        try:
                            floor = max(floor, os.fstat(sub).st_ctime_ns)
                        except BaseException:
                            os.close(sub)
                            raise
                    break
            if fd == -1:
                return
    finally:
        for _rel, held, _rest, _floor in stack:
            os.close(held)


class _Remote:
    """The target's agent, asked for ``stats`` (never to write), over a
    session that :class:`~syncsup.syncer.mux.MuxSession` opened: blocking
    reads and writes on its pipes, from the proof's own thread."""

    def __init__(self, link: MuxSession, cancelled: Callable[[], bool]) -> None:
        self.link = link
        link.settle(cancelled)
        if cancelled():
            raise OSError("stopped")
        # our own descriptors: the link's are closed by the link
        self.rin: IO[bytes] = open(os.dup(link.stdout_fd), "rb")  # noqa: SIM115
        self.out: IO[bytes] = open(os.dup(link.stdin_fd), "wb")  # noqa: SIM115
        try:
            hello = self._ask({"op": "hello", "version": VERSION})
            if not hello.get("ok"):
                raise OSError(f"the agent refused: {hello.get('error', '?')}")
        except BaseException:
            self.close()
            raise

    def _send(self, req: dict[str, Any]) -> None:
        self.out.write(encode_frame(req))
        self.out.flush()

    def _read(self) -> dict[str, Any]:
        doc = read_frame(self.rin)
        if doc is None:
            raise OSError("the agent's session ended")
        return doc

    def _ask(self, req: dict[str, Any]) -> dict[str, Any]:
        self._send(req)
        return self._read()

    def clock(self) -> Clock:
        """The skew, from the tightest of a few round trips."""
        best: Clock | None = None
        for _ in range(SKEW_PROBES):
            t0 = time.time_ns()
            doc = self._ask({"op": "stats", "paths": []})
            t1 = time.time_ns()
            if not doc.get("ok") or type(doc.get("now")) is not int:
                raise OSError("the agent does not tell its clock (an older syncsup-target)")
            c = Clock(doc["now"] - (t0 + t1) // 2, (t1 - t0) // 2 + 1)
            if best is None or c.error < best.error:
                best = c
        assert best is not None
        return best

    def stats(self, chunks: Iterator[Chunk]) -> Iterator[tuple[Chunk, list[Stat]]]:
        """Each chunk with the target's answer, in order, one request ahead
        (the pipe holds an answer while the next request is written)."""
        sent: deque[Chunk] = deque()
        for chunk in chunks:
            self._send({"op": "stats", "paths": [name for name, _ in chunk]})
            sent.append(chunk)
            if len(sent) > 1:
                yield sent.popleft(), self._answer()
        while sent:
            yield sent.popleft(), self._answer()

    def _answer(self) -> list[Stat]:
        doc = self._read()
        if not doc.get("ok"):
            raise OSError(f"the agent refused: {doc.get('error', '?')}")
        return list(zip(doc["ctimes"], doc["sizes"], doc["mtimes"], strict=True))

    def close(self) -> None:
        """Say goodbye; the session itself is ended by its owner."""
        try:
            self._send({"op": "bye"})
        except OSError:
            pass
        for fh in (self.out, self.rin):
            try:
                fh.close()
            except OSError:
                pass


def _walk_tops(root: bytes, subtrees: Sequence[bytes], rules: RuleList | None,
               listed: Callable[[], None] = _nothing, entry: Callable[[], None] = _nothing
               ) -> Iterator[tuple[bytes, Stat]]:
    """:func:`_walk` of each of ``subtrees`` as rsync's tree step sends it
    under ``rules``.

    rsync asks the rules about a listed name itself, not about the
    directories above it, and recurses from any listed directory into what
    its rules let through. So a name is left out only when the rules hide
    it, or when the tree step leaves it out (below a directory the rules
    exclude) and no recursion can reach it either (a directory above it is
    hidden by the sender's rules, which the recursion obeys). A name below
    another one (``mkdir -p a/b/c``: three arrivals) is walked with it,
    unless a directory between them is hidden; below the root, whose walk
    has no floors, it is walked on its own too."""
    skip = hidden(rules) if rules is not None else None
    walked: set[bytes] = set()
    for top in sorted(set(subtrees)):
        if top and skip is not None and rules is not None and (
                skip(top, True) or (rules.below_excluded(top) and _above_hidden(top, skip))):
            continue
        if top and _covered(top, walked, skip):
            continue
        walked.add(top)
        yield from _walk(root, top, listed, entry, skip)


def _above_hidden(name: bytes, skip: Skip) -> bool:
    """Is a directory above ``name`` hidden by the sender's rules?"""
    parts = name.split(b"/")
    return any(skip(b"/".join(parts[:i]), True) for i in range(1, len(parts)))


def _covered(name: bytes, walked: set[bytes], skip: Skip | None) -> bool:
    """Does the walk of a directory above ``name`` among ``walked`` reach it
    (nothing hidden between; not the root's, which has no floors)? Up the
    chain of parents: a batch of many sibling arrivals costs each its depth."""
    rel = name
    while True:
        parent = rel.rpartition(b"/")[0]
        if not parent:
            return False
        if parent in walked:
            return True
        if skip is not None and skip(parent, True):
            return False  # the walk above stops there; rsync sends the name itself
        rel = parent


def _chunks(root: bytes, subtrees: Sequence[bytes], too_long: list[bytes],
            tick: Callable[[], None], cancelled: Callable[[], bool],
            rules: RuleList | None = None) -> Iterator[Chunk]:
    """The files of ``subtrees``, a request's worth at a time: never the
    whole list in memory. A path longer than a request may carry (which
    only a tree deeper than PATH_MAX holds) goes to ``too_long`` instead:
    unproven, rather than a refused request failing the whole proof.
    Raises OSError once ``cancelled``."""

    def listed() -> None:
        tick()
        if cancelled():
            raise OSError("stopped")

    chunk: Chunk = []
    for f in _walk_tops(root, subtrees, rules, listed):
        if len(f[0]) > MAX_PATH:
            too_long.append(f[0])
            continue
        chunk.append(f)
        if len(chunk) == MAX_STATS:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _local(path: str, chunks: Iterator[Chunk]) -> Iterator[tuple[Chunk, list[Stat]]]:
    """A local target's answers, read the way its agent reads them."""
    try:
        applier = Applier.open(path)
    except FileNotFoundError:
        for chunk in chunks:
            yield chunk, [(-1, -1, -1)] * len(chunk)  # nothing there: the quick check sends all
        return
    try:
        for chunk in chunks:
            yield chunk, applier.stats([name for name, _ in chunk])
    finally:
        applier.close()


def prove(sync: cfg.Sync, target: cfg.Target, subtrees: Sequence[bytes],
          link: MuxSession | None, margin: float, tick: Callable[[], None],
          cancelled: Callable[[], bool], rules: RuleList | None = None
          ) -> tuple[list[bytes], dict[str, int], str]:
    """The unproven files of ``subtrees`` (relative paths, ``b""`` for the
    root), how many files got which :func:`verdict`, and what was measured
    of the target's clock. ``link`` is the stats session of a remote
    target (None for a local one); ``tick`` is called after each chunk,
    the progress a stall check watches; ``cancelled`` stops the walk;
    ``rules`` (the sync's, read again if not given) keep what rsync does
    not send out of the proof.
    Raises OSError (and ValueError, KeyError, TypeError on a garbled
    answer) where the target's ctimes cannot be read."""
    too_long: list[bytes] = []
    chunks = _chunks(os.fsencode(sync.source), subtrees, too_long, tick, cancelled,
                     RuleList(sync) if rules is None else rules)
    clock = Clock()  # a local target: the same clock
    said = ""
    out: list[bytes] = []
    margin_ns = int(margin * 1e9)
    counts = {PROVEN: 0, SENT: 0, COMPARE: len(too_long)}
    remote = _Remote(link, cancelled) if link is not None else None
    try:
        if remote is not None:
            clock = remote.clock()
            said = (f"target clock {clock.offset / 1e9:+.3f}s "
                    f"(within {clock.error / 1e9:.3f}s)")
            answers = remote.stats(chunks)
        else:
            answers = _local(target.path, chunks)
        for chunk, found in answers:
            for (name, s), t in zip(chunk, found, strict=True):
                v = verdict(s, t, clock, margin_ns)
                counts[v] += 1
                if v == COMPARE:
                    out.append(name)
            tick()
            if cancelled():
                raise OSError("stopped")
    finally:
        if remote is not None:
            remote.close()
    return out + too_long, counts, said


# Directories that arrived (not the root) holding at most this much in all
# are compared whole (``--checksum``) on a remote target rather than proven:
# a proof there is a session of the target's agent (a channel of the login
# and an interpreter started on the target: about 0.2 s of the target's CPU
# before the tree step may start, measured over loopback, for each target
# of a fan-out), where reading some megabytes twice on the source (rsync's
# sender sums every file, then sends the missing ones) costs milliseconds;
# the target reads only its copies of the same size, the ones a proof
# would have most likely sent to be compared anyway.
# A bulk copy into the source (``cp -a`` of a dataset) is proven instead:
# its files are not read twice. One proof covers every subtree of a batch,
# so they are counted together; the count stops at the first bound passed
# (it runs in the syncer's loop, about 2 us an entry), and its verdict is
# kept a moment for the other targets of the sync, whose batches name the
# same directories (a heuristic: either way the mirror is exact).
SMALL_FILES = 10_000
SMALL_BYTES = 64 << 20
SMALL_DIRS = 1_000
SMALL_ENTRIES = 2 * SMALL_FILES  # of any type, read (a directory of symlinks)
SMALL_KEPT = 5.0  # seconds a verdict is reused


class _Large(Exception):
    """Raised out of :func:`_walk` past :data:`SMALL_DIRS` or
    :data:`SMALL_ENTRIES`."""


def hidden(rules: RuleList) -> Skip | None:
    """What the proof leaves out: what ``rules`` certainly keep from the
    target (None: the rules send everything)."""
    return None if rules.sends_everything else rules.hidden


def small(root: bytes, subtrees: Sequence[bytes], rules: RuleList | None = None) -> bool:
    """Do ``subtrees`` hold, together, few enough files, bytes and
    directories (what ``rules`` leave out aside) to be compared whole?"""
    files = size = dirs = entries = 0

    def listed() -> None:
        nonlocal dirs
        dirs += 1
        if dirs > SMALL_DIRS:
            raise _Large

    def entry() -> None:
        nonlocal entries
        entries += 1
        if entries > SMALL_ENTRIES:
            raise _Large

    try:
        for _name, st in _walk_tops(root, subtrees, rules, listed, entry):
            files += 1
            size += st[1]
            if files > SMALL_FILES or size > SMALL_BYTES:
                return False
    except (_Large, OSError):
        return False  # large, or out of descriptors: the proof decides
    return True


# (sync, its source, the names) -> (when, small or not)
_verdicts: dict[tuple[str, bytes, tuple[bytes, ...]], tuple[float, bool]] = {}


def how_proven(changes: Changes, sync: cfg.Sync, target: cfg.Target, rules: RuleList, *,
               provable: bool, startup: bool, now: float) -> None:
    """Settle, for one target's batch, which of ``changes.prove`` get a
    proof: the rest become plain rescans (nothing there to prove) or
    content comparisons (``verify``). In order:

    * a local target that holds nothing there: a plain rescan
      (:func:`nothing_to_prove`);
    * ``[sync.rsync] checksum``: every tree step compares content already,
      a proof would be a walk (over ssh, a session) for nothing;
    * an rsync daemon (nothing there answers), or a target not
      ``provable`` now (its agent off, a proof failed lately): compared,
      but for the start's proof of the root, which is tried all the same
      where an agent may answer;
    * outside the start, on a remote target, arrivals small together:
      compared (:func:`cheaper_compared`)."""
    nothing_to_prove(changes, target)
    if not changes.prove:
        return
    if sync.rsync.checksum or target.is_daemon or not provable:
        compared = {p for p in changes.prove
                    if p or target.is_daemon or sync.rsync.checksum}
        changes.verify |= compared
        changes.prove -= compared
    elif not startup:
        cheaper_compared(changes, target, sync.name, os.fsencode(sync.source), rules, now)


def cheaper_compared(changes: Changes, target: cfg.Target, sync: str, root: bytes,
                     rules: RuleList, now: float) -> None:
    """Turn ``changes.prove`` into content comparisons on a remote target
    when they are small together (see :data:`SMALL_FILES`). Never with the
    root among them: its proof is the start's. ``now``: monotonic."""
    if not changes.prove or not target.is_remote or b"" in changes.prove:
        return
    for old in [k for k, (t, _v) in _verdicts.items() if not 0 <= now - t <= SMALL_KEPT]:
        del _verdicts[old]
    key = (sync, root, tuple(sorted(changes.prove)))
    kept = _verdicts.get(key)
    if kept is not None:
        cheap = kept[1]
    else:
        cheap = _verdicts.setdefault(key, (now, small(root, key[2], rules)))[1]
    if cheap:
        changes.verify |= changes.prove
        changes.prove.clear()


def nothing_to_prove(changes: Changes, target: cfg.Target) -> None:
    """Turn ``changes.prove`` into plain quick-check rescans when a local
    target holds nothing under them yet: every file there is missing, so
    the quick check sends it, and no proof (a walk of the source) is
    needed. The usual first start, on an empty target, then
    costs what it did before proofs existed."""
    if not changes.prove or target.is_remote:
        return
    root = os.fsencode(target.path)
    for rel in list(changes.prove):
        try:
            with os.scandir(os.path.join(root, rel) if rel else root) as it:
                if next(it, None) is not None:
                    continue
        except FileNotFoundError:
            pass
        except OSError:
            continue  # the proof step says what is wrong
        changes.prove.discard(rel)
        changes.trees.add(rel)
