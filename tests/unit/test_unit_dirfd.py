"""Reading a tree without ever following a symlink (syncsup/dirfd.py): real
files, hostile names, directories swapped for symlinks before and during a
walk, and descriptor hygiene."""

from __future__ import annotations

import errno
import gc
import os
import stat
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from syncsup.dirfd import lstat_below, open_below, split_path, walk_below
from tests.helpers.unit import b, fd_count, write

HOSTILE = [b"new\nline", b"\xff\xfe", b"-rf", b"--delete", b"$(touch pwned)", b" sp ace ",
           b"#hash", b"a\\b"]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """src/{a/{b/{f}, g}, c, link -> a, out -> ../outside, dangling -> nowhere};
    outside/{secret, deep/secret}"""
    src = tmp_path / "src"
    write(src / "a" / "b" / "f")
    write(src / "a" / "g")
    write(src / "c")
    write(tmp_path / "outside" / "secret")
    write(tmp_path / "outside" / "deep" / "secret")
    os.symlink("a", src / "link")
    os.symlink(tmp_path / "outside", src / "out")
    os.symlink("nowhere", src / "dangling")
    return src


@pytest.fixture
def root(tree: Path) -> Iterator[int]:
    fd = os.open(tree, os.O_RDONLY | os.O_DIRECTORY)
    yield fd
    os.close(fd)


# --------------------------------------------------------------- split_path
@pytest.mark.parametrize(("rel", "parts", "name"), [
    (b"a", [], b"a"), (b"a/b/c", [b"a", b"b"], b"c"), (b"-x/\xff\n", [b"-x"], b"\xff\n"),
    (b"...", [], b"..."), (b"a/.b", [b"a"], b".b"),
])
def test_split_path(rel: bytes, parts: list[bytes], name: bytes) -> None:
    assert split_path(rel) == (parts, name)


@pytest.mark.parametrize("rel", [b"", b"/abs", b"a//b", b"a/", b".", b"..", b"a/../b", b"./a",
                                 b"a/.", b"a\0b"])
def test_split_path_refuses_anything_but_plain_names(rel: bytes) -> None:
    with pytest.raises(OSError) as exc:
        split_path(rel)
    assert exc.value.errno == errno.EINVAL


# -------------------------------------------------------------- lstat_below
def test_lstat_below(tree: Path, root: int) -> None:
    st_root = lstat_below(root, b"")
    assert st_root is not None and st_root.st_ino == os.stat(tree).st_ino
    st_f = lstat_below(root, b"a/b/f")
    assert st_f is not None and st_f.st_ino == os.lstat(tree / "a" / "b" / "f").st_ino
    st_a = lstat_below(root, b"a")
    assert st_a is not None and stat.S_ISDIR(st_a.st_mode)
    for link in (b"link", b"out", b"dangling"):  # the link itself
        st_l = lstat_below(root, link)
        assert st_l is not None and stat.S_ISLNK(st_l.st_mode)
    # Not in the tree: gone, or only reachable through a symlink or a file.
    for rel in (b"missing", b"a/missing/x", b"link/g", b"link/b/f", b"out/secret",
                b"out/deep/secret", b"c/x", b"dangling/x"):
        assert lstat_below(root, rel) is None, rel


def test_lstat_below_never_leaves_the_tree(root: int) -> None:
    for rel in (b"../outside/secret", b"a/../../outside/secret", b"/etc/passwd"):
        try:
            got = lstat_below(root, rel)
        except OSError as exc:
            assert exc.errno == errno.EINVAL
        else:
            assert got is None


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names(tmp_path: Path, name: bytes) -> None:
    src = b(tmp_path / "src")
    write(src + b"/" + name + b"/" + name, b"data")
    os.symlink(b(tmp_path), src + b"/" + name + b"/" + name + b"-link")
    fd = os.open(src, os.O_RDONLY | os.O_DIRECTORY)
    try:
        st_n = lstat_below(fd, name + b"/" + name)
        assert st_n is not None and st_n.st_size == 4
        assert list(walk_below(fd, name)) == [name, name + b"/" + name,
                                             name + b"/" + name + b"-link"]
        sub = open_below(fd, [name])
        try:
            assert sorted(os.listdir(sub)) == sorted([os.fsdecode(name), os.fsdecode(
                name + b"-link")])
        finally:
            os.close(sub)
    finally:
        os.close(fd)


# --------------------------------------------------------------- open_below
def test_open_below(tree: Path, root: int) -> None:
    fd = open_below(root, [b"a", b"b"])
    try:
        assert os.fstat(fd).st_ino == os.stat(tree / "a" / "b").st_ino
        assert os.listdir(fd) == ["f"]
    finally:
        os.close(fd)
    same = open_below(root, [])
    try:
        assert same != root and os.fstat(same).st_ino == os.fstat(root).st_ino
    finally:
        os.close(same)


@pytest.mark.parametrize(("parts", "errnos"), [
    ([b"link"], {errno.ELOOP, errno.ENOTDIR}),
    ([b"out", b"deep"], {errno.ELOOP, errno.ENOTDIR}),
    ([b"a", b"g"], {errno.ENOTDIR}),
    ([b"missing"], {errno.ENOENT}),
    ([b"dangling"], {errno.ELOOP, errno.ENOTDIR}),
])
def test_open_below_refuses_symlinks_and_files(root: int, parts: list[bytes],
                                               errnos: set[int]) -> None:
    before = fd_count()
    with pytest.raises(OSError) as exc:
        open_below(root, parts)
    assert exc.value.errno in errnos
    assert fd_count() == before


