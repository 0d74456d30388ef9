"""Is this rsync's sender safe for this source? The behaviour is probed and
the risk judged, instead of trusting a version number.

The risk: an rsync sender that opens files by path follows a directory that
was replaced by a symlink between its file-list scan and its read, and
copies a file from outside the source to the targets. It needs two things:
a user other than the daemon's (and not root) who can write in the source,
to make the swap, and a daemon that can read what that user cannot.

The probe (:func:`sender_follows`) makes that race happen, deterministically,
in a private temporary directory: ``src/big`` is read slowly
(``--bwlimit``), and the moment the sender opens it (an inotify IN_OPEN)
``src/dir`` is swapped for a symlink to a directory outside ``src``. The
sender then comes to ``dir/secret``: a sender that walks from the transfer
root refusing symlinks does not send it; one that opens by path sends the
outside file's content. So the answer is right for a distribution's patched
3.2.7 and for a 3.5.0 built without the fix alike. It takes about half a
second, once per rsync binary at start and in ``check``.

The judgement (:func:`foreign_writer`): a directory of the source writable
by a user other than the daemon's and root (its owner, a group-writable
group other than the daemon's own private one, or everyone). Found: start
refuses; elsewhere it warns once and runs. ``[settings] strict_rsync =
true`` refuses a following sender whatever the source.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import inotify_simple

__all__ = ["Verdict", "foreign_writer", "judge", "sender_follows"]

_INSIDE = b"inside!!"
_OUTSIDE = b"OUTSIDE!"
_BIG = 48 * 1024
_BWLIMIT = "96"  # KiB/s: big takes ~0.5 s, the window in which dir is swapped


def sender_follows(binary: str, timeout: float) -> bool | None:
    """True if ``binary``'s sender follows a symlink raced into a parent
    directory of what it sends, False if it does not, None if the probe
    could not tell (rsync did not run, or never opened the file, within
    ``timeout`` seconds for each step)."""
    with tempfile.TemporaryDirectory(prefix="syncsup-rsync-probe-") as tmp:
        root = Path(tmp)
        src, dst, outside = root / "src", root / "dst", root / "outside"
        for d in (src / "dir", dst, outside):
            d.mkdir(parents=True)
        (src / "big").write_bytes(os.urandom(_BIG))
        (src / "dir" / "secret").write_bytes(_INSIDE)
        (outside / "secret").write_bytes(_OUTSIDE)
        with inotify_simple.INotify() as ino:
            ino.add_watch(src, inotify_simple.flags.OPEN)
            try:
                proc = subprocess.Popen(
                    [binary, "-a", "--no-inc-recursive", f"--bwlimit={_BWLIMIT}", "--",
                     f"{src}/", f"{dst}/"], stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            except OSError:
                return None
            try:
                if not _wait_open(ino, b"big", proc, timeout):
                    return None
                os.rename(src / "dir", src / "dir.was")
                os.symlink(outside, src / "dir")
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                return None
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        sent = dst / "dir" / "secret"
        try:
            return sent.is_file() and not sent.is_symlink() and sent.read_bytes() == _OUTSIDE
        except OSError:
            return False


def _wait_open(ino: inotify_simple.INotify, name: bytes,
               proc: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in ino.read(timeout=100):
            if os.fsencode(event.name) == name:
                return True
        if proc.poll() is not None:
            return False
    return False


def _private_group(gid: int, uid: int) -> bool:
    """``gid`` is ``uid``'s own group (its primary group, no other member)."""
    try:
        group = grp.getgrgid(gid)
        user = pwd.getpwuid(uid)
    except KeyError:
        return False
    return user.pw_gid == gid and set(group.gr_mem) <= {user.pw_name}


def _directories(top: Path) -> Iterator[tuple[Path, os.stat_result]]:
    stack = [top]
    while stack:
        d = stack.pop()
        try:
            st = os.lstat(d)
        except OSError:
            continue
        yield d, st
        try:
            with os.scandir(d) as it:
                stack += [Path(e.path) for e in it if e.is_dir(follow_symlinks=False)]
        except OSError:
            continue


def foreign_writer(source: Path, uid: int | None = None) -> str | None:
    """The first directory of ``source`` (itself included) that a user
    other than ``uid`` (the daemon's) and root can write, described, or
    None. ACLs are not read."""
    uid = os.geteuid() if uid is None else uid
    for d, st in _directories(source):
        mode = stat.S_IMODE(st.st_mode)
        if st.st_uid not in (uid, 0):
            return f"{d} belongs to uid {st.st_uid}"
        if mode & 0o002:
            return f"{d} is writable by every user (mode {mode:o})"
        if mode & 0o020 and st.st_gid != 0 and not _private_group(st.st_gid, uid):
            return f"{d} is writable by group {st.st_gid} (mode {mode:o})"
    return None


class Verdict:
    """What start does about one sync's rsync: ``refuse`` (a message) or
    ``warn`` (a message, logged once), or neither."""

    def __init__(self, refuse: str | None = None, warn: str | None = None) -> None:
        self.refuse = refuse
        self.warn = warn


def judge(binary: str, follows: bool | None, source: Path, strict: bool) -> Verdict:
    """The verdict for ``source`` mirrored with ``binary``, given the probe."""
    if follows is False:
        return Verdict()
    what = ("follows a symlink raced into a parent directory of the source (probed)"
            if follows else "could not be probed for following a symlink raced into the "
            "source")
    if strict:
        return Verdict(refuse=f"{binary} {what}; settings.strict_rsync refuses it")
    writer = foreign_writer(source)
    if writer is not None:
        return Verdict(refuse=f"{binary} {what}, and another user can write in {source} "
                              f"({writer}): that user could make syncsup copy files from "
                              "outside the source; use an rsync that does not follow "
                              "(rsync 3.5.0 or a patched build), or keep others from "
                              "writing in the source")
    return Verdict(warn=f"{binary} {what}; harmless here, as only this user and root can "
                        f"write in {source} (settings.strict_rsync = true refuses it)")
