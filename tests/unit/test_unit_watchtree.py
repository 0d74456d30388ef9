"""WatchTree: the watch table, its incremental walks and the translation of
raw inotify events into Changes.

The kernel is replaced by two fake callables; directory walks use a real
temporary tree.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from inotify_simple import flags as F

from syncsup.proto import Changes
from syncsup.timings import Timings
from syncsup.watcher.tree import MASK, Signals, WatchTree, join
from tests.helpers.unit import b

TIMINGS = Timings(write_hold=0.3)  # this test's own hold
WRITE_HOLD = TIMINGS.write_hold


# The tree returns what it finds; these add it to an accumulated Changes,
# as the watcher's loop does with what it holds to send.
def step_into(tree: WatchTree, out: Changes, budget: int = 2000) -> int:
    walked = tree.step(budget)
    out.update(walked.changes)
    return walked.visited


def apply_into(tree: WatchTree, events: list[tuple[int, int, int, bytes]], out: Changes,
               now: float | None = None, since: float | None = None) -> Signals:
    got, signals = tree.apply(events, now, since)
    out.update(got)
    return signals


def release_into(tree: WatchTree, now: float, out: Changes) -> float | None:
    got, nxt = tree.release(now)
    out.update(got)
    return nxt


class FakeInotify:
    def __init__(self) -> None:
        self.next_wd = 1
        self.added: list[tuple[bytes, int]] = []
        self.removed: list[int] = []
        self.fail: dict[bytes, int] = {}  # absolute path -> errno
        self.rm_errno: int | None = None
        self.by_inode: dict[int, int] = {}

    def add_watch(self, path: bytes, mask: int) -> int:
        assert isinstance(path, bytes)
        err = self.fail.get(path)
        if err is None and not os.path.lexists(path):
            err = errno.ENOENT  # like the kernel
        if err is None and mask & F.ONLYDIR and mask & F.DONT_FOLLOW and not (
                os.path.isdir(path) and not os.path.islink(path)):
            err = errno.ENOTDIR  # IN_ONLYDIR | IN_DONT_FOLLOW: a symlink is refused
        if err is not None:
            raise OSError(err, os.strerror(err))
        self.added.append((path, mask))
        ino = os.lstat(path).st_ino
        if ino in self.by_inode:  # like the kernel: one watch per inode
            return self.by_inode[ino]
        wd = self.next_wd
        self.next_wd += 1
        self.by_inode[ino] = wd
        return wd

    def rm_watch(self, wd: int) -> None:
        self.removed.append(wd)
        self.by_inode = {i: w for i, w in self.by_inode.items() if w != wd}
        if self.rm_errno is not None:
            raise OSError(self.rm_errno, os.strerror(self.rm_errno))


@pytest.fixture
def src(tmp_path: Path) -> Path:
    """src/{a/{b/},ab/,c/,f,link->a,out->../outside}"""
    root = tmp_path / "src"
    (root / "a" / "b").mkdir(parents=True)
    (root / "ab").mkdir()
    (root / "c").mkdir()
    (root / "f").write_text("x")
    (root / "a" / "file").write_text("y")
    (tmp_path / "outside" / "deep").mkdir(parents=True)
    (root / "link").symlink_to("a")
    (root / "out").symlink_to(tmp_path / "outside")
    return root


def make(src: Path, excluded: Callable[[bytes], bool] | None = None
         ) -> tuple[WatchTree, FakeInotify]:
    fake = FakeInotify()
    tree = WatchTree(b(src), fake.add_watch, fake.rm_watch, excluded, timings=TIMINGS)
    return tree, fake


def watched(src: Path) -> tuple[WatchTree, FakeInotify, dict[bytes, int]]:
    tree, fake = make(src)
    tree.watch(b"")
    return tree, fake, {p: wd for wd, p in tree.paths.items()}


def test_join() -> None:
    assert join(b"", b"x") == b"x"
    assert join(b"a/b", b"x") == b"a/b/x"


# ------------------------------------------------------------------ watch
def test_watch_registers_every_directory(src: Path) -> None:
    tree, fake, _ = watched(src)
    assert sorted(tree.paths.values()) == [b"", b"a", b"a/b", b"ab", b"c"]
    root = os.fsencode(src)
    assert sorted(p for p, _ in fake.added) == sorted(
        [root, root + b"/a", root + b"/a/b", root + b"/ab", root + b"/c"])
    assert all(mask == MASK for _, mask in fake.added)
    assert not tree.blind


def test_watch_does_not_follow_symlinks(src: Path) -> None:
    _, fake, _ = watched(src)
    added = [p for p, _ in fake.added]
    assert not any(p.endswith((b"/link", b"/out")) for p in added)
    assert not any(b"outside" in p for p in added)
    assert len(added) == len(set(added))  # nothing watched twice via the link


def test_watch_mask_does_not_follow_symlinks_either() -> None:
    assert MASK & F.DONT_FOLLOW
    assert MASK & F.ONLYDIR
    for needed in (F.CREATE, F.DELETE, F.MOVED_FROM, F.MOVED_TO, F.CLOSE_WRITE, F.MODIFY,
                   F.ATTRIB, F.DELETE_SELF):
        assert MASK & needed


def test_watch_a_subtree_only(src: Path) -> None:
    tree, _ = make(src)
    tree.watch(b"a")
    assert sorted(tree.paths.values()) == [b"a", b"a/b"]


def test_step_places_at_most_budget_watches(src: Path) -> None:
    """Walks are incremental (the progress callback is gone: one watcher
    serves every sync, so a walk is cut into steps instead)."""
    tree, fake = make(src)
    tree.queue(b"")
    assert tree.walking
    out = Changes()
    assert [step_into(tree, out, budget=2) for _ in range(4)] == [2, 2, 1, 0]
    assert not tree.walking
    assert sorted(tree.paths.values()) == [b"", b"a", b"a/b", b"ab", b"c"]
    assert len(fake.added) == 5
    assert not out


def test_enospc_records_subtree_and_continues(src: Path) -> None:
    tree, fake = make(src)
    fake.fail[os.fsencode(src / "a")] = errno.ENOSPC
    tree.watch(b"")
    assert tree.blind.keys() == {b"a"}
    assert tree.watch_errors == 1
    # Everything else is still watched; below the failed one there is nothing to add.
    assert sorted(tree.paths.values()) == [b"", b"ab", b"c"]


def test_enospc_counted_per_failure(src: Path) -> None:
    tree, fake = make(src)
    fake.fail[os.fsencode(src / "a")] = errno.ENOSPC
    fake.fail[os.fsencode(src / "c")] = errno.ENOSPC
    tree.watch(b"")
    assert tree.blind.keys() == {b"a", b"c"}
    assert tree.watch_errors == 2
    assert sorted(tree.paths.values()) == [b"", b"ab"]


@pytest.mark.parametrize("err", [errno.ENOENT, errno.ENOTDIR])
def test_vanished_dirs_are_skipped(src: Path, err: int) -> None:
    tree, fake = make(src)
    fake.fail[os.fsencode(src / "a")] = err
    tree.watch(b"")
    assert not tree.blind
    assert sorted(tree.paths.values()) == [b"", b"ab", b"c"]


@pytest.mark.parametrize(("err", "reason"), [
    (errno.ENAMETOOLONG, "too_long"), (errno.EACCES, "unreadable"), (errno.EPERM, "unreadable"),
    (errno.EIO, "error"), (errno.ELOOP, "error"), (errno.ENOMEM, "error")])
def test_any_error_of_add_watch_blinds_that_subtree_only(src: Path, err: int,
                                                         reason: str) -> None:
    """Every error the kernel can give for one directory is contained: that
    subtree is recorded blind with its reason and error text, and the walk
    goes on with the rest (an error that escaped would restart the watcher
    and blind every sync)."""
    tree, fake = make(src)
    fake.fail[os.fsencode(src / "a")] = err
    tree.watch(b"")
    assert set(tree.blind) == {b"a"}
    assert tree.blind[b"a"].reason == reason
    assert tree.blind[b"a"].detail == os.strerror(err)
    assert sorted(tree.paths.values()) == [b"", b"ab", b"c"]
    assert tree.watch_errors == 0  # only the watch limit counts as a watch error


def test_an_error_of_the_scan_blinds_that_subtree_only(src: Path, monkeypatch) -> None:
    """add_watch worked but the directory cannot be listed (ENAMETOOLONG or
    EACCES from the scan): that subtree is blind, the rest is walked."""
    tree, _fake = make(src)
    real = os.scandir
    bad = os.fsencode(src / "a")

    def scandir(path):
        if path == bad:
            raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    tree.watch(b"")
    assert {p: x.reason for p, x in tree.blind.items()} == {b"a": "too_long"}
    assert sorted(tree.paths.values()) == [b"", b"a", b"ab", b"c"]


def test_a_deleted_or_moved_blind_subtree_is_forgotten(src: Path) -> None:
    tree, fake = make(src)
    fake.fail[os.fsencode(src / "a")] = errno.EACCES
    fake.fail[os.fsencode(src / "c")] = errno.EACCES
    tree.watch(b"")
    root = next(wd for wd, p in tree.paths.items() if p == b"")
    ch = Changes()
    apply_into(tree, [(root, F.DELETE | F.ISDIR, 0, b"a"), (root, F.MOVED_FROM | F.ISDIR, 7, b"c")],
               ch)
    assert not tree.blind
    assert b"a" in ch.paths and b"c" in ch.trees


def test_unmount_of_the_root_is_the_root_gone(src: Path) -> None:
    tree, _fake = make(src)
    tree.watch(b"")
    root = tree.root_wd
    assert root is not None
    sig = apply_into(tree, [(root, F.UNMOUNT, 0, b""), (root, F.IGNORED, 0, b"")], Changes())
    assert sig.root_gone and tree.root_wd is None


def test_watch_of_missing_dir_is_harmless(src: Path) -> None:
    tree, _ = make(src)
    tree.watch(b"gone")
    assert tree.paths == {}


def test_non_utf8_directory_names(tmp_path: Path) -> None:
    root = os.fsencode(tmp_path)
    os.makedirs(root + b"/caf\xe9/new\nline")
    tree, _ = make(tmp_path)
    tree.watch(b"")
    assert sorted(tree.paths.values()) == [b"", b"caf\xe9", b"caf\xe9/new\nline"]


# ------------------------------------------------------------------ apply
def apply(tree: WatchTree, *events: tuple[int, int, int, bytes]) -> tuple[Changes, Signals]:
    ch = Changes()
    signals = apply_into(tree, list(events), ch)
    return ch, signals


def walked(tree: WatchTree) -> Changes:
    """Finish every queued walk; what it released."""
    out = Changes()
    while tree.walking:
        step_into(tree, out)
    step_into(tree, out)
    return out


@pytest.mark.parametrize("mask", [F.MODIFY, F.CLOSE_WRITE, F.ATTRIB, F.CREATE, F.DELETE,
                                  F.MOVED_FROM, F.MOVED_TO])
def test_file_events_mark_paths(src: Path, mask: int) -> None:
    tree, _, wd = watched(src)
    ch, signals = apply(tree, (wd[b""], mask, 0, b"f"), (wd[b"a/b"], mask, 0, b"x\ny"))
    assert ch.paths == {b"f", b"a/b/x\ny"}
    assert ch.trees == set()
    assert signals == Signals()
    assert not signals.overflow and not signals.root_gone
    assert ch
    # Command mode tells on_create from on_modify by this.
    assert ch.created == (ch.paths if mask in (F.CREATE, F.MOVED_TO) else set())
    assert not tree.walking


def test_directory_delete_marks_the_path(src: Path) -> None:
    tree, _, wd = watched(src)
    ch, _ = apply(tree, (wd[b"a"], F.DELETE | F.ISDIR, 0, b"b"))
    assert ch.paths == {b"a/b"}
    assert ch.trees == set()


def test_event_on_the_directory_itself_marks_it(src: Path) -> None:
    tree, _, wd = watched(src)
    ch, _ = apply(tree, (wd[b"a"], F.ATTRIB | F.ISDIR, 0, b""))
    assert ch.paths == {b"a"}


@pytest.mark.parametrize("mask", [F.CREATE | F.ISDIR, F.MOVED_TO | F.ISDIR])
def test_new_directory_is_watched_and_rescanned(src: Path, mask: int) -> None:
    tree, fake, wd = watched(src)
    (src / "c" / "new" / "deep").mkdir(parents=True)  # filled before we could watch it
    before = len(fake.added)
    ch, _ = apply(tree, (wd[b"c"], mask, 0, b"new"))
    # Queued, not walked yet: watch first, then rescan.
    assert tree.walking
    assert ch.trees == set()
    assert b"c/new" not in ch.paths
    assert ch.created == {b"c/new"}
    assert len(fake.added) == before
    out = walked(tree)
    assert out.prove == {b"c/new"} and not out.trees
    assert not out.paths
    new = [p for p, _ in fake.added[before:]]
    assert sorted(new) == [b(src / "c" / "new"), b(src / "c" / "new" / "deep")]
    assert {b"c/new", b"c/new/deep"} <= set(tree.paths.values())
    # Events from the new watch are understood.
    new_wd = {p: w for w, p in tree.paths.items()}[b"c/new/deep"]
    assert apply(tree, (new_wd, F.CLOSE_WRITE, 0, b"z"))[0].paths == {b"c/new/deep/z"}


def test_rescan_is_released_only_after_the_walk(src: Path) -> None:
    tree, fake = make(src)
    tree.queue(b"", Changes(verify={b""}))
    out = Changes()
    step_into(tree, out, budget=1)
    assert not out and tree.walking
    step_into(tree, out, budget=3)
    assert not out and tree.walking  # one directory left
    assert step_into(tree, out, budget=3) == 1
    assert out == Changes(verify={b""})
    assert len(fake.added) == 5
    # Released once: the next step adds nothing.
    again = Changes()
    assert step_into(tree, again) == 0
    assert not again


def test_a_rescan_waits_for_every_walk_in_progress(src: Path) -> None:
    tree, _ = make(src)
    tree.queue(b"")
    out = Changes()
    step_into(tree, out, budget=1)
    tree.queue(b"c", Changes(trees={b"c"}))  # asked for while the root walk runs
    tree.queue(b"a", Changes(trees={b"a"}))
    while tree.walking:
        assert not out
        step_into(tree, out, budget=1)
    assert out.trees == {b"c", b"a"}


def test_step_with_nothing_queued(src: Path) -> None:
    tree, fake = make(src)
    out = Changes(paths={b"kept"})
    assert step_into(tree, out) == 0
    assert out == Changes(paths={b"kept"})
    assert fake.added == []


def test_new_directory_already_gone_is_still_rescanned(src: Path) -> None:
    tree, _, wd = watched(src)
    ch, _ = apply(tree, (wd[b"c"], F.CREATE | F.ISDIR, 0, b"ghost"))
    assert ch.created == {b"c/ghost"}
    assert walked(tree).prove == {b"c/ghost"}
    assert b"c/ghost" not in tree.paths.values()


def test_new_directory_replaced_by_a_symlink_is_not_followed(src: Path, tmp_path: Path) -> None:
    tree, fake, wd = watched(src)
    (src / "c" / "sneaky").symlink_to(tmp_path / "outside")  # was a directory a moment ago
    apply(tree, (wd[b"c"], F.CREATE | F.ISDIR, 0, b"sneaky"))
    assert walked(tree).prove == {b"c/sneaky"}  # rsync sends the link itself
    assert not any(b"outside" in p or p.endswith(b"sneaky") for p, _ in fake.added)
    assert b"c/sneaky" not in tree.paths.values()


def test_moved_from_dir_forgets_its_watches(src: Path) -> None:
    tree, fake, wd = watched(src)
    ch, _ = apply(tree, (wd[b""], F.MOVED_FROM | F.ISDIR, 42, b"a"))
    # A tree, not a path: whatever comes back at this name is compared whole.
    assert ch.trees == {b"a"}
    assert ch.paths | ch.trees == {b"a"}
    assert sorted(fake.removed) == sorted([wd[b"a"], wd[b"a/b"]])
    assert sorted(tree.paths.values()) == [b"", b"ab", b"c"]  # "ab" is not below "a"
    # Late events from the forgotten watches are ignored.
    late, _ = apply(tree, (wd[b"a/b"], F.MODIFY, 0, b"x"), (wd[b"a"], F.CREATE, 0, b"y"))
    assert not late
    assert late.paths == set()


def test_moved_from_dir_tolerates_rm_watch_errors(src: Path) -> None:
    tree, fake, wd = watched(src)
    fake.rm_errno = errno.EINVAL  # the kernel dropped the watch already
    ch, _ = apply(tree, (wd[b""], F.MOVED_FROM | F.ISDIR, 1, b"a"))
    assert ch.paths | ch.trees == {b"a"}
    assert len(fake.removed) == 2
    assert b"a" not in tree.paths.values()
    assert b"a/b" not in tree.paths.values()


def test_a_directory_moved_out_drops_its_walks_not_yet_done(src: Path) -> None:
    tree, _, wd = watched(src)
    tree.queue(b"a")
    apply(tree, (wd[b""], F.MOVED_FROM | F.ISDIR, 5, b"a"))
    assert not tree.walking
    assert sorted(tree.paths.values()) == [b"", b"ab", b"c"]


def test_move_within_tree_keeps_its_watches_under_the_new_name(src: Path) -> None:
    tree, fake, wd = watched(src)
    (src / "a").rename(src / "c" / "moved")
    ch, _ = apply(tree, (wd[b""], F.MOVED_FROM | F.ISDIR, 7, b"a"),
                  (wd[b"c"], F.MOVED_TO | F.ISDIR, 7, b"moved"))
    assert b"a" in ch.paths | ch.trees  # the old name is marked
    assert ch.moves == [(b"a", b"c/moved")]
    assert b"c/moved" in ch.prove | walked(tree).prove
    assert not fake.removed  # the kernel's watches followed it
    assert {p: w for w, p in tree.paths.items() if p.startswith(b"c/moved")} == {
        b"c/moved": wd[b"a"], b"c/moved/b": wd[b"a/b"]}
    names = set(tree.paths.values())
    assert not {b"a", b"a/b"} & names
    # events on its watches, after the rename, are under the new name
    later, _ = apply(tree, (wd[b"a/b"], F.CLOSE_WRITE, 0, b"x"))
    assert later.paths == {b"c/moved/b/x"}


def test_queue_overflow_is_flagged_for_the_watcher(src: Path) -> None:
    """The watcher itself re-walks and asks for a verifying root rescan."""
    tree, _, _ = watched(src)
    ch, signals = apply(tree, (-1, F.Q_OVERFLOW, 0, b""))
    assert signals.overflow
    assert not signals.root_gone
    assert not ch.trees and not ch.paths
    assert not ch


def test_delete_self_on_root_sets_root_gone(src: Path) -> None:
    tree, _, wd = watched(src)
    ch, signals = apply(tree, (wd[b""], F.DELETE_SELF, 0, b""))
    assert signals.root_gone
    assert ch.paths == set()
    assert ch.trees == set()


def test_move_self_on_root_sets_root_gone(src: Path) -> None:
    tree, _, wd = watched(src)
    assert apply(tree, (wd[b""], F.MOVE_SELF, 0, b""))[1].root_gone


def test_delete_self_on_subdir_is_not_root_gone(src: Path) -> None:
    tree, _, wd = watched(src)
    ch, signals = apply(tree, (wd[b"a/b"], F.DELETE_SELF, 0, b""))
    assert not signals.root_gone
    assert not ch  # the parent's IN_DELETE reports it


def test_ignored_drops_the_wd(src: Path) -> None:
    tree, fake, wd = watched(src)
    ch, _ = apply(tree, (wd[b"c"], F.IGNORED, 0, b""))
    assert not ch
    assert wd[b"c"] not in tree.paths
    assert fake.removed == []  # the kernel already removed it
    assert not apply(tree, (wd[b"c"], F.MODIFY, 0, b"x"))[0]


def test_unknown_wd_is_ignored(src: Path) -> None:
    tree, _, _ = watched(src)
    before = dict(tree.paths)
    ch, signals = apply(tree, (999, F.MODIFY, 0, b"x"), (998, F.CREATE | F.ISDIR, 0, b"d"),
                        (997, F.DELETE_SELF, 0, b""), (996, F.IGNORED, 0, b""))
    assert not ch
    assert not signals.root_gone
    assert ch.paths == set() and ch.trees == set()
    assert tree.paths == before
    assert not tree.walking


def test_changes_accumulate_over_several_reads(src: Path) -> None:
    tree, _, wd = watched(src)
    ch = Changes()
    apply_into(tree, [(wd[b""], F.MODIFY, 0, b"f")], ch)
    apply_into(tree, [(wd[b"a"], F.DELETE, 0, b"file")], ch)
    apply_into(tree, [(wd[b"a"], F.DELETE, 0, b"file")], ch)
    assert ch.paths == {b"f", b"a/file"}


def test_empty_changes_are_falsy() -> None:
    """Flags moved out of Changes into Signals; renames alone now make
    Changes true (they must be sent), ``created`` alone does not (it only
    qualifies paths)."""
    assert not Changes()
    assert Signals() == Signals(overflow=False, root_gone=False)
    assert not Changes(created={b"x"})
    assert Changes(trees={b""})
    assert Changes(verify={b""})
    assert Changes(paths={b"x"})
    assert Changes(moves=[(b"a", b"b")])


def test_paired_moves_in_one_read_are_recorded_as_renames(src: Path) -> None:
    tree, _, wd = watched(src)
    ch, _ = apply(tree, (wd[b""], F.MOVED_FROM, 5, b"f"), (wd[b"c"], F.MOVED_TO, 5, b"g"))
    assert ch.moves == [(b"f", b"c/g")]
    # Both ends are marked too, so a rename that cannot be replayed is repaired.
    assert {b"f", b"c/g"} <= ch.paths
    assert ch.created == {b"c/g"}


def test_unpaired_moves_are_not_renames(src: Path) -> None:
    tree, _, wd = watched(src)
    ch, _ = apply(tree, (wd[b""], F.MOVED_FROM, 5, b"f"), (wd[b"c"], F.MOVED_TO, 6, b"g"),
                  (wd[b"c"], F.MOVED_TO, 7, b"h"))
    assert ch.moves == []
    assert {b"f", b"c/g", b"c/h"} <= ch.paths


def test_renames_keep_their_order(src: Path) -> None:
    tree, _, wd = watched(src)
    ch, _ = apply(tree, (wd[b""], F.MOVED_FROM, 1, b"x"), (wd[b""], F.MOVED_TO, 1, b"y"),
                  (wd[b""], F.MOVED_FROM, 2, b"y"), (wd[b"c"], F.MOVED_TO, 2, b"x"),
                  (wd[b"c"], F.MOVED_FROM, 3, b"x"), (wd[b""], F.MOVED_TO, 3, b"x"))
    assert ch.moves == [(b"x", b"y"), (b"y", b"c/x"), (b"c/x", b"x")]


# --------------------------------------------------------------- excluded
def test_excluded_directories_are_neither_watched_nor_reported(src: Path) -> None:
    def excluded(rel: bytes) -> bool:
        return rel.rsplit(b"/", 1)[-1] == b"cache"

    (src / "a" / "cache" / "deep").mkdir(parents=True)
    tree, fake = make(src, excluded)
    tree.watch(b"")
    assert sorted(tree.paths.values()) == [b"", b"a", b"a/b", b"ab", b"c"]
    wd = {p: w for w, p in tree.paths.items()}
    (src / "c" / "cache").mkdir()
    ch, _ = apply(tree, (wd[b"c"], F.CREATE | F.ISDIR, 0, b"cache"),
                  (wd[b""], F.MOVED_TO | F.ISDIR, 9, b"cache"))
    assert not ch and not ch.created and not tree.walking
    # A file of that name is not a directory: rsync's rule does not apply here.
    ch, _ = apply(tree, (wd[b"c"], F.CREATE, 0, b"cache"))
    assert ch.paths == {b"c/cache"}
    assert not any(p.endswith(b"cache") or b"/cache/" in p for p, _ in fake.added)


def test_unwatched_dirs_counts_the_blind_subtrees(src: Path) -> None:
    tree, fake = make(src)
    fake.fail[b(src / "a")] = errno.ENOSPC
    tree.watch(b"")
    assert tree.unwatched_dirs() == 2  # a and a/b


# --------------------------------------------------------- files being written
def test_a_file_being_written_is_held_until_closed(src: Path) -> None:
    tree, _, wd = watched(src)
    ch = Changes()
    apply_into(tree, [(wd[b""], F.CREATE, 0, b"f"), (wd[b""], F.MODIFY, 0, b"f")], ch, now=10.0)
    assert ch.paths == set() and ch.created == set()  # "created" waits with the path
    assert tree.writing == {b"f": 10.0 + WRITE_HOLD}
    apply_into(tree, [(wd[b""], F.ATTRIB, 0, b"f"), (wd[b""], F.MODIFY, 0, b"f")], ch, now=10.2)
    assert ch.paths == set() and tree.writing == {b"f": 10.0 + WRITE_HOLD}  # not extended
    apply_into(tree, [(wd[b""], F.CLOSE_WRITE, 0, b"f")], ch, now=10.3)
    assert ch.paths == {b"f"} and tree.writing == {}
    assert release_into(tree, 11.0, ch) is None


def test_a_file_never_closed_goes_when_its_hold_runs_out(src: Path) -> None:
    tree, _, wd = watched(src)
    ch = Changes()
    apply_into(tree, [(wd[b"a"], F.MODIFY, 0, b"file")], ch, now=5.0)  # an appending writer
    apply_into(tree, [(wd[b""], F.MODIFY, 0, b"f")], ch, now=5.1)
    assert release_into(tree, 5.0 + WRITE_HOLD - 0.01, ch) == 5.0 + WRITE_HOLD
    assert ch.paths == set()
    assert release_into(tree, 5.0 + WRITE_HOLD, ch) == 5.1 + WRITE_HOLD
    assert ch.paths == {b"a/file"}
    assert release_into(tree, 99.0, ch) is None
    assert ch.paths == {b"a/file", b"f"}


@pytest.mark.parametrize("mask", [F.DELETE, F.MOVED_FROM, F.MOVED_TO, F.CLOSE_WRITE])
def test_a_held_file_goes_at_once_when_it_is_closed_or_moved(src: Path, mask: int) -> None:
    tree, _, wd = watched(src)
    ch = Changes()
    apply_into(tree, [(wd[b""], F.MODIFY, 0, b"f")], ch, now=1.0)
    apply_into(tree, [(wd[b""], mask, 0, b"f")], ch, now=1.1)
    assert ch.paths == {b"f"} and tree.writing == {}


def test_links_symlinks_and_special_files_are_never_held(src: Path) -> None:
    """No close follows a new hard link, symlink or fifo: holding them would
    only delay them."""
    os.link(src / "f", src / "hard")
    os.symlink("f", src / "sym")
    os.mkfifo(src / "fifo")
    tree, _, wd = watched(src)
    ch = Changes()
    apply_into(tree, [(wd[b""], F.CREATE, 0, n) for n in (b"hard", b"sym", b"fifo", b"gone")], ch,
               now=1.0)
    assert ch.paths == {b"hard", b"sym", b"fifo", b"gone"} and tree.writing == {}


def test_nothing_is_held_without_a_clock(src: Path) -> None:
    tree, _, wd = watched(src)
    ch, _ = apply(tree, (wd[b""], F.CREATE, 0, b"f"), (wd[b""], F.MODIFY, 0, b"f"))
    assert ch.paths == {b"f"} and tree.writing == {}


def test_a_held_new_file_is_still_created_when_it_is_released(src: Path) -> None:
    """Command mode tells on_create from on_modify by ``created``, which
    only travels with its path: a held file keeps it until released."""
    tree, _, wd = watched(src)
    ch = Changes()
    apply_into(tree, [(wd[b""], F.CREATE, 0, b"f")], ch, now=1.0)
    assert ch.created == set() and ch.paths == set()
    apply_into(tree, [(wd[b""], F.CLOSE_WRITE, 0, b"f")], ch, now=1.1)
    assert ch.paths == {b"f"} and ch.created == {b"f"}
    later = Changes()
    apply_into(tree, [(wd[b""], F.MODIFY, 0, b"f")], later, now=2.0)
    apply_into(tree, [(wd[b""], F.CLOSE_WRITE, 0, b"f")], later, now=2.1)
    assert later.paths == {b"f"} and later.created == set()  # a rewrite, not a create
    gone = Changes()
    apply_into(tree, [(wd[b"a"], F.CREATE, 0, b"file")], gone, now=3.0)
    assert release_into(tree, 3.0 + WRITE_HOLD, gone) is None
    assert gone.paths == gone.created == {b"a/file"}


def test_a_file_rewritten_in_a_renamed_directory_before_its_walk_is_a_path(src: Path) -> None:
    """A directory renamed within the tree, then a file in it rewritten at
    the same size with its mtime put back, all in one read: the rewrite's
    events come on the moved directory's old watch, which the rename
    dropped. The walk of the new name lists the file as a path (compared by
    content) by its ctime: the tree alone is compared by rsync's quick
    check, which a copy an enclosing transfer made meanwhile would pass."""
    tree, _, wd = watched(src)
    (src / "a").rename(src / "c" / "moved")
    since = os.stat(src / "c" / "moved" / "file").st_ctime  # a moment before the read
    ch = Changes()
    apply_into(tree, [(wd[b""], F.MOVED_FROM | F.ISDIR, 7, b"a"),
                      (wd[b"c"], F.MOVED_TO | F.ISDIR, 7, b"moved"),
                      (wd[b"a"], F.MODIFY, 0, b"file"),
                      (wd[b"a"], F.CLOSE_WRITE, 0, b"file"),
                      (wd[b"a"], F.ATTRIB, 0, b"file")], ch, since=since)
    ch.update(walked(tree))
    assert b"c/moved" in ch.prove
    assert b"c/moved/file" in ch.paths
    # a file that did not change since then is left to the quick check
    (src / "c" / "moved" / "b" / "old").write_text("z")
    tree2, _, wd2 = watched(src)
    (src / "c" / "moved").rename(src / "ab" / "again")
    ch2 = Changes()
    apply_into(tree2, [(wd2[b"c"], F.MOVED_FROM | F.ISDIR, 8, b"moved"),
                       (wd2[b"ab"], F.MOVED_TO | F.ISDIR, 8, b"again")], ch2,
               since=os.stat(src / "ab" / "again" / "b" / "old").st_ctime + 3600)
    ch2.update(walked(tree2))
    assert b"ab/again" in ch2.prove
    assert not {p for p in ch2.paths if p.startswith(b"ab/again/")}


def test_files_in_a_directory_moved_in_before_its_watch_are_paths(src: Path) -> None:
    """A directory moved in from outside (nobody watched it): its regular
    files changed since the read's moment are paths, its subdirectories'
    too; a symlink is left to the tree (rsync compares its target whatever
    its size and time). A created directory lists none: its files are all
    new, and each would be sent twice (its proof finds what the target
    holds there)."""
    tree, _, wd = watched(src)
    since = os.stat(src / "c").st_ctime
    outside = src.parent / "elsewhere"
    (outside / "new" / "deep").mkdir(parents=True)
    (outside / "new" / "f").write_text("1")
    (outside / "new" / "deep" / "g").write_text("2")
    (outside / "new" / "l").symlink_to("f")
    (outside / "new").rename(src / "c" / "new")
    ch = Changes()
    apply_into(tree, [(wd[b"c"], F.MOVED_TO | F.ISDIR, 77, b"new")], ch, since=since)
    ch.update(walked(tree))
    assert b"c/new" in ch.prove
    assert {b"c/new/f", b"c/new/deep/g"} <= ch.paths
    assert b"c/new/l" not in ch.paths
    assert b"c/new/deep" in tree.paths.values()
    (src / "c" / "made" / "deep").mkdir(parents=True)
    (src / "c" / "made" / "f").write_text("1")
    made = Changes()
    apply_into(tree, [(wd[b"c"], F.CREATE | F.ISDIR, 0, b"made")], made, since=since)
    made.update(walked(tree))
    assert b"c/made" in made.prove and not made.paths
    assert b"c/made/deep" in tree.paths.values()


def test_a_directory_renamed_before_its_walk_keeps_the_older_since(src: Path) -> None:
    """A directory moved in, renamed (again) before its walk looked: the
    walk of the new name looks from the older read's moment, not the
    rename's."""
    tree, _, wd = watched(src)
    (src.parent / "elsewhere" / "new").mkdir(parents=True)
    (src.parent / "elsewhere" / "new" / "f").write_text("1")
    (src.parent / "elsewhere" / "new").rename(src / "c" / "new")
    older = os.stat(src / "c" / "new" / "f").st_ctime
    ch = Changes()
    apply_into(tree, [(wd[b"c"], F.MOVED_TO | F.ISDIR, 8, b"new")], ch, since=older)
    assert tree.walking  # not walked yet
    (src / "c" / "new").rename(src / "c" / "newer")
    apply_into(tree, [(wd[b"c"], F.MOVED_FROM | F.ISDIR, 9, b"new"),
                      (wd[b"c"], F.MOVED_TO | F.ISDIR, 9, b"newer")], ch, since=older + 3600)
    ch.update(walked(tree))
    assert b"c/newer" in ch.prove
    assert b"c/newer/f" in ch.paths
    assert b"c/new" not in tree.paths.values()


