"""The collator's core (collator/core.py) driven message by message, without
sockets: a real Config, a real StateDir and journals in tmp_path, a fake
``send`` that records what would go out (and can fail), a fake clock."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from syncsup import proto
from syncsup.collator import core
from syncsup.collator.core import BATCH_BYTES, BATCH_LIMIT, Collator, SyncQueues
from syncsup.collator.journal import CREATED, PATH, TREE, VERIFY, Journal, Kind
from syncsup.collator.queue import TargetQueue
from syncsup.proto import (
    Ack,
    Batch,
    Changes,
    Command,
    Control,
    Done,
    Events,
    Message,
    Outcome,
    Ready,
)
from syncsup.statedir import StateDir
from syncsup.watcher.outbox import split
from tests.helpers.unit import FakeClock, make_config

M = TypeVar("M", bound=Message)
WATCHER, SYNCER = b"watcher-peer", b"syncer-peer"


class Harness:
    """One Collator with everything it talks to replaced by recorders."""

    def __init__(self, tmp_path: Path, syncs: list[dict[str, Any]], run_id: str = "run1",
                 clock: FakeClock | None = None) -> None:
        self.tmp_path = tmp_path
        self.conf = make_config(tmp_path, syncs)
        self.state = StateDir(self.conf.settings.state_dir)
        self.state.create()
        self.clock = clock or FakeClock()
        self.sent: list[tuple[str, bytes, Message]] = []
        self.accept = True
        self.on_send: Callable[[str, bytes, Message], None] | None = None
        self.seq = 0
        self.core = Collator(self.conf, self.state, run_id, self.send, clock=self.clock)

    def send(self, socket: str, peer: bytes, msg: Message) -> bool:
        if self.on_send is not None:
            self.on_send(socket, peer, msg)
        self.sent.append((socket, peer, msg))
        return self.accept

    def restart(self, run_id: str = "run1") -> None:
        """A new collator on the same state_dir (the old one closed)."""
        self.core.close()
        self.core = Collator(self.conf, self.state, run_id, self.send, clock=self.clock)

    # -- messages in
    def events(self, sync: str, changes: Changes, seq: int | None = None,
               first: float | None = None) -> int:
        if seq is None:
            self.seq += 1
            seq = self.seq
        self.core.on_events(WATCHER, Events(seq=seq, sync=sync, changes=changes, first=first))
        return seq

    def ready(self, sync: str, target: int, incarnation: str = "inc1",
              peer: bytes = SYNCER) -> None:
        self.core.on_ready(peer, Ready(sync=sync, target=target, incarnation=incarnation))

    def done(self, batch: Batch, outcome: Outcome = Outcome.OK, **kw: Any) -> None:
        self.core.on_done(Done(batch_id=batch.batch_id, sync=batch.sync, target=batch.target,
                               outcome=outcome, **kw))

    # -- what went out
    def take(self, kind: type[M]) -> list[M]:
        out = [m for _s, _p, m in self.sent if isinstance(m, kind)]
        self.sent = [x for x in self.sent if not isinstance(x[2], kind)]
        return out

    def batch(self) -> Batch:
        """Dispatch; exactly one batch must go out."""
        self.core.dispatch_due()
        batches = self.take(Batch)
        assert len(batches) == 1, batches
        return batches[0]

    # -- state
    def s(self, sync: str = "www") -> SyncQueues:
        return self.core.syncs[sync]

    def q(self, sync: str = "www", target: int = 0) -> TargetQueue:
        return self.core.syncs[sync].queues[target]

    def journal(self, sync: str = "www") -> Journal:
        return self.core.syncs[sync].journal

    def rows(self, sync: str = "www", target: int = 0) -> set[tuple[Kind, bytes]]:
        spec = self.q(sync, target).spec
        return {(r.kind, r.path) for r in self.journal(sync).take(spec, 10**9, 1 << 40)}

    def synced(self, sync: str = "www", target: int = 0) -> Batch:
        """Run target's initial sync to success; returns its batch."""
        self.ready(sync, target)
        batch = self.batch()
        assert batch.startup
        self.done(batch)
        assert self.q(sync, target).synced_this_run
        return batch


def sync(tmp_path: Path, name: str = "www", targets: int | list[str] | None = 2,
         **kw: Any) -> dict[str, Any]:
    """A [[sync]] table: ``targets`` local ones, or those given, or none
    (command mode)."""
    doc: dict[str, Any] = {"name": name, "source": str(tmp_path / f"src-{name}"),
                           "delay": 2.0, **kw}
    if isinstance(targets, int):
        doc["targets"] = [str(tmp_path / f"{name}-t{i}") for i in range(targets)]
    elif targets is not None:
        doc["targets"] = targets
    return doc


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def factory(*syncs: dict[str, Any], **kw: Any) -> Harness:
        h = Harness(tmp_path, list(syncs) or [sync(tmp_path)], **kw)
        made.append(h)
        return h

    yield factory
    for h in made:
        h.core.close()


@pytest.fixture
def h(make: Callable[..., Harness]) -> Harness:
    """One sync "www" with two local targets and the root rescan of the
    watcher's start already recorded."""
    harness = make()
    harness.events("www", Changes(trees={b""}))
    harness.take(Ack)
    return harness


def table(path: Path, sql: str) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(path)
    try:
        return sorted(db.execute(sql).fetchall())
    finally:
        db.close()


