"""The first start's proof (syncer/prove.py): which target copies the
kernel's ctimes prove current, pure, and the list it reads."""

from __future__ import annotations

import pytest

from syncsup.syncer.prove import MARGIN_NS, Clock, _subtrees, unproven, verdict

S = 10**9
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
    assert unproven(SRC, target, clock) is expected


def test_verdicts() -> None:
    assert verdict(SRC, (-1, -1, -1), Clock()) == "sent"
    assert verdict(SRC, (99 * S, 4096, 50 * S), Clock()) == "compare"
    assert verdict(SRC, (200 * S, 4096, 50 * S), Clock()) == "proven"


def test_the_list_is_read_as_the_syncer_writes_it() -> None:
    assert _subtrees(b".\0./a\0./#b\n\0./\xff\0") == [b"", b"a", b"#b\n", b"\xff"]


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
    chunks = list(prove._chunks(os.fsencode(tmp_path), [b""], too_long))
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