def test_events_between_a_rename_and_its_other_half_are_read_under_the_new_name(
        src: Path) -> None:
    """Another writer's event can reach the queue between a directory's
    MOVED_FROM and MOVED_TO: it is kept aside and read under the new name;
    a file being written there is released under the new name too."""
    tree, fake, wd = watched(src)
    ch = Changes()
    apply_into(tree, [(wd[b"a"], F.MODIFY, 0, b"file")], ch, now=100.0)
    assert tree.writing.keys() == {b"a/file"}  # held: open for writing
    (src / "a").rename(src / "c" / "moved")
    apply_into(tree, [(wd[b""], F.MOVED_FROM | F.ISDIR, 3, b"a"),
                      (wd[b"a/b"], F.CLOSE_WRITE, 0, b"x"),
                      (wd[b"c"], F.MOVED_TO | F.ISDIR, 3, b"moved"),
                      (wd[b"a"], F.CLOSE_WRITE, 0, b"file")], ch, now=100.1)
    assert {b"c/moved/b/x", b"c/moved/file"} <= ch.paths
    assert not {p for p in ch.paths if p.startswith(b"a/")}
    assert not tree.writing and not fake.removed


def test_a_directory_moved_to_an_excluded_name_loses_its_watches(src: Path) -> None:
    tree, fake = make(src, excluded=lambda rel: rel.endswith(b".tmp"))
    tree.watch(b"")
    wd = {p: w for w, p in tree.paths.items()}
    ch, _ = apply(tree, (wd[b""], F.MOVED_FROM | F.ISDIR, 4, b"a"),
                  (wd[b"a"], F.CREATE, 0, b"late"),
                  (wd[b""], F.MOVED_TO | F.ISDIR, 4, b"a.tmp"))
    assert ch.trees == {b"a"} and not ch.moves
    assert not {p for p in ch.paths if p.startswith((b"a/", b"a.tmp"))}
    assert sorted(fake.removed) == sorted([wd[b"a"], wd[b"a/b"]])
    assert not {p for p in tree.paths.values() if p.startswith((b"a", b"a.tmp"))} - {b"ab"}


