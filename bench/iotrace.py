"""Counting the bytes a process tree reads from given trees, with strace.

The recovery scenario asks how much of the source and target trees a tool
reads to catch up.  Every ``read``/``pread64`` of every process of the
tool's tree is logged by ``strace -ff -y`` (one log per process, each file
descriptor shown with its path), and the bytes returned by the calls on
paths below the trees are summed: rsync's sender reading the source,
rsync's receiver reading the old target file as the basis of a delta, and
syncsup's syncer reading small files itself for its agent.  The integration
tests count the same way (``tests/integration/test_recovery.py``), there
only for rsync, through a wrapper given as ``[sync.rsync] binary``; tracing
the whole tree also sees what the agent reads.

Two ways to trace:

* :func:`wrap_argv`: the tool starts under strace (``-I 2``: a SIGTERM sent
  to strace itself is passed on, so an interrupted bench still stops the
  tool; :meth:`bench.tools.Tool.stop` signals the tool directly, so that
  strace reaps it and ends). Without ``--seccomp-bpf``: with it, on this
  project's kernel and strace 6.1, reads in syncsup's children failed with
  ENOSYS (the filter's SECCOMP_RET_TRACE found no tracer), which stopped
  the daemon; a slower trace of every call is the price;
* :func:`attach`: strace attaches to the live processes of a tree (and,
  with ``-f``, everything they start from then on); ended with SIGINT,
  which detaches it.

strace flushes its logs when it ends: read them after that.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

STRACE = shutil.which("strace") or "strace"
_COMMON = ["-ff", "-qq", "-y", "-e", "trace=read,pread64", "-e", "signal=none"]
_PYTHON = re.compile(rb"^(?:read|pread64)\(\d+<[^>]*\.pyc?>", re.M)
_READ = re.compile(rb"^(?:read|pread64)\(\d+<(?P<path>[^>]*)>.*\)\s+=\s+(?P<n>\d+)", re.M)


def wrap_argv(logdir: Path) -> list[str]:
    """The prefix that runs a command under strace, logging to ``logdir/p.PID``."""
    logdir.mkdir(parents=True, exist_ok=True)
    return [STRACE, "-I", "2", *_COMMON, "-o", f"{logdir}/p", "--"]


def attach(pids: list[int], logdir: Path, timeout: float = 10.0) -> subprocess.Popen[bytes]:
    """strace attached to ``pids`` (all their threads, and their future
    children); returns once every one of them is traced."""
    logdir.mkdir(parents=True, exist_ok=True)
    argv = [STRACE, *_COMMON, "-o", f"{logdir}/p"]
    for p in pids:
        argv += ["-p", str(p)]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout
    while not all(_traced(p) for p in pids):
        if proc.poll() is not None:
            raise RuntimeError(f"strace exited {proc.returncode} before attaching to {pids}")
        if time.monotonic() > deadline:
            detach(proc)
            raise RuntimeError(f"strace did not attach to {pids} within {timeout:.0f}s")
        time.sleep(0.02)
    return proc


def detach(proc: subprocess.Popen[bytes]) -> None:
    """End an attached strace (SIGINT: it detaches and flushes its logs)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _traced(pid: int) -> bool:
    """The process has a tracer (or is gone: nothing to wait for)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"TracerPid:"):
                    return int(line.split()[1]) != 0
    except OSError:
        return True
    return False


def bytes_read(logdir: Path, roots: list[Path]) -> int:
    """Bytes returned by ``read``/``pread64`` on files below ``roots``, over
    every log in ``logdir``."""
    return sum(bytes_read_by(logdir, roots).values())


def bytes_read_by(logdir: Path, roots: list[Path],
                  python_pids: frozenset[int] = frozenset()) -> dict[tuple[str, str], int]:
    """:func:`bytes_read` split by (root's last component, reader), where the
    reader is ``python`` for one of ``python_pids`` or a process that read
    Python modules or bytecode (syncsup's own processes: the agent's reads),
    and ``other`` for the rest (rsync, Lsyncd)."""
    prefixes = [(os.fsencode(r) + b"/", r.name) for r in roots]
    out: dict[tuple[str, str], int] = {}
    for f in logdir.iterdir():
        data = f.read_bytes()
        pid = int(f.name.rpartition(".")[2]) if f.name.rpartition(".")[2].isdigit() else 0
        reader = "python" if pid in python_pids or _PYTHON.search(data) else "other"
        for m in _READ.finditer(data):
            for prefix, name in prefixes:
                if m["path"].startswith(prefix):
                    out[(name, reader)] = out.get((name, reader), 0) + int(m["n"])
    return out


def describe(by: dict[tuple[str, str], int]) -> str:
    """``src 1.00 MB (python), dst 0.50 MB (other)``, or ``nothing``."""
    parts = [f"{root} {n / 1e6:.2f} MB ({reader})" for (root, reader), n in sorted(by.items())]
    return ", ".join(parts) or "nothing"
