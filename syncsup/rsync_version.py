"""Asking an rsync for its version.

On the source the version decides nothing: whether the sender follows a
symlink raced into the source is probed (``syncsup.rsync_probe``), since
distributions backport fixes without changing the number and a build may
lack one whatever its number says. ``check`` shows the version.

A confined target's rsync only has to serve a chrooted daemon module with
an option allow-list (``refuse options`` with ``!`` terms): 3.2.0 or newer.
"""

from __future__ import annotations

import re
import subprocess

__all__ = ["MIN_TARGET", "format_version", "parse_version", "rsync_version"]

MIN_TARGET = (3, 2, 0)


def parse_version(text: str) -> tuple[int, int, int] | None:
    """(3, 5, 0) from ``rsync  version 3.5.0  protocol version 32`` or ``3.5.0``."""
    m = re.search(r"(?:version\s+)?v?(\d+)\.(\d+)\.(\d+)", text)
    if m is None:
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def format_version(v: tuple[int, int, int]) -> str:
    return ".".join(map(str, v))


def rsync_version(binary: str = "rsync") -> tuple[int, int, int] | None:
    """The version of the local ``binary``, or None if it does not run."""
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True,
                             timeout=20, check=False, stdin=subprocess.DEVNULL).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    first = out.splitlines()[0] if out else ""
    return parse_version(first) if first.startswith("rsync") else None
