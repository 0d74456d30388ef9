"""Journal: the collator's durable set of dirty paths per target (real SQLite)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from syncsup.collator import journal as journal_module
from syncsup.collator.journal import (
    CREATED,
    PATH,
    PROVE,
    TREE,
    VERIFY,
    Journal,
    Kind,
    Row,
    to_changes,
)
from syncsup.proto import Changes

T1, T2 = "/mnt/a", "backup@host:/srv/b"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "journal.db"


@pytest.fixture
def journal(db_path: Path) -> Iterator[Journal]:
    j = Journal(db_path)
    yield j
    j.close()


def everything(j: Journal, target: str) -> list[Row]:
    return j.take(target, limit=1_000_000, max_bytes=1 << 40)


def keys(rows: list[Row]) -> set[tuple[int, bytes]]:
    return {(r.kind, r.path) for r in rows}


def test_mark_is_an_idempotent_upsert(journal: Journal) -> None:
    g1 = journal.mark([T1], Changes(paths={b"a", b"b"}, trees={b"d"}), 1.0)
    # the same message resent
    g2 = journal.mark([T1], Changes(paths={b"a", b"b"}, trees={b"d"}), 2.0)
    assert journal.pending(T1) == 3
    assert keys(everything(journal, T1)) == {(PATH, b"a"), (PATH, b"b"), (TREE, b"d")}
    assert g2 > g1
    # Every row carries the newest generation.
    assert {r.gen for r in everything(journal, T1)} == {g2}


def test_duplicate_rows_in_one_transaction(journal: Journal) -> None:
    # Changes holds sets, so a path cannot repeat inside one field; the same
    # target named twice makes the same row twice in one transaction.
    journal.mark([T1, T1, T1], Changes(paths={b"a"}), 1.0)
    assert journal.pending(T1) == 1


def test_rows_are_per_target(journal: Journal) -> None:
    journal.mark([T1, T2], Changes(paths={b"a"}), 1.0)
    journal.mark([T1], Changes(paths={b"b"}), 2.0)
    assert journal.pending(T1) == 2
    assert journal.pending(T2) == 1
    assert journal.pending("/never") == 0
    assert keys(everything(journal, T2)) == {(PATH, b"a")}
    journal.complete(T1, everything(journal, T1))
    assert journal.pending(T1) == 0
    assert keys(everything(journal, T2)) == {(PATH, b"a")}


def test_take_returns_trees_first(journal: Journal) -> None:
    journal.mark([T1], Changes(paths={b"p1", b"p2", b"p3"}), 1.0)
    journal.mark([T1], Changes(trees={b"t1", b"t2"}), 2.0)  # newer, but trees
    journal.mark([T1], Changes(paths={b"p0"}), 3.0)
    rows = everything(journal, T1)
    assert [r.kind for r in rows] == [TREE, TREE, PATH, PATH, PATH, PATH]
    first_two = journal.take(T1, limit=2, max_bytes=1 << 20)
    assert keys(first_two) == {(TREE, b"t1"), (TREE, b"t2")}


def test_take_respects_limit(journal: Journal) -> None:
    journal.mark([T1], Changes(paths={b"%03d" % i for i in range(50)}), 1.0)
    assert len(journal.take(T1, limit=7, max_bytes=1 << 20)) == 7
    assert len(journal.take(T1, limit=1, max_bytes=1 << 20)) == 1
    assert len(journal.take(T1, limit=500, max_bytes=1 << 20)) == 50
    # take() leases nothing by itself: rows stay until complete().
    assert journal.pending(T1) == 50


def test_take_stops_near_max_bytes(journal: Journal) -> None:
    paths = [b"x" * 99 + b"%03d" % i for i in range(100)]  # 102 bytes + separator each
    journal.mark([T1], Changes(paths=set(paths)), 1.0)
    rows = journal.take(T1, limit=1000, max_bytes=1000)
    assert 1 <= len(rows) < 100
    sizes = [len(r.path) + 1 for r in rows]
    # Stops at the first row that reaches the budget, not long after it.
    assert sum(sizes[:-1]) < 1000
    assert sum(sizes) >= 1000
    # A single path bigger than the budget is still handed out (no livelock).
    rows = journal.take(T1, limit=1000, max_bytes=1)
    assert len(rows) == 1


def test_complete_deletes_only_unchanged_rows(journal: Journal) -> None:
    journal.mark([T1], Changes(paths={b"a", b"b"}, trees={b"t"}), 1.0)
    leased = everything(journal, T1)
    # While rsync runs, a and t change again.
    journal.mark([T1], Changes(paths={b"a"}, trees={b"t"}), 2.0)
    journal.complete(T1, leased)
    left = everything(journal, T1)
    assert keys(left) == {(PATH, b"a"), (TREE, b"t")}
    # And the survivors carry the new generation, so the next transfer can clear them.
    journal.complete(T1, left)
    assert journal.pending(T1) == 0


def test_complete_of_stale_lease_after_re_mark_and_second_complete(journal: Journal) -> None:
    journal.mark([T1], Changes(paths={b"a"}), 1.0)
    old = everything(journal, T1)
    journal.mark([T1], Changes(paths={b"a"}), 2.0)
    journal.complete(T1, old)
    journal.complete(T1, old)  # a duplicate DONE changes nothing either
    assert journal.pending(T1) == 1


def test_complete_only_touches_its_target(journal: Journal) -> None:
    journal.mark([T1, T2], Changes(paths={b"a"}), 1.0)
    journal.complete(T1, everything(journal, T1))
    assert journal.pending(T1) == 0
    assert journal.pending(T2) == 1


def test_complete_needs_the_same_kind(journal: Journal) -> None:
    journal.mark([T1], Changes(paths={b"a"}, trees={b"a"}), 1.0)
    rows = everything(journal, T1)
    journal.complete(T1, [r for r in rows if r.kind == PATH])
    assert keys(everything(journal, T1)) == {(TREE, b"a")}


def test_first_seen_preserved_across_re_marks(journal: Journal) -> None:
    assert journal.oldest(T1) is None
    journal.mark([T1], Changes(paths={b"a"}), 10.0)
    journal.mark([T1], Changes(paths={b"b"}), 15.0)
    journal.mark([T1], Changes(paths={b"a"}), 20.0)
    assert journal.oldest(T1) == 10.0
    rows = [r for r in everything(journal, T1) if r.path == b"a"]
    journal.complete(T1, rows)
    assert journal.oldest(T1) == 15.0
    journal.complete(T1, everything(journal, T1))
    assert journal.oldest(T1) is None


def test_oldest_is_per_target(journal: Journal) -> None:
    journal.mark([T1], Changes(paths={b"a"}), 5.0)
    journal.mark([T2], Changes(paths={b"a"}), 9.0)
    assert journal.oldest(T1) == 5.0
    assert journal.oldest(T2) == 9.0


def test_collapse_replaces_everything_by_one_root_tree(journal: Journal) -> None:
    journal.mark([T1, T2], Changes(paths={b"a", b"b"}, trees={b"t"}), 3.0)
    journal.mark([T1], Changes(paths={b"c"}), 4.0)
    before = journal.gen
    journal.collapse(T1, now=100.0)
    rows = everything(journal, T1)
    assert len(rows) == 1
    # A verifying rescan: the collapsed rows may have held same-size rewrites.
    assert rows[0].kind == VERIFY and rows[0].path == b""
    assert rows[0].gen > before
    assert journal.has_tree(T1)
    assert journal.has_tree(T1, b"")
    # The age of the oldest change is kept, so the delay is not restarted.
    assert journal.oldest(T1) == 3.0
    # Other targets are untouched.
    assert journal.pending(T2) == 3
    assert not journal.has_tree(T2)


def test_collapse_of_empty_target_uses_now(journal: Journal) -> None:
    journal.collapse(T1, now=42.0)
    assert journal.pending(T1) == 1
    assert journal.oldest(T1) == 42.0


def test_collapse_survives_complete_of_an_older_lease(journal: Journal) -> None:
    journal.mark([T1], Changes(trees={b""}), 1.0)
    old = everything(journal, T1)
    journal.mark([T1], Changes(paths={b"x"}), 2.0)
    journal.collapse(T1, now=3.0)  # while the old root rescan was running
    journal.complete(T1, old)
    assert journal.has_tree(T1, b"")


def test_has_tree_distinguishes_paths_and_subtrees(journal: Journal) -> None:
    journal.mark([T1], Changes(paths={b""}, trees={b"sub"}), 1.0)
    assert not journal.has_tree(T1)  # b"" is only marked as a path
    assert journal.has_tree(T1, b"sub")
    assert not journal.has_tree(T2, b"sub")


def test_forget_targets(journal: Journal) -> None:
    journal.mark([T1, T2, "/gone"], Changes(paths={b"a"}, trees={b"t"}), 1.0)
    journal.forget_targets([T1, T2])
    assert journal.pending("/gone") == 0
    assert journal.pending(T1) == 2
    assert journal.pending(T2) == 2
    journal.forget_targets(iter([T2]))  # any iterable
    assert journal.pending(T1) == 0
    assert journal.pending(T2) == 2
    journal.forget_targets([])
    assert journal.pending(T2) == 0


def test_reopen_keeps_rows(db_path: Path) -> None:
    j = Journal(db_path)
    j.mark([T1, T2], Changes(paths={b"a", b"b"}, trees={b"t"}), 7.0)
    before = {t: sorted(keys(everything(j, t))) for t in (T1, T2)}
    gens = {r.gen for r in everything(j, T1)}
    j.close()
    j = Journal(db_path)
    try:
        assert {t: sorted(keys(everything(j, t))) for t in (T1, T2)} == before
        assert {r.gen for r in everything(j, T1)} == gens
        assert j.oldest(T1) == 7.0
    finally:
        j.close()


def test_generation_never_goes_backwards_across_reopen(db_path: Path) -> None:
    j = Journal(db_path)
    for i in range(5):
        g = j.mark([T1], Changes(paths={b"a%d" % i}), float(i))
    j.complete(T1, everything(j, T1))  # the table is empty now
    assert j.pending(T1) == 0
    j.close()

    j = Journal(db_path)
    try:
        assert j.gen >= g
        g2 = j.mark([T1], Changes(paths={b"z"}), 10.0)
        assert g2 > g
    finally:
        j.close()


def test_generation_after_collapse_survives_reopen(db_path: Path) -> None:
    j = Journal(db_path)
    j.mark([T1], Changes(paths={b"a"}), 1.0)
    j.collapse(T1, now=2.0)
    g = j.gen
    j.complete(T1, everything(j, T1))
    j.close()
    j = Journal(db_path)
    try:
        assert j.mark([T1], Changes(paths={b"b"}), 3.0) > g
    finally:
        j.close()


def test_stale_lease_from_before_reopen_does_not_delete_new_change(db_path: Path) -> None:
    j = Journal(db_path)
    j.mark([T1], Changes(paths={b"a"}), 1.0)
    old = everything(j, T1)
    j.complete(T1, old)
    j.close()
    j = Journal(db_path)
    try:
        j.mark([T1], Changes(paths={b"a"}), 2.0)
        j.complete(T1, old)  # a late DONE from the previous incarnation
        assert j.pending(T1) == 1
    finally:
        j.close()


WEIRD = [b"a\nb", b"\xff\xfe", b"-x", b"--delete", b"dir/sub/\x80name", b"sp ace", b"\t"]


def test_bytes_paths_round_trip(db_path: Path) -> None:
    j = Journal(db_path)
    j.mark([T1], Changes(paths=set(WEIRD), trees={b"tree\n\xff", b""}), 1.0)
    rows = everything(j, T1)
    assert all(type(r.path) is bytes for r in rows)
    assert {r.path for r in rows if r.kind == PATH} == set(WEIRD)
    assert {r.path for r in rows if r.kind == TREE} == {b"tree\n\xff", b""}
    j.close()
    j = Journal(db_path)
    try:
        rows = everything(j, T1)
        assert {r.path for r in rows if r.kind == PATH} == set(WEIRD)
        j.complete(T1, rows)
        assert j.pending(T1) == 0
    finally:
        j.close()


def test_meta_round_trip(db_path: Path) -> None:
    j = Journal(db_path)
    assert j.get_meta("synced:x") is None
    j.set_meta("synced:x", "run1")
    j.set_meta("synced:x", "run2")
    j.close()
    j = Journal(db_path)
    try:
        assert j.get_meta("synced:x") == "run2"
    finally:
        j.close()


# ------------------------------------------------------------------ moves
def test_moves_are_kept_in_order_per_target(journal: Journal) -> None:
    journal.mark([T1, T2], Changes(paths={b"a", b"b"}, moves=[(b"a", b"b")]), 1.0, seq=10)
    journal.mark([T1], Changes(paths={b"b", b"c"}, moves=[(b"b", b"c"), (b"c", b"d")]), 2.0,
                 seq=11)
    assert [(a, b) for _, a, b in journal.take_moves(T1, 100)] == [
        (b"a", b"b"), (b"b", b"c"), (b"c", b"d")]
    assert [(a, b) for _, a, b in journal.take_moves(T2, 100)] == [(b"a", b"b")]
    assert len(journal.take_moves(T1, 2)) == 2


def test_resent_moves_are_not_replayed_twice(journal: Journal) -> None:
    for _ in range(3):  # the watcher resends an unacked message
        journal.mark([T1], Changes(paths={b"a", b"b"}, moves=[(b"a", b"b")]), 1.0, seq=10)
    assert len(journal.take_moves(T1, 100)) == 1
    assert journal.pending(T1) == 2


def test_drop_moves_up_to_an_id(journal: Journal) -> None:
    journal.mark([T1], Changes(moves=[(b"a", b"b"), (b"b", b"c"), (b"\xff\n", b"-x")]), 1.0,
                 seq=5)
    moves = journal.take_moves(T1, 100)
    journal.drop_moves(T1, moves[1][0])
    assert [(a, b) for _, a, b in journal.take_moves(T1, 100)] == [(b"\xff\n", b"-x")]


def test_collapse_and_forget_drop_moves(journal: Journal) -> None:
    journal.mark([T1, T2, "/gone"], Changes(moves=[(b"a", b"b")]), 1.0, seq=1)
    journal.collapse(T1, now=2.0)
    assert journal.take_moves(T1, 10) == []
    journal.forget_targets([T1, T2])
    assert journal.take_moves("/gone", 10) == []
    assert len(journal.take_moves(T2, 10)) == 1


# ------------------------------------------------- Changes in, Changes out
def test_every_field_of_changes_is_a_kind_of_row(journal: Journal) -> None:
    assert [k.name for k in Kind] == ["PATH", "TREE", "CREATED", "VERIFY", "PROVE"]
    assert (PATH, TREE, CREATED, VERIFY, PROVE) == (Kind.PATH, Kind.TREE, Kind.CREATED,
                                                    Kind.VERIFY, Kind.PROVE)
    journal.mark([T1], Changes(paths={b"p", b"n"}, trees={b"t"}, created={b"n"},
                               verify={b"v", b""}, prove={b"w"}), 1.0)
    rows = everything(journal, T1)
    assert all(type(r.kind) is Kind for r in rows)
    assert keys(rows) == {(PATH, b"p"), (PATH, b"n"), (TREE, b"t"), (CREATED, b"n"),
                          (VERIFY, b"v"), (VERIFY, b""), (PROVE, b"w")}
    assert to_changes(rows).prove == {b"w"}
    # A verifying rescan of the root counts as a pending rescan of it.
    assert journal.has_tree(T1)
    assert journal.has_tree(T1, b"t") and journal.has_tree(T1, b"v")
    assert journal.has_tree(T1, b"w")
    assert not journal.has_tree(T1, b"p")


def test_take_orders_by_kind_then_path(journal: Journal) -> None:
    """Rescans first, then paths; a CREATED row right after its path."""
    journal.mark([T1], Changes(paths={b"b", b"a"}, trees={b"t"}, created={b"a"},
                               verify={b"v"}), 1.0)
    assert [(r.kind, r.path) for r in everything(journal, T1)] == [
        (VERIFY, b"v"), (TREE, b"t"), (PATH, b"a"), (CREATED, b"a"), (PATH, b"b")]


def test_to_changes_inverts_mark(journal: Journal) -> None:
    sent = Changes(paths={b"p", b"\xff\n"}, trees={b"t", b""}, created={b"\xff\n"},
                   verify={b"v"}, moves=[(b"p", b"q"), (b"q", b"-x")])
    journal.mark([T1], sent, 1.0, seq=3)
    back = to_changes(everything(journal, T1), journal.take_moves(T1, 100))
    assert back == sent
    assert to_changes([]) == Changes()
    assert not to_changes([])


def test_to_changes_keeps_the_order_of_moves() -> None:
    moves = [(3, b"c", b"d"), (1, b"a", b"b"), (2, b"b", b"c")]
    assert to_changes([], moves).moves == [(b"c", b"d"), (b"a", b"b"), (b"b", b"c")]


def test_mark_returns_increasing_generations_and_stamps_every_kind(journal: Journal) -> None:
    g1 = journal.mark([T1], Changes(paths={b"a"}), 1.0)
    g2 = journal.mark([T1], Changes(verify={b"a"}, created={b"a"}), 2.0)
    assert g2 == g1 + 1 == journal.gen
    gens = {(r.kind, r.path): r.gen for r in everything(journal, T1)}
    assert gens == {(PATH, b"a"): g1, (VERIFY, b"a"): g2, (CREATED, b"a"): g2}


def test_an_empty_mark_adds_no_rows_but_moves_the_generation(journal: Journal) -> None:
    g = journal.mark([T1, T2], Changes(), 1.0)
    assert journal.pending(T1) == journal.pending(T2) == 0
    assert journal.oldest(T1) is None
    assert journal.mark([], Changes(paths={b"a"}), 2.0) == g + 1  # no target: no rows
    assert journal.pending(T1) == 0


def test_what_is_dirty_under_a_renamed_directory_is_dirty_under_its_new_name(
        journal: Journal) -> None:
    """A file changed and still dirty, then its directory renamed: its row
    is copied under the new name (the rename's tree is compared by the
    quick check alone), in the order of the renames, for every target;
    names that only share the prefix are not."""
    journal.mark([T1, T2], Changes(paths={b"d/f", b"d/sub/g", b"d", b"d-x", b"d.y", b"d0"},
                                   trees={b"d/sub"}), 1.0)
    journal.mark([T1, T2], Changes(moves=[(b"d", b"e"), (b"e", b"z/e")],
                                   trees={b"d", b"e"}, paths={b"z/e"}),  # z/e: an ATTRIB
                 2.0, seq=7, follow_moves=True)
    for t in (T1, T2):
        got = {(r.kind, r.path) for r in everything(journal, t)}
        for name in (b"e", b"z/e"):
            assert {(PATH, name + b"/f"), (PATH, name + b"/sub/g"), (PATH, name),
                    (TREE, name + b"/sub")} <= got
        under_new = {p for _k, p in got if p.startswith((b"e", b"z/"))}
        assert under_new == {b"e", b"e/f", b"e/sub/g", b"e/sub", b"z/e", b"z/e/f",
                             b"z/e/sub/g", b"z/e/sub"}


def test_a_renamed_file_copies_its_own_row_and_command_mode_nothing(
        journal: Journal) -> None:
    """A file's rename finds its own row at most (its new name is a path
    anyway); without ``follow_moves`` (command mode: a path runs a command)
    nothing is copied."""
    journal.mark([T1], Changes(paths={b"a", b"b/g"}), 1.0)
    journal.mark([T1], Changes(moves=[(b"a", b"a2")], paths={b"a2"}), 2.0, seq=1,
                 follow_moves=True)
    journal.mark([T1], Changes(moves=[(b"b", b"b2")], trees={b"b"}), 3.0, seq=2)
    assert {r.path for r in everything(journal, T1)} == {b"a", b"a2", b"b", b"b/g"}


def test_a_rename_over_many_dirty_rows_verifies_the_new_name_instead(
        journal: Journal, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past FOLLOW_MAX rows under a renamed directory, one verifying rescan
    of the new name, not a copy of each (the pending rows stay bounded)."""
    monkeypatch.setattr(journal_module, "FOLLOW_MAX", 3)
    journal.mark([T1], Changes(paths={b"d/%d" % i for i in range(5)}), 1.0)
    journal.mark([T1], Changes(moves=[(b"d", b"e")], trees={b"d"}), 2.0, seq=3,
                 follow_moves=True)
    got = {(r.kind, r.path) for r in everything(journal, T1)}
    assert (VERIFY, b"e") in got
    assert not {p for _k, p in got if p.startswith(b"e/")}
