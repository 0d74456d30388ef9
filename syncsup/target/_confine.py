"""Kernel confinement of everything that writes on a target: a chroot into
ROOT, inside a fresh user and mount namespace when the account is not root.

Why a chroot and not path checks: the writer (rsync's receiver, or the
agent) resolves paths the client chooses, through symlinks the client may
have created a moment earlier. After ``chroot(ROOT)`` the kernel resolves
every path, ``..`` and absolute symlink targets included, inside ROOT, so no
race and no option can reach a byte outside it. Symlinks are stored exactly
as sent: they only ever *resolve* inside ROOT.

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

__all__ = ["ConfineError", "chroot_self", "describe", "grant_chroot_for_exec"]

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


def describe() -> str:
    """How confinement would work for this account, tried in a throw-away
    child so that this process is unchanged (for ``info`` and ``check``)."""
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
