"""Processes as the daemon handles them: a signal or a child's exit as a
file descriptor the poll loop watches, process groups signalled and ended
with a grace, death with the parent (``PR_SET_PDEATHSIG``), heap memory
given back, and the random token naming one run of a process.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import subprocess
import time

__all__ = ["child_exit_fd", "drain_fd", "killpg", "new_incarnation", "set_pdeathsig",
           "signal_fd", "stop_group", "trim_memory"]


_PR_SET_PDEATHSIG = 1


def new_incarnation() -> str:
    """A random token naming one run of one process."""
    return os.urandom(8).hex()


def signal_fd() -> int:
    """A file descriptor that becomes readable when any signal with a Python
    handler arrives, for the poll loop: a ZeroMQ poll resumes after a
    signal instead of returning, so without it a SIGTERM would be noticed
    only when the poll times out. Empty it with :func:`drain_fd`."""
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    return r


def child_exit_fd() -> int:
    """:func:`signal_fd`, also woken when a child exits: reacting to
    SIGCHLD at once instead of polling children saves both latency and
    idle CPU."""
    r = signal_fd()
    signal.signal(signal.SIGCHLD, lambda _signum, _frame: None)
    return r


def drain_fd(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def killpg(pgid: int, sig: int) -> None:
    """Signal a process group that may be gone already (or, in a user
    namespace, no longer ours)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def stop_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    """End the process group led by ``proc``: TERM (and CONT, should it be
    stopped), ``grace`` seconds to exit, then KILL; reaped either way."""
    killpg(proc.pid, signal.SIGTERM)
    killpg(proc.pid, signal.SIGCONT)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def trim_memory() -> None:
    """Give freed heap memory back to the system: glibc keeps it otherwise,
    and a daemon at rest after a busy start should not hold its peak."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc


def set_pdeathsig(sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to send ``sig`` when our parent dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:  # pragma: no cover - kernel refused
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def wait_exited(pid: int, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for process ``pid`` to exit, without
    reaping it if it is our child: True once it has (or is gone), False if
    it still runs. A pidfd wakes us the moment it exits, where polling
    would add up to a poll interval to every wait; without one (a kernel
    before 5.3, no descriptor left) it is a short nap and False."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    except OSError:
        time.sleep(min(max(0.0, timeout), 0.02))
        return False
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(max(0, int(timeout * 1000) + 1)))
    finally:
        os.close(fd)
