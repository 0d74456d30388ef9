"""The watcher's reads at a clean stop (``Watcher.read_at_stop``), around a
fake watch: the kernel queue is replaced by a list of read results, the
collator by a list of messages sent. What is checked is the decision:
when a queue counts as emptied, and what goes to the collator."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import pytest

from syncsup import proto
from syncsup.watcher import _main
from syncsup.watcher._main import STOP_READS, Watcher
from syncsup.watcher.core import Coalescer, hold_window
from syncsup.watcher.outbox import Outbox


@dataclass
class FakeSync:
    name: str = "s"


@dataclass
class FakeWatch:
    """What read_at_stop uses of a SyncWatch: ``reads`` are the results of
    the next reads (an int of bytes, or an OSError to raise); each read of
    data holds one new path."""

    reads: list[int | OSError]
    sync: FakeSync = field(default_factory=FakeSync)
    tree: object | None = field(default_factory=object)
    ino: object | None = field(default_factory=object)
    held: proto.Changes = field(default_factory=proto.Changes)
    coalescer: Coalescer = field(default_factory=lambda: Coalescer(hold_window(0.5)))
    done: int = 0

    def read(self, now: float) -> int:
        result = self.reads.pop(0) if self.reads else 0
        if isinstance(result, OSError):
            raise result
        self.coalescer.read_done(now, result)
        if result:
            self.done += 1
            self.held.paths.add(b"f%d" % self.done)
        return result


def watcher() -> tuple[Watcher, list[proto.Events]]:
    w = Watcher.__new__(Watcher)
    sent: list[proto.Events] = []
    w.outbox = Outbox(1)
    w.send = sent.extend  # type: ignore[method-assign]
    return w, sent


def test_a_queue_found_empty_counts_as_read_and_keeps_what_it_held() -> None:
    w, sent = watcher()
    fake = FakeWatch([300, 200, 0])
    assert w.read_at_stop(fake, 100.0)  # type: ignore[arg-type]
    assert fake.held.paths == {b"f1", b"f2"} and not sent  # held, dated, sent later
    assert fake.coalescer.held_since is not None and fake.coalescer.held_since <= 100.0


def test_a_queue_still_filling_after_the_reads_does_not_count_as_read() -> None:
    w, _sent = watcher()
    fake = FakeWatch([200] * (STOP_READS + 5))
    assert not w.read_at_stop(fake, 100.0)  # type: ignore[arg-type]
    assert fake.done == STOP_READS  # bounded: a queue that keeps filling is left


def test_a_read_that_fails_is_logged_and_does_not_count_as_read(
        caplog: pytest.LogCaptureFixture) -> None:
    w, _sent = watcher()
    fake = FakeWatch([200, OSError(5, "Input/output error")])
    with caplog.at_level(logging.WARNING, logger=_main.log.name):
        assert not w.read_at_stop(fake, 100.0)  # type: ignore[arg-type]
    assert "reading its inotify queue at the stop failed" in caplog.text
    assert fake.held.paths == {b"f1"}  # what was read before stays, to be sent


def test_a_sync_without_a_queue_has_nothing_unread() -> None:
    w, _sent = watcher()
    fake = FakeWatch([200], tree=None, ino=None)
    assert w.read_at_stop(fake, 100.0)  # type: ignore[arg-type]
    assert fake.done == 0