# ===================================================================== ingest
def test_events_are_committed_before_the_ack(make: Callable[..., Harness]) -> None:
    h = make()
    seen: list[int] = []

    def check(socket: str, peer: bytes, msg: Message) -> None:
        assert (socket, peer) == ("ingest", WATCHER)
        # A second connection sees the rows: they are committed, not pending.
        seen.extend(n for (n,) in table(h.state.journal("www"),
                                        "SELECT COUNT(*) FROM dirty"))

    h.on_send = check
    seq = h.events("www", Changes(paths={b"a", b"b"}, trees={b"t"}))
    assert h.take(Ack) == [Ack(seq=seq)]
    assert seen == [6]  # 3 rows for each of the 2 targets
    assert h.rows(target=0) == h.rows(target=1) == {(PATH, b"a"), (PATH, b"b"), (TREE, b"t")}
    assert h.q().marked == 3


def test_a_resent_message_is_acked_again_and_changes_nothing(
        make: Callable[..., Harness], tmp_path: Path) -> None:
    h = make(sync(tmp_path, mode="direct"))
    for _ in range(3):  # the watcher did not get the ACK in time
        h.events("www", Changes(paths={b"a", b"b"}, moves=[(b"a", b"b")]), seq=7)
    assert h.take(Ack) == [Ack(seq=7)] * 3
    assert h.rows() == {(PATH, b"a"), (PATH, b"b")}
    assert [(a, b_) for _i, a, b_ in h.journal().take_moves(h.q().spec, 10)] == [(b"a", b"b")]


def test_events_for_an_unknown_sync_are_dropped_unacked(make: Callable[..., Harness]) -> None:
    h = make()
    h.events("nope", Changes(paths={b"a"}))
    assert h.sent == []
    assert h.rows() == set()


@pytest.mark.parametrize(("mode", "extra", "keeps_moves", "keeps_created"), [
    ("rsync", {}, False, False),
    ("rsyncssh", {"targets": ["host:/srv/m"]}, True, False),
    ("direct", {}, True, False),
    ("command", {"targets": None, "on_create": ["true"]}, True, True),
])
def test_what_each_mode_records(make: Callable[..., Harness], tmp_path: Path, mode: str,
                                extra: dict[str, Any], keeps_moves: bool,
                                keeps_created: bool) -> None:
    h = make(sync(tmp_path, mode=mode, **extra))
    h.events("www", Changes(paths={b"a", b"b"}, created={b"b"}, moves=[(b"a", b"b")]))
    spec = h.q().spec
    moves = h.journal().take_moves(spec, 10)
    assert [(a, b_) for _i, a, b_ in moves] == ([(b"a", b"b")] if keeps_moves else [])
    assert ((CREATED, b"b") in h.rows()) is keeps_created
    assert {(PATH, b"a"), (PATH, b"b")} <= h.rows()


def test_rescans_are_counted_and_shown(make: Callable[..., Harness]) -> None:
    h = make()
    h.events("www", Changes(trees={b"", b"d"}, verify={b"v"}, paths={b"p"}))
    h.events("www", Changes(paths={b"q"}))
    assert h.s().rescans == 3
    assert h.core.status().queues[0].rescans == 3


# ------------------------------------------------------------- init = false
def test_init_false_drops_only_the_first_root_rescan_of_a_run(make: Callable[..., Harness],
                                                              tmp_path: Path) -> None:
    h = make(sync(tmp_path, init=False))
    h.events("www", Changes(trees={b"", b"d"}, paths={b"p"}))
    # The root is dropped; the rest of the message is kept.
    assert h.rows() == {(TREE, b"d"), (PATH, b"p")}
    # The user vouches that the targets are current.
    assert all(q.synced_this_run for q in h.s().queues)
    assert [t.state for t in h.core.status().queues[0].targets] == ["pending", "pending"]
    # A later root rescan (events were lost) is kept.
    h.events("www", Changes(verify={b""}))
    assert (VERIFY, b"") in h.rows()
    assert (VERIFY, b"") in h.rows(target=1)


def test_init_false_drops_a_verifying_root_rescan_too(make: Callable[..., Harness],
                                                      tmp_path: Path) -> None:
    h = make(sync(tmp_path, init=False))
    h.events("www", Changes(verify={b""}))
    assert h.rows() == set()
    h.events("www", Changes(trees={b""}))
    assert h.rows() == {(TREE, b"")}


def test_init_false_once_per_run_not_per_collator(make: Callable[..., Harness],
                                                  tmp_path: Path) -> None:
    h = make(sync(tmp_path, init=False))
    h.events("www", Changes(trees={b""}))
    assert h.rows() == set()
    h.restart("run1")  # the collator restarted within the run: the watcher rescans
    assert h.q().synced_this_run
    h.events("www", Changes(trees={b""}))
    assert h.rows() == {(TREE, b"")}
    h.journal().complete(h.q().spec, h.journal().take(h.q().spec, 10, 1 << 20))
    h.restart("run2")  # a new `syncsup start`
    assert not h.q().synced_this_run
    h.events("www", Changes(trees={b""}))
    assert h.rows() == set()
    assert h.q().synced_this_run


def test_init_true_keeps_the_first_root_rescan(h: Harness) -> None:
    assert h.rows() == h.rows(target=1) == {(TREE, b"")}
    assert not h.q().synced_this_run
    assert [t.state for t in h.core.status().queues[0].targets] == ["startup", "startup"]


