"""The proof step in its thread (syncer/proof_step.py): what it answers
for a local target, how a stall is stopped, that a thread that will not
stop is left behind instead of holding the batch, and that its end wakes
the syncer's loop. Real files and a real thread; only the blocking proof
of the stall cases is a stand-in (what it proves is the step's policy,
not the walk)."""

from __future__ import annotations

import os
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from syncsup.syncer import proof_step
from syncsup.syncer.proof_step import ProofStep
from syncsup.syncer.prove import NO_PROOF
from syncsup.timings import Timings
from tests.helpers.unit import make_config

GRACE = 0.2
TIMINGS = Timings(step_stop_grace=GRACE)


def _step(tmp_path: Path, **kw: Any) -> ProofStep:
    src, dst = tmp_path / "src", tmp_path / "dst"
    conf = make_config(tmp_path, [{"name": "s", "source": str(src), "targets": [str(dst)]}])
    sync = conf.syncs[0]
    errfile = tempfile.TemporaryFile()  # noqa: SIM115 (the step's, as the syncer's are)
    return ProofStep("s -> dst: prove", sync, sync.targets[0], (b"",), None, errfile,
                     time.monotonic(), TIMINGS, **kw)


def _wait(step: ProofStep, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = step.poll()
        if result is not None:
            return result
        time.sleep(0.01)
    raise AssertionError("the proof never ended")


def test_a_local_proof_lists_the_copies_its_ctimes_cannot_vouch_for(tmp_path: Path) -> None:
    """Written just now on both sides (within the margin): compared. Missing
    or of another size: sent by the quick check, so not listed."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "sub").mkdir(parents=True)
    (dst / "sub").mkdir(parents=True)
    for name, body in [("same", b"1"), ("sub/same", b"2"), ("other-size", b"3"),
                       ("missing", b"4")]:
        (src / name).write_bytes(body)
    (dst / "same").write_bytes(b"1")
    (dst / "sub" / "same").write_bytes(b"2")
    (dst / "other-size").write_bytes(b"33")
    for name in ("same", "sub/same"):
        st = os.stat(src / name)
        os.utime(dst / name, ns=(st.st_atime_ns, st.st_mtime_ns))
    result = _wait(_step(tmp_path))
    assert result.rc == 0 and not result.stalled, result
    assert sorted(result.fallback) == [b"same", b"sub/same"]


def test_a_missing_target_proves_nothing_to_compare(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_bytes(b"f")
    result = _wait(_step(tmp_path))
    assert result.rc == 0 and result.fallback == ()


def _blocking(honour_cancel: bool) -> Any:
    """A proof that makes no progress until it is cancelled (or ever)."""
    release = threading.Event()

    def prove(*args: Any) -> Any:
        stop = args[-1]  # (sync, target, subtrees, link, margin, tick, cancelled)
        while not release.wait(0.01):
            if honour_cancel and stop():
                raise OSError("stopped")
        raise OSError("released")

    prove.release = release  # type: ignore[attr-defined]
    return prove


@pytest.mark.parametrize("honour_cancel", [True, False])
def test_a_stalled_proof_is_stopped_and_the_batch_compares_instead(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, honour_cancel: bool) -> None:
    """No progress for the timeout: stopped, and its result is a stall
    (the plan then compares every file). A thread that does not stop is
    left behind after twice the grace: it never holds the batch."""
    (tmp_path / "src").mkdir()
    fake = _blocking(honour_cancel)
    monkeypatch.setattr(proof_step, "prove", fake)
    step = _step(tmp_path)
    step.check(time.monotonic() + 0.5, timeout=1)  # no progress, but not for long yet
    assert step.poll() is None and not step.killing
    step.check(time.monotonic() + 1.5, timeout=1)  # still none a second later: a stall
    assert step.killing and step.cancel.is_set()
    result = _wait(step)
    assert result.stalled and result.rc == NO_PROOF
    assert "no progress for 1s" in result.error
    if honour_cancel:
        step.thread.join(5)  # (it sets its result a moment before it ends)
    assert step.thread.is_alive() is (not honour_cancel)
    fake.release.set()
    step.thread.join(5)
    assert not step.thread.is_alive()


def test_the_end_of_a_proof_wakes_the_loop(tmp_path: Path) -> None:
    """The loop sleeps in poll() until a child exits; the thread's end is
    a SIGCHLD to the main thread, whose handler the loop watches."""
    (tmp_path / "src").mkdir()
    woken = threading.Event()
    old = signal.signal(signal.SIGCHLD, lambda *_: woken.set())
    try:
        step = _step(tmp_path)
        _wait(step)
        deadline = time.monotonic() + 5
        while not woken.is_set() and time.monotonic() < deadline:
            time.sleep(0.01)  # (the handler runs in the main thread, between bytecodes)
        assert woken.is_set()
    finally:
        signal.signal(signal.SIGCHLD, old)


def test_kill_at_stop_ends_a_proof_that_honours_the_stop(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "src").mkdir()
    fake = _blocking(True)
    monkeypatch.setattr(proof_step, "prove", fake)
    step = _step(tmp_path)
    began = time.monotonic()
    step.kill()
    assert not step.thread.is_alive()
    assert time.monotonic() - began < GRACE + 1
    assert step.poll() is not None


def test_a_stalled_remote_proof_waiting_on_its_master_never_connects_directly(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A master that takes the session and never answers (wedged): the
    stall ends the session, and the proof ends compared, without starting
    a direct ssh to the same host (a stopped session is given up, not
    handed to a fallback)."""
    import socket

    from syncsup.syncer import mux

    path = tmp_path / "cm-0"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(os.fspath(path))
    listener.listen(1)
    held: list[socket.socket] = []

    def accept() -> None:
        conn, _ = listener.accept()
        held.append(conn)  # and never a word

    threading.Thread(target=accept, daemon=True).start()
    spawned: list[Any] = []

    def spawn(*args: Any, **kw: Any) -> Any:
        spawned.append(args)
        raise OSError("no direct ssh in this test")

    monkeypatch.setattr(mux, "spawn", spawn)
    (tmp_path / "src").mkdir()
    conf = make_config(tmp_path, [{"name": "s", "source": str(tmp_path / "src"),
                                   "targets": ["h:/x"]}])
    sync = conf.syncs[0]
    errfile = tempfile.TemporaryFile()  # noqa: SIM115
    step = ProofStep("target h:/x", sync, sync.targets[0], (b"",), os.fspath(path), errfile,
                     time.monotonic(), TIMINGS)
    deadline = time.monotonic() + 5
    while step.link is None and time.monotonic() < deadline:
        time.sleep(0.01)
    step.check(time.monotonic(), timeout=1)  # the first look: no progress since the start
    step.check(time.monotonic() + 1.5, timeout=1)  # nor a second later: a stall
    result = _wait(step)
    assert result.stalled and result.rc == NO_PROOF
    step.thread.join(5)
    assert not step.thread.is_alive()
    assert spawned == []
    for c in held:
        c.close()
    listener.close()
