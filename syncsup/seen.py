"""The watcher's seen-point: the moment before which every change of a sync
is known to be in its journal, and what a recovery may trust because of it.

Why it matters: when events are lost (the watcher was killed, the inotify
queue overflowed, syncsup was not running), something must find what
changed meanwhile. rsync's quick check (size and modification time) finds
almost everything, but not a rewrite that kept the size and put the old
mtime back. The kernel records more: a file's ctime moves on every write,
chmod, chown and rename, and no user can set it. So a file whose ctime is
older than the seen-point (minus a margin) is exactly as the journal last
knew it, and only the others — what changed in the gap — need their content
compared. A recovery then costs what changed, not a read of both trees.

The seen-point is committed in the journal in the same transaction as the
changes it vouches for (a power loss drops both together), with the boot it
belongs to and the offset of the wall clock to the boot-time clock, so that
a clock stepped backwards, or a reboot, widens the margin instead of hiding
a change.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from syncsup.timings import Timings

__all__ = ["Seen", "boot_id", "marker_boot_id", "read_seen"]


KERNEL_BOOT_ID = "/proc/sys/kernel/random/boot_id"
MOUNTINFO = "/proc/self/mountinfo"
MARKER = ".boot_id"  # in the runtime directory; the dot keeps it out of the registry
_MEMORY_FS = frozenset({"tmpfs", "ramfs"})


def boot_id() -> str:
    """This boot's id: the kernel's, else (where /proc/sys is hidden, as
    the unit's ``ProcSubset=pid`` does) one kept in the runtime directory,
    else "" (unknown: every boot then counts as a new one)."""
    global _known
    if _known:
        return _known  # a process never outlives its boot
    try:
        with open(KERNEL_BOOT_ID) as fh:
            kernel = fh.read().strip()
    except OSError:
        kernel = ""
    from syncsup.registry import registry_dir  # late: registry imports the config
    _known = marker_boot_id(registry_dir(), kernel)
    return _known


_known = ""


def marker_boot_id(directory: os.PathLike[str] | str, kernel: str = "",
                   mountinfo: str = MOUNTINFO) -> str:
    """The id in ``directory``'s marker, made now (the kernel's id if known,
    else a random one) if missing; ``kernel`` itself wherever it is known.

    Why a file in the runtime directory tells a reboot: that directory is
    on a memory file system (checked here, in this process's mount table),
    which a reboot empties; a marker found there was made in this boot. Any
    doubt (not a memory file system, unreadable, a race lost twice) gives
    "", which makes the next recovery compare as after a reboot: more work,
    never a change missed."""
    path = Path(directory) / MARKER
    on_memory_fs = _on_memory_fs(Path(directory), mountinfo)
    if kernel:
        # so that a daemon that cannot read the kernel's id, started later
        # in this boot, finds the same one
        if on_memory_fs and not path.exists():
            with contextlib.suppress(OSError):
                _make_marker(Path(directory), kernel)
        return kernel
    if not on_memory_fs:
        return ""
    for _ in range(2):
        try:
            text = path.read_text().strip()
        except FileNotFoundError:
            try:
                _make_marker(Path(directory), uuid.uuid4().hex)
            except OSError:
                return ""
            continue
        except OSError:
            return ""
        return text if 0 < len(text) <= 64 else ""
    return ""


def _make_marker(directory: Path, text: str) -> None:
    """Create the marker with ``text`` unless it exists (O_EXCL: of two
    daemons starting together, one writes it and both read it)."""
    if not directory.is_dir():
        raise FileNotFoundError(directory)
    tmp = directory / f"{MARKER}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text + "\n")
        os.link(tmp, directory / MARKER)  # fails if it exists: the first one stays
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)


def _on_memory_fs(directory: Path, mountinfo: str) -> bool:
    """Is ``directory`` on tmpfs or ramfs, by the mount table of this
    process (the innermost mount point above it)?"""
    try:
        real = os.path.realpath(directory)
        with open(mountinfo, "rb") as fh:
            lines = fh.read().decode("utf-8", "surrogateescape").splitlines()
    except OSError:
        return False
    best, fstype = "", ""
    for line in lines:
        fields = line.split()
        if "-" not in fields or len(fields) < 5:
            continue
        point = _unescape(fields[4])
        kind = fields[fields.index("-") + 1] if fields.index("-") + 1 < len(fields) else ""
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, fstype = point, kind
    return fstype in _MEMORY_FS


def _unescape(field: str) -> str:
    """A mountinfo path: space, tab, newline and backslash come octal-escaped."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


@dataclass(frozen=True)
class Seen:
    """Everything that changed before ``wall`` (``time.time()``) is in the
    journal. ``boot`` is the kernel's boot id; ``offset`` the wall clock
    minus the boot-time clock when it was taken."""

    wall: float
    boot: str
    offset: float

    @classmethod
    def now(cls) -> Seen:
        wall = time.time()
        return cls(wall, boot_id(), wall - time.clock_gettime(time.CLOCK_BOOTTIME))

    def cutoff(self, current: Seen, timings: Timings) -> float:
        """The ctime from which a file must be compared by content, judged at
        ``current``: the seen-point minus ``seen_margin`` (timestamp
        granularity, a coarse clock, small skews), minus any backward step
        of the wall clock since (same boot), or minus the wider
        ``reboot_margin`` after a reboot."""
        if current.boot != self.boot or not self.boot:
            return self.wall - timings.reboot_margin
        stepped_back = max(0.0, self.offset - current.offset)
        return self.wall - timings.seen_margin - stepped_back

    def to_json(self) -> str:
        return json.dumps({"wall": self.wall, "boot": self.boot, "offset": self.offset})

    @classmethod
    def from_json(cls, text: str | None) -> Seen | None:
        """None for anything unreadable: the caller then compares everything."""
        if not text:
            return None
        try:
            doc = json.loads(text)
            return cls(float(doc["wall"]), str(doc["boot"]), float(doc["offset"]))
        except (ValueError, KeyError, TypeError):
            return None


def read_seen(path: Path | str) -> Seen | None:
    """The seen-point committed in the journal at ``path``, read without
    writing anything (the watcher reads it at start; the collator owns the
    file, keeping it under the ``seen`` key of its ``meta`` table). Here,
    not in the collator's package, because both roles need it and a role
    never imports another. None if there is none, or the journal cannot be
    read."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error:
        return None
    try:
        row = db.execute("SELECT value FROM meta WHERE key = 'seen'").fetchone()
    except sqlite3.Error:
        return None
    finally:
        db.close()
    return Seen.from_json(None if row is None else str(row[0]))
