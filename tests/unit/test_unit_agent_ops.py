"""What an agent step carries for a batch, read from a real source tree:
content up to the per-file and per-step bounds, the rest left to rsync."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from syncsup.syncer.agent_ops import prepare
from syncsup.syncer.agents import MAX_PATHS_LOCAL, Channel
from syncsup.timings import Timings
from tests.helpers.unit import make_config


def _never(_path: bytes, _is_dir: bool) -> bool:
    return False


@pytest.fixture
def src(tmp_path: Path) -> Iterator[int]:
    (tmp_path / "d").mkdir()
    for i in range(10):
        (tmp_path / "d" / f"f{i}").write_bytes(bytes([i]) * 1000)
    (tmp_path / "big").write_bytes(b"b" * 5000)
    os.symlink("d/f0", tmp_path / "ln")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    yield fd
    os.close(fd)


def _puts(ops: list[dict[str, object]]) -> list[bytes]:
    return [op["path"] for op in ops if op["op"] == "put"]  # type: ignore[misc]


def test_a_step_carries_at_most_max_bytes_and_rsync_gets_the_rest(src: int) -> None:
    names = [b"d", *(b"d/f%d" % i for i in range(10)), b"big", b"ln"]
    prep = prepare(src, names, max_size=4096, deletes=True, excluded=_never, max_bytes=3500)
    assert _puts(prep.ops) == [b"d/f0", b"d/f1", b"d/f2"]
    assert prep.size == 3000
    assert sorted(prep.fallback) == sorted([b"big", *(b"d/f%d" % i for i in range(3, 10))])
    kinds = {op["path"]: op["op"] for op in prep.ops if op["op"] not in ("time", "commit")}
    assert kinds[b"d"] == "mkdir" and kinds[b"ln"] == "symlink"  # no content: always sent
    assert prep.ops[-1] == {"op": "commit"}
    assert [op["data"] for op in prep.ops if op["op"] == "put"] == [
        bytes([i]) * 1000 for i in range(3)]


def test_without_a_step_bound_only_the_per_file_bound_applies(src: int) -> None:
    prep = prepare(src, [b"big", b"d/f9", b"gone"], max_size=4096, deletes=True,
                   excluded=_never)
    assert _puts(prep.ops) == [b"d/f9"] and prep.fallback == [b"big"]
    assert {"op": "delete", "path": b"gone"} in prep.ops
    assert [op["data"] for op in prep.ops if op["op"] == "put"] == [b"\x09" * 1000]


@pytest.mark.parametrize("count", [3, MAX_PATHS_LOCAL + 1])
def test_a_large_batch_goes_to_rsync_whole(tmp_path: Path, count: int) -> None:
    """Past MAX_PATHS_LOCAL paths one rsync is quicker than the agent, and
    runs beside the syncer: the local agent applies nothing and hands every
    path back."""
    conf = make_config(tmp_path, [{"name": "s", "source": str(tmp_path / "src"),
                                   "targets": [str(tmp_path / "dst")]}])
    (tmp_path / "dst").mkdir()
    names = [b"f%d" % i for i in range(count)]
    for name in names:
        (tmp_path / "src" / name.decode()).write_bytes(name)
    sync = conf.syncs[0]
    with open(tmp_path / "err", "w+b") as err:
        channel = Channel(sync, sync.targets[0], None, err, Timings())
        try:
            result = channel.begin(names, startup=False, now=0.0)
        finally:
            channel.close()
    assert result is not None and result.rc == 0
    written = sorted(os.listdir(tmp_path / "dst"))
    if count > MAX_PATHS_LOCAL:
        assert sorted(result.fallback) == sorted(names) and written == []
    else:
        assert result.fallback == () and written == sorted(n.decode() for n in names)


def test_a_session_is_idle_only_without_work_and_counts_from_its_last_answer() -> None:
    from syncsup.syncer.agent_session import idle_for

    assert idle_for(False, 100.0, 160.5) == 60.5
    assert idle_for(True, 100.0, 1000.0) == 0.0  # answers still due, or requests unsent
    assert idle_for(False, 100.0, 99.0) == 0.0   # never negative
