"""One running step's process: spawned in its own process group, dying with
the syncer, its stderr and ``--stats`` captured, and watched for progress.

A transfer whose processes read and write nothing for ``rsync.timeout``
seconds (a stopped rsync, a dead link) is stalled: it gets SIGTERM then
SIGCONT (a stopped rsync acts on TERM only once continued, and then removes
its temporary file on the way out, where a KILL would leave it on the
target), and SIGKILL if it is still there ``Timings.step_stop_grace`` later.
"""

from __future__ import annotations

import logging
import shutil
import signal
import subprocess
from typing import IO, Any

from syncsup.processes import killpg, set_pdeathsig, stop_group
from syncsup.syncer.plan import Result
from syncsup.text import printable
from syncsup.timings import Timings

__all__ = ["Transfer", "Watched", "spawn", "stderr_tail"]

log = logging.getLogger("syncsup.syncer")

_SETPRIV = shutil.which("setpriv")


def spawn(argv: list[str], stdin: Any = subprocess.DEVNULL, stdout: Any = subprocess.DEVNULL,
          stderr: Any = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
    """A child in its own process group that dies with us (PR_SET_PDEATHSIG).

    util-linux's ``setpriv --pdeathsig`` sets it and execs the command; that
    keeps Python out of the forked child, so CPython can use vfork (a spawn
    costs ~1.5 ms instead of ~4 ms with a ``preexec_fn``)."""
    if _SETPRIV is not None:
        return subprocess.Popen([_SETPRIV, "--pdeathsig", "KILL", "--", *argv], stdin=stdin,
                                stdout=stdout, stderr=stderr, start_new_session=True,
                                close_fds=True)
    return subprocess.Popen(argv, stdin=stdin, stdout=stdout, stderr=stderr,
                            start_new_session=True, preexec_fn=set_pdeathsig, close_fds=True)


def stderr_tail(errfile: IO[bytes], lines: int = 3) -> str:
    """The last ``lines`` non-blank lines a child wrote to ``errfile``, on one
    line: what a failure reports. rsync's "file has vanished" lines are left
    out: a vanished file is normal in a live tree and has its own event."""
    errfile.seek(0)
    text = errfile.read()[-8192:].decode(errors="replace")
    kept = [ln for ln in text.splitlines()
            if ln.strip() and not ln.startswith("file has vanished")]
    # shown in status and on terminals: a remote's (or a file name's)
    # control characters never reach them
    return " | ".join(printable(ln, 1000) for ln in kept[-lines:])


def _io_bytes(pid: int) -> int:
    """Bytes read and written so far by ``pid`` and its descendants (rchar +
    wchar from /proc): a transfer whose total does not move is stalled."""
    total = 0
    stack = [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/io", "rb") as fh:
                for line in fh:
                    if line.startswith((b"rchar:", b"wchar:")):
                        total += int(line.split()[1])
            with open(f"/proc/{p}/task/{p}/children", "rb") as fh:
                stack += [int(c) for c in fh.read().split()]
        except (OSError, ValueError):
            continue
    return total


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


class Watched:
    """A running step watched for progress: a number that grows while it
    works (:meth:`_progress`). No growth for ``timeout`` seconds is a
    stall: the step is asked to stop (:meth:`terminate`), then forced
    (:meth:`_force`) ``Timings.step_stop_grace`` later; ``stall`` says why
    for its result. One rule for every kind of step, whatever it counts."""

    label = ""
    stopping = "stopped"  # what a stall means for the step, in its result

    def _watch(self, now: float, timings: Timings) -> None:
        self.grace = timings.step_stop_grace
        self.progress_log = timings.progress_log
        self.started = self.last_log = self.progress_at = now
        self.progress_seen = -1
        self.checked = 0.0
        self.killing = 0.0
        self.stall = ""  # why it was stopped, once it was

    def _progress(self) -> int:
        raise NotImplementedError

    def _described(self, progress: int) -> str:
        return f"{progress} so far"

    def terminate(self) -> None:
        raise NotImplementedError

    def _force(self) -> None:
        raise NotImplementedError

    def check(self, now: float, timeout: int) -> None:
        """Progress and stall handling, at most once a second."""
        if self.killing:
            if now - self.killing >= self.grace:
                self._force()
            return
        if now - self.checked < 1.0:
            return
        self.checked = now
        seen = self._progress()
        if now - self.last_log >= self.progress_log:
            self.last_log = now
            log.info("%s running for %.0fs, %s", self.label, now - self.started,
                     self._described(seen))
        if seen != self.progress_seen:
            self.progress_seen, self.progress_at = seen, now
        elif timeout and now - self.progress_at >= timeout:
            log.warning("%s made no progress for %ds: stopping it", self.label, timeout)
            self.stall = f"no progress for {timeout}s: {self.stopping}"
            self.killing = now
            self.terminate()


class Transfer(Watched):
    """A running step's process. ``poll()`` gives its Result once it has
    ended. Its progress: the bytes its processes read and wrote."""

    stopping = "transfer killed, will retry"

    def __init__(self, label: str, argv: list[str], errfile: IO[bytes], outfile: IO[bytes],
                 now: float, timings: Timings) -> None:
        self.label = label
        self.errfile, self.outfile = errfile, outfile
        for fh in (errfile, outfile):
            fh.seek(0)
            fh.truncate()
        self.proc = spawn(argv, stderr=errfile, stdout=outfile)
        self._watch(now, timings)

    @property
    def io_seen(self) -> int:
        """Bytes read and written at the last look (status shows it)."""
        return max(0, self.progress_seen)

    def _progress(self) -> int:
        return _io_bytes(self.proc.pid)

    def _described(self, progress: int) -> str:
        return f"{_human(progress)} read+written so far"

    def terminate(self) -> None:
        killpg(self.proc.pid, signal.SIGTERM)
        killpg(self.proc.pid, signal.SIGCONT)

    def _force(self) -> None:
        killpg(self.proc.pid, signal.SIGKILL)

    def poll(self) -> Result | None:
        rc = self.proc.poll()
        if rc is None:
            return None
        tail = stderr_tail(self.errfile)
        return Result(rc=rc, stalled=bool(self.killing), error=self.stall or tail)

    def sent_bytes(self) -> int:
        """'Total bytes sent: 1,234' from rsync's --stats output, or 0."""
        self.outfile.seek(0)
        for line in self.outfile.read()[-16384:].splitlines():
            if line.startswith(b"Total bytes sent:"):
                try:
                    return int(line.split(b":", 1)[1].strip().replace(b",", b""))
                except ValueError:
                    return 0
        return 0

    def kill(self) -> None:
        """At stop: TERM the group, wait the grace, KILL."""
        stop_group(self.proc, self.grace)
