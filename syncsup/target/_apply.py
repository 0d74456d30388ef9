"""Changes applied to a target tree by syncsup itself (renames, deletes,
and small files, directories and symlinks written whole), always through
directory file descriptors.

Every path is split into components and opened one component at a time,
relative to the descriptor of the one before, with ``O_NOFOLLOW``: a symlink
anywhere on the way is never followed, whatever it points to and whenever it
appeared. The final operation (``renameat``, ``unlinkat``) acts on a name in
a directory that is already open, so no later change of a path string can
redirect it. A path is validated once, as a list of plain names; it is never
resolved again as a string. The syncer's local agent, which applies a whole
batch at once, keeps each directory open for the batch (``keep_dirs``):
one ``openat`` per directory per batch instead of two or three per path.

On a remote target this runs inside the kernel confinement of ``_kernel``
as well (Landlock, seccomp): two independent mechanisms, each enough on its
own. Metadata is changed only through descriptors (``fchmod``, ``fchown``,
``futimens``), which is all that confinement allows; a symlink's owner and
time cannot be set that way, so the syncer sends symlinks to a confined
target with rsync. For a local target the syncer uses this directly.

A file is written where no reader can see it half done: an unnamed file
(``O_TMPFILE``) in the target directory, given a name only once it is
complete and has its attributes, then renamed over the old one; ``commit``
makes the batch's files and directories durable before it answers. If
the writer is killed while writing, nothing is left behind; only the two
calls that name and rename it leave a ``.syncsup.*`` temporary name for an
instant. Where ``O_TMPFILE`` is not supported, a named temporary file is
used instead.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from dataclasses import dataclass, field

from syncsup.dirfd import DIR_FLAGS, DirCache, open_below, split_path
from syncsup.paths import is_within
from syncsup.privilege import can_chown

__all__ = ["Applier", "ApplyError", "Attrs", "Clear", "Protection", "split_path"]

MAX_UNSYNCED = 256  # written files kept open until commit()
FSYNC_MAX = 4       # more entries to make durable than this: one syncfs per filesystem
DIRS_KEPT = 64      # directories kept open within a batch (keep_dirs)

# Loaded now: the remote agent runs this after its chroot, where no library
# can be opened any more (dlopen(NULL) names the running program).
_libc = ctypes.CDLL(None, use_errno=True)
_libc.linkat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                         ctypes.c_int]
_AT_EMPTY_PATH = 0x1000


class ApplyError(OSError):
    """An operation was refused or failed; ``strerror`` says why."""


@dataclass(frozen=True)
class Attrs:
    """What ``rsync -a`` keeps of an entry: permission bits, modification
    time (nanoseconds), and owner and group (-1: leave them; only a
    privileged writer sets the owner)."""

    mode: int
    mtime_ns: int
    uid: int = -1
    gid: int = -1


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


@dataclass(frozen=True)
class Clear:
    """Mode bits never set on what arrives, the agent's counterpart of the
    confined rsync module's ``incoming chmod`` (both transports must leave
    the same tree): behind a confined key no file keeps set-user-ID or
    set-group-ID, and with the account's home inside ROOT no directory is
    writable by group or others (the home itself among them)."""

    files: int = 0
    dirs: int = 0


class Applier:
    """Operations below the directory open as ``root_fd``.

    ``proc_fd``, a descriptor of ``/proc/self/fd``, is a second way to give
    an unnamed file a name on kernels that refuse ``linkat(AT_EMPTY_PATH)``
    to an unprivileged caller (before 6.10). The confined agent never holds
    one (it would be a directory outside ROOT): there a file that cannot be
    named that way is written under a temporary name instead.

    ``keep_dirs``: the directories a batch works in stay open from one
    operation to the next until :meth:`commit` (:class:`DirCache`), for a
    caller that applies a whole batch at once (the syncer's local agent).
    A directory moved away meanwhile is still written through the
    descriptor opened before (never through a symlink put in its place).
    Without it, as for a remote session whose requests arrive one at a
    time, every operation looks its directories up again from ROOT: one
    that follows a swap of a directory for a symlink fails."""

    def __init__(self, root_fd: int, protection: Protection | None = None,
                 proc_fd: int | None = None, clear: Clear | None = None,
                 keep_dirs: bool = False) -> None:
        self.root_fd = root_fd
        self.protection = protection or Protection()
        self.proc_fd = proc_fd
        self.clear = clear or Clear()
        # Sets any owner: root, or the unit's service user, which holds
        # CAP_CHOWN without being uid 0 (decided by capability, as the kernel
        # does).
        self.privileged = can_chown()
        self.unnamed = True  # O_TMPFILE until the filesystem or the kernel says no
        self.touched: set[bytes] = set()  # directories written into, made durable by commit()
        self.unsynced: list[int] = []      # files written, made durable by commit()
        # the directories an operation (keep_dirs: the batch) works in
        self.dirs = DirCache(root_fd, self.protection.check_enter,
                             limit=DIRS_KEPT if keep_dirs else 0)

    @classmethod
    def open(cls, root: str | bytes, protection: Protection | None = None,
             keep_dirs: bool = False) -> Applier:
        try:
            proc_fd: int | None = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY
                                          | os.O_CLOEXEC)
        except OSError:
            proc_fd = None
        return cls(os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), protection,
                   proc_fd, keep_dirs=keep_dirs)

    def close(self) -> None:
        for fd in self.unsynced:
            os.close(fd)
        self.unsynced = []
        self.dirs.clear()
        os.close(self.root_fd)
        if self.proc_fd is not None:
            os.close(self.proc_fd)

    # -- writing whole entries ------------------------------------------------------

    def put(self, rel: bytes, data: bytes, attrs: Attrs, tree: bool = True) -> None:
        """Make ``rel`` a regular file holding ``data``, replacing whatever
        was there (a directory too, as rsync's ``--force``; with ``tree``
        false only an empty one)."""
        dirs, name = split_path(rel)
        self.dirs.trim()
        dfd = self._dir(dirs)
        self.protection.check(dfd, name)
        fd, tmp = self._new_file(dfd, name, attrs.mode & 0o777 & ~self.clear.files)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            self._fattrs(fd, attrs, self.clear.files)
            if tmp is None:  # unnamed: give it a name now that it is complete
                tmp = self._name_unnamed(fd, dfd, name)
                if tmp is None:  # refused: write it again under a temporary name
                    self.unnamed = False
                    os.close(fd)
                    fd = -1  # never closed twice: the number may be reused at once
                    fd, tmp = self._new_file(dfd, name)
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
                    self._fattrs(fd, attrs, self.clear.files)
            assert tmp is not None
            self._replace(dirs, dfd, tmp, name, tree)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            raise
        self._unsynced(fd)
        self.touched.add(b"/".join(dirs))

    def mkdir(self, rel: bytes, attrs: Attrs) -> None:
        """Make ``rel`` a directory (keeping its contents if it is one)."""
        dirs, name = split_path(rel)
        self.dirs.trim()
        dfd = self._dir(dirs)
        self.protection.check(dfd, name)
        try:
            st = os.lstat(name, dir_fd=dfd)
            if not stat.S_ISDIR(st.st_mode):
                os.unlink(name, dir_fd=dfd)
                raise FileNotFoundError
        except FileNotFoundError:
            self.dirs.forget([*dirs, name])
            os.mkdir(name, 0o700, dir_fd=dfd)
        # kept open: its entries and its time are what usually follows
        self._fattrs(self._dir([*dirs, name]), attrs, self.clear.dirs)
        self.touched.add(b"/".join(dirs))

    def symlink(self, rel: bytes, target: bytes, attrs: Attrs, tree: bool = True) -> None:
        """Make ``rel`` a symlink to ``target``, exactly (never resolved);
        ``tree`` as for :meth:`put`."""
        dirs, name = split_path(rel)
        self.dirs.trim()
        dfd = self._dir(dirs)
        self.protection.check(dfd, name)
        tmp = self._tmp_name(name)
        os.symlink(target, tmp, dir_fd=dfd)
        try:
            if self.privileged and attrs.uid >= 0:
                os.chown(tmp, attrs.uid, attrs.gid, dir_fd=dfd, follow_symlinks=False)
            os.utime(tmp, ns=(attrs.mtime_ns, attrs.mtime_ns), dir_fd=dfd,
                     follow_symlinks=False)
        except OSError:
            pass  # a symlink's owner and time are best effort, as for rsync
        self._replace(dirs, dfd, tmp, name, tree)
        self.touched.add(b"/".join(dirs))

    def set_time(self, rel: bytes, mtime_ns: int) -> None:
        """A directory's modification time, once its entries are written
        (ENOTDIR for anything but a directory)."""
        if rel == b"":
            os.utime(self.root_fd, ns=(mtime_ns, mtime_ns))
            return
        dirs, name = split_path(rel)
        self.dirs.trim()
        self.protection.check(self._dir(dirs), name)
        # Through a descriptor, never by name: the confined agent may not
        # change metadata by path at all (see _kernel).
        os.utime(self._dir([*dirs, name]), ns=(mtime_ns, mtime_ns))

    def _unsynced(self, fd: int) -> None:
        """Keep a written file's descriptor for commit(); past a bound, make
        them durable now (a batch may write thousands of files)."""
        self.unsynced.append(fd)
        if len(self.unsynced) > MAX_UNSYNCED:
            fds, self.unsynced = self.unsynced, []
            _durable(fds)

    def commit(self) -> None:
        """Make what was written durable: every file written (they became
        visible at once; durability is what the batch's acknowledgement
        waits for) and every directory written into."""
        fds, self.unsynced = self.unsynced, []
        touched, self.touched = self.touched, set()
        try:
            for rel in sorted(touched):
                try:
                    fds.append(self.dirs.take(rel.split(b"/") if rel else []))
                except OSError:
                    continue  # gone since: nothing of ours to make durable there
        finally:
            self.dirs.clear()  # the batch is over: a directory is looked up afresh
            _durable(fds)

    def _new_file(self, dfd: int, name: bytes, mode: int = 0o600) -> tuple[int, bytes | None]:
        """An unnamed file in ``dfd`` (None), or a named temporary one.
        The unnamed one is made with the permission bits ``mode`` it is
        to have, which saves an ``fchmod`` for most files: no one can open
        it before it is named, and by then its owner and mode are set. A
        named one is made private (0600) until then."""
        if self.unnamed:
            try:
                return os.open(".", os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, mode,
                               dir_fd=dfd), None
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                    raise
                self.unnamed = False
        tmp = self._tmp_name(name)
        return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                       | os.O_CLOEXEC, 0o600, dir_fd=dfd), tmp

    def _name_unnamed(self, fd: int, dfd: int, name: bytes) -> bytes | None:
        """Give the unnamed file ``fd`` a temporary name in ``dfd``: by
        ``linkat(fd, "", AT_EMPTY_PATH)`` (Linux 6.10+ for its opener, or
        with ``CAP_DAC_READ_SEARCH``), else through ``/proc/self/fd`` if we
        hold it. None if neither is allowed here."""
        tmp = self._tmp_name(name)
        if _libc.linkat(fd, b"", dfd, tmp, _AT_EMPTY_PATH) == 0:
            return tmp
        err = ctypes.get_errno()
        if err not in (errno.ENOENT, errno.EPERM, errno.EINVAL):
            raise OSError(err, os.strerror(err))
        if self.proc_fd is None:
            return None
        os.link(str(fd), tmp, src_dir_fd=self.proc_fd, dst_dir_fd=dfd, follow_symlinks=True)
        return tmp

    @staticmethod
    def _tmp_name(name: bytes) -> bytes:
        return b".syncsup." + name[:180] + b"." + os.urandom(4).hex().encode()

    def _fattrs(self, fd: int, attrs: Attrs, clear: int) -> None:
        """Owner, mode and time of the open entry ``fd``. An owner or mode
        it has already is not set again: each change is a metadata update
        the filesystem journals, and most entries a batch writes are made
        by the owner they should have (a directory written again usually
        has all of them already)."""
        st = os.fstat(fd)
        mode = attrs.mode & 0o7777 & ~clear
        chowned = False
        if self.privileged and attrs.uid >= 0:
            if (st.st_uid, st.st_gid) != (attrs.uid, attrs.gid):
                os.fchown(fd, attrs.uid, attrs.gid)
                chowned = True
        elif attrs.gid >= 0 and st.st_gid != attrs.gid:
            try:
                os.fchown(fd, -1, attrs.gid)  # a group we belong to, as rsync does
                chowned = True
            except OSError as exc:
                # not ours (EPERM), or not mapped in the user namespace of
                # an unprivileged confinement (EINVAL): kept, as rsync does
                if exc.errno not in (errno.EPERM, errno.EINVAL):
                    raise
        # a change of owner may clear set-user-ID and set-group-ID bits
        if chowned or stat.S_IMODE(st.st_mode) != mode:
            os.fchmod(fd, mode)
        os.utime(fd, ns=(attrs.mtime_ns, attrs.mtime_ns))

    def _replace(self, dirs: list[bytes], dfd: int, tmp: bytes, name: bytes,
                 tree: bool) -> None:
        """Rename ``tmp`` over ``name`` in ``dfd`` (the directory ``dirs``); a
        directory in the way is removed first (rsync's ``--force``), if
        ``tree`` with all it holds."""
        try:
            try:
                os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            except (IsADirectoryError, OSError) as exc:
                if exc.errno not in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
                    raise
                self.dirs.forget([*dirs, name])
                self._remove(dfd, name, tree)
                os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except OSError:
            try:
                os.unlink(tmp, dir_fd=dfd)
            except OSError:
                pass
            raise

    def stats(self, paths: list[bytes]) -> list[tuple[int, int, int]]:
        """``(ctime_ns, size, mtime_ns)`` of each of ``paths`` that is a
        regular file, ``(-1, -1, -1)`` for anything else (gone, another type,
        reached through a symlink or a protected entry): only read, so that a
        first start can prove which copies were written after their source
        last changed."""
        out: list[tuple[int, int, int]] = []
        parent: tuple[bytes, ...] | None = None
        fd = -1
        try:
            for rel in paths:
                dirs, name = split_path(rel)
                if tuple(dirs) != parent:
                    if fd >= 0:
                        os.close(fd)
                        fd = -1
                    parent = tuple(dirs)
                    try:
                        # not through the cache: a stats session never commits
                        fd = open_below(self.root_fd, dirs, self.protection.check_enter)
                    except OSError:
                        fd = -1
                try:
                    if fd < 0:
                        raise FileNotFoundError
                    self.protection.check(fd, name)
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    if not stat.S_ISREG(st.st_mode):
                        raise FileNotFoundError
                    out.append((st.st_ctime_ns, st.st_size, st.st_mtime_ns))
                except OSError:
                    out.append((-1, -1, -1))
        finally:
            if fd >= 0:
                os.close(fd)
        return out

    def _dir(self, parts: list[bytes]) -> int:
        """The directory ``parts`` below ROOT, opened without following any
        symlink and never through a protected entry; borrowed from the
        batch's :class:`DirCache` (not to be closed)."""
        return self.dirs.get(parts)

    def rename(self, src: bytes, dst: bytes) -> None:
        """Rename ``src`` onto ``dst`` (both relative), replacing a file or an
        empty directory there, like ``mv -f -T``."""
        sdirs, sname = split_path(src)
        ddirs, dname = split_path(dst)
        self.dirs.trim()
        # both names change what they lead to: before any descriptor is borrowed
        self.dirs.forget([*sdirs, sname])
        self.dirs.forget([*ddirs, dname])
        sfd = self._dir(sdirs)
        dfd = self._dir(ddirs)
        self.protection.check(sfd, sname)
        self.protection.check(dfd, dname)
        os.rename(sname, dname, src_dir_fd=sfd, dst_dir_fd=dfd)

    def delete(self, rel: bytes, tree: bool = True) -> None:
        """Remove ``rel`` and everything below it; gone already is fine.
        With ``tree`` false a directory is removed only if it is empty
        (ENOTEMPTY otherwise): a sync with excludes leaves such a delete to
        rsync, which keeps the excluded files and the directories holding
        them."""
        dirs, name = split_path(rel)
        self.dirs.trim()
        self.dirs.forget([*dirs, name])
        try:
            fd = self._dir(dirs)
        except FileNotFoundError:
            return
        self._remove(fd, name, tree)

    def _remove(self, parent: int, name: bytes, tree: bool = True) -> None:
        """Remove ``name`` in ``parent``, with all it holds if ``tree``.

        Iterative, holding two descriptors whatever the depth: the depth is
        the peer's choice (a source may hold a chain of thousands of
        directories), so neither recursion nor a descriptor per level may
        follow it. Instead the tree is flattened into the directory being
        removed: each child directory's own subdirectories are renamed up
        into it (under a ``.syncsup.del.N`` name), its other entries
        unlinked, and the emptied child removed; the moved ones are taken
        next, until nothing is left. Every entry is moved or removed by
        name in a directory already open, never through a path, and each
        is checked against the protection as it was before."""
        self.protection.check(parent, name)
        try:
            st = os.lstat(name, dir_fd=parent)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(name, dir_fd=parent)
            return
        if not tree:
            os.rmdir(name, dir_fd=parent)
            return
        top = os.open(name, DIR_FLAGS, dir_fd=parent)
        try:
            moved = 0
            while True:
                children = _entries(top)
                if not children:
                    break
                for child, is_dir in children:
                    moved = self._empty_into(top, child, is_dir, moved)
        finally:
            os.close(top)
        os.rmdir(name, dir_fd=parent)

    def _empty_into(self, top: int, child: bytes, is_dir: bool, moved: int) -> int:
        """Remove ``child`` of ``top``: a non-directory at once; a directory
        after unlinking its other entries and moving its subdirectories up
        into ``top`` (to be taken in a later round). Returns the counter of
        moved names."""
        self.protection.check(top, child)
        if not is_dir:
            _unlink(top, child)
            return moved
        try:
            fd = os.open(child, DIR_FLAGS, dir_fd=top)
        except FileNotFoundError:
            return moved
        try:
            for entry, entry_is_dir in _entries(fd):
                self.protection.check(fd, entry)
                if entry_is_dir:
                    moved = self._move_up(fd, entry, top, moved)
                else:
                    _unlink(fd, entry)
        finally:
            os.close(fd)
        os.rmdir(child, dir_fd=top)
        return moved

    @staticmethod
    def _move_up(fd: int, entry: bytes, top: int, moved: int) -> int:
        """Rename the directory ``entry`` of ``fd`` into ``top`` under a
        name not taken there (a rename onto an empty directory would
        replace it, which is as good: it goes too)."""
        while True:
            moved += 1
            try:
                os.rename(entry, b".syncsup.del.%d" % moved, src_dir_fd=fd, dst_dir_fd=top)
                return moved
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                    continue  # the name is taken: the next one
                if exc.errno in (errno.EACCES, errno.EPERM):
                    # moving a directory rewrites its "..": not allowed in
                    # one without write permission. Removable if empty.
                    try:
                        os.rmdir(entry, dir_fd=fd)
                        return moved
                    except OSError:
                        pass
                raise


def _entries(fd: int) -> list[tuple[bytes, bool]]:
    """The names in the open directory ``fd``, each with whether it is a
    directory (not following symlinks; from the directory entry itself
    where the filesystem says, saving a call per entry)."""
    with os.scandir(fd) as it:
        return [(os.fsencode(e.name), e.is_dir(follow_symlinks=False)) for e in it]


def _unlink(fd: int, name: bytes) -> None:
    try:
        os.unlink(name, dir_fd=fd)
    except FileNotFoundError:
        pass  # gone already: as good


def _durable(fds: list[int]) -> None:
    """Make the files and directories open as ``fds`` durable, and close
    them. A few get an ``fsync`` each; more get one ``syncfs`` per
    filesystem among them: each fsync waits for its own journal commit
    (about a millisecond or more each, a second for a thousand small
    files), where syncfs writes back the whole filesystem once. The
    filesystem's other dirty data is written back with ours, which is why
    a handful of entries still use fsync."""
    try:
        if len(fds) <= FSYNC_MAX:
            for fd in fds:
                os.fsync(fd)
            return
        devices: dict[int, int] = {}
        for fd in fds:
            devices.setdefault(os.fstat(fd).st_dev, fd)
        for fd in devices.values():
            if _libc.syncfs(fd) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))
    finally:
        for fd in fds:
            os.close(fd)