def test_a_directory_renamed_out_of_an_excluded_name_is_walked(src: Path) -> None:
    """Renamed from a name the rules exclude (never watched) to one they do
    not: nothing of it was in sight, so it is walked as if it came from
    outside, files changed since the read's moment listed; and a rename
    whose rules depend on the path watches what the new path includes."""
    (src / "obj" / "sub").mkdir(parents=True)
    (src / "obj" / "sub" / "f").write_text("f")
    tree, fake = make(src, excluded=lambda rel: rel == b"obj" or rel == b"c/moved/b")
    tree.watch(b"")
    wd = {p: w for w, p in tree.paths.items()}
    assert b"obj" not in wd
    (src / "obj").rename(src / "src140")
    since = os.stat(src / "src140" / "sub" / "f").st_ctime
    ch = Changes()
    apply_into(tree, [(wd[b""], F.MOVED_FROM | F.ISDIR, 6, b"obj"),
                      (wd[b""], F.MOVED_TO | F.ISDIR, 6, b"src140")], ch, since=since)
    ch.update(walked(tree))
    assert {b"src140", b"src140/sub"} <= set(tree.paths.values())
    assert b"src140" in ch.prove and b"src140/sub/f" in ch.paths
    # a/b is watched; renamed to c/moved, its b is excluded there: unwatched
    (src / "a").rename(src / "c" / "moved")
    apply(tree, (wd[b""], F.MOVED_FROM | F.ISDIR, 7, b"a"),
          (wd[b"c"], F.MOVED_TO | F.ISDIR, 7, b"moved"))
    walked(tree)
    names = set(tree.paths.values())
    assert b"c/moved" in names and b"c/moved/b" not in names
    assert wd[b"a/b"] in fake.removed and wd[b"a"] not in fake.removed