# -------------------------------------------------------------- walk_below
def test_walk_order_and_symlinks(root: int) -> None:
    # A directory's entries (sorted), then each subdirectory's, in order.
    walked = list(walk_below(root, b""))
    assert walked == [b"", b"a", b"c", b"dangling", b"link", b"out", b"a/b", b"a/g", b"a/b/f"]
    for i, p in enumerate(walked):  # parents before their children
        parent = p.rpartition(b"/")[0]
        assert p == b"" or walked.index(parent) < i
    assert list(walk_below(root, b"a")) == [b"a", b"a/b", b"a/g", b"a/b/f"]
    assert list(walk_below(root, b"a/g")) == [b"a/g"]  # a file: itself
    assert list(walk_below(root, b"out")) == [b"out"]  # a symlink: itself
    assert list(walk_below(root, b"link")) == [b"link"]
    assert list(walk_below(root, b"missing")) == []
    assert list(walk_below(root, b"link/b")) == []  # only reachable through a symlink


def test_walk_never_leaves_the_tree(root: int) -> None:
    for top in (b"../outside", b"out/deep", b"/tmp"):
        try:
            got = list(walk_below(root, top))
        except OSError as exc:
            assert exc.errno == errno.EINVAL
        else:
            assert got == []


def test_a_directory_replaced_by_a_symlink_yields_only_the_link(tree: Path, root: int,
                                                                tmp_path: Path) -> None:
    os.rename(tree / "a", tmp_path / "a-was-here")
    os.symlink(tmp_path / "outside", tree / "a")
    walked = list(walk_below(root, b""))
    assert b"a" in walked
    assert not [p for p in walked if p.startswith(b"a/")]
    assert list(walk_below(root, b"a")) == [b"a"]


def test_a_directory_swapped_during_the_walk_is_not_followed(tree: Path, root: int,
                                                              tmp_path: Path) -> None:
    walk = walk_below(root, b"")
    assert next(walk) == b""
    assert next(walk) == b"a"  # listed as a directory...
    os.rename(tree / "a", tmp_path / "a-was-here")  # ...and now a symlink to elsewhere
    os.symlink(tmp_path / "outside", tree / "a")
    rest = list(walk)
    assert rest == [b"c", b"dangling", b"link", b"out"]


def test_a_deeper_swap_during_the_walk(tree: Path, root: int, tmp_path: Path) -> None:
    walk = walk_below(root, b"a")
    assert [next(walk), next(walk)] == [b"a", b"a/b"]  # listed as a directory
    os.rename(tree / "a" / "b", tmp_path / "b-was-here")
    os.symlink(tmp_path / "outside", tree / "a" / "b")
    assert list(walk) == [b"a/g"]


def test_many_entries(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for i in range(30):
        write(src / f"d{i:02d}" / "e" / "f")
    fd = os.open(src, os.O_RDONLY | os.O_DIRECTORY)
    try:
        walked = list(walk_below(fd, b""))
    finally:
        os.close(fd)
    assert len(walked) == 1 + 30 * 3
    assert walked[1:31] == [b"d%02d" % i for i in range(30)]
    assert set(walked[31:]) == {b"d%02d/e" % i for i in range(30)} | {
        b"d%02d/e/f" % i for i in range(30)}


# ---------------------------------------------------------- descriptors
def test_no_descriptor_is_left_open(tree: Path, root: int) -> None:
    before = fd_count()
    for _ in range(3):
        list(walk_below(root, b""))
        list(walk_below(root, b"a"))
        list(walk_below(root, b"missing"))
        list(walk_below(root, b"link"))
        for rel in (b"a/b/f", b"link/g", b"missing/x", b"c/x", b""):
            lstat_below(root, rel)
        os.close(open_below(root, [b"a"]))
    assert fd_count() == before


def test_a_walk_abandoned_before_descending_closes_everything(root: int) -> None:
    before = fd_count()
    walk = walk_below(root, b"")
    assert isinstance(walk, Generator)
    assert next(walk) == b""
    walk.close()
    walk = walk_below(root, b"a")
    assert [next(walk) for _ in range(4)] == [b"a", b"a/b", b"a/g", b"a/b/f"]
    del walk
    gc.collect()
    assert fd_count() == before


@pytest.mark.parametrize("how", ["close", "garbage"])
def test_a_walk_abandoned_half_way_closes_everything(tmp_path: Path, how: str) -> None:
    src = tmp_path / "src"
    for name in ("a", "b", "c"):
        write(src / name / "f")
    fd = os.open(src, os.O_RDONLY | os.O_DIRECTORY)
    try:
        before = fd_count()
        walk = walk_below(fd, b"")
        assert isinstance(walk, Generator)
        assert [next(walk), next(walk), next(walk)] == [b"", b"a", b"b"]  # a is open now
        if how == "close":
            walk.close()
        else:
            del walk
            gc.collect()
        assert fd_count() == before
    finally:
        os.close(fd)
