"""The proof step (:mod:`syncsup.syncer.prove`) run in a thread of the
syncer, looked after by the poll loop as a transfer's process is.

Why a thread and not a process: a proof is a walk of the source's
metadata and a few requests to the target's agent, not a transfer. As a
process it cost a Python interpreter (about 20 MB and 0.1 CPU-s to start)
and an ssh client per target, eight at once under ``max_processes``: at a
first start with 32 ssh targets, more memory than all the rest of the
daemon. In the syncer it costs a thread, and its remote session rides the
login's ssh master (:class:`~syncsup.syncer.mux.MuxSession`) as the
agent's do.

What a thread cannot be is killed. The invariants that make up for it:

* The thread alone owns the session and its descriptors (it opens,
  reads, writes and closes them). The loop only ever sends signals to a
  direct ssh's process group, or shuts the control connection down
  (``shutdown``, never ``close``: a descriptor number is never reused
  under the thread); either ends the session, and with it any read or
  write the thread is blocked in.
* The walk checks ``cancelled`` between directories and between
  requests, so a stopped proof of a local target ends at the next one;
  a stopped session never connects directly instead of over the master.
* Progress is counted in directories listed and answers read; no
  progress for ``rsync.timeout`` seconds is a stall, handled like a
  stalled transfer's: the proof is stopped and the batch falls back to
  comparing every file's content. A thread still blocked after the
  grace (a hung filesystem) is left behind, as a daemon thread that ends
  with the syncer; its late result is never read.
* The thread ends by waking the loop as a child's exit does (SIGCHLD to
  the main thread, whose handler writes to the wakeup descriptor).
"""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
import time
from typing import IO

from syncsup import config as cfg
from syncsup.filters import RuleList
from syncsup.processes import killpg
from syncsup.syncer.agents import agent_session_argv
from syncsup.syncer.mux import MuxSession
from syncsup.syncer.plan import Result
from syncsup.syncer.prove import COMPARE, NO_PROOF, PROVEN, SENT, prove
from syncsup.syncer.transfer import Watched, stderr_tail
from syncsup.timings import Timings

__all__ = ["ProofStep"]

log = logging.getLogger("syncsup.syncer")


class ProofStep(Watched):
    """A running proof; ``poll()`` gives its Result once it has ended: rc 0
    and the unproven files as ``fallback``, or rc :data:`NO_PROOF`. Its
    progress (for the stall check): directories listed and answers read."""

    stopping = "proof stopped, comparing instead"
    io_seen = 0  # (status shows bytes for a process: a thread has none)

    def __init__(self, label: str, sync: cfg.Sync, target: cfg.Target,
                 subtrees: tuple[bytes, ...], control_path: str | None, errfile: IO[bytes],
                 now: float, timings: Timings, rules: RuleList | None = None) -> None:
        self.slot_label = label  # its own lines say "prove:" after it
        self.label = f"{label}: the proof"  # the stall check's
        self.sync, self.target = sync, target
        self.subtrees = subtrees
        self.rules = rules  # the sync's (their verdicts cached by both threads: a cache)
        self.control_path = control_path
        self.errfile = errfile
        errfile.seek(0)
        errfile.truncate()
        self.margin = timings.proof_margin
        self._watch(now, timings)
        self.progress = 0  # directories listed and answers read: written by the thread
        self.cancel = threading.Event()
        self.link: MuxSession | None = None  # set by the thread; the loop only signals it
        self.result: Result | None = None    # set by the thread, last
        self.main_ident = threading.main_thread().ident
        self.thread = threading.Thread(target=self._run, name=f"prove {label}", daemon=True)
        self.thread.start()

    # -- the thread ------------------------------------------------------------------

    def _tick(self) -> None:
        self.progress += 1

    def _run(self) -> None:
        link: MuxSession | None = None
        # what the batch gets however this ends (even on an error below):
        # comparing every file, never files taken for proven
        result = Result(rc=NO_PROOF, error="prove: ended on an internal error: comparing "
                                           "every file's content")
        try:
            if self.target.is_remote:
                command, direct = agent_session_argv(self.sync, self.target, "stats")
                link = self.link = MuxSession(self.control_path, command, direct, self.errfile)
            names, counts, said = prove(self.sync, self.target, self.subtrees, link,
                                        self.margin, self._tick, self.cancel.is_set,
                                        self.rules)
            if said and link is not None:
                log.info("%s: prove: %s, %s", self.slot_label, said,
                         "over the ssh master" if link.opened else "over a connection of its own")
            looked = sum(counts.values())
            log.info("%s: prove: %d of %d files proven current, %d missing or different "
                     "(sent), %d to compare by content", self.slot_label, counts[PROVEN], looked,
                     counts[SENT], counts[COMPARE])
            result = Result(rc=0, fallback=tuple(names))
        except Exception as exc:  # any failure: compare instead, never hang
            if link is not None and not self.cancel.is_set():
                try:  # the session's end comes after all it wrote to stderr
                    link.wait(self.grace)
                except (subprocess.TimeoutExpired, OSError):
                    pass
            why = str(exc) or type(exc).__name__
            try:
                tail = stderr_tail(self.errfile)
            except (OSError, ValueError):
                tail = ""
            result = Result(rc=NO_PROOF, error=f"prove: cannot read the target's ctimes "
                                               f"({why}{': ' + tail if tail else ''}): "
                                               "comparing every file's content")
            log.info("%s: %s", self.slot_label, result.error)
        finally:
            try:
                if link is not None:
                    self.link = None  # reaped below: the loop signals it no more
                    link.kill(self.grace)
            finally:
                self.result = result
                if self.main_ident is not None:
                    signal.pthread_kill(self.main_ident, signal.SIGCHLD)  # wakes the loop

    # -- the loop's side -------------------------------------------------------------

    def _progress(self) -> int:
        return self.progress

    def _described(self, progress: int) -> str:
        return f"{progress} directories and answers so far"

    def _force(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        """Signal a direct ssh's group, unless the thread has reaped it (or
        is about to: it lets go of the link first), so a pid used again is
        never signalled."""
        link = self.link
        proc = link.proc if link is not None else None
        if proc is not None and proc.returncode is None and self.result is None:
            killpg(proc.pid, sig)
            killpg(proc.pid, signal.SIGCONT)

    def terminate(self) -> None:
        """Stop the walk and end the session (see the invariants above)."""
        self.cancel.set()
        self._signal(signal.SIGTERM)
        link = self.link
        if link is not None:
            link.give_up()

    def poll(self) -> Result | None:
        result = self.result
        if result is not None:
            if self.killing:
                return Result(rc=result.rc or NO_PROOF, stalled=True, error=self.stall)
            return result
        if self.killing and time.monotonic() - self.killing >= 2 * self.grace:
            log.warning("%s's thread is still blocked: left behind", self.label)
            return Result(rc=NO_PROOF, stalled=True, error=self.stall)
        return None

    def sent_bytes(self) -> int:
        return 0

    def kill(self) -> None:
        """At stop: end it, waiting at most the grace (then twice more,
        after a KILL to a direct ssh)."""
        self.terminate()
        self.thread.join(self.grace)
        if self.thread.is_alive():
            self._signal(signal.SIGKILL)
            self.thread.join(self.grace)
