"""The agent of a target, as the syncer sees it: one long-lived channel per
target instead of a process (and, over ssh, a remote session) per batch.

* :class:`LocalAgent`: for a local target the syncer applies the operations
  itself, through :class:`syncsup.target.Applier` (directory descriptors,
  ``O_NOFOLLOW``), at once.
* :class:`RemoteAgent`: ``syncsup-target ROOT agent`` behind the target's
  ssh master connection, fed framed requests on its stdin and answering on
  its stdout; non-blocking pipes in the syncer's poll loop, requests
  pipelined. A session that ends, answers garbage or says nothing for
  ``Timings.agent_timeout`` while answers are due is killed; the step's paths
  then go to rsync, and a new session is tried for a later batch.

Either way a step of writes ends with a ``commit`` whose answer says the
target made the batch durable; only then is the batch acknowledged. A
rename step sends no commit: the transfers of its batch, which follow it,
end with theirs (or with rsync's own exit).
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections import deque
from typing import IO, Any

from syncsup.syncer.mux import MuxSession
from syncsup.syncer.plan import Result
from syncsup.syncer.transfer import stderr_tail
from syncsup.target import (
    MAX_FRAME,
    VERSION,
    Applier,
    FrameError,
    Ids,
    decode_body,
    encode_frame,
    handle,
)
from syncsup.timings import Timings

__all__ = ["LocalAgent", "RemoteAgent", "idle_for"]

log = logging.getLogger("syncsup.syncer")

# ``[sync.ssh] agent_idle``: a session with nothing to do for that long is
# closed, and the next batch opens a new one over the target's ssh master (no
# handshake: about 0.1 to 0.3 s, mostly the remote Python starting). At rest
# a session costs a remote Python process (over the master the syncer holds
# no ssh client for it: see mux.py), several times what the master costs,
# for every remote target at work; the default minute
# keeps a session warm through the pauses of someone editing files.


def idle_for(busy: bool, last_active: float, now: float) -> float:
    """Seconds a session has had nothing to do (0 while it has work)."""
    return 0.0 if busy else max(0.0, now - last_active)


class LocalAgent:
    """Operations on a local target, in this process."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.applier: Applier | None = None

    def apply(self, ops: list[dict[str, Any]]) -> Result:
        """Apply ``ops`` now. Paths whose operation failed are handed back
        for rsync (which repairs or reports them)."""
        if self.applier is not None and not self._same_root(self.applier):
            # the target directory was replaced (or removed) since it was
            # opened: the descriptor leads to a directory no one sees
            self.close()
        if self.applier is None:
            try:
                # the whole batch is applied here at once: each directory
                # is opened once for it, not once per path
                self.applier = Applier.open(self.root, keep_dirs=True)
            except OSError as exc:
                return Result(rc=1, error=f"cannot open the target: {exc.strerror}")
        failed: list[bytes] = []
        ids = Ids(by_name=False)
        for op in ops:
            reply = handle(self.applier, op, {}, ids, own=True)  # built by prepare(), here
            if not reply["ok"]:
                path = op.get("path")
                if isinstance(path, bytes):
                    failed.append(path)
                elif op["op"] == "commit":
                    return Result(rc=1, error=f"commit failed: {reply.get('error')}")
        return Result(rc=0, fallback=tuple(failed))

    def _same_root(self, applier: Applier) -> bool:
        """Is the directory held open still the one at the target's path?
        (One stat a step: the path is the user's, the descriptor ours.)"""
        try:
            now, held = os.stat(self.root), os.fstat(applier.root_fd)
        except OSError:
            return False
        return (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)

    def close(self) -> None:
        if self.applier is not None:
            self.applier.close()
            self.applier = None