def _renameat2_exchange(a: Path, b: Path) -> None:
    """renameat2(RENAME_EXCHANGE): swap two names atomically."""
    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd, rename_exchange = -100, 2
    if libc.renameat2(at_fdcwd, bytes(a), at_fdcwd, bytes(b), rename_exchange) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _consistent(tree: WatchTree, fake: FakeInotify, src: Path) -> None:
    """Every watch names the directory it is on (by inode), and every
    directory of the tree is watched."""
    ino_of = {w: i for i, w in fake.by_inode.items()}
    for wd, rel in tree.paths.items():
        assert os.lstat(tree.abspath(rel)).st_ino == ino_of[wd], (wd, rel)
    dirs = {b(os.path.relpath(d, src)) for d, _, _ in os.walk(src)}
    assert {b"" if d == b"." else d for d in dirs} == set(tree.paths.values())


def test_two_directories_exchanged_are_watched_under_their_right_names(src: Path) -> None:
    """RENAME_EXCHANGE (two renames' halves interleaved, each onto a name
    that has a watch): which watch is which cannot be told by name, so
    both names are walked again, listing what changed since the read."""
    tree, fake, wd = watched(src)
    (src / "c" / "y").mkdir()
    tree.watch(b"c")
    wd = {p: w for w, p in tree.paths.items()}
    try:
        _renameat2_exchange(src / "a", src / "c")
    except OSError as exc:
        pytest.skip(f"no RENAME_EXCHANGE here: {exc}")
    ch = Changes()
    apply_into(tree, [(wd[b""], F.MOVED_FROM | F.ISDIR, 1, b"a"),
                      (wd[b""], F.MOVED_TO | F.ISDIR, 1, b"c"),
                      (wd[b""], F.MOVED_FROM | F.ISDIR, 2, b"c"),
                      (wd[b""], F.MOVED_TO | F.ISDIR, 2, b"a")], ch, since=0.0)
    ch.update(walked(tree))
    _consistent(tree, fake, src)
    assert {b"a", b"c"} <= ch.trees
    assert b"c/file" in ch.paths  # a's file, now under c: compared by content


