"""The machine a run happened on (stored with every result) and the tools it needs.

Figures from a 2-core virtual machine and from a workstation are not
comparable, so every result file records cores, CPU, memory, kernel, the
versions of rsync and Lsyncd, the syncsup commit (marked when ``syncsup/``
had uncommitted changes), the load average at the start and the inotify
queue size (the overflow scenario depends on it), and the filesystem the
trees live on: what creating, replacing and deleting a file costs depends
on it more than on anything in either tool (see :func:`filesystem`).
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _first_line(argv: list[str]) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (r.stdout or r.stderr).strip().splitlines()[0]
    except Exception as e:
        return f"? ({e})"


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _unescape(field: str) -> str:
    """A mountinfo field with the kernel's octal escapes (space, tab,
    newline, backslash) decoded."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _mount_of(path: Path) -> tuple[str, str, str]:
    """(mount point, type, source) of the mount holding ``path``: the line
    of ``/proc/self/mountinfo`` with the deepest mount point at or above
    it, the later line where a point is mounted twice (the later mount
    hides the earlier). A child mount hidden by its parent mounted again
    over it would be named wrongly: not a case the bench meets."""
    best = ("/", "?", "?")
    real = os.path.realpath(path)
    for line in _read("/proc/self/mountinfo").splitlines():
        fields = line.split()
        sep = fields.index("-")  # optional fields (shared:N, master:N) come before it
        point = _unescape(fields[4])
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best[0]):
            best = (point, fields[sep + 1], _unescape(fields[sep + 2]))
    return best


def _has_journal(path: Path) -> bool | None:
    """Does the ext3/ext4 filesystem holding ``path`` have a journal? The
    kernel lists each journal it runs as ``/proc/fs/jbd2/DEVICE-INODE``
    (no such directory: no journal runs). None when it cannot be told: the
    device has no name under ``/sys/dev/block``, or ``/proc`` refuses. A
    journal on a device of its own is listed under that device's name, and
    reads as none."""
    dev = os.stat(path).st_dev
    try:
        name = os.path.basename(os.readlink(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}"))
    except OSError:
        return None
    try:
        return any(e.startswith(name + "-") for e in os.listdir("/proc/fs/jbd2"))
    except FileNotFoundError:
        return False
    except OSError:
        return None


def filesystem(path: Path) -> str:
    """The filesystem of ``path``, for the record: type, source and mount
    point, and for ext4 whether it has a journal. Without one, ext4 does not
    hand out an inode freed in the last 60 s (6 minutes while its inode-table
    block is unwritten) and checks each candidate as it looks for a free one:
    under churn, creating a file costs both tools ten to sixty times what it
    costs on a journaled ext4 (docs/benchmarks.md, eighth pass)."""
    point, kind, source = _mount_of(path)
    text = f"{kind} {source} on {point}"
    if kind in ("ext3", "ext4"):
        journal = _has_journal(path)
        if journal is not None:
            text += " (journal)" if journal else " (no journal)"
    return text


def machine(trees: Path | None = None) -> dict[str, Any]:
    mem = 0
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            mem = int(line.split()[1])
    model = "?"
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    commit = _first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--", "syncsup"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "memory_gb": round(mem / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "rsync": _first_line(["rsync", "--version"]),
        "lsyncd": _first_line(["lsyncd", "-version"]),
        "syncsup_commit": commit + (" (+ uncommitted changes in syncsup/)" if dirty else ""),
        "loadavg_at_start": _read("/proc/loadavg").split()[:3],
        "max_queued_events": int(_read("/proc/sys/fs/inotify/max_queued_events")),
        "filesystem": filesystem(trees) if trees is not None else "?",
    }


def ensure_lsyncd() -> None:
    """Install Lsyncd from Debian's packages when it is missing (CI machines are fresh)."""
    if shutil.which("lsyncd"):
        return
    print("lsyncd is missing: apt-get install lsyncd ...", flush=True)
    r = subprocess.run(
        "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq lsyncd",
        shell=True,
    )
    if r.returncode != 0 or not shutil.which("lsyncd"):
        sys.exit("bench: could not install lsyncd (apt-get failed)")


def check_prerequisites() -> None:
    """Lsyncd (installed if needed), rsync, OpenSSH's client tools and strace
    (the recovery scenario counts bytes read with it)."""
    if os.geteuid() != 0:
        print("bench: note: not root; the throw-away sshd and apt-get may fail", file=sys.stderr)
    ensure_lsyncd()
    for prog in ("rsync", "ssh", "ssh-keygen", "strace"):
        if not shutil.which(prog):
            sys.exit(f"bench: {prog} is required")