# =================================================================== dispatch
def test_initial_sync_goes_at_once_and_says_startup(h: Harness) -> None:
    assert h.core.dispatch_due() is None  # no credit yet: nothing waits for time
    assert h.take(Batch) == []
    h.ready("www", 1)
    h.ready("www", 0)
    h.core.dispatch_due()
    sent = [(s, p, m) for s, p, m in h.sent if isinstance(m, Batch)]
    assert [(s, p, m.sync, m.target, m.startup) for s, p, m in sent] == [
        ("dispatch", SYNCER, "www", 0, True), ("dispatch", SYNCER, "www", 1, True)]
    assert [m.changes for _s, _p, m in sent] == [Changes(trees={b""})] * 2
    assert sent[0][2].batch_id != sent[1][2].batch_id
    assert [t.state for t in h.core.status().queues[0].targets] == ["startup", "startup"]


def test_batches_wait_for_the_delay(h: Harness) -> None:
    h.synced()
    h.ready("www", 0)
    t0 = h.clock.now
    h.events("www", Changes(paths={b"a"}))
    assert h.core.dispatch_due() == t0 + 2.0
    h.clock.advance(1.99)
    assert h.core.dispatch_due() == t0 + 2.0
    assert h.take(Batch) == []
    h.clock.advance(0.01)
    batch = h.batch()
    assert batch.changes == Changes(paths={b"a"})
    assert not batch.startup
    assert h.core.dispatch_due() is None  # leased: nothing waits for time


def test_the_delay_counts_from_the_oldest_change(h: Harness) -> None:
    h.synced()
    h.ready("www", 0)
    t0 = h.clock.now
    h.events("www", Changes(paths={b"a"}))
    h.clock.advance(1.5)
    h.events("www", Changes(paths={b"b"}))
    assert h.core.dispatch_due() == t0 + 2.0
    h.clock.advance(0.5)
    assert h.batch().changes == Changes(paths={b"a", b"b"})


def test_the_delay_counts_from_when_the_watcher_read_the_change(h: Harness) -> None:
    """A message held by the watcher says when its oldest change was read:
    the batch is due ``delay`` after that, not after the message came."""
    h.synced()
    h.ready("www", 0)
    t0 = h.clock.now
    h.clock.advance(0.2)
    h.events("www", Changes(paths={b"a"}), first=t0)
    assert h.core.dispatch_due() == t0 + 2.0
    h.clock.advance(1.8)
    assert h.batch().changes == Changes(paths={b"a"})


def test_a_first_stamp_in_the_future_counts_as_now(h: Harness) -> None:
    """A watcher's clock ahead of ours never pushes a batch past its delay."""
    h.synced()
    h.ready("www", 0)
    t0 = h.clock.now
    h.events("www", Changes(paths={b"a"}), first=t0 + 100.0)
    assert h.core.dispatch_due() == t0 + 2.0


def test_max_delays_flushes_before_the_delay(make: Callable[..., Harness],
                                             tmp_path: Path) -> None:
    h = make(sync(tmp_path, targets=1, delay=60.0, max_delays=5))
    h.events("www", Changes(trees={b""}))
    h.synced()
    h.ready("www", 0)
    h.events("www", Changes(paths={b"a", b"b"}))
    h.events("www", Changes(paths={b"c"}, created={b"c"}))  # created: not kept in rsync mode
    h.events("www", Changes(paths={b"d"}))  # 4 entries so far
    h.core.dispatch_due()
    assert h.take(Batch) == []
    h.events("www", Changes(paths={b"a"}))  # the 5th, even if a repeat
    batch = h.batch()
    assert batch.changes.paths == {b"a", b"b", b"c", b"d"}
    assert h.q().marked == 0  # counting starts again


def test_backoff_after_a_failure(h: Harness) -> None:
    h.synced()
    h.ready("www", 0)
    h.events("www", Changes(paths={b"a"}))
    h.clock.advance(2.0)
    batch = h.batch()
    h.done(batch, Outcome.RETRY, rc=23, error="partial transfer")
    h.ready("www", 0)
    q = h.q()
    assert q.next_try > h.clock.now
    assert h.core.dispatch_due() == q.next_try
    assert h.take(Batch) == []
    h.clock.now = q.next_try
    again = h.batch()
    assert again.changes == batch.changes
    assert again.batch_id > batch.batch_id


def test_a_flushed_batch_wakes_at_its_backoff_not_at_its_delay(
        make: Callable[..., Harness], tmp_path: Path) -> None:
    h = make(sync(tmp_path, targets=1, delay=60.0))
    h.events("www", Changes(trees={b""}))
    h.ready("www", 0)
    h.done(h.batch(), Outcome.RETRY, rc=12, error="protocol data stream")
    h.ready("www", 0)
    q = h.q()
    assert h.clock.now < q.next_try < h.clock.now + 60.0
    assert h.core.dispatch_due() == q.next_try


def test_paused_targets_get_nothing_and_wait_for_no_time(h: Harness) -> None:
    h.core.on_control(Control(command=Command.PAUSE, sync="www", target_spec=h.q().spec))
    h.ready("www", 0)
    assert h.core.dispatch_due() is None
    assert h.take(Batch) == []
    assert h.core.status().queues[0].targets[0].state == "paused"
    h.core.on_control(Control(command=Command.RESUME, sync="www", target_spec=h.q().spec))
    assert h.batch().target == 0


