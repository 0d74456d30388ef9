"""The directories one batch works in, each opened once (syncsup/dirfd.py
``DirCache``), and the agent's writes through it (syncsup/target/_apply.py):
a directory the batch itself removes, renames or replaces is never written
through its old descriptor, a path thousands of directories deep neither
recurses nor keeps a descriptor per level, and nothing is left open."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from syncsup.dirfd import DirCache
from syncsup.target._apply import Applier, Attrs
from tests.helpers.unit import fd_count, write

ATTRS = Attrs(mode=0o644, mtime_ns=1_600_000_000 * 10**9)
DIR_ATTRS = Attrs(mode=0o755, mtime_ns=1_600_000_000 * 10**9)


@pytest.fixture
def root(tmp_path: Path) -> Iterator[int]:
    write(tmp_path / "t" / "a" / "b" / "f")
    os.symlink("a", tmp_path / "t" / "link")
    fd = os.open(tmp_path / "t", os.O_RDONLY | os.O_DIRECTORY)
    yield fd
    os.close(fd)


def _ino(fd: int) -> int:
    return os.fstat(fd).st_ino


def test_a_directory_is_opened_once_and_is_the_right_one(tmp_path: Path, root: int) -> None:
    cache = DirCache(root)
    before = fd_count()
    ab = cache.get([b"a", b"b"])
    assert _ino(ab) == os.stat(tmp_path / "t" / "a" / "b").st_ino
    assert cache.get([b"a", b"b"]) == ab and cache.get((b"a", b"b")) == ab
    assert _ino(cache.get([b"a"])) == os.stat(tmp_path / "t" / "a").st_ino
    assert cache.get([]) == root
    assert fd_count() == before + 2  # a and a/b, nothing else
    cache.clear()
    assert fd_count() == before


@pytest.mark.parametrize("parts", [[b"link"], [b"link", b"b"], [b"a", b"b", b"f"],
                                   [b"gone"]])
def test_symlinks_and_files_are_refused_and_nothing_kept(root: int, parts: list[bytes]) -> None:
    cache = DirCache(root)
    before = fd_count()
    with pytest.raises(OSError) as exc:
        cache.get(parts)
    assert exc.value.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT)
    assert not any(k[-1] in (b"link", b"f", b"gone") for k in cache.fds)
    cache.clear()
    assert fd_count() == before


def test_the_guard_is_asked_at_each_step(root: int) -> None:
    asked: list[bytes] = []

    def guard(_fd: int, name: bytes) -> None:
        asked.append(name)
        if name == b"b":
            raise PermissionError(errno.EPERM, "protected")

    cache = DirCache(root, guard)
    before = fd_count()
    with pytest.raises(PermissionError):
        cache.get([b"a", b"b"])
    assert asked == [b"a", b"b"]
    cache.clear()
    assert fd_count() == before


def test_forget_closes_a_directory_and_all_below_it(tmp_path: Path, root: int) -> None:
    cache = DirCache(root)
    before = fd_count()
    old = _ino(cache.get([b"a", b"b"]))
    (tmp_path / "t" / "x").mkdir()
    cache.get([b"x"])
    os.rename(tmp_path / "t" / "a", tmp_path / "t" / "moved")
    (tmp_path / "t" / "a" / "b").mkdir(parents=True)
    cache.forget([b"a"])
    assert set(cache.fds) == {(b"x",)}
    assert _ino(cache.get([b"a", b"b"])) == os.stat(tmp_path / "t" / "a" / "b").st_ino != old
    cache.clear()
    assert fd_count() == before


def test_trim_keeps_it_bounded(tmp_path: Path, root: int) -> None:
    for i in range(10):
        (tmp_path / "t" / f"d{i}").mkdir()
    cache = DirCache(root, limit=4)
    before = fd_count()
    for i in range(10):
        cache.trim()
        cache.get([b"d%d" % i])
        assert len(cache.fds) <= 4
    cache.clear()
    assert fd_count() == before


def test_a_path_thousands_deep_neither_recurses_nor_keeps_every_level(tmp_path: Path) -> None:
    depth = 3000
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(depth):  # deeper than PATH_MAX allows by name: one level at a time
        os.mkdir("d", dir_fd=fd)
        nxt = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = nxt
    leaf = os.fstat(fd).st_ino
    os.close(fd)
    root = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        cache = DirCache(root, limit=8)
        before = fd_count()
        assert _ino(cache.get([b"d"] * depth)) == leaf
        assert len(cache.fds) <= 9 and fd_count() <= before + 9
        cache.clear()
        assert fd_count() == before
    finally:
        os.close(root)
        _flatten(tmp_path / "d")


def _flatten(top: Path) -> None:
    """Remove a chain of directories too deep for a recursive removal
    (pytest's own clean-up would recurse), one level at a time."""
    up = top.with_name("up")
    while top.exists():
        if (top / "d").exists():
            os.rename(top / "d", up)
        os.rmdir(top)
        if up.exists():
            os.rename(up, top)


# ------------------------------------------------------- the agent's writes through it
@pytest.fixture
def applier(tmp_path: Path) -> Iterator[Applier]:
    (tmp_path / "dst").mkdir()
    a = Applier.open(str(tmp_path / "dst"), keep_dirs=True)
    yield a
    a.close()


def test_a_directory_removed_and_made_again_in_one_batch_gets_the_file(
        tmp_path: Path, applier: Applier) -> None:
    dst = tmp_path / "dst"
    applier.mkdir(b"a", DIR_ATTRS)
    applier.put(b"a/old", b"1", ATTRS)
    applier.delete(b"a")
    applier.mkdir(b"a", DIR_ATTRS)
    applier.put(b"a/new", b"2", ATTRS)
    applier.commit()
    assert sorted(os.listdir(dst / "a")) == ["new"]
    assert (dst / "a" / "new").read_bytes() == b"2"


def test_a_renamed_directory_is_not_written_through_its_old_name(
        tmp_path: Path, applier: Applier) -> None:
    dst = tmp_path / "dst"
    applier.mkdir(b"a", DIR_ATTRS)
    applier.put(b"a/f", b"1", ATTRS)
    applier.rename(b"a", b"b")
    applier.mkdir(b"a", DIR_ATTRS)
    applier.put(b"a/g", b"2", ATTRS)
    applier.put(b"b/h", b"3", ATTRS)
    applier.commit()
    assert sorted(os.listdir(dst / "a")) == ["g"]
    assert sorted(os.listdir(dst / "b")) == ["f", "h"]


def test_a_directory_replaced_by_a_file_then_made_again(tmp_path: Path,
                                                         applier: Applier) -> None:
    dst = tmp_path / "dst"
    applier.mkdir(b"a", DIR_ATTRS)
    applier.put(b"a/f", b"1", ATTRS)
    applier.put(b"a", b"file now", ATTRS)  # --force: the directory goes
    assert (dst / "a").read_bytes() == b"file now"
    applier.mkdir(b"a", DIR_ATTRS)
    applier.put(b"a/g", b"2", ATTRS)
    applier.commit()
    assert sorted(os.listdir(dst / "a")) == ["g"]


def test_a_directory_moved_away_behind_the_agent_is_not_recreated_by_it(
        tmp_path: Path, applier: Applier) -> None:
    """What a descriptor held for the batch means: like one held for a
    single operation, it stays on the directory it opened."""
    dst = tmp_path / "dst"
    applier.mkdir(b"a", DIR_ATTRS)
    os.rename(dst / "a", dst / "elsewhere")
    applier.put(b"a/f", b"1", ATTRS)
    applier.commit()
    assert (dst / "elsewhere" / "f").read_bytes() == b"1"
    with pytest.raises(FileNotFoundError):  # the next batch looks it up afresh
        applier.put(b"a/g", b"2", ATTRS)


def test_commit_closes_every_directory_it_opened(tmp_path: Path, applier: Applier) -> None:
    before = fd_count()
    for i in range(100):
        applier.mkdir(b"d%d" % i, DIR_ATTRS)
        applier.put(b"d%d/f" % i, b"x", ATTRS)
        applier.set_time(b"d%d" % i, DIR_ATTRS.mtime_ns)
        assert len(applier.dirs.fds) <= applier.dirs.limit + 1
    applier.commit()
    assert fd_count() == before
    assert os.stat(tmp_path / "dst" / "d7").st_mtime_ns == DIR_ATTRS.mtime_ns


def test_without_keep_dirs_every_operation_looks_its_directories_up_again(
        tmp_path: Path) -> None:
    """A remote session's requests arrive one at a time: a directory swapped
    for a symlink between two of them is never written through, neither
    the symlink nor the directory it replaced."""
    dst, outside = tmp_path / "dst", tmp_path / "outside"
    (dst / "d").mkdir(parents=True)
    outside.mkdir()
    a = Applier.open(str(dst))
    try:
        a.put(b"d/f", b"1", ATTRS)
        os.rename(dst / "d", dst / "aside")
        os.symlink(outside, dst / "d")
        with pytest.raises(OSError) as exc:
            a.put(b"d/g", b"2", ATTRS)
        assert exc.value.errno in (errno.ELOOP, errno.ENOTDIR)
        a.commit()
    finally:
        a.close()
    assert sorted(os.listdir(dst / "aside")) == ["f"]
    assert os.listdir(outside) == []


# ------------------------------------------------------- owner and mode set only if they differ
def _counting(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    calls = {"fchown": 0, "fchmod": 0}
    for name in calls:
        real = getattr(os, name)

        def counted(*args: Any, _real: Any = real, _name: str = name) -> Any:
            calls[_name] += 1
            return _real(*args)
        monkeypatch.setattr(os, name, counted)
    return calls


def test_an_owner_and_mode_already_right_are_not_set_again(
        tmp_path: Path, applier: Applier, monkeypatch: pytest.MonkeyPatch) -> None:
    dst = tmp_path / "dst"
    (dst / "d").mkdir(mode=0o755)
    os.chmod(dst / "d", 0o755)
    st = os.stat(dst / "d")
    calls = _counting(monkeypatch)
    same = Attrs(mode=0o755, mtime_ns=DIR_ATTRS.mtime_ns, uid=st.st_uid, gid=st.st_gid)
    applier.mkdir(b"d", same)
    assert calls == {"fchown": 0, "fchmod": 0}
    applier.mkdir(b"d", Attrs(mode=0o700, mtime_ns=1, uid=st.st_uid, gid=st.st_gid))
    assert calls == {"fchown": 0, "fchmod": 1}
    assert os.stat(dst / "d").st_mode & 0o7777 == 0o700
    applier.commit()


@pytest.mark.skipif(os.geteuid() != 0, reason="sets another owner: needs root")
def test_a_new_owner_is_set_and_the_mode_after_it(tmp_path: Path, applier: Applier) -> None:
    """chown clears set-user-ID: the mode is set after the owner, always."""
    applier.put(b"f", b"x", Attrs(mode=0o4755, mtime_ns=1, uid=1234, gid=1234))
    applier.put(b"g", b"y", Attrs(mode=0o640, mtime_ns=1, uid=0, gid=0))
    applier.commit()
    st, sg = os.stat(tmp_path / "dst" / "f"), os.stat(tmp_path / "dst" / "g")
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (1234, 1234, 0o4755)
    assert (sg.st_uid, sg.st_gid, sg.st_mode & 0o7777) == (0, 0, 0o640)
