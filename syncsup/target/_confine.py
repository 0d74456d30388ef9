"""The chroot of rsync's daemon on a target: rsync (``use chroot = yes``)
chroots itself into ROOT once it has read its module; this module makes that
possible for an account that is not root, and describes the whole
confinement of a target for ``info`` (the agent's kernel layer is
:mod:`._kernel`).

Why a chroot for rsync and not path checks: rsync's receiver resolves paths
the client chooses, through symlinks the client may have created a moment
earlier. After ``chroot(ROOT)`` the kernel resolves every path, ``..`` and
absolute symlink targets included, inside ROOT, so no race and no option
can reach a byte outside it. Symlinks are stored exactly as sent: they only
ever *resolve* inside ROOT. rsync runs no code of the client's, so a chroot
into a tree the client writes is safe for it; the agent, a Python
interpreter that reads its own files by path, is never chrooted there.

An unprivileged account cannot chroot. It can create a user namespace in
which it holds ``CAP_SYS_CHROOT`` over a new mount namespace of its own; its
uid is mapped to itself (so files are created as the account, exactly as
without the namespace) and no other id is mapped, so the capabilities it
holds there reach no file it did not own already. For a program started
after that (rsync's daemon, which chroots itself once it has read its
configuration) only ``CAP_SYS_CHROOT`` is passed on, as an ambient
capability.

If none of this is possible (user namespaces disabled by the administrator,
or an LSM that refuses them), confinement fails closed: nothing is written.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat

from syncsup.paths import is_within

__all__ = ["ConfineError", "chroot_self", "describe", "grant_chroot_for_exec",
           "limit_daemon_capabilities", "private_dir"]

_CLONE_NEWNS = 0x00020000
_CLONE_NEWUSER = 0x10000000
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_RAISE = 2
_CAP_SYS_CHROOT = 18
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class ConfineError(OSError):
    """Confinement is impossible here; the message says why and what to do."""


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise ConfineError(err, f"{what}: {os.strerror(err)}")


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _enter_user_namespace() -> None:
    """A new user + mount namespace owned by us, with our uid and gid mapped
    to themselves. Must be called while the process has a single thread."""
    uid, gid = os.geteuid(), os.getegid()
    libc = _libc()
    if libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNS) != 0:
        err = ctypes.get_errno()
        hint = ("unprivileged user namespaces are disabled here (sysctl "
                "user.max_user_namespaces / kernel.unprivileged_userns_clone, or an AppArmor "
                "or SELinux policy); run the target account as root or enable them")
        raise ConfineError(err, f"cannot create a user namespace ({os.strerror(err)}): {hint}")
    try:
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"{uid} {uid} 1\n")
        _write("/proc/self/gid_map", f"{gid} {gid} 1\n")
    except OSError as exc:
        raise ConfineError(exc.errno or errno.EPERM,
                           f"cannot map ids in the user namespace: {exc.strerror}") from None


_MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 2, 4, 8
_MS_REC, _MS_SLAVE = 0x4000, 0x80000
# Where a private tmpfs may be mounted: directories directly below "/",
# whose names only a process that may write "/" can change (root with a
# ROOT of "/", which is refused, or an unconfined login).
PRIVATE_MOUNTPOINTS = ("/mnt", "/media", "/srv", "/opt", "/tmp")


def private_dir(keep_visible: list[str]) -> str | None:
    """A directory that only this process and its children can see (and
    whoever may ptrace them, who controls the account anyway): a fresh
    tmpfs (0700), mounted in a mount namespace of this process's own on one
    of :data:`PRIVATE_MOUNTPOINTS` that neither holds nor lies inside any of
    ``keep_visible`` (ROOT, the lock directory, the rsync program). None
    where none can be had (no namespace, no mount allowed, ROOT ``/``): the
    caller falls back to a temporary directory.

    Why: rsync opens the module's file by its path, after it was written.
    A file in a directory the account can reach (``/tmp``) could be
    replaced in between by any process of the same account, such as code
    in the agent of another key whose ROOT holds that directory, and a
    module's ``early exec`` runs a command. A mount seen only in our
    namespace is out of their reach (a confined agent cannot follow
    ``/proc/PID/root``), and the account cannot rename the mountpoint from
    outside (its parent is ``/``). As root a new mount namespace is made
    here, a slave of the host's (our mounts propagate nowhere; the host's
    still reach us, so a filesystem unmounted there is not kept alive
    here); an unprivileged account is already in its own user and mount
    namespace (:func:`grant_chroot_for_exec`). The tmpfs goes with the
    namespace when rsync and this process have ended."""
    libc = _libc()
    if os.geteuid() == 0:
        if libc.unshare(_CLONE_NEWNS) != 0:
            return None
        if libc.mount(b"none", b"/", None, _MS_REC | _MS_SLAVE, None) != 0:
            return None
    visible = [os.path.realpath(p) for p in keep_visible]
    for point in PRIVATE_MOUNTPOINTS:
        if any(is_within(p, point) or is_within(point, p) for p in visible):
            continue  # it would hide one of them, or write into ROOT
        try:
            st = os.lstat(point)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode):
            continue
        if libc.mount(b"tmpfs", point.encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC,
                      b"size=1m,mode=0700") == 0:
            return point
    return None


def chroot_self(root: str) -> str:
    """Confine this process to ``root`` (an absolute, resolved path) and make
    ``/`` its working directory. Returns how (for logs and ``info``)."""
    how = "chroot"
    if os.geteuid() != 0:
        _enter_user_namespace()
        how = "chroot in a user namespace"
    try:
        os.chroot(root)
    except OSError as exc:
        raise ConfineError(exc.errno or errno.EPERM,
                           f"chroot({root}) failed: {exc.strerror}; an LSM may refuse "
                           "capabilities in user namespaces") from None
    os.chdir("/")
    return how


def grant_chroot_for_exec() -> str:
    """Prepare this process so that the program it execs next can chroot
    itself: nothing to do as root; otherwise enter a user namespace and keep
    only ``CAP_SYS_CHROOT`` across exec (ambient). Returns how."""
    if os.geteuid() == 0:
        return "chroot"
    _enter_user_namespace()
    libc = _libc()
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(libc.capget(ctypes.byref(header), data), "capget")
    data[0].inheritable |= 1 << _CAP_SYS_CHROOT
    _check(libc.capset(ctypes.byref(header), data), "capset")
    _check(libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_RAISE, _CAP_SYS_CHROOT, 0, 0),
           "raising CAP_SYS_CHROOT as an ambient capability")
    return "chroot in a user namespace"


# What rsync's daemon needs as root: chroot itself, switch to the module's
# ids (setgroups, setgid, setuid, all to 0), and keep owners and modes.
_DAEMON_CAPS = (0, 1, 3, 4, 6, 7, 18)  # CHOWN DAC_OVERRIDE FOWNER FSETID SETGID SETUID SYS_CHROOT
_PR_SET_PDEATHSIG = 1
_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38


def limit_daemon_capabilities() -> None:
    """Before exec of rsync's daemon (called in the child, between fork and
    exec): as root, every capability it does not need leaves the bounding
    set (``CAP_DAC_READ_SEARCH``, whose ``open_by_handle_at`` leaves any
    chroot, ``CAP_SYS_ADMIN``, ``CAP_SYS_PTRACE``, ``CAP_MKNOD``...); and
    no exec after this one gains privileges (``no_new_privs``)."""
    libc = _libc()
    # rsync runs in a process group of its own: if syncsup-target is killed,
    # the kernel ends rsync too
    _check(libc.prctl(_PR_SET_PDEATHSIG, 9, 0, 0, 0), "PR_SET_PDEATHSIG")
    if os.geteuid() == 0:
        for cap in range(64):
            if cap not in _DAEMON_CAPS and libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                if ctypes.get_errno() == errno.EINVAL:
                    break  # past the last capability this kernel knows
                _check(-1, "dropping capabilities")
    _check(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "PR_SET_NO_NEW_PRIVS")


def _chroot_probe() -> str:
    """Can rsync's daemon chroot here? Tried in a throw-away child so that
    this process is unchanged."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        os.close(r)
        try:
            how = chroot_self("/")
            msg = f"ok: {how}"
        except ConfineError as exc:
            msg = f"unavailable: {exc.strerror or exc}"
        except BaseException as exc:
            msg = f"unavailable: {exc}"
        os.write(w, msg.encode()[:4000])
        os._exit(0)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 4096):
        chunks.append(chunk)
    os.close(r)
    os.waitpid(pid, 0)
    return b"".join(chunks).decode(errors="replace") or "unavailable: probe failed"


def describe(allow_without: frozenset[str] = frozenset(), home_inside: bool = False) -> str:
    """How this target would be confined, for ``info`` and ``check``:
    ``ok: agent: ...; rsync: ...`` or ``unavailable: ...`` saying what is
    missing. A mechanism the administrator allowed to be missing shows as
    ``NO ...`` in an ``ok`` answer."""
    from syncsup.target._kernel import probe

    agent = probe(allow_without)
    if home_inside:
        agent = "ok: not served (the account's home is inside ROOT; rsync does all the work)"
    rsync = _chroot_probe()
    if agent.startswith("ok: ") and rsync.startswith("ok: "):
        return f"ok: agent: {agent[4:]}; rsync: {rsync[4:]}"
    problems = [text.removeprefix("unavailable: ") for text in (agent, rsync)
                if not text.startswith("ok: ")]
    return "unavailable: " + "; ".join(problems)
