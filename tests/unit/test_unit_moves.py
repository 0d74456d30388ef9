"""Which renames are replayed on the target (syncer/moves.py, replayable):
only those rsync would make itself, both names sent by the rules."""

from __future__ import annotations

import os
from pathlib import Path

from syncsup.config import Sync, Target
from syncsup.filters import RuleList
from syncsup.syncer.moves import replayable


def _rules(**kw: object) -> RuleList:
    sync = Sync(name="s", source=Path("/src"), targets=(Target("/dst", "/dst"),), **kw)  # type: ignore[arg-type]
    return RuleList(sync)


def test_an_excluded_end_is_never_replayed(tmp_path: Path) -> None:
    """Into an excluded name: a delete of the old one; out of one: a create
    of the new one; between two: nothing. Files, directories and names in
    subdirectories alike."""
    for rel in ("a.tmp", "b.txt", "sub/c.swp", "d.tmp", "e", "f.txt"):
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        (tmp_path / rel).write_text("x")
    (tmp_path / "dir.tmp").mkdir()
    (tmp_path / "dir2").mkdir()
    moves = [(b"a.txt", b"a.tmp"), (b"x.tmp", b"b.txt"), (b"sub/c.txt", b"sub/c.swp"),
             (b"c.swp", b"d.tmp"), (b"dir", b"dir.tmp"), (b"dirx.tmp", b"dir2"),
             (b"e0", b"e"), (b"sub/f", b"f.txt"), (b"dir1", b"dir2")]
    got = replayable(moves, _rules(exclude=("*.tmp", "*.swp")), os.fsencode(tmp_path))
    assert got == [(b"e0", b"e"), (b"sub/f", b"f.txt"), (b"dir1", b"dir2")]


def test_a_directory_is_not_renamed_past_a_rule_on_paths(tmp_path: Path) -> None:
    """``sub/*.tmp``: a directory renamed to ``sub`` brings its ``x.tmp``
    into the rule's reach, which rsync would then leave on the target. A
    file's rename is still replayed, and so is a gone entry's only when the
    rules look at names alone."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "f").write_text("x")
    path_rule = _rules(exclude=("sub/*.tmp",))
    src = os.fsencode(tmp_path)
    assert replayable([(b"d", b"sub"), (b"g", b"f"), (b"h", b"gone")], path_rule, src) == [
        (b"g", b"f")]
    names = _rules(exclude=("*.tmp",))
    assert replayable([(b"d", b"sub"), (b"h", b"gone")], names, src) == [
        (b"d", b"sub"), (b"h", b"gone")]


def test_protect_rules_stop_every_replay(tmp_path: Path) -> None:
    rules = _rules(filter=("P *.bak",))
    assert replayable([(b"a", b"b")], rules, os.fsencode(tmp_path)) == []


def test_rules_it_cannot_read_stop_the_replay_of_what_they_may_decide(tmp_path: Path) -> None:
    rules = _rules(filter=("- *.tmp", "dir-merge .rsync-filter"))
    assert replayable([(b"a", b"b"), (b"a.tmp", b"b")], rules, os.fsencode(tmp_path)) == []


def test_a_name_excluded_only_as_its_new_type_rescans_its_directory(tmp_path: Path) -> None:
    """``cache/``: a file named cache replaced by a directory cache. The
    target's file is rsync's to delete, which only a rescan of the
    directory does; a name excluded whatever its type, or sent, is not."""
    from syncsup.syncer.moves import retyped_parents

    (tmp_path / "obj" / "cache").mkdir(parents=True)
    (tmp_path / "cache").write_text("a file: sent")
    (tmp_path / "x.tmp").mkdir()
    rules = _rules(exclude=("cache/", "*.tmp"))
    src = os.fsencode(tmp_path)
    assert retyped_parents([b"obj/cache", b"cache", b"x.tmp", b"gone"], rules, src) == {b"obj"}
    assert retyped_parents([b"obj/cache"], _rules(exclude=("cache",)), src) == set()
