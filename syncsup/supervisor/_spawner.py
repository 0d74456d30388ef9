"""Starting children through the template process (see ``template``).

The supervisor makes itself a child subreaper, starts the template once (a
fresh interpreter, ``python -P``) and asks it over a socket pair for each
child it needs; the template answers with the pid of a child that the
kernel re-parents to the supervisor. If the template is gone or does not
answer, it is killed and started again, and the request is repeated once.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from syncsup.processes import killpg, set_pdeathsig, wait_exited

__all__ = ["SpawnError", "Spawner", "become_subreaper"]

log = logging.getLogger("syncsup.supervisor")

_PR_SET_CHILD_SUBREAPER = 36


class SpawnError(OSError):
    """No child could be started."""


def become_subreaper() -> None:
    """Orphans of our descendants (the template's children) become ours."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise SpawnError(err, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(err)}")


class Spawner:
    """The template process and the requests to it."""

    def __init__(self, config: Path, run_id: str, answer_timeout: float) -> None:
        self.config = config
        self.answer_timeout = answer_timeout  # for each answer of the template
        self.run_id = run_id
        self.pid: int | None = None
        self.chan: socket.socket | None = None

    def fork(self, close: list[int]) -> None:
        """Start the template by forking this process. Only while it has a
        single thread (before any ZeroMQ context or metrics thread); the
        child closes ``close`` (the state_dir lock, say) first."""
        import gc

        from syncsup.supervisor import template

        # What exists now is shared with the template and the children: keep
        # our garbage collector from writing to it (which would copy pages).
        gc.collect()
        gc.freeze()
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        supervisor = os.getpid()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the template
            code = 1
            try:
                mine.close()
                for fd in close:
                    os.close(fd)
                os.setsid()
                set_pdeathsig()
                if os.getppid() == supervisor:
                    template.preload()
                    code = template.serve(theirs, str(self.config), self.run_id, supervisor)
            finally:
                os._exit(code)
        theirs.close()
        mine.settimeout(self.answer_timeout)
        self.pid, self.chan = pid, mine

    def start(self) -> None:
        """Start the template as a fresh interpreter."""
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            argv = [sys.executable, "-P", "-m", "syncsup.supervisor.template",
                    "--fd", str(theirs.fileno()), "--supervisor", str(os.getpid()),
                    "--run", self.run_id, str(self.config)]
            # No preexec_fn: we may run a metrics thread. The template sets
            # PR_SET_PDEATHSIG itself and checks that we are its parent.
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                    pass_fds=(theirs.fileno(),), start_new_session=True)
        except OSError:
            mine.close()
            raise
        finally:
            theirs.close()
        mine.settimeout(self.answer_timeout)
        self.pid, self.chan = proc.pid, mine

    def release(self) -> None:
        """The children are started: let the template exit (it is reaped
        with the other children)."""
        if self.chan is not None:
            self.chan.close()
            self.chan = None

    def stop(self) -> None:
        self.release()
        if self.pid is not None:
            killpg(self.pid, signal.SIGKILL)

    def abandon(self) -> None:
        """A start that failed after the fork: let the template finish its
        imports and exit, as it does once its channel is closed; kill it if
        it does not within ``answer_timeout``. It is reaped here, since no
        loop will: nothing is left, not even a zombie."""
        pid, self.pid = self.pid, None
        self.release()
        if pid is None:
            return
        if not wait_exited(pid, self.answer_timeout):
            killpg(pid, signal.SIGKILL)
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass

    def exited(self, pid: int) -> bool:
        """Called for every reaped pid: True (and forgotten) if it was the
        template; the next spawn starts a new one."""
        if pid != self.pid:
            return False
        self.pid = None
        if self.chan is not None:
            self.chan.close()
            self.chan = None
            log.warning("the template process (pid %d) ended early; a new one is started "
                        "when a child needs one", pid)
        return True

    def _ask(self, role: str) -> int:
        if self.chan is None:
            self.start()
        assert self.chan is not None
        self.chan.send(f"spawn {role}".encode())
        answer = self.chan.recv(256).decode(errors="replace")
        if not answer.startswith("pid "):
            raise SpawnError(0, f"the template could not start {role}: {answer or 'no answer'}")
        return int(answer.split()[1])

    def spawn(self, role: str) -> int:
        """A new ``role`` process, our child; its pid."""
        try:
            return self._ask(role)
        except (OSError, ValueError) as first:
            log.warning("the template did not start %s (%s); starting a new template", role,
                        first)
            self.stop()
            try:
                return self._ask(role)
            except (OSError, ValueError) as exc:
                raise SpawnError(0, f"cannot start {role}: {exc}") from None