def test_halted_targets_wait_for_an_operator(h: Harness) -> None:
    h.synced()
    h.ready("www", 0)
    h.events("www", Changes(paths={b"a"}))
    h.clock.advance(2.0)
    h.done(h.batch(), Outcome.HALT, rc=25, error="max-delete limit")
    h.ready("www", 0)
    assert h.q().halted
    h.clock.advance(10_000.0)
    assert h.core.dispatch_due() is None
    assert h.take(Batch) == []
    target = h.core.status().queues[0].targets[0]
    assert (target.state, target.last_error) == ("failed", "max-delete limit")
    h.core.on_control(Control(command=Command.RESUME, sync="www"))
    assert not h.q().halted
    assert h.batch().changes == Changes(paths={b"a"})


def test_syncs_and_targets_are_dispatched_independently(make: Callable[..., Harness],
                                                        tmp_path: Path) -> None:
    h = make(sync(tmp_path, "a"), sync(tmp_path, "b", delay=0))
    for name in ("a", "b"):
        h.events(name, Changes(trees={b""}))
        for i in (0, 1):
            h.ready(name, i, peer=f"{name}{i}".encode())
    h.core.dispatch_due()
    first = h.take(Batch)
    assert sorted((b_.sync, b_.target) for b_ in first) == [("a", 0), ("a", 1), ("b", 0),
                                                             ("b", 1)]
    # a/0 never finishes; everything else does and gets new work in one turn.
    for batch in first:
        if (batch.sync, batch.target) != ("a", 0):
            h.done(batch)
            h.ready(batch.sync, batch.target, peer=f"{batch.sync}{batch.target}".encode())
    h.events("a", Changes(paths={b"x"}))
    h.events("b", Changes(paths={b"y"}))
    h.clock.advance(2.0)
    h.core.dispatch_due()
    second = h.take(Batch)
    assert sorted((b_.sync, b_.target, frozenset(b_.changes.paths)) for b_ in second) == [
        ("a", 1, frozenset({b"x"})), ("b", 0, frozenset({b"y"})), ("b", 1, frozenset({b"y"}))]
    lease = h.q("a", 0).lease
    assert lease is not None and lease.batch_id == next(
        b_.batch_id for b_ in first if (b_.sync, b_.target) == ("a", 0))


def test_batches_go_to_the_peer_that_gave_the_credit(make: Callable[..., Harness]) -> None:
    h = make()
    h.events("www", Changes(trees={b""}))
    h.ready("www", 0, peer=b"p0")
    h.ready("www", 1, peer=b"p1")
    h.core.dispatch_due()
    assert sorted((p, m.target) for s, p, m in h.sent if isinstance(m, Batch)) == [
        (b"p0", 0), (b"p1", 1)]


def test_the_next_wake_is_the_earliest_of_all_targets(make: Callable[..., Harness],
                                                      tmp_path: Path) -> None:
    h = make(sync(tmp_path, "a", targets=1, delay=5.0), sync(tmp_path, "b", targets=1,
                                                              delay=3.0))
    for name in ("a", "b"):
        h.events(name, Changes(trees={b""}))
        h.synced(name)
        h.ready(name, 0)
    assert h.core.dispatch_due() is None  # idle
    t0 = h.clock.now
    h.events("a", Changes(paths={b"x"}))
    assert h.core.dispatch_due() == t0 + 5.0
    h.clock.advance(1.0)
    h.events("b", Changes(paths={b"y"}))
    assert h.core.dispatch_due() == t0 + 4.0
    h.clock.advance(3.0)
    assert h.batch().sync == "b"
    assert h.core.dispatch_due() == t0 + 5.0


def test_an_empty_journal_stops_looking(h: Harness) -> None:
    h.synced()
    h.synced(target=1)
    h.ready("www", 0)
    h.ready("www", 1)
    assert h.core.dispatch_due() is None
    assert not h.q().maybe_pending
    h.events("www", Changes(paths={b"a"}))
    assert h.q().maybe_pending


def test_a_failed_send_releases_the_lease(h: Harness) -> None:
    h.ready("www", 0)
    h.accept = False
    h.core.dispatch_due()
    assert len(h.take(Batch)) == 1  # tried
    assert h.q().lease is None
    assert h.q().ready_peer is None  # wait for the syncer's next READY
    assert h.rows() == {(TREE, b"")}
    h.accept = True
    h.core.dispatch_due()
    assert h.take(Batch) == []
    h.ready("www", 0)
    assert h.batch().changes == Changes(trees={b""})


