"""The agent's code layer: every request checked against a schema before it
is acted on, every exception answered, deletes that do not recurse on the
peer's depth. Real files in tmp_path; the agent's ``handle``/``serve`` as
the remote agent and the local target use them."""

from __future__ import annotations

import io
import os
import resource
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from syncsup.config import AGENT_MAX_SIZE_LIMIT
from syncsup.syncer.agent_ops import prepare
from syncsup.target import Applier, Protection
from syncsup.target._agent import FAILED, MAX_ERROR, handle, serve
from syncsup.target._apply import Attrs
from syncsup.target._protocol import MAX_FRAME, VERSION, encode_frame, read_frame
from syncsup.target._schema import MAX_DATA, MAX_STATS, OPS, BadRequest, validate


def snapshot(top: Path) -> dict[bytes, tuple[object, ...]]:
    """Every entry below ``top`` with its type, mode, owner, mtime and
    content (or link target): a refused request changes none of them."""
    out: dict[bytes, tuple[object, ...]] = {}
    for dirpath, dirs, files in os.walk(os.fsencode(top)):
        for name in [*dirs, *files, b""]:
            path = os.path.join(dirpath, name) if name else dirpath
            st = os.lstat(path)
            body: object = None
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as fh:
                    body = fh.read()
            elif stat.S_ISLNK(st.st_mode):
                body = os.readlink(path)
            out[path] = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, body)
    return out


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "mirror"
    (r / "d").mkdir(parents=True)
    (r / "f").write_bytes(b"f")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_text("s")
    return r


@pytest.fixture
def applier(root: Path) -> Iterator[Applier]:
    a = Applier.open(str(root))
    yield a
    a.close()


ATTRS: dict[str, Any] = {"mode": 0o644, "mtime": 10**18, "uid": 0, "gid": 0, "user": "root",
                         "group": "root"}
GOOD: dict[str, dict[str, Any]] = {
    "put": {"op": "put", "path": b"d/new", "data": b"x", **ATTRS, "tree": True},
    "mkdir": {"op": "mkdir", "path": b"d/sub", **ATTRS},
    "symlink": {"op": "symlink", "path": b"d/ln", "target": b"../f", **ATTRS, "tree": False},
    "time": {"op": "time", "path": b"d", "mtime": 10**18},
    "delete": {"op": "delete", "path": b"d/gone", "tree": True},
    "rename": {"op": "rename", "src": b"f", "dst": b"d/f2"},
    "stats": {"op": "stats", "paths": [b"f", b"d/f"]},
}

LONG = b"n" * 256
PATHS = ["not bytes", 7, None, b"", b"/abs", b"a/../b", b"..", b".", b"a//b", b"a/", b"a\0b",
         LONG, b"a/" + LONG, b"a/" * 2047 + b"bb"]
TIMES = ["1", 1.5, True, None, 2**63, -(2**63) - 1, 2**64]
IDS = ["0", 1.0, True, -2, 2**32 - 1, 2**32, 2**63, -(2**63)]
BAD: dict[str, list[Any]] = {
    "path": PATHS, "src": PATHS, "dst": PATHS,
    "target": ["s", None, b"", b"a\0b", b"x" * 4096],
    "data": ["text", None, 1, b"x" * (MAX_DATA + 1)],
    "mode": ["644", -1, 0o10000, 0o100644, 2**63, 1.0, True, None],
    "mtime": TIMES, "uid": IDS, "gid": IDS,
    "user": [b"root", 0, "x" * 256, "ro\0ot"], "group": [b"root", 0, "x" * 256, "ro\0ot"],
    "tree": [1, 0, "yes", None, b""],
    "paths": [b"f", None, (b"f",), [b"f", b"/abs"], [b"a/../b"], [7], [b""],
              [b"f"] * (MAX_STATS + 1)],
}


def _cases() -> Iterator[tuple[str, str, Any]]:
    for op, req in GOOD.items():
        for key in req:
            for value in BAD.get(key, []):
                if not (op == "time" and value == b""):  # ROOT's own time: valid
                    yield op, key, value


def _id(case: tuple[str, str, Any]) -> str:
    op, key, value = case
    return f"{op}-{key}-{type(value).__name__}-{repr(value)[:24]}"