def test_a_walk_not_done_is_not_carried_into_a_name_the_rules_exclude(src: Path) -> None:
    """A new directory renamed before its walk reached a subdirectory that
    a path-bound rule excludes at the new name: the walk is not carried
    there."""
    tree, _ = make(src, excluded=lambda rel: rel == b"d1/src" or rel.startswith(b"d1/src/"))
    tree.watch(b"")
    wd = {p: w for w, p in tree.paths.items()}
    (src / "e1" / "src" / "deeper").mkdir(parents=True)
    apply(tree, (wd[b""], F.CREATE | F.ISDIR, 0, b"e1"))
    tree.step(1)  # e1 watched; e1/src still to visit
    assert b"e1" in tree.paths.values() and tree.walking
    (src / "e1").rename(src / "d1")
    apply(tree, (wd[b""], F.MOVED_FROM | F.ISDIR, 3, b"e1"),
          (wd[b""], F.MOVED_TO | F.ISDIR, 3, b"d1"))
    walked(tree)
    names = set(tree.paths.values())
    assert b"d1" in names and not {n for n in names if n.startswith(b"d1/src")}


def test_halves_of_a_rename_inside_a_renamed_directory_still_pair(src: Path) -> None:
    """Two renames' halves interleaved: p->q (the root's) and p/c->p/d
    (p's), the second's MOVED_FROM on p's watch while p is set aside. Its
    MOVED_TO still pairs with it: the move is reported, nothing is
    unwatched or walked again."""
    (src / "p" / "c" / "e").mkdir(parents=True)
    tree, fake, wd = watched(src)
    (src / "p").rename(src / "q")
    (src / "q" / "c").rename(src / "q" / "d")
    ch, _ = apply(tree, (wd[b""], F.MOVED_FROM | F.ISDIR, 1, b"p"),
                  (wd[b"p"], F.MOVED_FROM | F.ISDIR, 2, b"c"),
                  (wd[b""], F.MOVED_TO | F.ISDIR, 1, b"q"),
                  (wd[b"p"], F.MOVED_TO | F.ISDIR, 2, b"d"))
    assert ch.moves == [(b"p", b"q"), (b"q/c", b"q/d")]
    assert not fake.removed
    walked(tree)
    _consistent(tree, fake, src)
    assert tree.paths[wd[b"p/c/e"]] == b"q/d/e"
