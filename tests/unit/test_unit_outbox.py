"""The watcher's outbox (watcher/outbox.py): splitting changes into messages
the collator accepts, the per-sync budget of unacked messages, acks and
resends."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from syncsup import proto
from syncsup.proto import Changes, Events
from syncsup.watcher.outbox import (
    MAX_INFLIGHT,
    MAX_PATH_BYTES,
    MAX_PATHS,
    Outbox,
    split,
)

RESEND_AFTER = 3.0  # this test's own resend interval


def cost(ch: Changes) -> tuple[int, int]:
    """(items, bytes) of one message, as the limits count them."""
    items = len(ch.trees) + len(ch.verify) + 2 * len(ch.moves) + len(ch.paths) + len(ch.created)
    size = (sum(len(p) + 1 for p in ch.trees | ch.verify | ch.paths)
            + sum(len(p) + 1 for p in ch.created)
            + sum(len(a) + len(b) + 2 for a, b in ch.moves))
    return items, size


def union(parts: list[Changes]) -> Changes:
    out = Changes()
    for p in parts:
        out.update(p)
    return out


# ---------------------------------------------------------------------- split
def test_small_changes_are_one_message() -> None:
    ch = Changes(paths={b"a", b"b"}, trees={b"t"}, verify={b""}, created={b"a"},
                 moves=[(b"x", b"a")])
    assert split(ch) == [ch]


def test_nothing_is_one_empty_message() -> None:
    assert split(Changes()) == [Changes()]


def test_item_limit() -> None:
    parts = split(Changes(paths={b"%d" % i for i in range(7)}), max_items=3)
    assert [len(p.paths) for p in parts] == [3, 3, 1]
    assert [sorted(p.paths) for p in parts] == [[b"0", b"1", b"2"], [b"3", b"4", b"5"], [b"6"]]


def test_byte_limit() -> None:
    paths = {b"%09d" % i for i in range(10)}  # 10 bytes each with the separator
    parts = split(Changes(paths=paths), max_bytes=35)
    assert [len(p.paths) for p in parts] == [3, 3, 3, 1]
    assert union(parts).paths == paths


def test_an_entry_larger_than_the_limits_goes_alone() -> None:
    big = b"x" * 100
    parts = split(Changes(paths={b"a", big, b"z"}), max_items=10, max_bytes=10)
    assert parts == [Changes(paths={b"a"}), Changes(paths={big}), Changes(paths={b"z"})]


def test_rescans_and_renames_come_first_and_renames_keep_their_order() -> None:
    moves = [(b"m%d" % i, b"m%d" % (i + 1)) for i in range(5)]
    ch = Changes(paths={b"p1", b"p2", b"p3"}, trees={b"t1", b"t2"}, verify={b"v"},
                 moves=list(moves))
    parts = split(ch, max_items=3)
    # Flattened in message order: trees, verify, renames, then paths.
    order: list[str] = []
    for p in parts:
        order += ["tree"] * len(p.trees) + ["verify"] * len(p.verify)
        order += ["move"] * len(p.moves) + ["path"] * len(p.paths)
    assert order == ["tree"] * 2 + ["verify"] + ["move"] * 5 + ["path"] * 3
    assert [m for p in parts for m in p.moves] == moves
    assert all(cost(p)[0] <= 3 for p in parts)


def test_created_follows_its_path() -> None:
    paths = {b"%02d" % i for i in range(10)}
    created = {b"01", b"02", b"07"}
    parts = split(Changes(paths=paths, created=created), max_items=4)
    for p in parts:
        assert p.created <= p.paths
        assert cost(p)[0] <= 4
    assert union(parts).created == created
    # A created path costs two items (it travels twice).
    assert split(Changes(paths={b"a", b"b"}, created={b"a", b"b"}), max_items=3) == [
        Changes(paths={b"a"}, created={b"a"}), Changes(paths={b"b"}, created={b"b"})]


def test_created_without_its_path_is_dropped() -> None:
    # created only qualifies paths (Changes' docstring): alone it means nothing.
    assert split(Changes(paths={b"a"}, created={b"a", b"new-dir"})) == [
        Changes(paths={b"a"}, created={b"a"})]


_names = st.binary(min_size=0, max_size=6)


@settings(max_examples=100, deadline=None)
@given(paths=st.sets(_names, max_size=12), trees=st.sets(_names, max_size=4),
       verify=st.sets(_names, max_size=3), moves=st.lists(st.tuples(_names, _names), max_size=6),
       created_share=st.integers(0, 3), max_items=st.integers(1, 8),
       max_bytes=st.integers(1, 40))
def test_split_loses_nothing_and_respects_the_limits(
        paths: set[bytes], trees: set[bytes], verify: set[bytes],
        moves: list[tuple[bytes, bytes]], created_share: int, max_items: int,
        max_bytes: int) -> None:
    created = {p for i, p in enumerate(sorted(paths)) if created_share and i % created_share == 0}
    ch = Changes(paths=set(paths), trees=set(trees), verify=set(verify), created=set(created),
                 moves=list(moves))
    parts = split(ch, max_items=max_items, max_bytes=max_bytes)
    assert union(parts) == ch
    assert (parts and all(p for p in parts)) or parts == [Changes()]
    for p in parts:
        items, size = cost(p)
        singles = len(p.trees) + len(p.verify) + len(p.moves) + len(p.paths)
        assert (items <= max_items and size <= max_bytes) or singles == 1
        assert p.created <= p.paths


def test_default_limits_fit_the_collators_budget() -> None:
    """The biggest messages split makes are still accepted by decode."""
    long = b"d" * 250 + b"/"
    paths = {long * 3 + b"%06d" % i for i in range(MAX_PATHS + 5)}  # beyond both limits
    parts = split(Changes(paths=paths, created=set(list(paths)[::3]),
                          moves=[(b"a%d" % i, b"b%d" % i) for i in range(100)]))
    assert len(parts) > 2
    for part in parts:
        items, size = cost(part)
        assert items <= MAX_PATHS and size <= MAX_PATH_BYTES
        frames = proto.encode(Events(seq=1, sync="www", changes=part))
        assert len(frames[2]) <= Events.MAX_BODY
        assert proto.decode(frames) == Events(seq=1, sync="www", changes=part)


# --------------------------------------------------------------------- Outbox
def test_add_numbers_messages_and_counts_them_per_sync() -> None:
    box = Outbox(first_seq=1000, resend_after=RESEND_AFTER)
    [m1] = box.add("a", Changes(paths={b"x"}), now=1.0)
    [m2] = box.add("b", Changes(trees={b""}), now=1.0)
    assert (m1.seq, m1.sync, m1.changes) == (1001, "a", Changes(paths={b"x"}))
    assert (m2.seq, m2.sync) == (1002, "b")
    assert box.per_sync["a"] == box.per_sync["b"] == 1
    assert box.per_sync["c"] == 0
    several = box.add("a", Changes(paths={b"%06d" % i for i in range(MAX_PATHS + 1)}), now=2.0)
    assert [m.seq for m in several] == [1003, 1004]
    assert box.per_sync["a"] == 3


def test_each_sync_has_its_own_budget() -> None:
    box = Outbox(0, RESEND_AFTER)
    for i in range(MAX_INFLIGHT - 1):
        box.add("busy", Changes(paths={b"%d" % i}), now=0.0)
    assert not box.full("busy")
    [last] = box.add("busy", Changes(paths={b"last"}), now=0.0)
    assert box.full("busy")
    assert not box.full("quiet")
    box.add("quiet", Changes(paths={b"q"}), now=0.0)
    assert not box.full("quiet")
    box.ack(last.seq)
    assert not box.full("busy")


def test_ack() -> None:
    box = Outbox(0, RESEND_AFTER)
    [m] = box.add("a", Changes(paths={b"x"}), now=0.0)
    box.ack(m.seq)
    assert box.per_sync["a"] == 0
    assert box.inflight == {}
    box.ack(m.seq)  # a duplicate ACK
    box.ack(12345)  # an ACK for a message of a previous watcher
    assert box.per_sync["a"] == 0
    assert box.next_resend() is None
    assert box.due(1e9, everything=True) == []


def test_a_seen_point_alone_is_not_unacked_activity() -> None:
    """The watcher waits for its sync to be quiet (no unacked changes)
    before it sends a seen-point; if the seen-point's own message counted,
    its ack would start the wait for the next one, every few seconds."""
    from syncsup.seen import Seen

    box = Outbox(0, RESEND_AFTER)
    [m] = box.add("a", Changes(paths={b"x"}), now=0.0)
    assert box.unacked_changes("a") == 1
    [s] = box.add("a", Changes(), now=1.0, seen=Seen.now())
    assert box.per_sync["a"] == 2 and box.unacked_changes("a") == 1
    box.ack(m.seq)
    assert box.per_sync["a"] == 1 and box.unacked_changes("a") == 0
    box.ack(s.seq)
    box.ack(s.seq)
    assert box.per_sync["a"] == 0 and box.unacked_changes("a") == 0
    # A split message: only its parts with changes count.
    parts = box.add("b", Changes(paths={b"%06d" % i for i in range(MAX_PATHS + 1)}), now=2.0,
                    seen=Seen.now())
    assert len(parts) == 2 and box.unacked_changes("b") == 2


def test_unacked_messages_are_resent_after_a_while() -> None:
    box = Outbox(0, RESEND_AFTER)
    [m1] = box.add("a", Changes(paths={b"x"}), now=10.0)
    [m2] = box.add("b", Changes(paths={b"y"}), now=12.0)
    assert box.next_resend() == 10.0 + RESEND_AFTER
    assert box.due(10.0 + RESEND_AFTER - 0.01) == []
    assert box.due(10.0 + RESEND_AFTER) == [m1]
    # Resent now: due again only RESEND_AFTER later.
    assert box.next_resend() == 12.0 + RESEND_AFTER
    assert box.due(12.0 + RESEND_AFTER) == [m2]
    assert box.next_resend() == 10.0 + 2 * RESEND_AFTER
    box.ack(m1.seq)
    assert box.due(100.0) == [m2]
    assert box.per_sync["b"] == 1  # a resend is still one message


def test_everything_is_resent_on_a_new_connection() -> None:
    box = Outbox(0, RESEND_AFTER)
    msgs = [box.add(name, Changes(paths={name.encode()}), now=float(i))[0]
            for i, name in enumerate("abc")]
    box.ack(msgs[1].seq)
    assert box.due(3.0, everything=True) == [msgs[0], msgs[2]]  # in order, however young
    assert box.due(3.0 + RESEND_AFTER - 0.01) == []  # the timers restarted
    assert box.next_resend() == 3.0 + RESEND_AFTER
