"""Asking an rsync for its version.

On the source the version decides nothing: whether the sender follows a
symlink raced into the source is probed (``syncsup.rsync_probe``), since
distributions backport fixes without changing the number and a build may
lack one whatever its number says. ``check`` shows the version.

A confined target's rsync only has to serve a chrooted daemon module with
an option allow-list (``refuse options`` with ``!`` terms): 3.2.0 or newer.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile

__all__ = ["MIN_TARGET", "binary_identity", "format_version", "parse_version",
           "rsync_version", "takes_missing_args"]

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


_missing_args: dict[tuple[object, ...], bool] = {}


def binary_identity(binary: str) -> tuple[object, ...] | None:
    """What an answer about ``binary`` is cached under: the file found on
    PATH (real path, device, inode, size, mtime), so that an rsync replaced
    in place is asked again; None if there is none."""
    path = shutil.which(binary)
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (os.path.realpath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def takes_missing_args(binary: str = "rsync") -> bool:
    """Whether ``binary``, as a receiver, accepts ``--delete-missing-args``.

    A sender lists a name missing on its side as an entry of mode 0, and
    receivers before rsync 3.4.4 may reject it (Debian 12's 3.2.7 does):
    "invalid file mode 00 ... protocol incompatibility", exit 2, every time.
    So this is asked of the binary itself, not of its version: a
    dry run (nothing is written) whose list names a missing file that the
    destination has. Exit 0: it takes the option; anything else: it does
    not, or cannot tell, and deletions are sent another way (which works
    with every receiver). Cached per binary (path, inode, size, mtime)."""
    key = binary_identity(binary)
    if key is None:
        return False
    if key not in _missing_args:
        with tempfile.TemporaryDirectory(prefix="syncsup-rsync-probe-") as tmp:
            src, dst = os.path.join(tmp, "src"), os.path.join(tmp, "dst")
            os.mkdir(src)
            os.mkdir(dst)
            with open(os.path.join(dst, "gone"), "wb"):
                pass
            with open(os.path.join(tmp, "list"), "wb") as fh:
                fh.write(b"./gone\0")
            try:
                rc = subprocess.run(
                    [str(key[0]), "-n", "-d", "--from0", f"--files-from={tmp}/list",
                     "--delete-missing-args", "--", f"{src}/", f"{dst}/"],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL, timeout=20, check=False).returncode
            except (OSError, subprocess.TimeoutExpired):
                rc = -1
        _missing_args[key] = rc == 0
    return _missing_args[key]
