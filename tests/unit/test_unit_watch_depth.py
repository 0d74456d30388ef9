"""The watcher's walk has no depth limit of its own: a tree deeper than
Python's recursion limit is watched whole, level by level, from a stack.

A walk written as a recursive function raises RecursionError about
``sys.getrecursionlimit()`` levels down (1,000 by default, fewer with the
caller's frames), so 1,100 levels are past it whatever the walk's caller
holds. One-byte names keep the deepest path (2,200 bytes under tmp_path)
within PATH_MAX: every level must be watched, not reported too long (the
integration test in test_blind.py crosses PATH_MAX with real inotify).
The kernel is the fake of test_unit_watchtree.py; the tree is real.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from syncsup.proto import Changes
from syncsup.watcher.tree import WatchTree
from tests.helpers.tree import nest
from tests.helpers.unit import b
from tests.unit.test_unit_watchtree import TIMINGS, FakeInotify, walked

DEPTH = 1100


@pytest.fixture
def src(tmp_path: Path) -> Iterator[Path]:
    """An empty source, removed with what it holds at the end: pytest's own
    clean-up of tmp_path recurses, and fails on a tree this deep (in
    whichever later run cleans it up)."""
    root = tmp_path / "src"
    root.mkdir()
    yield root
    subprocess.run(["rm", "-rf", "--", os.fspath(root)], check=True)


def levels(depth: int) -> set[bytes]:
    return {b"/".join([b"d"] * i) for i in range(depth + 1)}


def test_a_tree_deeper_than_the_recursion_limit_is_watched_whole(src: Path) -> None:
    assert sys.getrecursionlimit() < DEPTH
    nest(src, DEPTH)
    fake = FakeInotify()
    tree = WatchTree(b(src), fake.add_watch, fake.rm_watch, timings=TIMINGS)
    tree.watch(b"")
    assert set(tree.paths.values()) == levels(DEPTH)
    assert not tree.blind


def test_a_deep_tree_made_while_watched_is_walked_in_steps(src: Path) -> None:
    """The same depth appearing under a watched root (``mkdir -p``, an
    archive unpacked): the walk queued for the new directory, taken a
    budget at a time, watches every level and releases its rescan."""
    fake = FakeInotify()
    tree = WatchTree(b(src), fake.add_watch, fake.rm_watch, timings=TIMINGS)
    tree.watch(b"")
    nest(src, DEPTH)
    tree.queue(b"d", Changes(trees={b"d"}))
    out = walked(tree)
    assert out.trees == {b"d"}
    assert set(tree.paths.values()) == levels(DEPTH)
    assert not tree.blind
