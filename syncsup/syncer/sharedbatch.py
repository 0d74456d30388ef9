"""One rsync batch file for the local targets of a sync: a change sent by
rsync is read from the source once, not once per target.

When several local targets of a sync get the same ``paths`` step (the same
names, the same options: the usual case when a burst reaches every target),
the first runs rsync with ``--write-batch``, which records what it sends
(the file list and every file's data) while it updates its own target; the
others replay that record with ``--read-batch``: no sender process, no read
of the source. A target whose step comes while its batch is being recorded
waits for the recording (holding none of ``max_processes``), at most
:data:`WAIT` seconds, then runs plainly.

**A recording is for the changes it was made for, not for a list of
names.** The same names come again with the next change of the same files
(a large file appended to, batch after batch), and a replay of the earlier
recording would put the earlier content back with rsync exiting 0. The
rule: a batch may replay a recording only if its newest change is no
newer than the newest change of the batch the recording was made for
(``Batch.generation``, the counter of the sync's collator journal, which
grows with every change recorded; ``Batch.journal`` names that journal
for one run of the collator, so that two syncs on one source, a rebuilt
journal or a restarted collator never have their counters compared).
That batch was handed out after its changes, and its recording started
after that and read the source after that, so a replay writes the source
as it was at least as late as every change of the batch replaying it:
what a plain run started at that moment could have read. Any change made
after the recording started (a write still in progress when it read, a
file made and deleted again) has its own event, a higher generation, and
a later batch for every target, which never replays this recording.

A second, independent check: the recording keeps the version of every listed
name as it found it before the run (device, inode, mode, size, mtime and
ctime, or "nothing there"), and a replay is allowed only while every name
still has it. ctime moves with every write, chmod, chown, rename or
unlink on the file systems a source is normally on (not on FAT, whose
ctime is its mtime), so a version that changed is a change that came
after the recording began. Alone it is likely, not certain: before Linux
6.13 a ctime has the clock tick's resolution, and a same-size rewrite
within the tick of the ``lstat`` keeps it.

Why only ``paths`` steps with ``-I``, only to local targets, and always
``--whole-file``: a batch records what the recording target's receiver
asked for. With ``-I`` that is every listed entry, sent whole, whatever
that target held, so a replay leaves any target as a plain run would (its
own generator makes the directories on the way, deletes what is gone and
sets every attribute). A ``tree`` or ``times`` step (the quick check) or
``--checksum`` would record only what the recording target lacked; rsync
notices a replay that asks for a file the batch does not hold ("No batched
update for", exit 23), but those steps never share. Deltas (rsync's default
over a network) would be against the recording target's copies. Remote
targets have the agent, which reads once already. A sync with options of
its own (``[sync.rsync] extra``) never shares: one may change what a batch
records.

Any shared run that does not exit 0 (the batch cut short or gone, the disk
full, the recording past its size limit, anything else) is run again at
once the plain way, and that run's result is the step's: sharing can cost
a second run, never a different outcome. (A recording that ends in 23 or
24, files that changed or vanished while it read them, ended as the plain
run it also is: that is its result, and nothing is replayed from it.)

A batch is kept :data:`TTL` seconds, at most :data:`KEEP` of them besides
those being recorded (one dropped while a replay of it has started, which
may not have opened it yet, is removed when its last replay ends), each at
most :data:`MAX_BYTES` of files: they are
counted before the recording, which runs under a file size limit of twice
that (``prlimit``), so a source that grows meanwhile fails the recording
instead of filling the state directory's file system.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISREG

from syncsup import config as cfg
from syncsup.dirfd import DIR_FLAGS, DirCache, split_path
from syncsup.syncer.plan import Step, StepKind

__all__ = ["KEEP", "MAX_BYTES", "MAX_NAMES", "MAX_WAITS", "TTL", "WAIT", "Fingerprint",
           "SharedBatches", "Use", "batch_key", "read_argv", "shares", "versions_of", "write_argv"]

log = logging.getLogger("syncsup.syncer")

KEEP = 4  # batches kept at once (a burst reaches targets in a few waves)
MAX_BYTES = 64 << 20  # one batch file: the data of its files, and their list
MAX_NAMES = 20_000  # names in a shareable step (each is counted with lstat first)
TTL = 120.0  # s a batch is kept after it was written
WAIT = 10.0  # s a step may wait for its batch's recording
MAX_WAITS = 3  # times a step may wait for a recording (a recording of the same names can follow)
PREFIX = "shared-"

Key = tuple[tuple[str, ...], bytes]
# One listed name's version: (device, inode, mode, size, mtime, ctime), or
# None where nothing is there. ctime moves with every write, chmod, chown,
# rename and unlink of a name, and no user can set it (but on FAT, whose
# ctime is its mtime).
Version = tuple[int, int, int, int, int, int] | None
Fingerprint = tuple[Version, ...]

_PRLIMIT = shutil.which("prlimit")


def shares(sync: cfg.Sync) -> bool:
    """May ``sync``'s local targets share batches? Two of them at least,
    no option the batch might not carry exactly, and a way to bound the
    recording's size (util-linux's ``prlimit``)."""
    local = sum(1 for t in sync.targets if not t.is_remote)
    return local >= 2 and not sync.rsync.extra and _PRLIMIT is not None


def batch_key(step: Step, target: cfg.Target, argv: Sequence[str], listed: bytes,
              journal: tuple[str, int] = ("", 0)) -> Key | None:
    """What two targets' steps must share to share a batch: the journal
    their batches' generations come from (the sync's name and
    ``Batch.journal``: two syncs may have one source), the command line
    but for the list file's path and the destination, and the list itself.
    None where the step may not share (see the module's doc)."""
    if target.is_remote or step.kind is not StepKind.PATHS or "-I" not in argv:
        return None
    if listed.count(b"\0") > MAX_NAMES or not journal[1]:
        return None
    return (journal[0], str(journal[1]),
            *(a for a in argv[:-1] if not a.startswith("--files-from="))), listed


def write_argv(argv: Sequence[str], batch: Path) -> list[str]:
    """The plain command that also records its batch (data whole), under a
    file size limit of twice :data:`MAX_BYTES` (the files were counted
    within it; the batch adds its list and framing): a source that grew
    after it was counted makes the run fail (and be sent again plainly),
    never fills the state directory's file system."""
    assert _PRLIMIT is not None
    return [_PRLIMIT, f"--fsize={2 * MAX_BYTES}", "--", *argv[:-2], "--whole-file",
            f"--write-batch={batch}", *argv[-2:]]


def read_argv(argv: Sequence[str], batch: Path) -> list[str]:
    """The same step replayed from ``batch``: no list, no source; the file
    list comes from the batch, every option as the writer had it, and
    ``--relative``, which ``--files-from`` implies (without it a target
    that lacks a listed name's directory cannot take it, and the
    directories on the way get no time)."""
    keep = [a for a in argv[:-2] if not a.startswith("--files-from=") and a != "--from0"]
    return [*keep, "--relative", "--whole-file", f"--read-batch={batch}", argv[-1]]


@dataclass
class _Entry:
    generation: int       # the newest change of the batch it was recorded for
    version: Fingerprint  # the listed names as the recording found them
    at: float             # when it was recorded (or its recording started)
    writing: Path | None = None  # the file its recording writes, until it ends
    path: Path | None = None     # the batch, once recorded and kept (None: failed)


@dataclass(frozen=True)
class Use:
    """How one step runs: ``argv``, and the plain one to fall back on
    (``plain`` is ``argv`` for a step that shares nothing). ``key`` and
    ``writes`` say what the end of the run tells :class:`SharedBatches`."""

    argv: list[str]
    plain: list[str]
    key: Key | None = None
    writes: Path | None = None  # the batch this run writes
    reads: Path | None = None  # the batch this run replays
    # not to be run before this moment (monotonic), unless the recording
    # of ``key``'s batch ends sooner
    waits: float = 0.0

    @property
    def shared(self) -> bool:
        return self.key is not None


Versions = Callable[[bytes, Sequence[bytes], int], Fingerprint | None]


class SharedBatches:
    """The batches recorded and being recorded, by key, each with the
    version of its names it holds. ``versions`` reads those versions
    (:func:`versions_of`)."""

    def __init__(self, directory: Path, versions: Versions | None = None) -> None:
        self.directory = directory
        self.versions = versions or versions_of
        self.entries: OrderedDict[Key, _Entry] = OrderedDict()
        self.serial = 0
        # batch file -> replays started and not yet ended: a batch dropped
        # meanwhile (past KEEP, expired, a failed replay) is removed when its
        # last replay ends, not under a replay that has yet to open it
        self.reading: dict[Path, int] = {}
        self.clear()  # a killed syncer's

    def use(self, key: Key | None, argv: list[str], source: bytes, names: Sequence[bytes],
            now: float, generation: int = 0, wait: bool = False) -> Use:
        """How to run a step whose plain command is ``argv``, of a batch
        whose newest change is ``generation``, sending ``names`` (relative
        to ``source``, its sync's root). ``wait``: rather than run it
        plainly beside the run that is recording its batch, say so
        (``waits``), to be asked again when that ends."""
        self.expire(now)
        if key is None or generation <= 0:
            return Use(argv, argv)
        entry = self.entries.get(key)
        if entry is not None and generation > entry.generation:
            # a later change of these names: not what was recorded (or failed)
            if entry.writing is not None:
                return Use(argv, argv)
            self._drop(key)
            entry = None
        if entry is not None and entry.writing is not None:
            return Use(argv, argv, key, waits=now + WAIT) if wait else Use(argv, argv)
        if entry is not None and entry.path is None:
            return Use(argv, argv)  # its recording failed: not again for these changes
        version = self.versions(source, names, MAX_BYTES)
        if entry is not None and entry.path is not None:
            if version == entry.version:
                self.entries.move_to_end(key)
                self.reading[entry.path] = self.reading.get(entry.path, 0) + 1
                return Use(read_argv(argv, entry.path), argv, key, reads=entry.path)
            self._drop(key)  # changed since it was recorded: recorded again below
        if version is None:  # too large
            return Use(argv, argv)
        self.serial += 1
        path = self.directory / f"{PREFIX}{self.serial}.batch"
        self._add(key, _Entry(generation, version, now, writing=path))
        return Use(write_argv(argv, path), argv, key, writes=path)

    def writing(self, key: Key) -> bool:
        """Is the batch of ``key`` being recorded now?"""
        entry = self.entries.get(key)
        return entry is not None and entry.writing is not None

    def ended(self, use: Use, ok: bool, now: float) -> None:
        """A shared run ended (``ok``: exit 0, not stalled), or never
        started (not ``ok``)."""
        if use.reads is not None:
            self._release(use.reads)
        path = use.writes
        if use.key is None or path is None:
            return
        entry = self.entries.get(use.key)
        if entry is None or entry.writing != path:  # dropped meanwhile
            _remove(path)
            return
        entry.writing, entry.at = None, now
        try:
            kept = ok and path.stat().st_size <= MAX_BYTES
        except OSError:
            kept = False
        if kept:
            entry.path = path
        else:
            # the others of these changes go plainly (a recording that fails
            # for one, an unreadable file, fails for all: never N of them)
            _remove(path)

    def failed(self, use: Use) -> None:
        """A replay of ``use.key``'s batch failed: not used again (the
        others of its changes go plainly)."""
        entry = self.entries.get(use.key) if use.key is not None else None
        if entry is not None and use.writes is None and entry.path is not None:
            self._discard(entry.path)
            entry.path = None

    def _release(self, path: Path) -> None:
        left = self.reading.pop(path, 0) - 1
        if left > 0:
            self.reading[path] = left
        elif all(e.path != path for e in self.entries.values()):
            _remove(path)  # dropped while it was read

    def _discard(self, path: Path) -> None:
        """Remove a batch no entry keeps now, or when the replays reading it
        end (:meth:`_release`)."""
        if not self.reading.get(path):
            _remove(path)

    def _drop(self, key: Key) -> None:
        entry = self.entries.pop(key, None)
        if entry is not None and entry.path is not None:
            self._discard(entry.path)

    def _add(self, key: Key, entry: _Entry) -> None:
        self.entries[key] = entry
        while len(self.entries) > KEEP:
            old = next(iter(self.entries))
            self._drop(old)  # one being recorded: its run's end removes its file

    def expire(self, now: float) -> None:
        """Forget batches recorded more than :data:`TTL` ago (one being
        recorded stays: its run's end says what becomes of it)."""
        for key, entry in list(self.entries.items()):
            if entry.writing is None and now - entry.at > TTL:
                self._drop(key)

    def clear(self) -> None:
        """At stop: every batch file, those being written too (their runs
        were stopped first)."""
        self.entries.clear()
        self.reading.clear()
        for leftover in self.directory.glob(f"{PREFIX}*"):
            leftover.unlink(missing_ok=True)


def _remove(batch: Path) -> None:
    """A batch file and the ``.sh`` rsync writes beside it."""
    for p in (batch, batch.with_name(batch.name + ".sh")):
        try:
            p.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("cannot remove %s: %s", p, exc.strerror)


def versions_of(root: bytes, names: Sequence[bytes], limit: int) -> Fingerprint | None:
    """The version of every one of ``names`` (relative to ``root``, ``b""``
    the root itself), each looked up below ``root`` without following a
    symlink (:class:`~syncsup.dirfd.DirCache`); None if the regular files
    among them add up to more than ``limit`` bytes, or the root cannot be
    opened.

    It runs before the recording and before every replay (a hundred
    targets: a hundred times for each burst), in the syncer's one thread,
    so a name's directory is looked up once for the run of names that
    share it (a step's names come sorted), not once per name."""
    total = 0
    out: list[Version] = []
    try:
        root_fd = os.open(root, DIR_FLAGS)
    except OSError:
        return None
    dirs = DirCache(root_fd)
    # the directory ``where`` is open on (the root first); None while a
    # lookup is under way (a trim may close ``where``, the lookup may fail)
    parent: list[bytes] | None = []
    where = root_fd
    try:
        for name in names:
            try:
                if not name:
                    st = os.fstat(root_fd)
                else:
                    parts, last = split_path(name)
                    if parts != parent:
                        parent = None
                        dirs.trim()
                        where = dirs.get(parts)
                        parent = parts
                    st = os.lstat(last, dir_fd=where)
            except OSError:
                out.append(None)
                continue
            if S_ISREG(st.st_mode):
                total += st.st_size
                if total > limit:
                    return None
            out.append((st.st_dev, st.st_ino, st.st_mode, st.st_size, st.st_mtime_ns,
                        st.st_ctime_ns))
    finally:
        dirs.clear()
        os.close(root_fd)
    return tuple(out)
