"""The shared pieces every role uses the same way: the one Backoff, the one
delete-mode rule, the one reconnection check."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import zmq

from syncsup.backoff import JITTER, Backoff
from syncsup.config import Sync, Target
from syncsup.sockets import Reconnects


def test_backoff_doubles_from_base_up_to_cap_with_jitter() -> None:
    b = Backoff(0.5, 4.0, random.Random(7))
    assert [b.raw(n) for n in range(0, 7)] == [0.0, 0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert b.raw(10_000) == 4.0  # no overflow for a target down for days
    for n in range(1, 8):
        d = b.delay(n)
        assert JITTER[0] * b.raw(n) <= d <= JITTER[1] * b.raw(n)
    assert b.delay(0) == 0.0 and b.delay(-1) == 0.0
    assert len({b.delay(3) for _ in range(50)}) > 40  # jittered: no lockstep


@pytest.mark.parametrize(("delete", "startup", "running"), [
    (True, True, True), (False, False, False), ("startup", True, False),
    ("running", False, True),
])
def test_one_delete_rule(delete: bool | str, startup: bool, running: bool) -> None:
    sync = Sync(name="s", source=Path("/s"), targets=(Target("/t", "/t"),),
                delete=delete)  # type: ignore[arg-type]
    assert (sync.deletes(startup=True), sync.deletes(startup=False)) == (startup, running)


class FakeMonitor:
    """A monitor socket with ``queued`` connection events waiting."""

    def __init__(self) -> None:
        self.queued = 0

    def recv_multipart(self, flags: int) -> list[bytes]:
        if not self.queued:
            raise zmq.Again()
        self.queued -= 1
        return [b"event"]


def test_the_first_connection_is_not_a_reconnection() -> None:
    mon = FakeMonitor()
    r = Reconnects(mon)  # type: ignore[arg-type]
    assert not r.again()  # nothing yet
    mon.queued = 1
    assert not r.again()  # the start
    assert not r.again()
    mon.queued = 1
    assert r.again()  # a restarted collator
    mon.queued = 2
    assert r.again() and mon.queued == 0  # read empty


def test_two_connections_at_once_at_the_start_are_a_reconnection() -> None:
    mon = FakeMonitor()
    mon.queued = 2  # connected, the collator restarted, connected again
    assert Reconnects(mon).again()  # type: ignore[arg-type]
