"""How the agent step reads a source file: one read sized by the file (not
by ``agent_max_size``), the content exact whatever happens to the file
meanwhile, and content kept for other targets only when there are others."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

import syncsup.syncer.agent_ops as agent_ops
import syncsup.syncer.agents as agents
from syncsup.syncer.agents import Channel
from syncsup.syncer.readonce import SETTLE, ContentCache
from syncsup.timings import Timings
from tests.helpers.unit import make_config

MIB = 1 << 20


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    asked: list[int] = []
    real = os.read

    def counted(fd: int, n: int) -> bytes:
        asked.append(n)
        return real(fd, n)

    monkeypatch.setattr(agent_ops.os, "read", counted)
    return asked


def _read(tmp_path: Path, name: str, max_size: int = MIB) -> bytes | None:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        got = agent_ops._read(fd, name.encode(), max_size)
    finally:
        os.close(fd)
    return None if got is None else got[0]


@pytest.mark.parametrize("size", [0, 1, 4000, 70_000])
def test_a_small_file_is_read_in_one_call_of_its_size(tmp_path: Path, reads: list[int],
                                                      size: int) -> None:
    data = os.urandom(size)
    (tmp_path / "f").write_bytes(data)
    assert _read(tmp_path, "f") == data
    assert reads == [size + 1]  # a short read is the end: no second call, no MiB buffer


def test_the_per_file_bound_still_holds(tmp_path: Path) -> None:
    (tmp_path / "at").write_bytes(b"a" * 100)
    (tmp_path / "over").write_bytes(b"o" * 101)
    assert _read(tmp_path, "at", max_size=100) == b"a" * 100
    assert _read(tmp_path, "over", max_size=100) is None


def test_a_file_that_grows_while_read_is_read_on_or_left_to_rsync(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first read finds more than the size stat gave: it reads on, and
    the result is what the file holds when the reads end, or nothing (rsync)
    if it is past the bound then or changed again."""
    path = tmp_path / "f"
    path.write_bytes(b"x" * 10)
    real = os.read
    grown = []

    def growing(fd: int, n: int) -> bytes:
        if not grown:
            grown.append(n)
            with open(path, "ab") as fh:
                fh.write(b"y" * 5)
        return real(fd, n)

    monkeypatch.setattr(agent_ops.os, "read", growing)
    assert _read(tmp_path, "f") == b"x" * 10 + b"y" * 5
    grown.clear()
    path.write_bytes(b"x" * 10)
    assert _read(tmp_path, "f", max_size=12) is None


def test_a_short_read_before_the_end_reads_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A filesystem may answer a read short of the end: that is not taken
    for the end of the file."""
    (tmp_path / "f").write_bytes(b"z" * 100)
    real = os.read
    monkeypatch.setattr(agent_ops.os, "read", lambda fd, n: real(fd, min(n, 10)))
    assert _read(tmp_path, "f") == b"z" * 100


def test_content_is_kept_for_other_targets_only_when_there_are_others(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = ContentCache()
    monkeypatch.setattr(agents, "SHARED", cache)
    conf = make_config(tmp_path, [{"name": "s", "source": str(tmp_path / "src"),
                                   "targets": [str(tmp_path / "a"), str(tmp_path / "b")]}])
    (tmp_path / "src" / "f").write_bytes(b"content")
    time.sleep(SETTLE + 0.05)  # read late enough after the write to be kept
    sync = conf.syncs[0]
    channels = []
    with open(tmp_path / "err", "w+b") as err:
        try:
            for i, t in enumerate(sync.targets):
                os.mkdir(t.path)
                channels.append(Channel(sync, t, None, err, Timings()))
                assert cache.worth is (i == 1)
                result = channels[-1].begin([b"f"], startup=False, now=0.0)
                assert result is not None and result.rc == 0 and result.fallback == ()
                # one target's agent: nothing kept; the second one's read is kept
                assert len(cache.entries) == i
        finally:
            for c in channels:
                c.close()
    assert (tmp_path / "a" / "f").read_bytes() == (tmp_path / "b" / "f").read_bytes() == b"content"
