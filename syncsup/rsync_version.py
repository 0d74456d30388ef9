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
           "rsync_version", "sets_implied_dirs", "takes_missing_args"]

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


# binary -> (takes --delete-missing-args, sets implied directories): one probe
_receiver: dict[tuple[object, ...], tuple[bool, bool]] = {}


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
    So this is asked of the binary itself, not of its version: a transfer
    between two private temporary trees whose list names a file missing
    from the source that the destination has (:func:`_probe`). Exit 0: it
    takes the option; anything else: it does not, or cannot tell, and
    deletions are sent another way (which works with every receiver).
    Cached per binary (path, inode, size, mtime)."""
    return _receiver_probe(binary)[0]


def sets_implied_dirs(binary: str = "rsync") -> bool:
    """Whether a step of ``binary`` sending names from a list sets the mode
    and the modification time of every directory above them on the
    receiver (the transfer's root too), and of every directory it names,
    after the step's own writes and deletions there.

    rsync's ``--files-from`` implies ``--relative``, whose implied
    directories travel with their attributes, and a name written ``./name``
    makes the sender list the root (``.``) the same way; the receiver sets
    a directory's time last, after what it created or deleted in it. Then
    a separate step sending those directories for their times would change
    nothing, and the syncer leaves it out. Asked of the binary, not of its
    version, by the same transfer as :func:`takes_missing_args`: anything
    but every attribute matching is False, and the step stays."""
    return _receiver_probe(binary)[1]


def _receiver_probe(binary: str) -> tuple[bool, bool]:
    key = binary_identity(binary)
    if key is None:
        return False, False
    if key not in _receiver:
        try:
            with tempfile.TemporaryDirectory(prefix="syncsup-rsync-probe-") as tmp:
                _receiver[key] = _probe(str(key[0]), tmp)
        except OSError:  # the temporary trees could not be made: no answer
            _receiver[key] = False, False
    return _receiver[key]


# the probe's directories, each given its own mode and time on the source:
# the root and "a/b" implied by names, "a" named itself, "c" implied by a
# missing name alone
_DIRS = ("", "a", "a/b", "c")
_GONE = ("a/gone", "a/b/gone", "c/gone")


def _probe(binary: str, tmp: str) -> tuple[bool, bool]:
    """One transfer in ``tmp`` with the syncer's paths-step options: ``a``
    named (it lost ``gone``), ``a/b/f`` new, ``a/b/gone`` and ``c/gone``
    missing from the source. The first answer: the missing names were
    deleted (whatever the exit code: a receiver that rejects them fails
    with 2 and deletes nothing); the second: rsync also ended with 0 and
    every directory has the source's mode and time."""
    src, dst = os.path.join(tmp, "src"), os.path.join(tmp, "dst")
    for top in (src, dst):
        for rel in _DIRS[1:]:
            os.makedirs(os.path.join(top, rel))
    with open(os.path.join(src, "a", "b", "f"), "wb") as fh:
        fh.write(b"new\n")
    for gone in _GONE:
        with open(os.path.join(dst, gone), "wb"):
            pass
    for i, rel in enumerate(_DIRS):
        os.chmod(os.path.join(src, rel), 0o750 - 0o10 * i)
        os.utime(os.path.join(src, rel), ns=(0, 1_000_000_000 * (1000 + i) + 123_456_789))
    with open(os.path.join(tmp, "list"), "wb") as fh:
        fh.write(b"./a\0./a/gone\0./a/b/f\0./a/b/gone\0./c/gone\0")
    try:
        rc = subprocess.run(
            [binary, "-a", "--from0", f"--files-from={tmp}/list", "--force",
             "--modify-window=-1", "-d", "-I", "--delete-missing-args", "--",
             f"{src}/", f"{dst}/"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            timeout=20, check=False).returncode
    except (OSError, subprocess.TimeoutExpired):
        return False, False
    if any(os.path.lexists(os.path.join(dst, gone)) for gone in _GONE):
        return False, False
    if rc != 0:
        return True, False
    for rel in _DIRS:
        want, got = os.lstat(os.path.join(src, rel)), os.lstat(os.path.join(dst, rel))
        if (want.st_mode, want.st_mtime_ns) != (got.st_mode, got.st_mtime_ns):
            return True, False
    return True, True
