"""The first start's proof (syncer/prove.py): which target copies the
kernel's ctimes prove current, pure, and the list it reads."""

from __future__ import annotations

import os
import shutil
import time

import pytest

from syncsup.syncer import prove as proof
from syncsup.syncer.prove import Clock, unproven, verdict
from syncsup.timings import Timings

S = 10**9
MARGIN_NS = int(Timings().proof_margin * S)  # the default
SRC = (100 * S, 4096, 50 * S)  # ctime, size, mtime


@pytest.mark.parametrize(("target", "clock", "expected"), [
    # written well after the source file last changed: proven
    ((100 * S + MARGIN_NS + 1, 4096, 50 * S), Clock(), False),
    # within the margin, or before: compared
    ((100 * S + MARGIN_NS, 4096, 50 * S), Clock(), True),
    ((99 * S, 4096, 50 * S), Clock(), True),
    # missing, another size or mtime: the quick check sends it, no comparison needed
    ((-1, -1, -1), Clock(), False),
    ((99 * S, 4095, 50 * S), Clock(), False),
    ((99 * S, 4096, 50 * S + 1), Clock(), False),
    # a target clock 10 s ahead: its ctime means 10 s earlier here
    ((108 * S, 4096, 50 * S), Clock(offset=10 * S), True),
    ((113 * S, 4096, 50 * S), Clock(offset=10 * S), False),
    # a target clock 10 s behind: its ctime means 10 s later here
    ((95 * S, 4096, 50 * S), Clock(offset=-10 * S), False),
    # the measurement's error counts against the proof
    ((103 * S, 4096, 50 * S), Clock(offset=0, error=2 * S), True),
    ((105 * S, 4096, 50 * S), Clock(offset=0, error=2 * S), False),
])
def test_unproven(target: tuple[int, int, int], clock: Clock, expected: bool) -> None:
    assert unproven(SRC, target, clock, MARGIN_NS) is expected


def test_verdicts() -> None:
    assert verdict(SRC, (-1, -1, -1), Clock(), MARGIN_NS) == "sent"
    assert verdict(SRC, (99 * S, 4096, 50 * S), Clock(), MARGIN_NS) == "compare"
    assert verdict(SRC, (200 * S, 4096, 50 * S), Clock(), MARGIN_NS) == "proven"


def test_a_cancelled_walk_stops_at_the_next_directory(tmp_path) -> None:
    """The proof runs in a thread of the syncer, which cannot be killed:
    a stop is seen between directories, and every directory listed is
    progress (what the stall check watches)."""
    for i in range(5):
        (tmp_path / f"d{i}").mkdir()
        (tmp_path / f"d{i}" / "f").write_bytes(b"x")
    ticks: list[int] = []
    stop = False

    def tick() -> None:
        ticks.append(1)

    def cancelled() -> bool:
        return stop

    it = proof._chunks(os.fsencode(tmp_path), [b""], [], tick, cancelled)
    assert [len(c) for c in it] == [5]
    assert len(ticks) == 6  # the root and five directories
    ticks.clear()
    stop = True
    with pytest.raises(OSError, match="stopped"):
        list(proof._chunks(os.fsencode(tmp_path), [b""], [], tick, cancelled))
    assert len(ticks) == 1


