"""Mounts and unmounts inside a source, which inotify never reports.

A filesystem mounted over a watched directory hides it: the watch stays on
the covered directory, and nothing is seen of what the new filesystem holds
or of what is written there. An unmount does the same the other way round.
The kernel does say that the mount table changed: ``/proc/self/mountinfo``
polls with ``POLLPRI`` then. The watcher polls it with its other sockets,
and on a change rescans (watch first, then scan) each mount point that came
or went inside a source: the one event it needs, for free while nothing
changes.
"""

from __future__ import annotations

import os
import re

__all__ = ["MOUNTINFO", "ancestors", "mount_points", "open_mountinfo", "read_mountinfo",
           "under"]

MOUNTINFO = "/proc/self/mountinfo"

_OCTAL = re.compile(rb"\\([0-7]{3})")


def open_mountinfo() -> int | None:
    """A descriptor of the mount table to poll (None: not available; mounts
    made while running are then found by the next rescan that reaches them)."""
    try:
        return os.open(MOUNTINFO, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


def read_mountinfo(fd: int) -> bytes:
    """The whole mount table, read again from the start."""
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def mount_points(table: bytes) -> set[bytes]:
    """Every mount point in ``mountinfo`` text (field 5, octal escapes
    undone: a space is ``\\040`` there)."""
    out = set()
    for line in table.splitlines():
        fields = line.split(b" ")
        if len(fields) > 4:
            out.add(_OCTAL.sub(lambda m: bytes([int(m.group(1), 8)]), fields[4]))
    return out


def ancestors(rel: bytes) -> list[bytes]:
    """``a``, ``a/b``, ``a/b/c`` for ``a/b/c`` (to ask whether a mount point
    lies in an excluded directory)."""
    parts = rel.split(b"/")
    return [b"/".join(parts[:i]) for i in range(1, len(parts) + 1)]


def under(root: bytes, points: set[bytes]) -> set[bytes]:
    """The mount points at or inside ``root``, relative to it (the root
    itself is ``b""``)."""
    root = root.rstrip(b"/")
    prefix = root + b"/"
    return {p[len(prefix):] if p != root else b"" for p in points
            if p == root or p.startswith(prefix)}
