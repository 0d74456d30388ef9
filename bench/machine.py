"""The machine a run happened on (stored with every result) and the tools it needs.

Figures from a 2-core virtual machine and from a workstation are not
comparable, so every result file records cores, CPU, memory, kernel, the
versions of rsync and Lsyncd, the syncsup commit (marked when ``syncsup/``
had uncommitted changes), the load average at the start and the inotify
queue size (the overflow scenario depends on it).
"""

from __future__ import annotations

import os
import platform
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


def machine() -> dict[str, Any]:
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