def test_a_path_too_long_for_a_request_is_unproven_not_a_failed_proof(
        tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The walk hands over every regular file, symlinks not followed; one
    whose path a request cannot carry is set aside (compared by content)
    instead of failing the proof of every other file."""
    import os

    from syncsup.syncer import prove

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "short").write_bytes(b"1")
    (tmp_path / "a" / "a-much-longer-name").write_bytes(b"2")
    os.symlink(tmp_path / "a", tmp_path / "link")
    os.symlink(tmp_path / "a" / "short", tmp_path / "flink")
    monkeypatch.setattr(prove, "MAX_PATH", 12)
    monkeypatch.setattr(prove, "MAX_STATS", 1)
    too_long: list[bytes] = []
    chunks = list(prove._chunks(os.fsencode(tmp_path), [b""], too_long, lambda: None,
                                 lambda: False))
    assert [[name for name, _ in c] for c in chunks] == [[b"a/short"]]
    assert too_long == [b"a/a-much-longer-name"]


def test_an_empty_or_missing_local_target_needs_no_proof(tmp_path) -> None:
    from syncsup.config import Target
    from syncsup.proto import Changes
    from syncsup.syncer.prove import nothing_to_prove

    full, empty = tmp_path / "full", tmp_path / "empty"
    (full / "sub").mkdir(parents=True)
    (full / "sub" / "f").write_bytes(b"f")
    (full / "bare").mkdir()
    empty.mkdir()
    for path, prove, left in [(empty, {b""}, set()), (tmp_path / "missing", {b""}, set()),
                              (full, {b""}, {b""}), (full, {b"sub", b"bare", b"gone"}, {b"sub"})]:
        changes = Changes(prove=set(prove))
        nothing_to_prove(changes, Target(spec=str(path), path=str(path)))
        assert changes.prove == left and changes.trees == prove - left, (path, prove)
    remote = Changes(prove={b""})
    nothing_to_prove(remote, Target(spec="h:/x", path="/x", host="h"))
    assert remote.prove == {b""} and not remote.trees


def test_the_walk_never_lists_what_a_directory_swapped_for_a_symlink_points_to(
        tmp_path) -> None:
    """A source writer swaps a directory for a symlink to a tree outside the
    source while the proof walks: the walk skips it, and no name, size or
    time from outside reaches the target's stats session."""
    src, outside = tmp_path / "src", tmp_path / "outside"
    (src / "a").mkdir(parents=True)
    (src / "z").mkdir()
    (outside / "secret-dir").mkdir(parents=True)
    (outside / "secret").write_bytes(b"x" * 12345)
    (outside / "secret-dir" / "deeper").write_bytes(b"y")
    (src / "a" / "f").write_bytes(b"1")
    (src / "z" / "g").write_bytes(b"2")
    root = os.fsencode(src)
    walk = proof._walk(root, b"")
    first = next(walk)  # the top was listed, "a" or "z" entered
    for name in (b"a", b"z"):
        if not first[0].startswith(name + b"/"):
            shutil.rmtree(src / os.fsdecode(name))
            os.symlink(outside, src / os.fsdecode(name))
    rest = list(walk)
    names = [first[0], *(n for n, _ in rest)]
    assert all(not n.endswith((b"secret", b"deeper")) for n in names), names
    assert all(st[1] != 12345 for _, st in rest), rest
    assert len(names) == 1, names  # the directory not yet entered was skipped


def test_a_subtree_reached_through_a_symlinked_parent_is_not_walked(tmp_path) -> None:
    src, outside = tmp_path / "src", tmp_path / "outside"
    src.mkdir()
    (outside / "d").mkdir(parents=True)
    (outside / "d" / "secret").write_bytes(b"s")
    os.symlink(outside, src / "link")
    assert list(proof._walk(os.fsencode(src), b"link/d")) == []
    assert list(proof._walk(os.fsencode(src), b"link")) == []
    (src / "real" / "d").mkdir(parents=True)
    (src / "real" / "d" / "f").write_bytes(b"f")
    assert [n for n, _ in proof._walk(os.fsencode(src), b"real/d")] == [b"real/d/f"]


def test_a_walk_stopped_early_or_finished_leaves_no_descriptor_open(tmp_path) -> None:
    for i in range(5):
        (tmp_path / "d" / str(i) / "e").mkdir(parents=True)
        (tmp_path / "d" / str(i) / "e" / "f").write_bytes(b"f")
    before = len(os.listdir("/proc/self/fd"))
    walk = proof._walk(os.fsencode(tmp_path), b"d")
    next(walk)
    walk.close()
    assert len(list(proof._walk(os.fsencode(tmp_path), b"d"))) == 5
    assert len(os.listdir("/proc/self/fd")) == before


def test_below_an_arrived_directory_a_file_is_no_older_than_the_arrival(tmp_path) -> None:
    """A subtree other than the root: each file's ctime counts from no
    earlier than the top directory's own (moved by its rename), so a target
    copy written between the file's last change and the rename (another
    directory's file, at this name then) is not taken for proven."""
    (tmp_path / "app.new" / "sub").mkdir(parents=True)
    (tmp_path / "app.new" / "sub" / "f").write_bytes(b"f")
    file_ctime = os.stat(tmp_path / "app.new" / "sub" / "f").st_ctime_ns
    time.sleep(0.05)  # past the kernel's coarse clock
    os.rename(tmp_path / "app.new", tmp_path / "app")
    top = os.stat(tmp_path / "app").st_ctime_ns
    assert top > file_ctime
    [(name, st)] = list(proof._walk(os.fsencode(tmp_path), b"app"))
    assert name == b"app/sub/f" and st[0] == top
    # a directory swapped in deeper (while the top was out of sight) moves
    # the floor below it
    (tmp_path / "app" / "sub" / "x.new" / "y").mkdir(parents=True)
    (tmp_path / "app" / "sub" / "x.new" / "y" / "g").write_bytes(b"g")
    g_ctime = os.stat(tmp_path / "app" / "sub" / "x.new" / "y" / "g").st_ctime_ns
    time.sleep(0.05)
    os.rename(tmp_path / "app" / "sub" / "x.new", tmp_path / "app" / "sub" / "x")
    deep = os.stat(tmp_path / "app" / "sub" / "x").st_ctime_ns
    walked = dict(proof._walk(os.fsencode(tmp_path), b"app"))
    # two levels below the swapped directory: its floor, not its own
    # directory's (y kept its ctime) nor the top's
    assert walked[b"app/sub/x/y/g"][0] == deep > g_ctime
    # the root has no floor: the start's proof trusts each file's own ctime
    (tmp_path / "late").write_bytes(b"x")  # moves the root's ctime past the file's
    root = dict(proof._walk(os.fsencode(tmp_path), b""))
    assert root[b"app/sub/f"][0] == file_ctime
    assert root[b"app/sub/x/y/g"][0] == g_ctime


def test_small_directories_are_told_from_large_ones_counted_together(tmp_path) -> None:
    root = os.fsencode(tmp_path)
    (tmp_path / "s" / "d").mkdir(parents=True)
    (tmp_path / "s" / "d" / "f").write_bytes(b"f")
    assert proof.small(root, [b"s"])
    (tmp_path / "big").mkdir()
    with open(tmp_path / "big" / "f", "wb") as f:
        f.truncate(proof.SMALL_BYTES + 1)
    assert not proof.small(root, [b"big"])
    for i in range(proof.SMALL_FILES + 1):
        (tmp_path / "many" / str(i)).parent.mkdir(exist_ok=True)
        (tmp_path / "many" / str(i)).write_bytes(b"")
    assert not proof.small(root, [b"many"])
    for i in range(proof.SMALL_DIRS + 1):
        (tmp_path / "dirs" / str(i)).mkdir(parents=True)
    assert not proof.small(root, [b"dirs"])
    before = len(os.listdir("/proc/self/fd"))
    assert not proof.small(root, [b"dirs"]) and len(os.listdir("/proc/self/fd")) == before
    # entries of any kind count, and the count stops at the bound
    (tmp_path / "links").mkdir()
    for i in range(proof.SMALL_ENTRIES + 1):
        os.symlink("x", tmp_path / "links" / str(i))
    assert not proof.small(root, [b"links"])
    # each small, too many together: one proof covers them all
    half = proof.SMALL_DIRS // 2 + 1
    for name in ("h1", "h2"):
        for i in range(half):
            (tmp_path / name / str(i)).mkdir(parents=True)
    assert proof.small(root, [b"h1"]) and proof.small(root, [b"h2"])
    assert not proof.small(root, [b"h1", b"h2"])


def test_what_the_rules_keep_from_the_target_is_never_named_to_it(tmp_path) -> None:
    """A file or directory the sync's rules exclude is not sent: the proof
    leaves it out too, so its name never reaches the target's stats
    session, and it counts for nothing in a directory's size."""
    from syncsup.config import Sync, Target
    from syncsup.filters import RuleList

    src = tmp_path / "src"
    for rel in ("app/keep", "app/secret.key", "app/cache/blob", "app/sub/cache",
                "app/sub/ok"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(b"x")
    sync = Sync(name="s", source=src, targets=(Target("/d", "/d"),),
                exclude=("*.key", "cache/"))
    root = os.fsencode(src)
    rules = RuleList(sync)
    skip = proof.hidden(rules)
    assert skip is not None
    names = sorted(n for n, _ in proof._walk(root, b"app", skip=skip))
    # "cache/" is for directories only: the file app/sub/cache is sent
    assert names == [b"app/keep", b"app/sub/cache", b"app/sub/ok"]
    chunks = proof._chunks(root, [b"app"], [], lambda: None, lambda: False, rules)
    assert sorted(n for chunk in chunks for n, _ in chunk) == names
    assert proof.hidden(RuleList(Sync(name="s", source=src, targets=(Target("/d", "/d"),)))) \
        is None
    (src / "app" / "cache" / "big").write_bytes(b"")
    os.truncate(src / "app" / "cache" / "big", proof.SMALL_BYTES + 1)
    assert proof.small(root, [b"app"], rules) and not proof.small(root, [b"app"])
    dst = tmp_path / "dst"
    dst.mkdir()
    out, counts, _ = proof.prove(sync, Target(str(dst), str(dst)), [b"app"], None, 2.0,
                                 lambda: None, lambda: False)
    assert out == [] and sum(counts.values()) == len(names) == counts["sent"]


def test_the_proof_walks_what_the_tree_step_sends_under_the_rules(tmp_path) -> None:
    """A nested arrival below a directory a hide rule keeps from the target
    is walked on its own: rsync, given its name, sends it (it asks the
    listed name, not the directories above it), so its stale copies must
    be compared. An arrival the rules exclude itself, or one below an
    excluded directory (the tree step leaves it out), is not walked: its
    names never reach the target."""
    from syncsup.config import Sync, Target
    from syncsup.filters import RuleList

    src = tmp_path / "src"
    for rel in ("app/f", "app/cache/new/f", "secrets/new/id_rsa", "pub/x.keep"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(b"x")
    root = os.fsencode(src)

    def walked(subtrees: list[bytes], **rules: tuple[str, ...]) -> list[bytes]:
        sync = Sync(name="s", source=src, targets=(Target("/d", "/d"),), **rules)
        return sorted(n for n, _ in proof._walk_tops(root, subtrees, RuleList(sync)))

    tops = [b"app", b"app/cache", b"app/cache/new"]
    assert walked(tops, filter=("H cache/",)) == [b"app/cache/new/f", b"app/f"]
    assert walked(tops) == [b"app/cache/new/f", b"app/f"]  # each file once
    assert walked([b"secrets/new", b"pub"], filter=("+ *.keep", "- secrets/")) == [
        b"pub/x.keep"]
    assert walked([b"secrets", b"app"], exclude=("secrets",)) == [b"app/cache/new/f",
                                                                  b"app/f"]
    # shown to the sender first: the tree step leaves the listed name out
    # (below an excluded directory), but recursing from "app" rsync sends it
    assert walked([b"app", b"app/cache/new"], filter=("S cache/", "- cache/")) == [
        b"app/cache/new/f", b"app/f"]
    assert walked([b"app/cache/new"], filter=("S cache/", "- cache/")) == [b"app/cache/new/f"]
    # patterns rsync reads otherwise than the rules module: a doubt, never hidden
    for odd in ("H /**/cache/", "H cache//"):
        assert walked([b"app"], filter=(odd,)) == [b"app/cache/new/f", b"app/f"], odd


def test_a_nested_arrival_is_covered_by_a_walk_above_it_unless_hidden_between() -> None:
    def hide(rel: bytes, is_dir: bool) -> bool:
        return rel.endswith(b"/cache")

    walked = {b"", b"app", b"lib/x"}
    assert proof._covered(b"app/a/b", walked, hide)
    assert not proof._covered(b"app/cache/new", walked, hide)  # rsync sends it by name
    assert proof._covered(b"app/cache/new", walked, None)
    assert not proof._covered(b"top", walked, hide)  # the root's walk has no floors
    assert not proof._covered(b"lib/y", walked, hide)  # a sibling, not below