class RemoteAgent:
    """One ``syncsup-target ROOT agent`` session over ssh: ``command`` over
    the master at ``control_path`` with no ssh process of its own
    (:class:`~.mux.MuxSession`), or ``argv`` (an ssh that connects by
    itself) where there is no master or it will not carry the session."""

    def __init__(self, label: str, argv: list[str], errfile: IO[bytes], now: float,
                 timings: Timings, *, control_path: str | None = None,
                 command: str = "") -> None:
        self.label = label
        self.timeout = timings.agent_timeout  # no answer this long while one is due: wedged
        self.grace = timings.step_stop_grace
        self.errfile = errfile
        errfile.seek(0)
        errfile.truncate()
        self.link = MuxSession(control_path, command, argv, errfile)
        self.stdin_fd = self.link.stdin_fd
        self.stdout_fd = self.link.stdout_fd
        os.set_blocking(self.stdin_fd, False)
        os.set_blocking(self.stdout_fd, False)
        self.out = bytearray()
        self.inbuf = bytearray()
        self.waiting: deque[dict[str, Any]] = deque()  # requests whose answer is due
        self.ready = False        # hello answered
        self.dead: str | None = None
        self.exit_code: int | None = None  # ssh's, once it ended by itself (see read)
        self.last_progress = now
        self.failed: list[bytes] = []
        self.commit_error: str | None = None
        self.request({"op": "hello", "version": VERSION})

    # -- requests and answers -----------------------------------------------------

    def request(self, op: dict[str, Any]) -> None:
        self.out += encode_frame(op)
        self.waiting.append({"op": op["op"], "path": op.get("path")})

    def start_step(self, ops: list[dict[str, Any]], now: float) -> None:
        self.failed, self.commit_error = [], None
        self.last_progress = now
        for op in ops:
            self.request(op)

    def busy(self) -> bool:
        return bool(self.waiting or self.out)

    def flush(self) -> None:
        """Write what the pipe takes now."""
        if not self.out or self.dead:
            return
        try:
            n = os.write(self.stdin_fd, self.out)
        except BlockingIOError:
            return
        except BrokenPipeError:
            # the far end is gone: the session ended (a program missing on
            # the target ends it before its hello is read); its exit code
            # and stderr say why, not the pipe
            self._ended()
            return
        except OSError as exc:
            self.fail(f"cannot write to the agent: {exc.strerror}")
            return
        del self.out[:n]

    def read(self, now: float) -> None:
        """Read and consume what the agent answered (and what the ssh
        master said, while the session waits for it to open)."""
        if self.link.pending:
            self.link.poll()
        while not self.dead:
            try:
                chunk = os.read(self.stdout_fd, 1 << 16)
            except BlockingIOError:
                break
            except OSError as exc:
                self.fail(f"cannot read from the agent: {exc.strerror}")
                return
            if not chunk:
                self._ended()
                return
            self.inbuf += chunk
            self.last_progress = now
            self._consume()

    def _ended(self) -> None:
        """Its stdout closed: the session is over. ssh exits right after, and
        its code tells a target that answered (the program missing: 127,
        refused: 1) from one that was not reached (255) or a client that
        was killed (negative); a client that does not exit in a moment is
        ended without one."""
        try:
            self.exit_code = self.link.wait(min(self.grace, 1.0))
        except subprocess.TimeoutExpired:
            pass
        self.fail(stderr_tail(self.errfile, lines=2) or "the agent ended")

    @property
    def answered(self) -> bool:
        """The target itself ended the session (its program ran, or the
        shell said it is missing): not a connection that failed."""
        return self.exit_code is not None and 0 <= self.exit_code < 255

    def _consume(self) -> None:
        while len(self.inbuf) >= 4:
            size = int.from_bytes(self.inbuf[:4], "big")
            if size > MAX_FRAME:
                self.fail("the agent sent an oversized frame")
                return
            if len(self.inbuf) < 4 + size:
                return
            body = bytes(self.inbuf[4:4 + size])
            del self.inbuf[:4 + size]
            try:
                reply = decode_body(body)
            except FrameError as exc:
                self.fail(f"the agent sent garbage: {exc}")
                return
            if not self.waiting:
                self.fail("the agent answered what was not asked")
                return
            asked = self.waiting.popleft()
            self._answer(asked, reply)

    def _answer(self, asked: dict[str, Any], reply: dict[str, Any]) -> None:
        ok = reply.get("ok") is True
        if asked["op"] == "hello":
            if not ok:
                self.fail(str(reply.get("error") or "the agent refused the session"))
            else:
                self.ready = True
            return
        if ok:
            return
        if asked["op"] == "commit":
            self.commit_error = str(reply.get("error") or "commit failed")
        elif isinstance(asked.get("path"), bytes):
            self.failed.append(asked["path"])

    def result(self, now: float) -> Result | None:
        """The step's result once every answer is in (or the agent is gone)."""
        if self.dead:
            return Result(rc=255, error=self.dead)
        if self.waiting:
            if now - self.last_progress >= self.timeout:
                log.warning("%s: the agent answered nothing for %gs: killing it",
                            self.label, self.timeout)
                self.fail(f"no answer for {self.timeout:g}s")
                return Result(rc=-9, stalled=True, error=self.dead or "")
            return None
        if self.commit_error is not None:
            return Result(rc=1, error=self.commit_error)
        return Result(rc=0, fallback=tuple(self.failed))

    # -- life -------------------------------------------------------------------------

    def fail(self, why: str) -> None:
        if self.dead is None:
            self.dead = why
            self.kill()

    def kill(self) -> None:
        self.link.kill(self.grace)

    def close(self) -> None:
        """A clean end: close stdin, the agent sees the end of its input."""
        if self.dead is None:
            self.dead = "closed"
            self.kill()
