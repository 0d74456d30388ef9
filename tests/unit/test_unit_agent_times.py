"""A directory an agent step holds only for its time (the parent of an
entry of the batch, not changed itself) costs a ``time`` operation, not a
``mkdir`` that would look at and set its mode, owner and time again; one
that changed itself, or became something else, is handled in full, and one
that is gone is left to the batch of its own deletion."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from syncsup.proto import Changes
from syncsup.syncer.agent_ops import prepare
from syncsup.syncer.agent_session import LocalAgent
from syncsup.syncer.plan import Plan, StepKind


def _never(_path: bytes, _is_dir: bool) -> bool:
    return False


def test_the_plan_names_the_directories_sent_only_for_their_time() -> None:
    changes = Changes(paths={b"a/x", b"a/b", b"a/b/y", b"c/z"})
    plan = Plan.make(changes, commands=False, replay_moves=False, source_empty=False,
                     agent=True)
    (step,) = plan.steps
    assert step.kind is StepKind.AGENT
    assert set(step.names) == changes.paths | {b"a", b"c"}
    # a/b changed itself (it is in the paths): handled in full
    assert step.times == {b"a", b"c"}


@pytest.fixture
def src(tmp_path: Path) -> Iterator[int]:
    (tmp_path / "src" / "a" / "b").mkdir(parents=True)
    (tmp_path / "src" / "a" / "x").write_bytes(b"x")
    (tmp_path / "src" / "c").write_bytes(b"now a file")
    fd = os.open(tmp_path / "src", os.O_RDONLY | os.O_DIRECTORY)
    yield fd
    os.close(fd)


def _ops(prep_ops: list[dict[str, object]]) -> list[tuple[object, object]]:
    return [(op["op"], op.get("path")) for op in prep_ops]


def test_a_parent_gets_its_time_only_and_a_changed_directory_is_made(src: int) -> None:
    prep = prepare(src, [b"a", b"a/b", b"a/x"], max_size=1 << 20, deletes=True,
                   excluded=_never, times={b"a"})
    ops = _ops(prep.ops)
    assert ("mkdir", b"a") not in ops and ("mkdir", b"a/b") in ops
    assert ("put", b"a/x") in ops
    assert ops[-4:] == [("time", b"a/b"), ("time", b"a"), ("time", b""), ("commit", None)]


def test_a_parent_that_is_no_longer_a_directory_is_sent_as_what_it_is(src: int) -> None:
    """A parent that became a file is sent as one; a parent that is gone is
    left alone, as rsync's times step leaves it: its deletion is an event of
    its own, with its own batch (a step of times alone may come seconds
    after the batch was planned, after a burst's rsync run: a source root
    emptied meanwhile must not delete what it lists)."""
    prep = prepare(src, [b"c", b"gone"], max_size=1 << 20, deletes=True, excluded=_never,
                   times={b"c", b"gone"})
    ops = _ops(prep.ops)
    assert ("put", b"c") in ops and ("delete", b"gone") not in ops
    assert ("time", b"c") not in ops


def test_a_parent_missing_on_the_target_goes_to_rsync(tmp_path: Path, src: int) -> None:
    """Its time cannot be set, and the file below it cannot be written:
    both are handed back for rsync, which makes the directory."""
    (tmp_path / "dst").mkdir()
    prep = prepare(src, [b"a", b"a/x"], max_size=1 << 20, deletes=True, excluded=_never,
                   times={b"a"})
    agent = LocalAgent(str(tmp_path / "dst"))
    try:
        result = agent.apply(prep.ops)
    finally:
        agent.close()
    assert result.rc == 0 and set(result.fallback) == {b"a", b"a/x"}


def test_a_parent_whose_time_alone_changed_gets_it(tmp_path: Path, src: int) -> None:
    dst = tmp_path / "dst"
    (dst / "a").mkdir(parents=True, mode=0o700)
    os.chmod(tmp_path / "src" / "a", 0o755)
    os.utime(tmp_path / "src" / "a", ns=(10**18, 10**18))
    prep = prepare(src, [b"a", b"a/x"], max_size=1 << 20, deletes=True, excluded=_never,
                   times={b"a"})
    agent = LocalAgent(str(dst))
    try:
        assert agent.apply(prep.ops).rc == 0
    finally:
        agent.close()
    assert (dst / "a" / "x").read_bytes() == b"x"
    assert os.stat(dst / "a").st_mtime_ns == 10**18
    # its mode is not looked at: a change of it would have been an event
    assert os.stat(dst / "a").st_mode & 0o777 == 0o700


def test_the_root_changed_itself_goes_to_rsync_for_its_attributes(src: int) -> None:
    """No agent operation sets the mode or owner of the target's root: a
    root that changed itself (it is among the paths, not only a parent) is
    handed back for rsync's times step, which sends the listed root whole.
    A root that is only a parent gets its time, nothing handed back."""
    changed = prepare(src, [b"", b"a/x"], max_size=1 << 20, deletes=True, excluded=_never,
                      times={b"a"})
    assert changed.fallback == [b""]
    alone = prepare(src, [b""], max_size=1 << 20, deletes=True, excluded=_never)
    assert alone.fallback == [b""] and alone.ops == []  # rsync sets its time too
    parent = prepare(src, [b"", b"a/x"], max_size=1 << 20, deletes=True, excluded=_never,
                     times={b"", b"a"})
    assert parent.fallback == [] and ("time", b"") in _ops(parent.ops)