@pytest.mark.parametrize(("op", "key", "value"), list(_cases()), ids=[_id(c) for c in _cases()])
def test_every_field_refuses_every_bad_value(root: Path, applier: Applier, op: str, key: str,
                                             value: Any) -> None:
    """A bad value in any field refuses the whole request: nothing in ROOT
    changes, the answer is ``ok: false`` and names the field, never the
    value (the peer's)."""
    before = snapshot(root.parent)
    req = {**GOOD[op], key: value}
    answer = handle(applier, req, {})
    assert answer["ok"] is False and "fatal" not in answer
    assert key in answer["error"] and len(answer["error"]) <= MAX_ERROR
    if isinstance(value, (bytes, str)) and len(value) > 8:
        assert str(value)[:20] not in answer["error"] and repr(value)[:20] not in answer["error"]
    assert snapshot(root.parent) == before


@pytest.mark.parametrize("op", sorted(GOOD))
def test_missing_and_unknown_fields_are_refused(root: Path, applier: Applier, op: str) -> None:
    before = snapshot(root.parent)
    required = [k for k, (_check, req) in OPS[op].items() if req]
    for key in required:
        req = {k: v for k, v in GOOD[op].items() if k != key}
        assert handle(applier, req, {}) == {"ok": False, "error": f"{key!r} is missing"}
    for extra in ({"force": True}, {b"path": b"x"}, {"x" * 1000: 1}):
        answer = handle(applier, {**GOOD[op], **extra}, {})
        assert answer["ok"] is False and "unknown field" in answer["error"]
        assert len(answer["error"]) < 100
    assert snapshot(root.parent) == before


@pytest.mark.parametrize("op", [None, 1, b"put", "PUT", "launch", "x" * 10000],
                         ids=["none", "int", "bytes", "upper", "launch", "long"])
def test_unknown_operations_are_refused_with_a_fixed_message(applier: Applier, op: Any) -> None:
    assert handle(applier, {"op": op, "cmd": b"sh"}, {}) == {
        "ok": False, "error": "unknown operation"}


def test_the_good_requests_and_the_edges_of_each_range_pass(root: Path,
                                                            applier: Applier) -> None:
    for req in GOOD.values():
        answer = handle(applier, req, {})
        if req["op"] == "stats":  # answers with what it read
            assert answer["ok"] is True and set(answer) == {"ok", "ctimes", "sizes", "mtimes",
                                                            "now"}, answer
        else:
            assert answer == {"ok": True}, req
    edges: list[dict[str, Any]] = [
        {"op": "put", "path": b"n" * 255, "data": b"x" * MAX_DATA, "mode": 0o7777,
         "mtime": 2**63 - 1, "uid": 2**32 - 2, "gid": -1},
        {"op": "mkdir", "path": b"d/e", "mode": 0, "mtime": -(2**63), "uid": -1, "gid": 0},
        {"op": "symlink", "path": b"d/l2", "target": b"/" * 4095, "mode": 0o777, "mtime": 0},
        {"op": "time", "path": b"", "mtime": 10**18},  # ROOT itself
        {"op": "time", "path": b"a/" * 2046 + b"bbb", "mtime": 0},  # 4095 bytes: valid, absent
    ]
    for req in edges:
        validate(req)
    for req in edges[:4]:
        assert handle(applier, req, {}) == {"ok": True}, req["op"]
    assert (root / ("n" * 255)).stat().st_size == MAX_DATA
    assert os.readlink(root / "d" / "l2") == "/" * 4095
    assert AGENT_MAX_SIZE_LIMIT <= MAX_DATA  # every file the syncer may send fits
    assert MAX_DATA < MAX_FRAME


