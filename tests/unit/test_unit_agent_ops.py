"""What an agent step carries for a batch, read from a real source tree:
content up to the per-file and per-step bounds, the rest left to rsync."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
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


def test_a_directory_there_only_for_its_time_is_never_deleted(src: int) -> None:
    """A parent sent for its time that is gone from the source is left
    alone, as rsync's times step leaves it (its deletion is an event of its
    own): a source root emptied between a burst's rsync run and the agent's
    times step must not take the listed directories with it. A changed
    name that is gone is still deleted."""
    prep = prepare(src, [b"gone-dir", b"d", b"gone-file"], max_size=4096, deletes=True,
                   excluded=_never, times=frozenset({b"gone-dir", b"d"}))
    assert [op for op in prep.ops if op["op"] == "delete"] == [
        {"op": "delete", "path": b"gone-file"}]
    assert {op["path"] for op in prep.ops if op["op"] == "time"} == {b"d", b""}


def _as_nobody(work: Callable[[], object]) -> object:
    """``work()`` in a child process running as uid and gid 65534 (this one
    as is when it is not root); its repr comes back."""
    if os.getuid() != 0:
        return repr(work())
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            os.write(w, repr(work()).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read().decode()
    os.waitpid(pid, 0)
    return out


def test_a_directory_the_syncer_may_not_open_gets_its_time_from_rsync(tmp_path: Path) -> None:
    """A drop-box directory (mode 0311) that the syncer, not root, may
    enter but not read: its file and its own time go to rsync, which
    reads the time by name; the agent never skips it in silence."""
    root = tmp_path / "src"
    (root / "box").mkdir(parents=True)
    (root / "box" / "f").write_bytes(b"f")
    os.chmod(root, 0o755)
    os.chmod(root / "box", 0o311)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        def work() -> tuple[list[bytes], list[bytes]]:
            prep = prepare(fd, [b"box/f"], max_size=4096, deletes=True, excluded=_never)
            return sorted(prep.fallback), sorted(
                op["path"] for op in prep.ops if op["op"] == "time")  # type: ignore[misc]
        assert _as_nobody(work) == repr(([b"box", b"box/f"], []))
    finally:
        os.close(fd)


def test_times_alone_on_a_remote_target_open_no_session(tmp_path: Path) -> None:
    """Directories' times alone, with no session open to the remote target:
    handed back to rsync's times step (one rsync costs less than a login
    and an agent), no session started."""
    conf = make_config(tmp_path, [{"name": "s", "source": str(tmp_path / "src"),
                                   "targets": ["nowhere.invalid:/dst"]}])
    (tmp_path / "src" / "d").mkdir()
    sync = conf.syncs[0]
    with open(tmp_path / "err", "w+b") as err:
        channel = Channel(sync, sync.targets[0], None, err, Timings())
        try:
            names = [b"", b"d"]
            result = channel.begin(names, startup=False, now=0.0, times=frozenset(names))
            assert result is not None and result.rc == 0 and result.fallback == (b"", b"d")
            assert not channel.session_open()
        finally:
            channel.close()


def test_a_name_the_syncer_may_not_look_at_goes_to_rsync_and_the_rest_goes_on(
        tmp_path: Path) -> None:
    """A directory the syncer, not root, may read but not search (mode
    0644): its entries cannot even be looked at. They go to rsync (which
    says what it can and cannot do); the rest of the step is still the
    agent's, not lost to an error that would retry the batch for ever."""
    root = tmp_path / "src"
    (root / "shut").mkdir(parents=True)
    (root / "shut" / "f").write_bytes(b"f")
    (root / "open").write_bytes(b"o")
    os.chmod(root, 0o755)
    os.chmod(root / "shut", 0o644)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        def work() -> tuple[list[bytes], list[bytes]]:
            prep = prepare(fd, [b"shut/f", b"open"], max_size=4096, deletes=True,
                           excluded=_never)
            return sorted(prep.fallback), _puts(prep.ops)
        assert _as_nobody(work) == repr(([b"shut/f"], [b"open"]))
    finally:
        os.close(fd)


def test_a_name_there_for_its_time_under_a_parent_gone_is_left_alone(src: int) -> None:
    """Its parent went (an event of its own): neither an operation nor a
    hand-back to rsync."""
    prep = prepare(src, [b"gone/a/b", b"d/f0"], max_size=4096, deletes=True,
                   excluded=_never, times=frozenset({b"gone/a/b"}))
    assert prep.fallback == []
    assert [op["path"] for op in prep.ops if op["op"] not in ("time", "commit")] == [b"d/f0"]
