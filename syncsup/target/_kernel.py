"""The kernel layer of the agent's confinement: what a process may still do
once it holds nothing but a descriptor of ROOT, whatever code runs in it.

Why the kernel and not our checks: the agent's own code (the applier, the
schema, the protocol) is the layer that an attacker attacks. If any of it
fails (an uncaught exception, a missed check, a pushed file that the
interpreter reads), code of the attacker's choosing may run in the agent.
This layer is built so that even then the process can change nothing
outside ROOT, read nothing outside ROOT but the interpreter's own files,
and start nothing:

* **Landlock** (Linux 5.13+, unprivileged): every filesystem right the
  kernel knows of is handled; ROOT gets read, write, create, remove and
  rename, never execute or device nodes; the interpreter's directories get
  read only; everything else gets nothing. From ABI 4 (6.7) TCP bind and
  connect are refused; from ABI 6 (6.12) signals and abstract Unix sockets
  reach no process outside the agent.
* **Capabilities**: all dropped, from the bounding set too. An account
  other than root has none to drop. Root keeps the four that let a mirror
  keep owners and modes on what it writes (``CAP_CHOWN``,
  ``CAP_DAC_OVERRIDE``, ``CAP_FOWNER``, ``CAP_FSETID``); Landlock and the
  filter below confine them to ROOT.
* ``PR_SET_NO_NEW_PRIVS`` and ``PR_SET_DUMPABLE`` 0.
* **seccomp** (through libseccomp, the library made for building filters):
  exec, ptrace, mounts, chroot, namespaces, bpf, io_uring, keyrings,
  modules, handles, sockets, signals to other processes, and every call
  that changes metadata *by path* are refused with ``EPERM``. Landlock does
  not cover ``chmod``, ``chown``, ``utime`` or extended attributes: a
  process confined by Landlock alone could still ``chmod /etc/shadow`` by
  name. The applier changes metadata only through descriptors it opened
  (``fchmod``, ``fchown``, ``futimens``), and opening is what Landlock
  confines. System calls of another architecture (``int 0x80``) kill the
  process.

The order matters and is fixed: descriptors are closed first (a descriptor
opened earlier is not re-checked by Landlock), the ruleset is built while
the interpreter's directories can still be opened, capabilities go while
``CAP_SETPCAP`` is still held, then the restriction, then the filter.

A mechanism the kernel lacks is an error naming it (``KernelError``); the
target's administrator may accept running without it with an option in
``authorized_keys`` (``--allow-without=landlock``), which the key cannot
change. Nothing read from the client decides any of this.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["MECHANISMS", "Confinement", "KernelError", "landlock_abi", "probe",
           "restrict", "seccomp_available"]

MECHANISMS = ("landlock", "seccomp")

# -- Landlock (include/uapi/linux/landlock.h) ---------------------------------
_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1

FS_EXECUTE = 1 << 0
FS_WRITE_FILE = 1 << 1
FS_READ_FILE = 1 << 2
FS_READ_DIR = 1 << 3
FS_REMOVE_DIR = 1 << 4
FS_REMOVE_FILE = 1 << 5
FS_MAKE_CHAR = 1 << 6
FS_MAKE_DIR = 1 << 7
FS_MAKE_REG = 1 << 8
FS_MAKE_SOCK = 1 << 9
FS_MAKE_FIFO = 1 << 10
FS_MAKE_BLOCK = 1 << 11
FS_MAKE_SYM = 1 << 12
FS_REFER = 1 << 13        # ABI 2
FS_TRUNCATE = 1 << 14     # ABI 3
FS_IOCTL_DEV = 1 << 15    # ABI 5
NET_BIND_TCP = 1 << 0     # ABI 4
NET_CONNECT_TCP = 1 << 1  # ABI 4
SCOPE_ABSTRACT_UNIX = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1         # ABI 6

_FS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1,
              5: (1 << 16) - 1}
READ_ONLY = FS_READ_FILE | FS_READ_DIR
# What ROOT may be given: everything but running a file and device nodes
# (a device node written inside ROOT would open the host's disks).
ROOT_DENIED = FS_EXECUTE | FS_MAKE_CHAR | FS_MAKE_BLOCK | FS_IOCTL_DEV

# -- capabilities and prctl ---------------------------------------------------
_PR_SET_DUMPABLE = 4
_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_CAP_VERSION_3 = 0x20080522
CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER, CAP_FSETID = 0, 1, 2, 3, 4
ROOT_KEEPS = (CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_FOWNER, CAP_FSETID)
# A session that only reads (``stats``) keeps root's right to look into
# every directory and nothing that writes or changes an owner or a mode.
ROOT_KEEPS_READING = (CAP_DAC_READ_SEARCH,)
_CAP_LAST = 63  # PR_CAPBSET_DROP of an unknown capability is EINVAL: ignored

# -- seccomp (seccomp.h of libseccomp) ----------------------------------------
_SCMP_ACT_ALLOW = 0x7FFF0000
_SCMP_ACT_ERRNO_EPERM = 0x00050000 | errno.EPERM
_SCMP_CMP_NE = 1
_SCMP_CMP_MASKED_EQ = 7

# System calls no applier needs, each refused with EPERM. Names this
# architecture lacks (chmod on arm64) are skipped by libseccomp.
DENIED_CALLS: tuple[str, ...] = (
    # running anything else
    "execve", "execveat", "fork", "vfork", "clone", "clone3",
    # other processes
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_open", "pidfd_getfd",
    "pidfd_send_signal", "kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo",
    # the filesystem namespace
    "mount", "umount2", "pivot_root", "chroot", "fsopen", "fsconfig", "fsmount", "fspick",
    "move_mount", "open_tree", "mount_setattr", "setns", "unshare",
    # metadata by path (Landlock does not cover these; by descriptor is fine)
    "chmod", "fchmodat", "fchmodat2", "chown", "lchown", "fchownat", "utime", "utimes",
    "futimesat", "setxattr", "lsetxattr", "fsetxattr", "removexattr", "lremovexattr",
    "fremovexattr", "setxattrat", "removexattrat", "truncate", "mknod", "mknodat",
    # ways around the other layers
    "open_by_handle_at", "name_to_handle_at", "bpf", "perf_event_open", "userfaultfd",
    "io_uring_setup", "io_uring_enter", "io_uring_register", "keyctl", "add_key",
    "request_key", "memfd_create", "memfd_secret", "process_madvise", "landlock_add_rule",
    # identity
    "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid", "setfsuid",
    "setfsgid", "setgroups", "capset",
    # the network
    "socket", "socketpair", "connect", "bind", "listen", "accept", "accept4",
    # the host
    "reboot", "kexec_load", "kexec_file_load", "init_module", "finit_module",
    "delete_module", "swapon", "swapoff", "acct", "quotactl", "quotactl_fd", "syslog",
    "iopl", "ioperm", "personality", "settimeofday", "clock_settime", "clock_adjtime",
    "adjtimex", "sethostname", "setdomainname", "lookup_dcookie", "nfsservctl",
)
# A session that only reads (``stats``) is refused, besides, every call
# that changes the tree by descriptor, and opening a file to write or create:
# these hold without Landlock.
WRITING_CALLS: tuple[str, ...] = (
    "unlink", "unlinkat", "rmdir", "rename", "renameat", "renameat2", "mkdir", "mkdirat",
    "link", "linkat", "symlink", "symlinkat", "creat", "fchmod", "fchown", "ftruncate",
    "fallocate", "utimensat", "copy_file_range", "splice", "sendfile", "sendfile64",
)
# Flags of open/openat that write or create; each is refused on its own
# (a seccomp rule compares one masked value).
WRITING_OPEN_FLAGS = (os.O_WRONLY, os.O_RDWR, os.O_CREAT, os.O_TRUNC, os.O_APPEND)
# Numbers for calls newer than the libseccomp a host may have (the same on
# x86_64 and arm64: calls added since 5.x share one number everywhere).
_NEW_CALLS = {"fchmodat2": 452, "setxattrat": 463, "removexattrat": 466}
_UNIFIED_ARCHES = ("x86_64", "aarch64")


class KernelError(OSError):
    """The kernel (or the host) lacks a mechanism; ``strerror`` names it and
    says how the administrator can accept running without it."""


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _fail(what: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}")


# -- probing ------------------------------------------------------------------
def landlock_abi() -> int:
    """The Landlock ABI version this kernel offers, 0 if none."""
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    abi = libc.syscall(ctypes.c_long(_SYS_CREATE_RULESET), None, ctypes.c_size_t(0),
                       ctypes.c_uint32(_CREATE_RULESET_VERSION))
    return int(abi) if abi > 0 else 0


def _load_libseccomp() -> ctypes.CDLL | None:
    for name in ("libseccomp.so.2", "libseccomp.so"):
        try:
            return ctypes.CDLL(name, use_errno=True)
        except OSError:
            continue
    return None


def seccomp_available() -> bool:
    """Can a filter be loaded here (libseccomp present, seccomp in the kernel)?"""
    if _load_libseccomp() is None:
        return False
    try:
        with open("/proc/self/status", "rb") as fh:
            return any(line.startswith(b"Seccomp:") for line in fh)
    except OSError:
        return True  # no /proc to ask: seccomp_load will tell


@dataclass(frozen=True)
class Confinement:
    """What the kernel layer holds for this process (for ``info``, ``check``
    and the docs): the Landlock ABI in force (0: none), whether the seccomp
    filter is loaded, and the capabilities kept."""

    landlock: int
    seccomp: bool
    kept_caps: tuple[int, ...]

    def describe(self) -> str:
        parts = [f"landlock ABI {self.landlock}" if self.landlock else "NO landlock",
                 "seccomp" if self.seccomp else "NO seccomp",
                 "no capabilities" if not self.kept_caps
                 else "capabilities: chown, dac_override, fowner, fsetid only"]
        return ", ".join(parts)


def probe(allow_without: frozenset[str] = frozenset()) -> str:
    """How the kernel layer would confine the agent here: ``ok: ...`` or
    ``unavailable: ...`` naming what is missing (and not allowed to be)."""
    abi = landlock_abi()
    seccomp = seccomp_available()
    missing = [m for m, ok in (("landlock", abi > 0), ("seccomp", seccomp)) if not ok]
    refused = [m for m in missing if m not in allow_without]
    if refused:
        return "unavailable: " + _missing_text(refused)
    kept = ROOT_KEEPS if os.geteuid() == 0 else ()
    return "ok: " + Confinement(abi, seccomp, kept).describe()


def _missing_text(missing: Iterable[str]) -> str:
    names = list(missing)
    what = {"landlock": "Landlock (Linux 5.13 or newer with landlock in the lsm= list)",
            "seccomp": "seccomp (libseccomp2 and a kernel with CONFIG_SECCOMP_FILTER)"}
    return ("the kernel layer cannot be built: missing " + "; ".join(what[m] for m in names)
            + ". Fix the host, or accept a weaker confinement explicitly by adding "
            + " ".join(f"--allow-without={m}" for m in names)
            + " before ROOT in the forced command of authorized_keys")


# -- the restriction ----------------------------------------------------------
def close_other_descriptors(keep: Iterable[int]) -> None:
    """Close every descriptor but ``keep``: a descriptor opened before the
    restriction is not checked again by Landlock (a directory outside ROOT
    held open would be a way out)."""
    keep_set = set(keep)
    fds = [int(name) for name in os.listdir("/proc/self/fd")] if os.path.isdir(
        "/proc/self/fd") else list(range(3, 1024))
    for fd in fds:
        if fd not in keep_set:
            try:
                os.close(fd)
            except OSError:
                pass  # the listing's own descriptor, closed already


def _landlock_ruleset(abi: int, root_fd: int, readable: Iterable[str],
                      read_only: bool = False) -> int:
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    fs = _FS_BY_ABI.get(abi, _FS_BY_ABI[5])
    if abi >= 6:
        attr = struct.pack("=QQQ", fs, NET_BIND_TCP | NET_CONNECT_TCP,
                           SCOPE_ABSTRACT_UNIX | SCOPE_SIGNAL)
    elif abi >= 4:
        attr = struct.pack("=QQ", fs, NET_BIND_TCP | NET_CONNECT_TCP)
    else:
        attr = struct.pack("=Q", fs)
    buf = ctypes.create_string_buffer(attr, len(attr))
    ruleset = libc.syscall(ctypes.c_long(_SYS_CREATE_RULESET), buf, ctypes.c_size_t(len(attr)),
                           ctypes.c_uint32(0))
    if ruleset < 0:
        raise _fail("landlock_create_ruleset")

    def add(allowed: int, fd: int) -> None:
        rule = ctypes.create_string_buffer(struct.pack("=Qi", allowed & fs, fd), 12)
        if libc.syscall(ctypes.c_long(_SYS_ADD_RULE), ctypes.c_int(ruleset),
                        ctypes.c_int(_RULE_PATH_BENEATH), rule, ctypes.c_uint32(0)) != 0:
            raise _fail("landlock_add_rule")

    try:
        add(READ_ONLY if read_only else fs & ~ROOT_DENIED, root_fd)
        for path in readable:
            try:
                fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError:
                continue  # not there: nothing to grant
            try:
                add(READ_ONLY, fd)
            finally:
                os.close(fd)
    except BaseException:
        os.close(ruleset)
        raise
    return int(ruleset)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def drop_capabilities(keep: Iterable[int]) -> None:
    """Only ``keep`` stays, in the effective and permitted sets; nothing is
    inheritable or ambient; the bounding set loses everything else (while
    ``CAP_SETPCAP`` is still held: this is done first)."""
    keep = tuple(keep)
    libc = _libc()
    for cap in range(_CAP_LAST + 1):
        if cap in keep:
            continue
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            err = ctypes.get_errno()
            if err == errno.EINVAL:
                break  # past the last capability this kernel knows
            if err != errno.EPERM:  # EPERM: no CAP_SETPCAP, so nothing to lose
                raise _fail("PR_CAPBSET_DROP")
    if libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        if err != errno.EINVAL:  # kernels before 4.3 have no ambient set
            raise _fail("PR_CAP_AMBIENT_CLEAR_ALL")
    header = _CapHeader(_CAP_VERSION_3, 0)
    data = (_CapData * 2)()
    for cap in keep:
        data[cap // 32].effective |= 1 << (cap % 32)
        data[cap // 32].permitted |= 1 << (cap % 32)
    if libc.capset(ctypes.byref(header), data) != 0:
        raise _fail("capset")


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


def _seccomp_filter(lib: ctypes.CDLL, read_only: bool = False) -> None:
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                           ctypes.c_uint, ctypes.POINTER(_ArgCmp)]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    ctx = lib.seccomp_init(_SCMP_ACT_ALLOW)
    if not ctx:
        raise OSError(errno.ENOMEM, "seccomp_init failed")
    try:
        for name in DENIED_CALLS + (WRITING_CALLS if read_only else ()):
            nr = lib.seccomp_syscall_resolve_name(name.encode())
            if nr == -1:  # unknown to this libseccomp
                if name not in _NEW_CALLS or platform.machine() not in _UNIFIED_ARCHES:
                    continue
                nr = _NEW_CALLS[name]
            rc = lib.seccomp_rule_add_array(ctx, _SCMP_ACT_ERRNO_EPERM, nr, 0, None)
            if rc != 0 and nr >= 0:
                raise OSError(-rc, f"seccomp rule for {name}: {os.strerror(-rc)}")
        if not read_only:  # (reading: utimensat is refused whole, above)
            # utimensat with a path (argument 1 not NULL) changes a file by
            # name; with NULL it is futimens on a descriptor we opened.
            cmp = (_ArgCmp * 1)(_ArgCmp(1, _SCMP_CMP_NE, 0, 0))
            nr = lib.seccomp_syscall_resolve_name(b"utimensat")
            rc = lib.seccomp_rule_add_array(ctx, _SCMP_ACT_ERRNO_EPERM, nr, 1, cmp)
            if rc != 0:
                raise OSError(-rc, f"seccomp rule for utimensat: {os.strerror(-rc)}")
        # open with O_PATH is not checked by Landlock; nothing here needs it
        # after the restriction, and a descriptor it gives could name
        # places outside ROOT for the calls above.
        refused_flags = (os.O_PATH, *(WRITING_OPEN_FLAGS if read_only else ()))
        for name in ("open", "openat"):
            nr = lib.seccomp_syscall_resolve_name(name.encode())
            if nr < 0:
                continue
            arg = 1 if name == "open" else 2
            for flag in refused_flags:
                if flag == 0:
                    continue  # (O_RDONLY: never a flag to refuse)
                rule = (_ArgCmp * 1)(_ArgCmp(arg, _SCMP_CMP_MASKED_EQ, flag, flag))
                rc = lib.seccomp_rule_add_array(ctx, _SCMP_ACT_ERRNO_EPERM, nr, 1, rule)
                if rc != 0:
                    raise OSError(-rc, f"seccomp rule for {name}: {os.strerror(-rc)}")
        # openat2 takes its flags in a structure seccomp cannot read, so the
        # rules above could not hold for it: refused whole (Python's own
        # opens are open/openat).
        nr = lib.seccomp_syscall_resolve_name(b"openat2")
        if nr >= 0:
            rc = lib.seccomp_rule_add_array(ctx, _SCMP_ACT_ERRNO_EPERM, nr, 0, None)
            if rc != 0:
                raise OSError(-rc, f"seccomp rule for openat2: {os.strerror(-rc)}")
        # a terminal's input queue (TIOCSTI, TIOCLINUX) is another process's
        # command line, if the agent ever runs on one
        nr = lib.seccomp_syscall_resolve_name(b"ioctl")
        if read_only:
            # and a session that only reads needs no ioctl at all: some
            # change a file through a read-only descriptor (FS_IOC_SETFLAGS,
            # FS_IOC_FSSETXATTR, a btrfs snapshot), which Landlock does not
            # cover (Python's isatty then answers "no": harmless)
            rc = lib.seccomp_rule_add_array(ctx, _SCMP_ACT_ERRNO_EPERM, nr, 0, None)
            if rc != 0:
                raise OSError(-rc, f"seccomp rule for ioctl: {os.strerror(-rc)}")
        for request in () if read_only else (0x5412, 0x541C):
            tty = (_ArgCmp * 1)(_ArgCmp(1, _SCMP_CMP_MASKED_EQ, 0xFFFFFFFF, request))
            rc = lib.seccomp_rule_add_array(ctx, _SCMP_ACT_ERRNO_EPERM, nr, 1, tty)
            if rc != 0:
                raise OSError(-rc, f"seccomp rule for ioctl: {os.strerror(-rc)}")
        rc = lib.seccomp_load(ctx)
        if rc != 0:
            raise OSError(-rc, f"seccomp_load: {os.strerror(-rc)}")
    finally:
        lib.seccomp_release(ctx)


def restrict(root_fd: int, readable: Iterable[str], allow_without: frozenset[str],
             keep_fds: Iterable[int] = (0, 1, 2), read_only: bool = False) -> Confinement:
    """Confine this process to ``root_fd`` for good (see the module's
    docstring). ``readable`` are directories the interpreter may still read
    (its own files). Raises KernelError if a mechanism not in
    ``allow_without`` is missing, OSError if a step fails: either way the
    caller serves nothing. ``read_only``: ROOT may only be read (Landlock
    grants reading alone, seccomp refuses every call that writes, root keeps
    only ``CAP_DAC_READ_SEARCH``), for a session that answers ``stats``."""
    abi = landlock_abi()
    lib = _load_libseccomp()
    missing = [m for m, ok in (("landlock", abi > 0), ("seccomp", lib is not None)) if not ok]
    refused = [m for m in missing if m not in allow_without]
    if refused:
        raise KernelError(errno.ENOSYS, _missing_text(refused))
    close_other_descriptors([*keep_fds, root_fd])
    ruleset = _landlock_ruleset(abi, root_fd, readable, read_only) if abi else -1
    kept = (ROOT_KEEPS_READING if read_only else ROOT_KEEPS) if os.geteuid() == 0 else ()
    libc = _libc()
    try:
        drop_capabilities(kept)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise _fail("PR_SET_NO_NEW_PRIVS")
        if libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
            raise _fail("PR_SET_DUMPABLE")
        if ruleset >= 0:
            libc.syscall.restype = ctypes.c_long
            if libc.syscall(ctypes.c_long(_SYS_RESTRICT_SELF), ctypes.c_int(ruleset),
                            ctypes.c_uint32(0)) != 0:
                raise _fail("landlock_restrict_self")
    finally:
        if ruleset >= 0:
            os.close(ruleset)
    if lib is not None:
        _seccomp_filter(lib, read_only)
    return Confinement(abi, lib is not None, kept)
