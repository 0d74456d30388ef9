"""One rsync batch file for the local targets of a sync: a change sent by
rsync is read from the source once, not once per target.

When several local targets of a sync get the same ``paths`` step (the same
names and the same options: the usual case when a burst reaches every
target at once), the first runs rsync with ``--write-batch``, which records
what it sends (the file list and every file's data) while it updates its
own target; the others replay that record with ``--read-batch``: no sender
process, no read of the source. A target whose step comes while its batch
is being recorded waits for the recording (without taking one of
``max_processes``), at most :data:`WAIT` seconds, then runs plainly.

Why only ``paths`` steps with ``-I``, only to local targets, and always
``--whole-file``: a batch records what the writer's receiver asked for.
With ``-I`` that is every listed entry, sent whole, whatever the writer's
target held, so a replay leaves any target as a plain run would (its
generator still makes the directories and links, deletes what is gone and
sets every attribute itself). A ``tree`` or ``times`` step (the quick check)
or ``--checksum`` would record only what the writer's target lacked, and a
reader lacking something else would be left behind without an error; so
those steps never share. Deltas (rsync's default over a network) would be
computed against the writer's copies. Remote targets have the agent,
which reads once already. (rsync checks this too: a replay whose
receiver asks for a file the batch does not hold says "No batched update
for" it and exits 23; see below.) A sync with options of its own
(``[sync.rsync] extra``) never shares: an option there may change what a
batch records.

Any run of a shared batch that does not exit 0 (the batch file cut short or
gone, the disk full while writing it, anything else) is run again at once
the plain way, and that run's result is the step's: sharing can cost a
second run, never a different outcome. A batch is kept :data:`TTL` seconds
after it was written, at most :data:`KEEP` of them; one larger than
:data:`MAX_BYTES`, or whose files add up to more before it is written, is
not kept (the files are counted with ``lstat`` first, so a tree of large
files is never copied into the state directory).
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISREG

from syncsup import config as cfg
from syncsup.dirfd import DIR_FLAGS, DirCache, split_path
from syncsup.syncer.plan import Step, StepKind

__all__ = ["KEEP", "MAX_BYTES", "MAX_NAMES", "TTL", "WAIT", "SharedBatches", "Use", "batch_key",
           "read_argv", "shares", "write_argv"]

log = logging.getLogger("syncsup.syncer")

KEEP = 4  # batches kept at once (a burst reaches targets in a few waves)
MAX_BYTES = 64 << 20  # one batch file: the data of its files, and their list
MAX_NAMES = 20_000  # names in a shareable step (each is counted with lstat first)
TTL = 120.0  # s a batch is kept after it was written
WAIT = 10.0  # s a step may wait for its batch's recording
PREFIX = "shared-"

Key = tuple[tuple[str, ...], bytes]


def shares(sync: cfg.Sync) -> bool:
    """May ``sync``'s local targets share batches? Two of them at least,
    and no option the batch might not carry exactly."""
    local = sum(1 for t in sync.targets if not t.is_remote)
    return local >= 2 and not sync.rsync.extra


def batch_key(step: Step, target: cfg.Target, argv: Sequence[str], listed: bytes) -> Key | None:
    """What two targets' steps must share to share a batch: the command
    line but for the list file's path and the destination, and the list
    itself. None where the step may not share (see the module's doc)."""
    if target.is_remote or step.kind is not StepKind.PATHS or "-I" not in argv:
        return None
    if listed.count(b"\0") > MAX_NAMES:
        return None
    return tuple(a for a in argv[:-1] if not a.startswith("--files-from=")), listed


def write_argv(argv: Sequence[str], batch: Path) -> list[str]:
    """The plain command that also records its batch (data whole)."""
    return [*argv[:-2], "--whole-file", f"--write-batch={batch}", *argv[-2:]]


def read_argv(argv: Sequence[str], batch: Path) -> list[str]:
    """The same step replayed from ``batch``: no list, no source; the file
    list comes from the batch, every option as the writer had it."""
    keep = [a for a in argv[:-2] if not a.startswith("--files-from=") and a != "--from0"]
    return [*keep, "--whole-file", f"--read-batch={batch}", argv[-1]]


@dataclass
class _Entry:
    path: Path | None  # the batch, once written and kept
    at: float          # when it was written (or its writer started)
    writing: bool = False


@dataclass(frozen=True)
class Use:
    """How one step runs: ``argv``, and the plain one to fall back on
    (``plain`` is ``argv`` for a step that shares nothing). ``key`` and
    ``writes`` say what the end of the run tells :class:`SharedBatches`."""

    argv: list[str]
    plain: list[str]
    key: Key | None = None
    writes: Path | None = None  # the batch this run writes
    waits: bool = False  # not to be run yet: the batch of ``key`` is being written

    @property
    def shared(self) -> bool:
        return self.key is not None


class SharedBatches:
    """The batches written and being written, by key. ``sizes`` counts the
    bytes of a step's regular files (``lstat``; None: more than allowed)."""

    def __init__(self, directory: Path,
                 sizes: Callable[[bytes, bytes, int], int | None] | None = None) -> None:
        self.directory = directory
        self.sizes = sizes or list_sizes
        self.entries: OrderedDict[Key, _Entry] = OrderedDict()
        self.serial = 0
        self.clear()  # a killed syncer's

    def use(self, key: Key | None, argv: list[str], source: bytes, now: float,
            wait: bool = False) -> Use:
        """How to run a step whose plain command is ``argv`` (``source``:
        its sync's root, where the listed files are counted). ``wait``:
        rather than run it plainly beside the run that is recording its
        batch, say so (``waits``), to be asked again when that ends."""
        self.expire(now)
        if key is None:
            return Use(argv, argv)
        entry = self.entries.get(key)
        if entry is not None:
            if entry.writing and wait:
                return Use(argv, argv, key, waits=True)
            if entry.path is None:  # being written, or too large to keep
                return Use(argv, argv)
            self.entries.move_to_end(key)
            return Use(read_argv(argv, entry.path), argv, key)
        if self.sizes(source, key[1], MAX_BYTES) is None:
            self._add(key, _Entry(None, now))  # too large: no other target tries either
            return Use(argv, argv)
        self.serial += 1
        path = self.directory / f"{PREFIX}{self.serial}.batch"
        self._add(key, _Entry(None, now, writing=True))
        return Use(write_argv(argv, path), argv, key, writes=path)

    def writing(self, key: Key) -> bool:
        """Is the batch of ``key`` being recorded now?"""
        entry = self.entries.get(key)
        return entry is not None and entry.writing

    def ended(self, use: Use, ok: bool, now: float) -> None:
        """A shared run ended (``ok``: exit 0, not stalled)."""
        path = use.writes
        if use.key is None or path is None:
            return
        entry = self.entries.get(use.key)
        if entry is None or not entry.writing:  # evicted meanwhile
            _remove(path)
            return
        entry.writing, entry.at = False, now
        try:
            kept = ok and path.stat().st_size <= MAX_BYTES
        except OSError:
            kept = False
        if kept:
            entry.path = path
        else:
            _remove(path)
            if not ok:
                del self.entries[use.key]  # the next target of the step may write it

    def failed(self, use: Use) -> None:
        """A replay of ``use.key``'s batch failed: not used again."""
        entry = self.entries.pop(use.key, None) if use.key is not None else None
        if entry is not None and entry.path is not None:
            _remove(entry.path)

    def _add(self, key: Key, entry: _Entry) -> None:
        self.entries[key] = entry
        while len(self.entries) > KEEP:
            _key, old = self.entries.popitem(last=False)
            if old.path is not None:
                _remove(old.path)

    def expire(self, now: float) -> None:
        """Forget batches written more than :data:`TTL` ago (one being
        written stays: its run's end says what becomes of it)."""
        for key, entry in list(self.entries.items()):
            if not entry.writing and now - entry.at > TTL:
                del self.entries[key]
                if entry.path is not None:
                    _remove(entry.path)

    def clear(self) -> None:
        """At stop: every batch file, those being written too (their runs
        were stopped first)."""
        self.entries.clear()
        for leftover in self.directory.glob(f"{PREFIX}*"):
            leftover.unlink(missing_ok=True)


def _remove(batch: Path) -> None:
    """A batch file and the ``.sh`` rsync writes beside it."""
    for p in (batch, batch.with_name(batch.name + ".sh")):
        try:
            p.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("cannot remove %s: %s", p, exc.strerror)


def list_sizes(root: bytes, listed: bytes, limit: int) -> int | None:
    """The bytes of the regular files named in ``listed`` (NUL-separated,
    relative to ``root``), or None past ``limit``. Each name is looked up
    below ``root`` without following a symlink (:class:`~syncsup.dirfd.DirCache`);
    names gone, or not regular files, count nothing (a ``paths`` step does
    not recurse into a directory)."""
    total = 0
    try:
        root_fd = os.open(root, DIR_FLAGS)
    except OSError:
        return 0  # the run that follows says what is wrong
    dirs = DirCache(root_fd)
    try:
        for name in listed.split(b"\0"):
            try:
                parts, last = split_path(name)
                st = os.lstat(last, dir_fd=dirs.get(parts))
            except OSError:
                continue
            finally:
                dirs.trim()
            if S_ISREG(st.st_mode):
                total += st.st_size
                if total > limit:
                    return None
    finally:
        dirs.clear()
        os.close(root_fd)
    return total