def test_what_the_syncer_sends_passes_the_schema(tmp_path: Path) -> None:
    """The schema is exactly syncsup's own protocol: every operation the
    syncer prepares from a real source tree is accepted."""
    src = tmp_path / "src"
    (src / "dir").mkdir(parents=True)
    (src / "dir" / "file").write_bytes(b"data")
    os.chmod(src / "dir" / "file", 0o4755)
    os.symlink("dir/file", src / "link")
    fd = os.open(src, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for keep in (False, True):
            prep = prepare(fd, [b"dir", b"dir/file", b"link", b"gone"], max_size=1 << 20,
                           deletes=True, excluded=lambda _p, _d: False, keep_trees=keep)
            assert {op["op"] for op in prep.ops} == {"put", "mkdir", "symlink", "delete",
                                                     "time", "commit"}
            for op in prep.ops:
                validate(op)
    finally:
        os.close(fd)
    for op in ({"op": "hello", "version": VERSION}, {"op": "ping"}, {"op": "bye"}):
        validate(op)


@pytest.mark.parametrize("exc", [ValueError("embedded null byte"), OverflowError("uid"),
                                 RecursionError("deep"), MemoryError(), KeyError("x"),
                                 AssertionError(), BadRequest("x")])
def test_any_exception_while_acting_is_answered(root: Path, monkeypatch: pytest.MonkeyPatch,
                                                exc: Exception) -> None:
    """Whatever escapes the applier, the request is answered and the session
    goes on: the next request is still served."""
    def broken(*_args: object) -> None:
        raise exc

    out = io.BytesIO()
    a = Applier.open(str(root))
    monkeypatch.setattr(a, "delete", broken)
    try:
        rc = serve(a, {}, io.BytesIO(b"".join(encode_frame(r) for r in (
            {"op": "hello", "version": VERSION}, {"op": "delete", "path": b"f"},
            {"op": "rename", "src": b"f", "dst": b"g"}))), out)
    finally:
        a.close()
    out.seek(0)
    replies = []
    while (doc := read_frame(out)) is not None:
        replies.append(doc)
    assert rc == 0
    assert [r["ok"] for r in replies] == [True, False, True]
    if not isinstance(exc, OSError):
        assert replies[1]["error"] == FAILED
    assert (root / "g").read_bytes() == b"f"


def test_a_reader_gone_or_a_broken_stream_ends_the_session_without_raising(
        root: Path) -> None:
    class Broken(io.BytesIO):
        def write(self, _data: Any) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    class Failing(io.BytesIO):
        def read(self, _n: Any = -1) -> bytes:
            raise OSError(5, "Input/output error")

    a = Applier.open(str(root))
    try:
        hello = encode_frame({"op": "hello", "version": VERSION})
        assert serve(a, {}, io.BytesIO(hello), Broken()) == 3
        assert serve(a, {}, Failing(), io.BytesIO()) == 2
    finally:
        a.close()


# ------------------------------------------------------------ crashes of the past
def test_requests_that_crashed_the_agent_are_answered(root: Path, applier: Applier) -> None:
    """A NUL in a symlink target (ValueError), an owner of 2**32
    (OverflowError), a NUL in an owner's name: each was an exception that
    ended the agent through the interpreter's traceback printer."""
    before = snapshot(root.parent)
    for req in ({**GOOD["symlink"], "target": b"x\0y"},
                {**GOOD["put"], "uid": 2**32}, {**GOOD["mkdir"], "gid": 2**40},
                {**GOOD["put"], "mtime": 2**64}, {**GOOD["mkdir"], "user": "a\0b"}):
        answer = handle(applier, req, {})
        assert answer["ok"] is False, req
    assert snapshot(root.parent) == before


def _chain(top: Path, depth: int, name: bytes = b"d") -> None:
    """A chain of ``depth`` directories below ``top`` (deeper than any path
    can name: made one level at a time through descriptors)."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(depth):
            os.mkdir(name, dir_fd=fd)
            if i % 1000 == 0:
                with open(os.open(b"file", os.O_WRONLY | os.O_CREAT, dir_fd=fd), "wb") as fh:
                    fh.write(b"x")
            nxt = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nxt
    finally:
        os.close(fd)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# Past the two limits a recursive or descriptor-per-level delete meets:
# Python's recursion limit (1,000 frames by default: RecursionError) three
# times over, and the descriptor limit, pinned by the test at a few more
# than are open. (The delete once ran at 100,000 levels: a minute on a slow
# machine, mostly making the chain, for no limit that 3,000 does not pass.)
DEEP = 3 * sys.getrecursionlimit()


@pytest.mark.parametrize("how", ["delete", "put", "symlink"])
def test_a_deep_tree_is_removed_without_recursion(root: Path, applier: Applier, how: str
                                                  ) -> None:
    """Deleting (or replacing, with ``tree``) a directory chain deeper than
    Python's recursion limit and than the descriptor limit works, with a
    few descriptors at a time."""
    (root / "deep").mkdir()
    _chain(root / "deep", DEEP)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fds = _open_fds()
    resource.setrlimit(resource.RLIMIT_NOFILE, (fds + 16, hard))
    try:
        req: dict[str, Any] = {"delete": {"op": "delete", "path": b"deep"},
                               "put": {**GOOD["put"], "path": b"deep"},
                               "symlink": {**GOOD["symlink"], "path": b"deep", "tree": True},
                               }[how]
        assert handle(applier, req, {}) == {"ok": True}
        assert handle(applier, {"op": "commit"}, {}) == {"ok": True}  # the written file's fd
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert _open_fds() == fds
    if how == "delete":
        assert not os.path.lexists(root / "deep")
    else:
        st = os.lstat(root / "deep")
        assert stat.S_ISLNK(st.st_mode) if how == "symlink" else stat.S_ISREG(st.st_mode)
    assert not [n for n in os.listdir(root) if n.startswith(".syncsup")]


def test_a_wide_and_deep_tree_is_removed_and_nothing_beside_it(root: Path, tmp_path: Path,
                                                              applier: Applier) -> None:
    t = root / "t"
    for i in range(5):
        (t / f"a{i}" / "b" / "c").mkdir(parents=True)
        (t / f"a{i}" / "b" / "c" / "f").write_bytes(b"x")
        (t / f"a{i}" / "b" / ".syncsup.del.1").mkdir()  # our own temporary name, taken
        (t / f"a{i}" / "b" / ".syncsup.del.1" / "g").write_bytes(b"y")
        os.symlink(tmp_path / "outside", t / f"a{i}" / "escape")
        os.symlink("../../../outside", t / f"a{i}" / "b" / "rel")
    (t / ".syncsup.del.3").write_bytes(b"a file with the name")
    _chain(t / "a0", 3000)
    before = snapshot(tmp_path / "outside")
    applier.delete(b"t")
    assert not t.exists()
    assert sorted(os.listdir(root)) == ["d", "f"]
    assert snapshot(tmp_path / "outside") == before


def test_the_home_inside_a_deleted_tree_stops_the_delete(root: Path) -> None:
    """The flattening delete checks every entry against the home's
    protection, as the recursive one did: a tree that holds the home is not
    removed, and nothing of the home is touched."""
    home = root / "t" / "x" / "y" / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "authorized_keys").write_text("key")
    (root / "t" / "x" / "y" / "z").mkdir()
    a = Applier.open(str(root), Protection.for_home(str(root), str(home)))
    try:
        with pytest.raises(OSError):
            a.delete(b"t")
        with pytest.raises(OSError):
            a.put(b"t", b"x", Attrs(mode=0o644, mtime_ns=0))
    finally:
        a.close()
    assert (home / ".ssh" / "authorized_keys").read_text() == "key"


def test_stats_reads_files_only_below_root_and_changes_nothing(tmp_path: Path, root: Path,
                                                               applier: Applier) -> None:
    """``stats`` answers (ctime, size, mtime) of regular files and -1 for
    anything else, never through a symlink, with the agent's clock; it
    writes nothing."""
    os.symlink(tmp_path / "outside", root / "out")
    os.symlink(tmp_path / "outside" / "secret", root / "s")
    (root / "d" / "g").write_bytes(b"gg")
    before = snapshot(root.parent)
    ask = [b"f", b"d/g", b"d", b"gone", b"d/gone", b"out/secret", b"s", b"f/x"]
    answer = handle(applier, {"op": "stats", "paths": ask}, {})
    assert answer["ok"] is True and isinstance(answer["now"], int)
    st_f, st_g = os.lstat(root / "f"), os.lstat(root / "d" / "g")
    assert answer["ctimes"] == [st_f.st_ctime_ns, st_g.st_ctime_ns] + [-1] * 6
    assert answer["sizes"] == [1, 2] + [-1] * 6
    assert answer["mtimes"] == [st_f.st_mtime_ns, st_g.st_mtime_ns] + [-1] * 6
    assert snapshot(root.parent) == before
