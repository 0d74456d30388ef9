"""The syncer's side of OpenSSH's multiplexing protocol (``syncer/mux.py``).

The decoder of the master's answers is pure and is driven here message by
message, byte by byte and with random input (fixed seeds). The session is
driven against a stand-in master on a real unix socket with real
descriptor passing: the answers OpenSSH's master gives (opened, refused,
exit), and the ones it would never give (garbage, a silent close). The
real master is the integration tests' (``test_agent_idle.py``)."""

from __future__ import annotations

import os
import random
import socket
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest

from syncsup.syncer import mux
from syncsup.syncer.mux import MuxError, MuxSession, Replies, hello, new_session


def u32(n: int) -> bytes:
    return n.to_bytes(4, "big")


def packet(*parts: bytes) -> bytes:
    body = b"".join(parts)
    return u32(len(body)) + body


def string(b: bytes) -> bytes:
    return u32(len(b)) + b


OPENED = packet(u32(mux.S_SESSION_OPENED), u32(mux.REQUEST_ID), u32(5))
HELLO = packet(u32(mux.MSG_HELLO), u32(4))


# -- the messages we send ---------------------------------------------------------------


def test_the_new_session_request_reads_as_openssh_reads_it() -> None:
    """Field by field, in the order and widths of OpenSSH's
    ``mux_master_process_new_session`` (the four flags are uint32)."""
    body = new_session(b"syncsup-target '/srv/a b' agent")
    assert int.from_bytes(body[:4], "big") == len(body) - 4
    at = 4

    def take(n: int) -> bytes:
        nonlocal at
        at += n
        return body[at - n:at]

    def num() -> int:
        return int.from_bytes(take(4), "big")

    assert num() == mux.C_NEW_SESSION and num() == mux.REQUEST_ID
    assert take(num()) == b""                          # reserved
    assert [num() for _ in range(4)] == [0, 0, 0, 0]   # tty, X11, agent, subsystem
    assert num() == 0xFFFFFFFF                         # no escape character
    assert take(num()) == b""                          # terminal type
    assert take(num()) == b"syncsup-target '/srv/a b' agent"
    assert at == len(body)                             # no environment
    assert hello() == HELLO


# -- the decoder -------------------------------------------------------------------------


def test_each_answer_of_the_master() -> None:
    r = Replies()
    got = r.feed(HELLO + OPENED
                 + packet(u32(mux.S_TTY_ALLOC_FAIL), u32(5))
                 + packet(u32(mux.S_EXIT_MESSAGE), u32(5), u32(3)))
    assert [(x.kind, x.value) for x in got] == [("hello", 0), ("opened", 0), ("tty", 0),
                                                ("exit", 3)]
    for kind in (mux.S_FAILURE, mux.S_PERMISSION_DENIED):
        _, refused = Replies().feed(HELLO + packet(u32(kind), u32(1),
                                                    string(b"Session open refused")))
        assert refused.kind == "refused" and refused.reason == "Session open refused"


def test_an_answer_split_anywhere_is_the_same_answer() -> None:
    stream = HELLO + OPENED + packet(u32(mux.S_EXIT_MESSAGE), u32(5), u32(300))
    r = Replies()
    got = [x for i in range(len(stream)) for x in r.feed(stream[i:i + 1])]
    assert [(x.kind, x.value) for x in got] == [("hello", 0), ("opened", 0), ("exit", 300 & 0xFF)]


@pytest.mark.parametrize("data", [
    u32(mux.MAX_PACKET + 1),                                   # oversized
    u32(2) + b"ab",                                            # shorter than a type
    packet(u32(0x12345678)),                                   # unknown type
    packet(u32(mux.MSG_HELLO), u32(3)),                        # another version
    packet(u32(mux.MSG_HELLO)),                                # a hello with no version
    packet(u32(mux.S_SESSION_OPENED), u32(2), u32(5)),         # another request's answer
    packet(u32(mux.S_SESSION_OPENED), u32(1)),                 # no session id
    packet(u32(mux.S_FAILURE), u32(1), u32(50), b"short"),     # a reason past its packet
    packet(u32(mux.S_EXIT_MESSAGE), u32(5)),                   # no exit value
])
def test_what_no_master_sends_is_refused_not_guessed(data: bytes) -> None:
    with pytest.raises(MuxError):
        Replies().feed(data)


