"""Run a command under the kernel-side restrictions of a systemd unit, read
from the unit file itself, without systemd as PID 1:

``python -m tests.helpers.sandbox UNIT -- ARGV...``

What it applies, as systemd does in the service's process before exec:
``NoNewPrivileges=`` (``PR_SET_NO_NEW_PRIVS``), ``CapabilityBoundingSet=``
(``PR_CAPBSET_DROP`` of every other capability: root's permitted set after
exec is bounded by it), ``MemoryDenyWriteExecute=`` (``PR_SET_MDWE``, the
kernel's own form of what systemd's seccomp rule forbids), and one seccomp
filter for ``SystemCallFilter=`` (the groups expanded by ``systemd-analyze
syscall-filter``) and ``RestrictAddressFamilies=`` (``socket()`` of another
family fails with EAFNOSUPPORT, as under systemd).

One difference on purpose: a system call outside the list raises SIGSYS
(the process dies, and the test sees it) where the unit's
``SystemCallErrorNumber=EPERM`` would make it fail quietly; a test should
not pass because a refused call happened to be tolerated.

Mount namespaces (``ProtectSystem=``, ``ProtectHome=``, ``PrivateTmp=``) are
not applied here.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import subprocess
import sys
from pathlib import Path

import pyseccomp as seccomp

PR_SET_NO_NEW_PRIVS = 38
PR_CAPBSET_DROP = 24
PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1
CAPS = {"CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_DAC_READ_SEARCH": 2, "CAP_FOWNER": 3,
        "CAP_FSETID": 4, "CAP_KILL": 5, "CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_SETPCAP": 8,
        "CAP_NET_BIND_SERVICE": 10, "CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13,
        "CAP_SYS_CHROOT": 18, "CAP_SYS_PTRACE": 19, "CAP_SYS_ADMIN": 21,
        "CAP_SYS_RESOURCE": 24, "CAP_MKNOD": 27, "CAP_AUDIT_WRITE": 29}


def directives(unit: Path) -> dict[str, list[str]]:
    """``[Service]`` key -> every value given, in order."""
    out: dict[str, list[str]] = {}
    section = ""
    for raw in unit.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line
            continue
        key, _, value = line.partition("=")
        if section == "[Service]":
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def expand(name: str, seen: set[str] | None = None) -> set[str]:
    """The system calls of ``@group`` (nested groups followed), or {name}."""
    if not name.startswith("@"):
        return {name}
    seen = seen if seen is not None else set()
    if name in seen:
        return set()
    seen.add(name)
    out = subprocess.run(["systemd-analyze", "syscall-filter", name], capture_output=True,
                         text=True, check=True, timeout=60).stdout
    calls: set[str] = set()
    for line in out.splitlines()[1:]:
        word = line.strip()
        if word and not word.startswith("#"):
            calls |= expand(word, seen)
    return calls


def allowed_calls(filters: list[str]) -> set[str]:
    """An allow-list from ``SystemCallFilter=`` lines: the first names what
    is allowed; a later ``~`` line takes away, a later plain line adds."""
    allowed: set[str] = set()
    for n, value in enumerate(filters):
        deny = value.startswith("~")
        names = set().union(*(expand(w) for w in value.lstrip("~").split()))
        if n == 0 and deny:
            raise SystemExit("a deny-list filter is not emulated")
        allowed = allowed - names if deny else allowed | names
    return allowed


def _prctl(*args: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(*[ctypes.c_ulong(a) for a in args]) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl{args}: {os.strerror(err)}")


def apply(unit: Path) -> None:
    d = directives(unit)
    if d.get("NoNewPrivileges", ["no"])[-1] in ("true", "yes"):
        _prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    if "CapabilityBoundingSet" in d:
        keep = {CAPS[c] for c in " ".join(d["CapabilityBoundingSet"]).split()}
        last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
        for cap in range(last + 1):
            if cap not in keep:
                _prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
    if d.get("MemoryDenyWriteExecute", ["no"])[-1] in ("true", "yes"):
        _prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0)
    if "SystemCallFilter" not in d:
        return
    calls = allowed_calls(d["SystemCallFilter"])
    f = seccomp.SyscallFilter(defaction=seccomp.TRAP)
    families = {getattr(socket, name) for name in
                " ".join(d.get("RestrictAddressFamilies", [])).split()}
    for call in sorted(calls):
        if call == "socket" and families:
            continue
        try:
            f.add_rule(seccomp.ALLOW, call)
        except (RuntimeError, ValueError, OSError):
            pass  # not a system call of this architecture
    if families:
        for family in range(64):
            action = seccomp.ALLOW if family in families else seccomp.ERRNO(errno.EAFNOSUPPORT)
            f.add_rule(action, "socket", seccomp.Arg(0, seccomp.EQ, family))
    f.load()


def main(argv: list[str]) -> None:
    unit, sep, *command = argv
    assert sep == "--" and command, "usage: sandbox UNIT -- ARGV..."
    apply(Path(unit))
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
