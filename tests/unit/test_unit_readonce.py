"""The content kept for other targets: found only for the same version of a
file, kept only when the read began safely after the file's last change,
bounded in time and size."""

from __future__ import annotations

import os
from pathlib import Path

from syncsup.syncer.agent_ops import prepare
from syncsup.syncer.readonce import ContentCache


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def stat_of(path: Path) -> os.stat_result:
    return os.stat(path)


def cache(clock: Clock, **kw: float) -> ContentCache:
    return ContentCache(clock=lambda: 1e12, tick=clock, **kw)  # type: ignore[arg-type]


def test_the_same_version_is_found_and_another_is_not(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"one")
    c = cache(Clock())
    st = stat_of(f)
    c.put(st, b"one", read_began=st.st_ctime_ns / 1e9 + 1)
    assert c.get(stat_of(f)) == b"one"
    f.write_bytes(b"two")  # same size; ctime (and mtime) move
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime put back: ctime still differs
    assert c.get(stat_of(f)) is None


def test_a_read_too_close_to_the_change_is_not_kept(tmp_path: Path) -> None:
    """A second write within the same timestamp tick would not show in the
    identity: such a read is used once, never handed to another target."""
    f = tmp_path / "f"
    f.write_bytes(b"x")
    st = stat_of(f)
    c = cache(Clock())
    c.put(st, b"x", read_began=st.st_ctime_ns / 1e9 + 0.01)
    assert c.get(st) is None
    c.put(st, b"x", read_began=st.st_ctime_ns / 1e9 + 0.2)
    assert c.get(st) == b"x"


def test_entries_expire_and_the_size_is_bounded(tmp_path: Path) -> None:
    clock = Clock()
    c = cache(clock, max_bytes=10, ttl=5.0)
    sts = []
    for i in range(3):
        f = tmp_path / f"f{i}"
        f.write_bytes(b"12345")
        sts.append(stat_of(f))
        c.put(sts[-1], b"12345", read_began=sts[-1].st_ctime_ns / 1e9 + 1)
        clock.t += 1
    assert c.get(sts[0]) is None and c.get(sts[2]) == b"12345"  # oldest went for room
    assert c.size == 10
    clock.t += 10
    c.prune()
    assert c.size == 0 and not c.entries


def test_prepare_reads_a_file_once_for_several_targets(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"content")
    st = stat_of(src / "a")
    # the read begins well after the change (the clock says so)
    c = ContentCache(clock=lambda: st.st_ctime_ns / 1e9 + 5)
    fd = os.open(src, os.O_RDONLY | os.O_DIRECTORY)
    try:
        preps = [prepare(fd, [b"a"], max_size=1 << 20, deletes=True,
                         excluded=lambda p, d: False, cache=c) for _ in range(3)]
    finally:
        os.close(fd)
    assert all(p.ops[0]["data"] == b"content" for p in preps)
    assert c.hits == 2 and c.hit_bytes == 2 * len(b"content")


def test_a_whole_second_ctime_means_a_coarse_filesystem_and_a_longer_settle(
        tmp_path: Path) -> None:
    """ext3's small inodes and FAT keep whole seconds: a second write in the
    same second leaves the same ctime, so 0.1 s after it proves nothing."""
    f = tmp_path / "f"
    f.write_bytes(b"x")
    real = stat_of(f)
    fields = list(real)
    coarse = os.stat_result((*fields[:7], int(real.st_atime), int(real.st_mtime),
                             int(real.st_ctime)), {
        "st_atime_ns": int(real.st_atime) * 10**9, "st_mtime_ns": int(real.st_mtime) * 10**9,
        "st_ctime_ns": int(real.st_ctime) * 10**9})
    assert coarse.st_ctime_ns % 10**9 == 0
    c = cache(Clock())
    c.put(coarse, b"x", read_began=coarse.st_ctime_ns / 1e9 + 1.0)
    assert c.get(coarse) is None
    c.put(coarse, b"x", read_began=coarse.st_ctime_ns / 1e9 + 2.5)
    assert c.get(coarse) == b"x"