def test_a_batch_holds_at_most_batch_limit_rows(h: Harness,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    assert BATCH_LIMIT == 20_000
    monkeypatch.setattr(core, "BATCH_LIMIT", 50)
    h.synced()
    paths = {b"f%06d" % i for i in range(50 + 10)}
    h.events("www", Changes(paths=paths))
    h.ready("www", 0)
    h.clock.advance(2.0)
    first = h.batch()
    assert len(first.changes.paths) == 50
    h.done(first)
    h.ready("www", 0)
    assert len(h.batch().changes.paths) == 10


def test_a_batch_holds_about_batch_bytes_of_paths(h: Harness,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    assert BATCH_BYTES == 4 * 1024 * 1024
    monkeypatch.setattr(core, "BATCH_BYTES", 100)
    h.synced()
    h.events("www", Changes(paths={b"%029d" % i for i in range(10)}))  # 30 bytes each
    h.ready("www", 0)
    h.clock.advance(2.0)
    first = h.batch()
    assert len(first.changes.paths) == 4  # the row that reaches the budget is the last
    h.done(first)
    h.ready("www", 0)
    assert len(h.batch().changes.paths) == 4


def test_a_new_path_keeps_its_created_flag_in_a_split_batch(
        make: Callable[..., Harness], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core, "BATCH_LIMIT", 4)
    h = make(sync(tmp_path, targets=None, mode="command", on_create=["true"]))
    h.events("www", Changes(trees={b""}))
    h.synced()
    new = {b"f%d" % i for i in range(6)}
    h.events("www", Changes(paths=set(new), created=set(new)))  # e.g. an untar
    reported_as_created: set[bytes] = set()
    for _ in range(10):
        h.ready("www", 0)
        h.clock.advance(2.0)
        h.core.dispatch_due()
        batches = h.take(Batch)
        if not batches:
            break
        reported_as_created |= batches[0].changes.paths & batches[0].changes.created
        h.done(batches[0])
    assert h.rows() == set()
    assert reported_as_created == new


def test_a_batch_never_exceeds_what_the_syncer_accepts(make: Callable[..., Harness],
                                                       tmp_path: Path) -> None:
    h = make(sync(tmp_path, targets=1, mode="direct"))
    h.events("www", Changes(trees={b""}))
    h.synced()
    deep = b"d" * 200 + b"/"
    renames = [(deep * 12 + b"a%05d" % i, deep * 12 + b"b%05d" % i) for i in range(2000)]
    changes = Changes(paths={p for m in renames for p in m}, moves=renames)
    for part in split(changes):  # as the watcher sends them
        h.events("www", part)
    h.ready("www", 0)
    h.clock.advance(2.0)
    h.core.dispatch_due()
    for batch in h.take(Batch):
        frames = proto.encode(batch)
        assert len(frames[2]) <= Batch.MAX_BODY
        assert proto.decode(frames) == batch


# ============================================================ READY and leases
def test_a_new_syncer_incarnation_gets_the_lease_back(h: Harness) -> None:
    h.ready("www", 0, "old")
    lost = h.batch()
    h.ready("www", 0, "old")  # a repeated credit of the same syncer changes nothing
    assert h.q().lease is not None
    h.core.dispatch_due()
    assert h.take(Batch) == []
    h.ready("www", 0, "new", peer=b"new-peer")  # the syncer was restarted
    assert h.q().lease is None
    h.core.dispatch_due()
    sent = [(p, m) for s, p, m in h.sent if isinstance(m, Batch)]
    assert len(sent) == 1
    peer, again = sent[0]
    assert peer == b"new-peer"
    assert again.changes == lost.changes
    assert again.batch_id != lost.batch_id
    # A late DONE of the dead syncer's batch is ignored.
    h.done(lost)
    lease = h.q().lease
    assert lease is not None and lease.batch_id == again.batch_id
    assert h.rows() == {(TREE, b"")}


def test_a_done_with_an_incarnation_is_also_the_next_credit(h: Harness) -> None:
    h.synced()
    h.events("www", Changes(paths={b"a"}))
    h.ready("www", 0, "inc1")
    h.clock.advance(2.0)
    first = h.batch()
    h.events("www", Changes(paths={b"b"}))  # while the syncer works on the first
    h.core.on_done(Done(batch_id=first.batch_id, sync="www", target=0, outcome=Outcome.OK,
                        incarnation="inc1"), SYNCER)  # and no READY
    assert h.rows() == {(PATH, b"b")}
    h.clock.advance(2.0)
    assert h.batch().changes == Changes(paths={b"b"})
    # Without an incarnation (or a peer) a DONE gives no credit.
    h.events("www", Changes(paths={b"c"}))
    lease = h.q().lease
    assert lease is not None
    h.core.on_done(Done(batch_id=lease.batch_id, sync="www", target=0, outcome=Outcome.OK),
                   SYNCER)
    h.clock.advance(2.0)
    h.core.dispatch_due()
    assert h.take(Batch) == []
    # A DONE for a batch that is not leased (from before a restart) still
    # carries a credit: the syncer that sent it is idle.
    h.core.on_done(Done(batch_id=12345, sync="www", target=0, outcome=Outcome.OK,
                        incarnation="inc1"), SYNCER)
    assert h.batch().changes == Changes(paths={b"c"})


def test_ready_and_done_for_unknown_targets_are_dropped(h: Harness) -> None:
    for name, index in (("nope", 0), ("www", 2), ("www", -1)):
        h.ready(name, index)
        h.core.on_done(Done(batch_id=1, sync=name, target=index, outcome=Outcome.OK))
    assert h.core.dispatch_due() is None
    assert h.sent == []


# ======================================================================= DONE
def test_ok_forgets_only_what_did_not_change_meanwhile(h: Harness) -> None:
    h.synced()
    h.events("www", Changes(paths={b"a", b"b"}, trees={b"t"}))
    h.ready("www", 0)
    h.clock.advance(2.0)
    batch = h.batch()
    h.events("www", Changes(paths={b"a"}, trees={b"t"}))  # while rsync runs
    h.done(batch, bytes=1234, seconds=0.5)
    assert h.rows() == {(PATH, b"a"), (TREE, b"t")}
    assert h.q().last_ok == h.clock.now and h.q().last_error is None
    assert h.q().bytes_sent == 1234
    assert h.q().maybe_pending
    h.ready("www", 0)
    h.clock.advance(2.0)
    assert h.batch().changes == Changes(paths={b"a"}, trees={b"t"})


@pytest.mark.parametrize(("outcome", "state"), [(Outcome.RETRY, "retrying"),
                                                (Outcome.FATAL, "failed"),
                                                (Outcome.HALT, "failed")])
def test_failures_keep_the_rows_and_back_off(h: Harness, outcome: Outcome, state: str) -> None:
    h.synced()
    h.events("www", Changes(paths={b"a"}))
    h.ready("www", 0)
    h.clock.advance(2.0)
    h.done(h.batch(), outcome, rc=99, error="it broke", bytes=-5)
    q = h.q()
    assert h.rows() == {(PATH, b"a")}
    assert q.failures == 1
    assert q.next_try > h.clock.now
    assert q.halted is (outcome is Outcome.HALT)
    assert q.bytes_sent == 0  # a negative count adds nothing
    target = h.core.status().queues[0].targets[0]
    assert (target.state, target.last_error, target.pending) == (state, "it broke", 1)
    assert target.transfers == {"ok": 1, outcome.value: 1}


def test_the_root_tree_marks_the_initial_sync_done(h: Harness) -> None:
    h.ready("www", 0)
    first = h.batch()
    h.done(first, Outcome.RETRY)
    assert not h.q().synced_this_run
    h.ready("www", 0)
    h.clock.now = h.q().next_try
    h.done(h.batch())
    assert h.q().synced_this_run
    assert not h.q(target=1).synced_this_run
    assert h.journal().get_meta(f"synced:{h.q().spec}") == "run1"
    h.restart("run1")
    assert h.q().synced_this_run and not h.q(target=1).synced_this_run
    h.restart("run2")
    assert not h.q().synced_this_run


def test_other_trees_do_not_mark_the_initial_sync_done(make: Callable[..., Harness]) -> None:
    h = make()
    h.events("www", Changes(trees={b"sub"}, verify={b"v"}, paths={b""}))
    h.ready("www", 0)
    h.done(h.batch())
    assert not h.q().synced_this_run


def test_an_unknown_batch_is_ignored(h: Harness) -> None:
    h.ready("www", 0)
    batch = h.batch()
    h.core.on_done(Done(batch_id=batch.batch_id + 1, sync="www", target=0,
                        outcome=Outcome.OK, moves_done=3, bytes=10))
    h.core.on_done(Done(batch_id=batch.batch_id, sync="www", target=1, outcome=Outcome.OK))
    assert h.q().lease is not None
    assert h.q().bytes_sent == 0 and h.q().outcomes == {}
    assert h.rows() == h.rows(target=1) == {(TREE, b"")}


# ---------------------------------------------------------------- moves_done
def renames_harness(make: Callable[..., Harness], tmp_path: Path, mode: str = "direct"
                    ) -> tuple[Harness, Batch]:
    extra: dict[str, Any] = {"targets": None, "on_move": ["true"]} if mode == "command" else {}
    h = make(sync(tmp_path, mode=mode, **extra))
    h.events("www", Changes(trees={b""}))
    h.synced()
    h.events("www", Changes(paths={b"a", b"b", b"c", b"x"}, moves=[(b"a", b"b"), (b"b", b"c")]))
    h.ready("www", 0)
    h.clock.advance(2.0)
    batch = h.batch()
    assert batch.changes.moves == [(b"a", b"b"), (b"b", b"c")]
    return h, batch


def pending_moves(h: Harness, target: int = 0) -> list[tuple[bytes, bytes]]:
    return [(a, b_) for _i, a, b_ in h.journal().take_moves(h.q(target=target).spec, 100)]


def test_attempted_renames_are_never_replayed(make: Callable[..., Harness],
                                              tmp_path: Path) -> None:
    h, batch = renames_harness(make, tmp_path)
    h.done(batch, moves_done=2)
    assert pending_moves(h) == []
    assert h.rows() == set()
    assert pending_moves(h, 1) == [(b"a", b"b"), (b"b", b"c")]  # the other target's own


@pytest.mark.parametrize("outcome", [Outcome.RETRY, Outcome.FATAL, Outcome.HALT])
def test_replayed_renames_have_the_retry_verify_their_destinations(
        make: Callable[..., Harness], tmp_path: Path, outcome: Outcome) -> None:
    h, batch = renames_harness(make, tmp_path)
    h.done(batch, outcome, moves_done=2)
    assert pending_moves(h) == []
    assert h.rows() == {(PATH, p) for p in (b"a", b"b", b"c", b"x")} | {
        (VERIFY, b"b"), (VERIFY, b"c")}
    assert (VERIFY, b"b") not in h.rows(target=1)


def test_partly_attempted_renames(make: Callable[..., Harness], tmp_path: Path) -> None:
    h, batch = renames_harness(make, tmp_path)
    h.done(batch, Outcome.RETRY, moves_done=1)
    assert pending_moves(h) == [(b"b", b"c")]
    assert {r for r in h.rows() if r[0] is VERIFY} == {(VERIFY, b"b")}
    h.ready("www", 0)
    h.clock.now = h.q().next_try
    assert h.batch().changes.moves == [(b"b", b"c")]


def test_renames_not_attempted_are_replayed(make: Callable[..., Harness],
                                            tmp_path: Path) -> None:
    h, batch = renames_harness(make, tmp_path)
    h.done(batch, Outcome.RETRY, moves_done=0)  # e.g. ssh could not connect
    assert pending_moves(h) == [(b"a", b"b"), (b"b", b"c")]
    assert not any(r[0] is VERIFY for r in h.rows())


def test_command_mode_forgets_reported_renames_without_verifying(
        make: Callable[..., Harness], tmp_path: Path) -> None:
    h, batch = renames_harness(make, tmp_path, mode="command")
    h.done(batch, Outcome.RETRY, moves_done=2)
    assert pending_moves(h) == []
    assert not any(r[0] is VERIFY for r in h.rows())


# ==================================================================== control
def test_resync_verifies_the_root_of_the_chosen_targets_and_releases_a_halt(
        make: Callable[..., Harness], tmp_path: Path) -> None:
    h = make(sync(tmp_path, "a"), sync(tmp_path, "b"))
    for name in ("a", "b"):
        h.events(name, Changes(trees={b""}))
        h.synced(name)
        h.synced(name, 1)
    h.events("a", Changes(paths={b"p"}))
    h.ready("a", 1)
    h.clock.advance(2.0)
    h.core.dispatch_due()
    (batch,) = [b_ for b_ in h.take(Batch) if b_.target == 1]
    h.done(batch, Outcome.HALT, rc=25)
    assert h.q("a", 1).halted
    h.core.on_control(Control(command=Command.RESYNC, sync="a", target_spec=h.q("a", 1).spec))
    assert not h.q("a", 1).halted and h.q("a", 1).next_try == 0.0
    assert h.rows("a", 1) == {(VERIFY, b""), (PATH, b"p")}
    assert (VERIFY, b"") not in h.rows("a", 0) | h.rows("b", 0) | h.rows("b", 1)
    h.core.on_control(Control(command=Command.RESYNC))
    for name in ("a", "b"):
        for i in (0, 1):
            assert (VERIFY, b"") in h.rows(name, i)


def test_a_resync_batch_compares_content(h: Harness) -> None:
    h.synced()
    h.core.on_control(Control(command=Command.RESYNC, sync="www"))
    h.ready("www", 0)
    h.clock.advance(2.0)
    assert h.batch().changes == Changes(verify={b""})


def test_pause_and_resume_per_target_and_per_sync(make: Callable[..., Harness],
                                                  tmp_path: Path) -> None:
    h = make(sync(tmp_path, "a"), sync(tmp_path, "b"))
    h.core.on_control(Control(command=Command.PAUSE, sync="a", target_spec=h.q("a", 1).spec))
    h.core.on_control(Control(command=Command.PAUSE, sync="b"))
    assert [q.paused for n in ("a", "b") for q in h.s(n).queues] == [False, True, True, True]
    for name in ("a", "b"):
        h.events(name, Changes(trees={b""}))  # still recorded
        for i in (0, 1):
            h.ready(name, i)
    h.core.dispatch_due()
    assert [(b_.sync, b_.target) for b_ in h.take(Batch)] == [("a", 0)]
    assert h.rows("b", 1) == {(TREE, b"")}
    # Paused survives a collator restart within the run, not a new run.
    h.restart("run1")
    assert [q.paused for n in ("a", "b") for q in h.s(n).queues] == [False, True, True, True]
    h.core.on_control(Control(command=Command.RESUME, target_spec=h.q("a", 1).spec))
    assert [q.paused for n in ("a", "b") for q in h.s(n).queues] == [False, False, True, True]
    h.core.on_control(Control(command=Command.RESUME))
    assert not any(q.paused for n in ("a", "b") for q in h.s(n).queues)
    h.core.on_control(Control(command=Command.PAUSE))
    h.restart("run2")
    assert not any(q.paused for n in ("a", "b") for q in h.s(n).queues)


def test_control_for_unknown_syncs_or_targets_does_nothing(h: Harness) -> None:
    h.core.on_control(Control(command=Command.PAUSE, sync="nope"))
    h.core.on_control(Control(command=Command.RESYNC, sync="www", target_spec="/not/a/target"))
    assert not any(q.paused for q in h.s().queues)
    assert h.rows() == h.rows(target=1) == {(TREE, b"")}


# =================================================================== periodic
def test_no_full_sync_interval_no_periodic_work(h: Harness) -> None:
    assert h.core.periodic(1e6) is None
    assert h.rows() == {(TREE, b"")}


def test_full_sync_interval_marks_a_verifying_root_rescan(make: Callable[..., Harness],
                                                          tmp_path: Path) -> None:
    h = make(sync(tmp_path, full_sync_interval=60))
    assert h.core.periodic(1000.0) == 1060.0
    assert h.rows() == set()
    assert h.core.periodic(1059.0) == 1060.0
    assert h.rows() == set()
    assert h.core.periodic(1060.0) == 1120.0
    assert h.rows() == h.rows(target=1) == {(VERIFY, b"")}
    assert h.q().marked == 1


def test_full_sync_interval_runs_on_the_monotonic_clock(make: Callable[..., Harness],
                                                        tmp_path: Path) -> None:
    """``periodic`` gets monotonic time, ``clock`` is the wall clock: the
    schedule must not mix them (it once took its start from the wall clock,
    so the first comparison never came)."""
    h = make(sync(tmp_path, full_sync_interval=60))  # wall clock: 1.7e9
    mono = 5000.0
    assert h.core.periodic(mono) == mono + 60
    assert h.rows() == set()
    assert h.core.periodic(mono + 60) == mono + 120
    assert h.rows() == {(VERIFY, b"")}


# ===================================================================== status
def test_status_shows_each_target(h: Harness) -> None:
    t0 = h.clock.now
    h.ready("www", 0)
    h.done(h.batch(), bytes=99)
    h.events("www", Changes(paths={b"a"}))
    h.clock.advance(7.0)
    part = h.core.status()
    assert part.role == "collator"
    (queue,) = part.queues
    assert queue.sync == "www" and queue.journal == "ok"
    t0_status, t1_status = queue.targets
    assert t0_status.target == h.q().spec
    assert (t0_status.state, t0_status.pending, t0_status.lag) == ("pending", 1, 7.0)
    assert t0_status.last_sync == t0 and t0_status.last_error is None
    assert (t0_status.transfers, t0_status.bytes_sent) == ({"ok": 1}, 99)
    assert (t1_status.state, t1_status.pending, t1_status.lag) == ("startup", 2, 7.0)
    assert t1_status.last_sync is None


def dump(h: Harness) -> dict[str, list[tuple[Any, ...]]]:
    path = h.state.journal("www")
    return {name: table(path, f"SELECT * FROM {name}") for name in ("dirty", "moves", "meta")}


def test_status_changes_nothing(make: Callable[..., Harness], tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core, "MAX_PENDING", 5)
    h = make(sync(tmp_path, mode="direct"))
    h.events("www", Changes(trees={b""}))
    h.synced()
    h.events("www", Changes(paths={b"p%d" % i for i in range(20)}, moves=[(b"p1", b"p2")]))
    h.ready("www", 0)
    h.take(Ack)
    before = dump(h)
    queues = [dict(vars(q)) for q in h.s().queues]
    assert len([r for r in before["dirty"] if r[0] == h.q().spec]) > 5
    for _ in range(3):
        h.core.status()
        h.clock.advance(1.0)
    assert dump(h) == before
    assert [dict(vars(q)) for q in h.s().queues] == queues
    assert h.sent == []
    # The collapse to one rescan happens when a batch is handed out.
    h.clock.advance(2.0)
    assert h.batch().changes == Changes(verify={b""})
    assert h.journal().take_moves(h.q().spec, 10) == []
    assert h.journal().pending(h.q(target=1).spec) == 21  # untouched: not dispatched


# ================================================================ restarts
def test_targets_removed_from_the_config_are_forgotten(make: Callable[..., Harness],
                                                       tmp_path: Path) -> None:
    h = make(sync(tmp_path, targets=3))
    h.events("www", Changes(paths={b"a"}))
    gone = h.q(target=2).spec
    h.core.close()
    smaller = Harness(tmp_path, [sync(tmp_path, targets=2)], clock=h.clock)
    try:
        assert [q.spec for q in smaller.s().queues] == [h.q().spec, h.q(target=1).spec]
        assert smaller.journal().pending(gone) == 0
        assert smaller.rows() == {(PATH, b"a")}
    finally:
        smaller.core.close()
    h.core = Collator(h.conf, h.state, "run1", h.send, clock=h.clock)


def test_batch_ids_grow_across_restarts(h: Harness) -> None:
    h.ready("www", 0)
    first = h.batch()
    h.clock.advance(0.01)
    h.restart("run1")
    h.ready("www", 0)
    assert h.batch().batch_id > first.batch_id


# ================================================================ full disk
def test_a_journal_that_cannot_forget_backs_off_and_reports_once(
        h: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A transfer that worked while the journal cannot be written (a full
    state_dir): its rows stay and go again, after a backoff, not in a loop;
    the error is logged once, since reads between the failed writes do not
    count as the journal working again."""
    h.synced()
    h.events("www", Changes(paths={b"a"}))

    def full(*_args: object, **_kw: object) -> None:
        exc = sqlite3.OperationalError("database or disk is full")
        exc.sqlite_errorname = "SQLITE_FULL"  # type: ignore[attr-defined]
        raise exc

    monkeypatch.setattr(h.journal(), "complete", full)
    caplog.set_level("INFO", logger="syncsup.collator")
    for _ in range(5):
        h.ready("www", 0)
        h.clock.advance(2.0)
        h.done(h.batch())  # the same rows each time
        assert h.s().health.startswith("error")
        assert h.q().next_try > h.clock.now  # backing off, not at once
        h.ready("www", 0)
        h.core.dispatch_due()
        assert h.take(Batch) == []  # nothing handed out during the backoff
        h.clock.advance(h.q().next_try - h.clock.now)
    assert h.rows() == {(PATH, b"a")}  # never forgotten
    assert h.q().state(1, False) == "retrying" and "disk full" in (h.q().last_error or "")
    errors = [r for r in caplog.records if "cannot write the journal" in r.getMessage()]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    monkeypatch.undo()  # space again
    h.ready("www", 0)
    h.clock.advance(60.0)
    h.done(h.batch())
    assert h.rows() == set() and h.s().health == "ok" and h.q().failures == 0


def test_a_batch_carries_the_generation_of_its_newest_change_and_its_journal(
        h: Harness) -> None:
    # what lets the syncer replay an rsync recording only for changes that
    # came before it (syncer/sharedbatch.py)
    h.synced()
    h.synced(target=1)
    h.ready("www", 0)
    h.events("www", Changes(paths={b"a"}))
    gen_a = h.journal().gen
    h.events("www", Changes(paths={b"b"}))
    gen_b = h.journal().gen
    assert gen_b > gen_a
    h.clock.advance(2.0)
    first = h.batch()
    assert first.generation == gen_b and first.journal == h.journal().epoch != 0
    h.events("www", Changes(paths={b"a"}))  # the same name again: a newer change
    h.ready("www", 1)
    h.clock.advance(2.0)
    second = h.batch()  # target 1: both changes, the newest of them counts
    assert second.target == 1 and second.generation > gen_b
    h.restart()  # another run of the collator: another name for the journal
    h.ready("www", 1)
    later = h.batch()
    assert later.target == 1 and later.journal not in (0, first.journal)