EXIT = packet(u32(mux.S_EXIT_MESSAGE), u32(5), u32(0))
TTY = packet(u32(mux.S_TTY_ALLOC_FAIL), u32(5))
REFUSED = packet(u32(mux.S_FAILURE), u32(1), string(b"no"))


@pytest.mark.parametrize("stream", [
    OPENED,                   # before the hello
    HELLO + HELLO,            # a second hello
    HELLO + EXIT,             # an exit for a session never opened
    HELLO + TTY,              # a tty notice likewise
    HELLO + OPENED + OPENED,  # opened twice
    HELLO + REFUSED + OPENED,  # opened after it was refused
    HELLO + OPENED + REFUSED,  # refused after it was opened
    HELLO + OPENED + EXIT + EXIT,  # two exits
])
def test_a_message_out_of_its_order_is_refused(stream: bytes) -> None:
    with pytest.raises(MuxError, match="out of order"):
        Replies().feed(stream)


@pytest.mark.parametrize("seed", range(20))
def test_random_bytes_only_ever_raise_mux_error(seed: int) -> None:
    """Fuzz: random streams (and random mutations of valid ones) give
    answers or MuxError, nothing else, and never buffer past one packet."""
    rng = random.Random(seed)
    valid = HELLO + OPENED + packet(u32(mux.S_EXIT_MESSAGE), u32(5), u32(1))
    for _ in range(300):
        if rng.random() < 0.5:
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
        else:
            b = bytearray(valid)
            for _ in range(rng.randrange(1, 4)):
                b[rng.randrange(len(b))] = rng.randrange(256)
            data = bytes(b)
        r = Replies()
        try:
            for i in range(0, len(data), rng.randrange(1, 9)):
                r.feed(data[i:i + 8])
                assert len(r.buf) < 4 + mux.MAX_PACKET
        except MuxError:
            pass


# -- a session, against a stand-in master ------------------------------------------------

# Copies its stdin to its stdout, then exits 4: the direct ssh of a session
# the master would not carry.
CAT = [sys.executable, "-c",
       "import sys, shutil; shutil.copyfileobj(sys.stdin.buffer, sys.stdout.buffer); "
       "sys.exit(4)"]


class FakeMaster(threading.Thread):
    """Accepts one control connection, reads the hello, the request and the
    three descriptors, then plays ``script(conn, fds)``."""

    def __init__(self, path: Path, script: Callable[[socket.socket, list[int]], None]) -> None:
        super().__init__(daemon=True)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(os.fspath(path))
        self.listener.listen(1)
        self.script = script
        self.request = b""
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            conn, _ = self.listener.accept()
            with conn:
                conn.sendall(HELLO)
                data = b""
                while len(data) < len(HELLO) + 4 or len(data) < len(HELLO) + 4 + int.from_bytes(
                        data[len(HELLO):len(HELLO) + 4], "big"):
                    data += conn.recv(1)
                self.request = data
                fds = []
                for _ in range(3):
                    msg, got, _flags, _addr = socket.recv_fds(conn, 1, 1)
                    assert msg == b"\0" and len(got) == 1
                    fds += got
                try:
                    self.script(conn, fds)
                finally:
                    for fd in fds:
                        os.close(fd)
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.listener.close()


@pytest.fixture
def master(tmp_path: Path) -> Iterator[Callable[..., FakeMaster]]:
    made: list[FakeMaster] = []

    def start(script: Callable[[socket.socket, list[int]], None]) -> FakeMaster:
        m = FakeMaster(tmp_path / f"cm-{len(made)}", script)
        m.start()
        made.append(m)
        return m

    yield start
    for m in made:
        m.join(10)
        assert m.error is None, m.error


def read_all(fd: int) -> bytes:
    out = b""
    os.set_blocking(fd, True)
    while chunk := os.read(fd, 4096):
        out += chunk
    return out


