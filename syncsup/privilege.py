"""What this process may do to other users' files, from its effective
capabilities rather than its uid.

Why not ``geteuid() == 0``: the systemd unit runs the daemon as a system
user that holds, as ambient capabilities, exactly what mirroring needs
(``CAP_CHOWN``, ``CAP_DAC_OVERRIDE``, ``CAP_DAC_READ_SEARCH``,
``CAP_FOWNER``, ``CAP_FSETID``). Such a process reads every file and sets
any owner, as root does, although its uid is not 0; and root without
``CAP_CHOWN`` (a bounding set that drops it) cannot. The kernel decides by
the effective set, so syncsup does too.

The set is read from ``CapEff`` in ``/proc/self/status`` (the unit's
``ProcSubset=pid`` keeps it). Where that file cannot be read (the target's
agent after its confinement, which no longer sees ``/proc``), uid 0 counts
as every capability and any other uid as none: what syncsup assumed before.
"""

from __future__ import annotations

import os
import pwd

__all__ = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
           "MIRROR_CAPS", "SERVICE_USER", "can_access", "can_chown", "effective", "has",
           "service_uid", "super_receiver"]

CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER, CAP_FSETID = 0, 1, 2, 3, 4
# What mirroring every user's files with their owners takes: the unit's
# CapabilityBoundingSet= and AmbientCapabilities=.
MIRROR_CAPS = (CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER, CAP_FSETID)
_ALL = (1 << 64) - 1
# The system account the unit runs the daemon as (``User=``); the
# sysusers.d file ``syncsup unit`` writes creates it.
SERVICE_USER = "syncsup"


def parse_status(text: str) -> int | None:
    """The ``CapEff`` mask in the text of ``/proc/PID/status``, or None."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key == "CapEff":
            try:
                return int(value.strip(), 16)
            except ValueError:
                return None
    return None


def effective(status: str = "/proc/self/status") -> int:
    """This process's effective capabilities as a bit mask (bit N is
    capability N)."""
    try:
        with open(status, encoding="ascii", errors="replace") as fh:
            mask = parse_status(fh.read())
    except OSError:
        mask = None
    if mask is None:
        return _ALL if os.geteuid() == 0 else 0
    return mask


def has(cap: int, mask: int | None = None) -> bool:
    return bool((effective() if mask is None else mask) >> cap & 1)


def can_chown(mask: int | None = None) -> bool:
    """May this process give a file any owner (``CAP_CHOWN``)?"""
    return has(CAP_CHOWN, mask)


def super_receiver(mask: int | None = None, euid: int | None = None) -> bool:
    """Must a local rsync receiver be told ``--super`` to keep owners? rsync
    decides by uid: as root it sets owners by itself; any other uid skips
    them unless ``--super``, which it should get only when it holds
    ``CAP_CHOWN`` (else every chown fails with rc 23)."""
    euid = os.geteuid() if euid is None else euid
    return euid != 0 and can_chown(mask)


def can_access(path: str | os.PathLike[str], mode: int) -> bool:
    """``os.access`` by the effective ids and capabilities: plain access(2)
    checks the real uid and, for a uid other than 0, ignores capabilities,
    so it would call a root-owned 0755 directory read-only for a service
    user that holds ``CAP_DAC_OVERRIDE``."""
    return os.access(path, mode, effective_ids=True)


def service_uid() -> int | None:
    """The uid of the unit's service user (``$SYNCSUP_SERVICE_USER``, for a
    unit whose ``User=`` names another account, else ``syncsup``), or None
    where there is no such account. Root's CLI accepts a state_dir of this
    uid: systemd made it (``StateDirectory=``) for the daemon that root's
    unit runs as that user."""
    name = os.environ.get("SYNCSUP_SERVICE_USER") or SERVICE_USER
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return None
