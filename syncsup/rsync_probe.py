"""Is this rsync's sender safe for this source? The behaviour is probed and
the risk judged, instead of trusting a version number.

The risk: an rsync sender that opens files by path follows a directory that
was replaced by a symlink between its file-list scan and its read, and
copies a file from outside the source to the targets. It needs two things:
a user other than the daemon's (and not root) who can write in the source,
to make the swap, and a daemon that can read what that user cannot.

The probe (:func:`sender_follows`) needs no race, so its answer does not
depend on timing: in a private temporary directory, ``src/dir`` is planted
*before* rsync starts as a symlink to a directory outside ``src``, owned by
a user other than root and the daemon's (fixed senders trust a symlink of
root's or their own user's, so a probe symlink of root's proves nothing),
and ``dir/secret`` is named in a ``--files-from`` list, the way syncsup
names paths. An rsync that resolves a listed name by path (its file list
``stat`` and its content ``open``, both following a parent symlink) sends
the outside file: that is the sender of rsync before 3.5.0, which also
follows a parent raced in after its file-list scan. One that walks from the
transfer root refusing another user's symlinks (rsync 3.5.0's
``secure_relative_open``, or a distribution's backport) sends nothing for
it. A control file listed beside it must arrive, or the probe tells
nothing. So the answer is the same on every run, right for a patched 3.2.7
and for a 3.5.0 built without the fix alike. Planting another user's
symlink needs ``CAP_CHOWN`` (``lchown``): root has it, and so does the
systemd unit's service user; a daemon without it gets "could not be
probed". ``check`` and start share the probe and its cache (one run
per rsync binary, keyed by its path, inode, size and mtime).

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
from collections.abc import Iterator
from pathlib import Path

from syncsup.privilege import can_chown
from syncsup.rsync_version import binary_identity

__all__ = ["Verdict", "foreign_writer", "judge", "sender_follows"]

_OUTSIDE = b"OUTSIDE!"
_CONTROL = b"control\n"
# The owner of the planted symlink: anyone but root and the daemon's user
# (the second when the daemon runs as the first).
_STRANGERS = (65534, 65533)

_cache: dict[tuple[object, ...], bool | None] = {}


def sender_follows(binary: str = "rsync", timeout: float = 30.0) -> bool | None:
    """True if ``binary``'s sender follows another user's symlink in a
    parent directory of what it sends, False if it does not, None if the
    probe could not tell (rsync did not run, the control file did not
    arrive, or this process cannot plant another user's symlink).

    Cached per binary identity, so ``check`` and start (and a restart)
    share one answer for the same file."""
    key = binary_identity(binary)
    if key is not None and key in _cache:
        return _cache[key]
    answer = _probe(binary, timeout)
    if key is not None:
        _cache[key] = answer
    return answer


_SAFE_TMP = "/tmp"


def _probe(binary: str, timeout: float) -> bool | None:
    if not can_chown():
        return None
    stranger = next(u for u in _STRANGERS if u != os.geteuid())
    # In /tmp (sticky, root's), never $TMPDIR: as root, a directory made
    # inside one that another user owns could be renamed away by that user
    # and a symlink put in its place, sending root's writes elsewhere.
    with tempfile.TemporaryDirectory(prefix="syncsup-rsync-probe-", dir=_SAFE_TMP) as tmp:
        root = Path(tmp)
        src, dst, outside = root / "src", root / "dst", root / "outside"
        for d in (src / "control", dst, outside):
            d.mkdir(parents=True)
        (src / "control" / "file").write_bytes(_CONTROL)
        (outside / "secret").write_bytes(_OUTSIDE)
        os.symlink(outside, src / "dir")
        try:
            os.lchown(src / "dir", stranger, stranger)
        except OSError:
            # e.g. root of a user namespace that maps no such user (EINVAL):
            # another user's symlink cannot be made here, so no answer
            return None
        (root / "list").write_bytes(b"control/file\0dir/secret\0")
        try:
            subprocess.run(
                [binary, "-a", "-d", "--from0", f"--files-from={root / 'list'}", "--",
                 f"{src}/", f"{dst}/"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, timeout=timeout, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        try:
            if (dst / "control" / "file").read_bytes() != _CONTROL:
                return None
        except OSError:
            return None
        sent = dst / "dir" / "secret"
        try:
            return not sent.is_symlink() and sent.read_bytes() == _OUTSIDE
        except OSError:
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
            "source" + ("" if can_chown() else " (the probe needs root or CAP_CHOWN)"))
    if strict:
        return Verdict(refuse=f"{binary} {what}; settings.strict_rsync = true refuses it: "
                              "use an rsync whose sender does not follow (rsync 3.5.0 or a "
                              "patched build), or set strict_rsync = false")
    writer = foreign_writer(source)
    if writer is not None:
        return Verdict(refuse=f"{binary} {what}, and another user can write in {source} "
                              f"({writer}): that user could make syncsup copy files from "
                              "outside the source; use an rsync that does not follow "
                              "(rsync 3.5.0 or a patched build), or keep others from "
                              "writing in the source")
    return Verdict(warn=f"{binary} {what}; harmless here, as only this user and root can "
                        f"write in {source} (settings.strict_rsync = true refuses it)")