def session(path: Path, command: str = "agent") -> tuple[MuxSession, IO[bytes]]:
    """A session to the master at ``path``; its stderr file (closed with
    the test's process)."""
    err = tempfile.TemporaryFile()  # noqa: SIM115 - kept for the session's life
    return MuxSession(os.fspath(path), command, CAT, err), err


def test_a_session_the_master_opens_runs_over_it_with_no_process(
        tmp_path: Path, master: Callable[..., FakeMaster]) -> None:
    def script(conn: socket.socket, fds: list[int]) -> None:
        conn.sendall(OPENED)
        stdin, stdout, stderr = fds
        os.write(stdout, b"answer:" + os.read(stdin, 100))
        os.write(stderr, b"a warning\n")
        conn.sendall(packet(u32(mux.S_EXIT_MESSAGE), u32(5), u32(7)))

    m = master(script)
    s, err = session(tmp_path / "cm-0", "syncsup-target /t agent")
    assert s.proc is None and s.pending and s.control_fd is not None
    os.write(s.stdin_fd, b"hello")
    assert s.wait(10) == 7
    assert not s.pending and s.opened and s.proc is None  # no ssh was started
    assert read_all(s.stdout_fd) == b"answer:hello"
    err.seek(0)
    assert err.read() == b"a warning\n"
    assert b"syncsup-target /t agent" in m.request
    s.kill(1.0)


@pytest.mark.parametrize("answer", [
    packet(u32(mux.S_FAILURE), u32(1), string(b"Session open refused by peer")),
    packet(u32(mux.S_PERMISSION_DENIED), u32(1), string(b"confirmation refused")),
    b"\xff\xff\xff\xffgarbage",
    EXIT,  # an exit for a session never opened: would leave it stuck if believed
    b"",  # the master closes without a word
])
def test_a_session_the_master_will_not_carry_connects_directly_losing_nothing(
        tmp_path: Path, master: Callable[..., FakeMaster], answer: bytes) -> None:
    """What was written before the master answered reaches the direct ssh
    (here a stand-in that echoes it and exits 4), on the same pipes."""
    master(lambda conn, fds: conn.sendall(answer))
    s, _ = session(tmp_path / "cm-0")
    os.write(s.stdin_fd, b"written before the answer")
    while s.pending:
        s.poll()
    assert s.proc is not None and not s.opened
    os.close(s.stdin_fd)
    assert read_all(s.stdout_fd) == b"written before the answer"
    assert s.wait(30) == 4
    s.kill(1.0)


def test_no_master_there_connects_directly_at_once(tmp_path: Path) -> None:
    s, _ = session(tmp_path / "no-such-socket")
    assert s.proc is not None and not s.pending and s.control_fd is None
    os.write(s.stdin_fd, b"x")
    os.close(s.stdin_fd)
    assert read_all(s.stdout_fd) == b"x" and s.wait(30) == 4
    s.kill(1.0)


def test_a_master_lost_after_opening_is_ssh_s_255(
        tmp_path: Path, master: Callable[..., FakeMaster]) -> None:
    master(lambda conn, fds: conn.sendall(OPENED))  # then closes: no exit message
    s, _ = session(tmp_path / "cm-0")
    assert s.wait(10) == 255 and s.opened and s.proc is None
    s.kill(1.0)


def test_kill_ends_the_control_connection_and_closes_every_descriptor(
        tmp_path: Path, master: Callable[..., FakeMaster]) -> None:
    seen: list[bytes] = []

    def script(conn: socket.socket, fds: list[int]) -> None:
        conn.sendall(OPENED)
        seen.append(conn.recv(10))  # b"": the syncer closed the session

    before = set(os.listdir("/proc/self/fd"))
    m = master(script)
    s, err = session(tmp_path / "cm-0")
    while s.pending:
        s.poll()
    s.kill(1.0)
    assert s.returncode == -9
    err.close()
    m.join(10)  # the stand-in's own descriptors closed too
    assert seen == [b""]
    assert set(os.listdir("/proc/self/fd")) <= before, "a descriptor was left open"
