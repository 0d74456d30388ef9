"""The wedged-agent rule of a remote agent session, on a clock the test
moves: a session that answers nothing for ``agent_timeout`` while an answer
is due is given up (killed, its step's paths left to rsync); one that has
nothing due is never taken for wedged, however long it is quiet; any answer
starts the wait again.

The session's process is a real one that answers the hello and then says
nothing (a stopped or hung agent, as far as the syncer can tell); the
daemon-level tests freeze a real ``syncsup-target`` agent over ssh. Here
every moment is the test's, so the deadline is checked to the instant.
"""

from __future__ import annotations

import contextlib
import select
import sys
import tempfile
from collections.abc import Callable, Iterator

import pytest

from syncsup.syncer.agent_session import RemoteAgent
from syncsup.target import VERSION, encode_frame
from syncsup.timings import Timings

TIMEOUT = 30.0
T0 = 1000.0

# Writes its first answer (the hello's) at once and each further one once
# a request arrived, then hangs: the wedge. The test sends the requests
# (flush) only after the hello's answer was read.
HANGS = (
    "import sys, time\n"
    "out = sys.stdout.buffer\n"
    "for i, answer in enumerate(sys.argv[1:]):\n"
    "    if i:\n"
    "        sys.stdin.buffer.read(1)\n"
    "    out.write(bytes.fromhex(answer)); out.flush()\n"
    "time.sleep(120)\n"
)
HELLO_OK = encode_frame({"ok": True, "version": VERSION, "root": "/t"}).hex()
OK = encode_frame({"ok": True}).hex()


@pytest.fixture
def session() -> Iterator[Callable[..., RemoteAgent]]:
    """``session(*answers)``: a RemoteAgent started at T0 whose process
    writes ``answers`` (hex frames) as described above."""
    with contextlib.ExitStack() as stack:
        made: list[RemoteAgent] = []

        def make(*answers: str) -> RemoteAgent:
            err = stack.enter_context(tempfile.TemporaryFile())
            a = RemoteAgent("target t: agent", [sys.executable, "-c", HANGS, *answers], err,
                            T0, Timings(agent_timeout=TIMEOUT))
            made.append(a)
            return a

        yield make
        for a in made:
            a.close()
            assert a.link.proc is not None
            a.link.proc.wait(10)


def answered(a: RemoteAgent, now: float) -> None:
    """Wait (really) until the process wrote, then read it at ``now``."""
    ready, _, _ = select.select([a.stdout_fd], [], [], 30)
    assert ready, "the stand-in agent wrote nothing"
    a.read(now)


def test_a_hello_unanswered_for_the_timeout_is_a_wedge(session: Callable[..., RemoteAgent]) -> None:
    a = session()  # the hello is never answered
    assert a.result(T0 + TIMEOUT - 0.01) is None  # still waited on
    r = a.result(T0 + TIMEOUT)
    assert r is not None and r.stalled and r.rc == -9, r
    assert a.dead == f"no answer for {TIMEOUT:g}s"
    assert a.link.proc is not None and a.link.proc.wait(10) is not None  # killed, its group too


def test_an_agent_with_nothing_due_is_never_wedged(session: Callable[..., RemoteAgent]) -> None:
    a = session(HELLO_OK)
    answered(a, T0 + 1)
    a.flush()  # the hello's request written too: nothing left to send
    assert a.ready and not a.busy()
    r = a.result(T0 + 100 * TIMEOUT)
    assert r is not None and r.rc == 0 and not r.stalled, r
    assert a.dead is None and a.link.poll() is None


def test_a_step_unanswered_for_the_timeout_is_a_wedge_counted_from_its_start(
        session: Callable[..., RemoteAgent]) -> None:
    a = session(HELLO_OK)
    answered(a, T0 + 1)
    start = T0 + 50  # long after the hello: the wait counts from the step
    a.start_step([{"op": "mkdir", "path": b"d"}, {"op": "commit"}], start)
    assert a.result(start + TIMEOUT - 0.01) is None
    r = a.result(start + TIMEOUT)
    assert r is not None and r.stalled, r


def test_an_answer_starts_the_wait_again(session: Callable[..., RemoteAgent]) -> None:
    a = session(HELLO_OK, OK)
    answered(a, T0 + 1)
    a.start_step([{"op": "mkdir", "path": b"d"}, {"op": "commit"}], T0 + 10)
    a.flush()
    answered(a, T0 + 10 + TIMEOUT - 1)  # the mkdir answered just in time
    assert a.result(T0 + 10 + TIMEOUT) is None  # the commit is still due, not yet late
    r = a.result(T0 + 10 + 2 * TIMEOUT - 1)
    assert r is not None and r.stalled, r


def test_a_session_ended_before_its_hello_is_read_says_why_not_broken_pipe() -> None:
    """A program missing on the target ends the session before it reads a
    byte: writing the hello then meets a closed pipe. What the session
    reports is its stderr and its exit code (the target answered: 127),
    which "no agent there" needs, not the pipe."""
    with tempfile.TemporaryFile() as err:
        a = RemoteAgent("target t: agent",
                        [sys.executable, "-c", "import os, sys; os.close(0); "
                         "sys.stderr.write('sh: 1: syncsup-target: not found\\n'); sys.exit(127)"],
                        err, T0, Timings(agent_timeout=TIMEOUT))
        assert a.link.proc is not None
        a.link.proc.wait(30)
        a.flush()
        assert a.dead is not None and "syncsup-target: not found" in a.dead, a.dead
        assert a.exit_code == 127 and a.answered
        a.close()
