"""Changes applied to a target tree by syncsup itself (renames, deletes),
always through directory file descriptors.

Every path is split into components and opened one component at a time,
relative to the descriptor of the one before, with ``O_NOFOLLOW``: a symlink
anywhere on the way is never followed, whatever it points to and whenever it
appeared. The final operation (``renameat``, ``unlinkat``) acts on a name in
a directory that is already open, so no later change of a path string can
redirect it. A path is validated once, as a list of plain names; it is never
resolved again as a string.

On a remote target this runs inside the chroot of ``_confine`` as well: two
independent mechanisms, each enough on its own. For a local target the
syncer uses it directly.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field

from syncsup.dirfd import DIR_FLAGS, open_below, split_path
from syncsup.paths import is_within

__all__ = ["Applier", "ApplyError", "Protection", "split_path"]


class ApplyError(OSError):
    """An operation was refused or failed; ``strerror`` says why."""


@dataclass(frozen=True)
class Protection:
    """Entries a mirror must never change on this target: the directories
    from ROOT down to the account's home (when the home is inside ROOT), and
    every name starting with ``.`` directly in that home (``.ssh``, shell
    start-up files), by inode, not by name."""

    dirs: frozenset[tuple[int, int]] = field(default_factory=frozenset)
    home: tuple[int, int] | None = None

    @classmethod
    def for_home(cls, root: str, home: str) -> Protection:
        root_r, home_r = os.path.realpath(root), os.path.realpath(home)
        if not is_within(home_r, root_r):
            return cls()
        dirs = set()
        path = home_r
        while path != root_r:
            st = os.lstat(path)
            dirs.add((st.st_dev, st.st_ino))
            path = os.path.dirname(path)
        st = os.lstat(home_r)
        return cls(frozenset(dirs), (st.st_dev, st.st_ino))

    def check_enter(self, parent_fd: int, name: bytes) -> None:
        """Raise if the directory ``name`` in the open directory ``parent_fd``
        may not be walked into: a ``.`` entry of the home (``.ssh``,
        ``.config``). Protecting those names is not enough, their contents
        must be out of reach too: a rename onto ``.ssh/authorized_keys``
        never changes ``.ssh`` itself."""
        if self.home is None or not name.startswith(b"."):
            return
        pst = os.fstat(parent_fd)
        if (pst.st_dev, pst.st_ino) == self.home:
            raise ApplyError(errno.EPERM, f"{name!r} in the account's home is protected")

    def check(self, parent_fd: int, name: bytes) -> None:
        """Raise if ``name`` in the open directory ``parent_fd`` is protected."""
        if self.home is None:
            return
        pst = os.fstat(parent_fd)
        if name.startswith(b".") and (pst.st_dev, pst.st_ino) == self.home:
            raise ApplyError(errno.EPERM, f"{name!r} in the account's home is protected")
        try:
            st = os.lstat(name, dir_fd=parent_fd)
        except FileNotFoundError:
            return
        if (st.st_dev, st.st_ino) in self.dirs:
            raise ApplyError(errno.EPERM, f"{name!r} leads to the account's home; protected")


class Applier:
    """Operations below the directory open as ``root_fd``."""

    def __init__(self, root_fd: int, protection: Protection | None = None) -> None:
        self.root_fd = root_fd
        self.protection = protection or Protection()

    @classmethod
    def open(cls, root: str | bytes, protection: Protection | None = None) -> Applier:
        return cls(os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), protection)

    def close(self) -> None:
        os.close(self.root_fd)

    def _open_dir(self, parts: list[bytes]) -> int:
        """A new descriptor of the directory ``parts`` below ROOT, opened
        without following any symlink and never through a protected entry."""
        return open_below(self.root_fd, parts, self.protection.check_enter)

    def rename(self, src: bytes, dst: bytes) -> None:
        """Rename ``src`` onto ``dst`` (both relative), replacing a file or an
        empty directory there, like ``mv -f -T``."""
        sdirs, sname = split_path(src)
        ddirs, dname = split_path(dst)
        sfd = self._open_dir(sdirs)
        try:
            dfd = self._open_dir(ddirs)
            try:
                self.protection.check(sfd, sname)
                self.protection.check(dfd, dname)
                os.rename(sname, dname, src_dir_fd=sfd, dst_dir_fd=dfd)
            finally:
                os.close(dfd)
        finally:
            os.close(sfd)

    def delete(self, rel: bytes) -> None:
        """Remove ``rel`` and everything below it; gone already is fine."""
        dirs, name = split_path(rel)
        try:
            fd = self._open_dir(dirs)
        except FileNotFoundError:
            return
        try:
            self._remove(fd, name)
        finally:
            os.close(fd)

    def _remove(self, parent: int, name: bytes) -> None:
        self.protection.check(parent, name)
        try:
            st = os.lstat(name, dir_fd=parent)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(name, dir_fd=parent)
            return
        fd = os.open(name, DIR_FLAGS, dir_fd=parent)
        try:
            for child in os.listdir(fd):
                self._remove(fd, os.fsencode(child))
        finally:
            os.close(fd)
        os.rmdir(name, dir_fd=parent)
