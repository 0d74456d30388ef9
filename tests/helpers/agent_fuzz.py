"""A fuzzer for the target agent: long generated sessions against the real
``syncsup-target ROOT`` process, as the forced command of a confined key
runs it, in a throw-away ROOT with a guarded area beside it.

Nothing here imports syncsup: the fuzzer runs the command line and speaks
the wire protocol (a 4-byte big-endian length, then a msgpack map) itself,
so it tests whatever confinement the checkout's agent has, and keeps
working when that changes.

The world (one per Hypothesis example):

* ``BASE/root``: ROOT, with symlinks to the guarded area (absolute and
  relative) and files planted at the interpreter's own paths: ROOT plus the
  absolute path of the agent's source files (carrying a coding cookie) and
  of the standard library's ``encodings/`` (a codec module whose import
  writes a marker). A Python that printed a traceback inside a chroot of
  ROOT would import it.
* ``BASE/guarded``: files, a directory, a symlink; snapshotted (type, mode,
  owner, mtime, content) and compared after every step.

Each step sends one request, or a burst of them, chosen among: valid
operations on a small pool of names (so they collide), the same with one
field replaced by an adversarial value (wrong type, NUL, huge or negative
integer, 2**32, long path, ``..``), chains of ``mkdir`` hundreds deep,
deletes and replacements of trees thousands of levels deep (made from the
test side), a directory swapped for a symlink into the guarded area
between requests, requests that crashed naive agents (a NUL in a symlink
target, a uid of 2**32), and now and then a frame of garbage (which ends
the session: a new agent is started).

After every step: each request got an answer frame of the documented
shape (or the agent exited with a single fixed line on stderr, never a
traceback), no answer carries file content (every file the fuzzer or the
guarded area holds contains a token that must never come back), the
guarded area is unchanged, and no marker of the payload exists anywhere.
A request that is invalid by the protocol's own rules (a NUL, ``..`` or an
absolute path) must be answered ``ok: false``.
"""

from __future__ import annotations

import encodings
import os
import secrets
import select
import signal
import stat
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from tests.helpers.procs import assert_no_leftovers

REPO = Path(__file__).resolve().parents[2]
VERSION = 1                 # the agent protocol's version (hello)
ANSWER_TIMEOUT = 120.0      # seconds for one answer: generous, never a timing assertion
CONTENT = b"FZ-CONTENT-7f3a"   # in every file the fuzzer writes: never in an answer
GUARDED = b"FZ-GUARDED-91c2"   # in every file of the guarded area: never in an answer
ANSWER_KEYS = {"ok", "error", "fatal"}
# the agent's source files, as the interpreter names them in a traceback
AGENT_SOURCES = ["syncsup/target/_apply.py", "syncsup/target/_agent.py",
                 "syncsup/target/_command.py", "syncsup/target/__main__.py",
                 "syncsup/target/_protocol.py", "syncsup/dirfd.py"]


@dataclass
class Stats:
    """What a run did, for the report."""

    requests: int = 0
    sessions: int = 0
    fatal: int = 0          # sessions ended by a fatal answer (garbage we sent)
    fixed_exits: int = 0    # sessions ended by the agent's fixed line, without an answer
    refused: int = 0        # answers ok: false
    escapes: list[str] = field(default_factory=list)
    steps: dict[str, int] = field(default_factory=dict)  # rule -> times run

    def step(self, rule: str) -> None:
        self.steps[rule] = self.steps.get(rule, 0) + 1


STATS = Stats()


# ------------------------------------------------------------------ the world
def entries(top: Path) -> dict[bytes, tuple[object, ...]]:
    """Everything below ``top`` (``top`` included), never following a
    symlink: type and mode, owner, mtime, size and content or link target."""
    out: dict[bytes, tuple[object, ...]] = {}
    topb = os.fsencode(top)
    for dirpath, dirs, files in os.walk(topb):
        for name in [b"", *dirs, *files]:
            path = os.path.join(dirpath, name) if name else dirpath
            try:
                s = os.lstat(path)
            except FileNotFoundError:
                continue
            body: object = None
            if stat.S_ISREG(s.st_mode):
                with open(path, "rb") as fh:
                    body = fh.read()
            elif stat.S_ISLNK(s.st_mode):
                body = os.readlink(path)
            out[path[len(topb):]] = (s.st_mode, s.st_uid, s.st_gid, s.st_mtime_ns, body)
    return out


class World:
    """A throw-away ROOT and the guarded area beside it."""

    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="syncsup-fuzz-"))
        self.root = self.base / "root"
        self.guarded = self.base / "guarded"
        self.token = secrets.token_hex(6)
        self.marker = f"pwned-{self.token}"
        self.root.mkdir()
        self.guarded.mkdir()
        (self.guarded / "secret").write_bytes(GUARDED + b" secret\n")
        (self.guarded / "dir").mkdir()
        (self.guarded / "dir" / "inner").write_bytes(GUARDED + b" inner\n")
        os.chmod(self.guarded / "dir" / "inner", 0o640)
        os.symlink("secret", self.guarded / "ln")
        (self.root / "a").write_bytes(CONTENT + b" a\n")
        (self.root / "d").mkdir()
        (self.root / "d" / "b").write_bytes(CONTENT + b" b\n")
        os.symlink(self.guarded, self.root / "link")
        os.symlink("../guarded", self.root / "rlink")
        os.symlink(self.guarded / "dir", self.root / "d" / "L")
        self.plant()
        self.before = entries(self.guarded)
        self.swaps = 0

    def payload(self) -> bytes:
        """A module whose import leaves a marker wherever it can: in the
        guarded area by its real path, at ``/MARKER`` (ROOT's top inside a
        chroot of it, the host's otherwise), and in every directory open
        as a descriptor."""
        targets = [os.fspath(self.guarded / self.marker), "/" + self.marker]
        return (f"# {CONTENT.decode()}\nimport os\n"
                f"for p in {targets!r}:\n"
                "    try:\n        open(p, 'w').write('x')\n    except Exception:\n"
                "        pass\n"
                "for fd in range(64):\n"
                "    try:\n"
                f"        open(os.open({self.marker!r}, os.O_WRONLY | os.O_CREAT, 0o644, "
                "dir_fd=fd), 'w').write('x')\n"
                "    except Exception:\n        pass\n").encode()

    def planted(self) -> list[tuple[bytes, bytes]]:
        """(path below ROOT, content) of the files planted at the
        interpreter's own paths."""
        codec = f"fz{self.token}"
        cookie = f"# -*- coding: {codec} -*-\n# {CONTENT.decode()}\n".encode()
        enc = Path(encodings.__file__).parent
        out = [(os.fsencode(enc / f"{codec}.py")[1:], self.payload())]
        for rel in AGENT_SOURCES:
            out.append((os.fsencode(REPO / rel)[1:], cookie + b"raise SystemExit\n" * 40))
        exe = os.fsencode(os.path.realpath(sys.executable))[1:]
        out.append((exe, b"#!/bin/sh\n# " + CONTENT + b"\n"))
        return out

    def plant(self) -> None:
        for rel, data in self.planted():
            path = os.path.join(os.fsencode(self.root), rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as fh:
                fh.write(data)

    def markers(self, everywhere: bool) -> list[str]:
        """Markers the payload left (it runs only if the agent ran code
        from ROOT): where it writes them by name, and, ``everywhere``, in
        any directory below BASE (``find``: a chain may be deeper than any
        path)."""
        spots = [f"/{self.marker}", self.root / self.marker, self.base / self.marker,
                 self.guarded / self.marker]
        found = [str(p) for p in spots if os.path.lexists(p)]
        if everywhere:
            out = subprocess.run(["find", str(self.base), "-name", f"*{self.marker}*"],
                                 capture_output=True, check=False).stdout
            found += [os.fsdecode(line) for line in out.splitlines()]
        return found

    def check(self, what: str, everywhere: bool = False) -> None:
        after = entries(self.guarded)
        changed = sorted(k for k in set(after) | set(self.before)
                         if after.get(k) != self.before.get(k))
        if changed:
            escape(f"{what}: the guarded area changed: {changed[:10]!r}")
        found = self.markers(everywhere)
        if found:
            escape(f"{what}: the payload ran: markers {found[:5]!r}")

    def swap(self, name: bytes, relative: bool) -> None:
        """From outside: replace ``name`` in ROOT (a directory, usually) by
        a symlink into the guarded area, atomically by rename."""
        root = os.fsencode(self.root)
        self.swaps += 1
        tmp = os.path.join(root, b"fz-swap-%d" % self.swaps)
        os.symlink(b"../guarded" if relative else os.fsencode(self.guarded), tmp)
        path = os.path.join(root, name)
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                os.rename(path, os.path.join(root, b"fz-moved-%d" % self.swaps))
            os.rename(tmp, path)
        except OSError:
            os.unlink(tmp)

    def chain(self, name: bytes, depth: int) -> None:
        """From outside: a directory chain ``depth`` deep at ``name`` in
        ROOT (whatever was there goes first), made level by level through
        descriptors: deeper than any path can name."""
        flatten(os.path.join(os.fsencode(self.root), name))
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.mkdir(name, dir_fd=fd)
            level = name
            for _ in range(depth):
                nxt = os.open(level, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                os.close(fd)
                fd, level = nxt, b"d"
                os.mkdir(level, dir_fd=fd)
        finally:
            os.close(fd)

    def remove(self) -> None:
        """Everything goes (``rm`` survives any depth)."""
        flatten(os.fsencode(self.base))
        if os.path.lexists(f"/{self.marker}"):
            os.unlink(f"/{self.marker}")


def flatten(path: bytes | str) -> None:
    """``rm -rf`` that survives any depth (the system's ``rm``)."""
    subprocess.run(["rm", "-rf", "--one-file-system", "--", path], check=False)


def escape(text: str) -> None:
    STATS.escapes.append(text)
    raise AssertionError(text)


# ------------------------------------------------------------------ the agent
class Agent:
    """One ``syncsup-target ROOT`` session, as behind the forced command."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.err = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO),
               "SSH_ORIGINAL_COMMAND": f"syncsup-target {world.root} agent",
               "HOME": "/nonexistent", "LANG": "C.UTF-8"}
        self.proc = subprocess.Popen(
            [sys.executable, "-P", "-m", "syncsup.target", str(world.root)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err, env=env,
            cwd="/", start_new_session=True)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin = self.proc.stdin
        self.out = self.proc.stdout.fileno()
        self.buf = b""
        self.ended: str | None = None  # why the session is over
        STATS.sessions += 1

    def stderr(self) -> bytes:
        self.err.seek(0)
        return self.err.read()

    def _read_answer(self) -> dict[str, Any] | None:
        """The next answer frame, or None if the agent ended first."""
        while True:
            if len(self.buf) >= 4:
                (size,) = struct.unpack(">I", self.buf[:4])
                if size > 1 << 20:
                    escape(f"an answer of {size} bytes")
                if len(self.buf) >= 4 + size:
                    body, self.buf = self.buf[4:4 + size], self.buf[4 + size:]
                    if CONTENT in body or GUARDED in body:
                        escape(f"an answer carries file content: {body[:200]!r}")
                    doc = msgpack.unpackb(body, raw=False)
                    if not isinstance(doc, dict):
                        escape(f"an answer that is not a map: {doc!r}")
                    return doc
            ready, _, _ = select.select([self.out], [], [], ANSWER_TIMEOUT)
            if not ready:
                escape(f"no answer in {ANSWER_TIMEOUT} s and the agent is still running")
            chunk = os.read(self.out, 1 << 16)
            if not chunk:
                return None
            self.buf += chunk

    def send(self, frames: list[bytes], hello: bool = False) -> list[dict[str, Any]]:
        """Send ``frames`` at once (pipelined, as the syncer does) and read
        their answers; fewer answers only if the agent ended."""
        try:
            self.stdin.write(b"".join(frames))
            self.stdin.flush()
        except BrokenPipeError:
            pass
        answers: list[dict[str, Any]] = []
        for _ in frames:
            STATS.requests += 1
            doc = self._read_answer()
            if doc is None:
                self._ended_without_answer()
                return answers
            self._check_shape(doc, hello)
            if doc.get("ok") is False:
                STATS.refused += 1
            answers.append(doc)
            if doc.get("fatal"):
                self._wait_exit(expect_fatal=True)
                return answers
        return answers

    def _check_shape(self, doc: dict[str, Any], hello: bool) -> None:
        if not isinstance(doc.get("ok"), bool):
            escape(f"an answer without ok: {doc!r}")
        if not hello and not set(doc) <= ANSWER_KEYS:
            escape(f"an answer with unexpected keys: {sorted(doc)!r}")
        err = doc.get("error")
        if err is not None and (not isinstance(err, str) or len(err) > 1000):
            escape(f"an error that is not a short string: {str(err)[:200]!r}")

    def _wait_exit(self, expect_fatal: bool) -> int:
        try:
            rc = self.proc.wait(timeout=ANSWER_TIMEOUT)
        except subprocess.TimeoutExpired:
            escape("the agent did not exit after a fatal answer")
        err = self.stderr()
        if expect_fatal:
            STATS.fatal += 1
            if b"Traceback" in err or err.count(b"\n") > 1:
                escape(f"the agent ended with more than a fixed line: {err[:500]!r}")
        self.ended = f"exit {rc}"
        return rc

    def _ended_without_answer(self) -> None:
        """The agent ended before answering: allowed only with one fixed
        line on stderr (its handler for an exception that escaped)."""
        try:
            rc = self.proc.wait(timeout=ANSWER_TIMEOUT)
        except subprocess.TimeoutExpired:
            escape("the agent closed its output but did not exit")
        err = self.stderr()
        if b"Traceback" in err or err.count(b"\n") != 1 or rc == 0:
            escape(f"the agent ended without an answer (rc {rc}): {err[:1000]!r}")
        STATS.fixed_exits += 1
        self.ended = f"fixed line, rc {rc}"

    def close(self) -> None:
        """End the session the way the syncer does (``bye``, then EOF)."""
        if self.ended is None:
            try:
                self.stdin.write(frame({"op": "bye"}))
                self.stdin.close()
            except BrokenPipeError:
                pass
            try:
                rc = self.proc.wait(timeout=ANSWER_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
                escape("the agent did not exit after bye")
            if rc != 0:
                escape(f"the agent exited {rc} after bye: {self.stderr()[:500]!r}")
        else:
            try:
                self.stdin.close()
            except BrokenPipeError:
                pass
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.err.close()


def frame(doc: dict[Any, Any]) -> bytes:
    body: bytes = msgpack.packb(doc, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


# ------------------------------------------------------------------ strategies
NAMES = [b"a", b"b", b"d", b"e", b"deep", b"link", b"rlink", b"L", b".h", b"-rf", b"x y",
         b"\xff\xfe", b"n\nl", b"fz"]
name = st.sampled_from(NAMES) | st.binary(min_size=1, max_size=12).filter(
    lambda n: b"/" not in n and b"\0" not in n and n not in (b".", b"..")
    and b"pwned" not in n)
path = st.lists(name, min_size=1, max_size=4).map(b"/".join)
content = st.binary(max_size=64).map(lambda b: CONTENT + b) | st.just(CONTENT)
attrs = st.fixed_dictionaries(
    {"mode": st.integers(0, 0o7777), "mtime": st.integers(0, 2**62)},
    optional={"uid": st.sampled_from([-1, 0, 1, 65534]),
              "gid": st.sampled_from([-1, 0, 1, 65534]),
              "user": st.sampled_from(["", "root", "nobody", "fz"]),
              "group": st.sampled_from(["", "root", "nogroup"])})
tree = st.fixed_dictionaries({}, optional={"tree": st.booleans()})


@st.composite
def valid(draw: st.DrawFn) -> dict[str, Any]:
    """A request of syncsup's own protocol, on colliding names."""
    op = draw(st.sampled_from(["put", "mkdir", "symlink", "time", "delete", "rename",
                               "commit", "ping"]))
    req: dict[str, Any] = {"op": op}
    if op in ("put", "mkdir", "symlink", "time", "delete"):
        req["path"] = draw(path)
    if op == "put":
        req["data"] = draw(content)
    if op == "symlink":
        req["target"] = draw(st.sampled_from([b"../../guarded", os.fsencode("/etc/passwd"),
                                              b"a", b"../../../../../../"]) | path)
    if op in ("put", "mkdir", "symlink"):
        req.update(draw(attrs))
    if op in ("put", "symlink", "delete"):
        req.update(draw(tree))
    if op == "time":
        req["mtime"] = draw(st.integers(0, 2**62))
        if draw(st.booleans()):
            req["path"] = b""
    if op == "rename":
        req["src"], req["dst"] = draw(path), draw(path)
    return req


BAD_PATHS = [b"", b"/", b"/etc/passwd", b"..", b"../guarded/secret", b"a/../../guarded",
             b"a//b", b"./a", b"a/.", b"a\0b", b"link/secret", b"rlink/secret",
             b"d/L/inner", b"x" * 256, b"a/" * 2100]
MUST_FAIL = {b"x" * 256, b"", b"/", b"/etc/passwd", b"..", b"../guarded/secret", b"a/../../guarded",
             b"a//b", b"./a", b"a/.", b"a\0b", b"a/" * 2100}
weird = st.one_of(
    st.sampled_from([None, True, False, 0, -1, -2, 2**32 - 1, 2**32, 2**63 - 1, -(2**63),
                     2**64 - 1, 0o170000, 1.5, float("nan"), float("inf"), "", "x\0y", "..",
                     b"", b"\0", b"x" * 5000, [], {}, [1, [2]], {"k": b"v"}]),
    st.integers(-(2**63), 2**64 - 1), st.binary(max_size=300), st.text(max_size=50),
    st.sampled_from(BAD_PATHS))


@st.composite
def malformed(draw: st.DrawFn) -> dict[str, Any]:
    """A valid request with one field replaced, removed or added."""
    req = draw(valid())
    how = draw(st.sampled_from(["replace", "replace", "replace", "drop", "add", "op"]))
    keys = [k for k in req if k != "op"]
    if how == "replace" and keys:
        req[draw(st.sampled_from(keys))] = draw(weird)
    elif how == "drop" and keys:
        del req[draw(st.sampled_from(keys))]
    elif how == "add":
        req[draw(st.sampled_from(["force", "exec", "cmd", "path2", "files_from"]))] = draw(weird)
    else:
        req["op"] = draw(weird | st.sampled_from(["exec", "read", "get", "chmod", "link"]))
    return req


def must_fail(req: dict[str, Any]) -> bool:
    """Invalid by the protocol's own rules whatever the agent's state: a
    path that is absolute, empty (but for ``time``), holds NUL, ``.`` or
    ``..``, or is longer than PATH_MAX."""
    if req.get("op") not in ("put", "mkdir", "symlink", "time", "delete", "rename"):
        return False
    for key in ("path", "src", "dst"):
        value = req.get(key)
        if isinstance(value, bytes) and value in MUST_FAIL and not (
                req.get("op") == "time" and key == "path" and value == b""):
            return True
    return False


# ------------------------------------------------------------------ the machine
class AgentSessions(RuleBasedStateMachine):
    """Generated sessions against the real agent; a new agent starts
    whenever one ends (after garbage), in the same ROOT."""

    def __init__(self) -> None:
        super().__init__()
        self.world = World()
        self.agent: Agent | None = None

    @initialize()
    def start(self) -> None:
        self._new_agent()

    def _new_agent(self) -> None:
        if self.agent is not None:
            self.agent.close()
        self.agent = Agent(self.world)
        answers = self.agent.send([frame({"op": "hello", "version": VERSION})], hello=True)
        if not answers or answers[0].get("ok") is not True:
            escape(f"the agent refused hello: {answers!r} {self.agent.stderr()[:500]!r}")

    def _send(self, reqs: list[dict[str, Any]]) -> None:
        assert self.agent is not None
        answers = self.agent.send([frame(r) for r in reqs])
        for req, ans in zip(reqs, answers, strict=False):
            if must_fail(req) and ans.get("ok") is not False:
                escape(f"an invalid request was done: {req!r} -> {ans!r}")
        if self.agent.ended is not None:
            self._new_agent()

    @rule(reqs=st.lists(valid(), min_size=1, max_size=25))
    def burst(self, reqs: list[dict[str, Any]]) -> None:
        STATS.step("burst")
        self._send(reqs)

    @rule(reqs=st.lists(malformed() | valid(), min_size=1, max_size=25))
    def malformed_burst(self, reqs: list[dict[str, Any]]) -> None:
        STATS.step("malformed_burst")
        self._send(reqs)

    @rule(top=st.sampled_from([b"deep", b"d", b"e"]), depth=st.integers(20, 300))
    def mkdir_chain(self, top: bytes, depth: int) -> None:
        """A chain of directories made by the agent, as deep as a path can
        name (``d/`` is 2 bytes: up to 2,000 levels in 4,095 bytes)."""
        STATS.step("mkdir_chain")
        base = {"op": "mkdir", "mode": 0o755, "mtime": 10**18}
        reqs = [{**base, "path": top + b"/d" * i} for i in range(depth)]
        for i in range(0, len(reqs), 200):
            self._send(reqs[i:i + 200])

    @rule(top=st.sampled_from([b"deep", b"e", b"fz"]), depth=st.integers(1100, 2500),
          how=st.sampled_from(["delete", "put", "symlink", "notree"]))
    def deep_remove(self, top: bytes, depth: int, how: str) -> None:
        """A tree deeper than any recursion limit, made from outside, then
        removed or replaced with ``tree`` by the agent."""
        STATS.step("deep_remove")
        self.world.chain(top, depth)
        req: dict[str, Any] = {
            "delete": {"op": "delete", "path": top},
            "notree": {"op": "delete", "path": top, "tree": False},
            "put": {"op": "put", "path": top, "data": CONTENT, "mode": 0o644, "mtime": 0},
            "symlink": {"op": "symlink", "path": top, "target": b"x", "mode": 0o777,
                        "mtime": 0}}[how]
        self._send([req])

    @rule(victim=st.sampled_from([b"d", b"e", b"deep", b"a"]), relative=st.booleans(),
          then=st.lists(valid(), min_size=1, max_size=10))
    def swap_then(self, victim: bytes, relative: bool, then: list[dict[str, Any]]) -> None:
        """A directory replaced by a symlink into the guarded area between
        requests, then requests through it."""
        STATS.step("swap_then")
        self.world.swap(victim, relative)
        self._send([dict(r, path=victim + b"/" + r["path"]) if r.get("path")
                    else r for r in then])

    @rule(which=st.sampled_from(["nul-target", "uid", "gid", "mtime", "user-nul", "mode"]))
    def crashers(self, which: str) -> None:
        """Requests that ended naive agents through an exception."""
        STATS.step("crashers")
        a = {"mode": 0o644, "mtime": 0}
        self._send([{
            "nul-target": {"op": "symlink", "path": b"s", "target": b"x\0y", **a},
            "uid": {"op": "put", "path": b"u", "data": CONTENT, **a, "uid": 2**32},
            "gid": {"op": "mkdir", "path": b"g", **a, "gid": 2**40},
            "mtime": {"op": "put", "path": b"m", "data": CONTENT, "mode": 0o644,
                      "mtime": 2**64 - 1},
            "user-nul": {"op": "mkdir", "path": b"n", **a, "user": "ro\0ot"},
            "mode": {"op": "mkdir", "path": b"o", "mode": -1, "mtime": 0}}[which]])

    @rule(index=st.integers(0, 100))
    def plant_through_the_agent(self, index: int) -> None:
        """The planted files again, written by the agent itself (the key's
        way of planting them)."""
        STATS.step("plant_through_the_agent")
        planted = self.world.planted()
        rel, data = planted[index % len(planted)]
        parts = rel.split(b"/")
        reqs: list[dict[str, Any]] = [{"op": "mkdir", "path": b"/".join(parts[:i]),
                                       "mode": 0o755, "mtime": 0}
                                      for i in range(1, len(parts))]
        reqs.append({"op": "put", "path": rel, "data": data, "mode": 0o644, "mtime": 0})
        self._send(reqs)

    @rule(garbage=st.sampled_from([b"\xff\xff\xff\xff", b"\x00\x00\x00\x03\xc1\xc1\xc1",
                                   b"\x00\x00\x00\x01\x91", struct.pack(">I", 120)
                                   + b"\x91" * 120]))
    def garbage(self, garbage: bytes) -> None:
        """A frame that is not one: a fatal answer, the session ends, a new
        one starts."""
        STATS.step("garbage")
        assert self.agent is not None
        self.agent.send([garbage])
        if self.agent.ended is None:
            escape("the agent went on after a malformed frame")
        self._new_agent()

    @invariant()
    def confined(self) -> None:
        self.world.check("after a step")

    def teardown(self) -> None:
        try:
            if self.agent is not None:
                self.agent.close()
        finally:
            try:
                # whatever the session's end, the payload's markers are looked for
                self.world.check("at the end", everywhere=True)
                assert_no_leftovers(self.world.base)
            finally:
                self.world.remove()


def run(steps: int, examples: int, seed: int | None = None) -> Stats:
    """One Hypothesis run of ``examples`` worlds of up to ``steps`` steps.
    No shrinking: a failure is reported as found (with the blob to replay
    it), not minimised for minutes; no example database in the tree.
    ``seed``: the same worlds and steps every time (the suite's short run,
    whose cost and coverage must not change from one run to the next);
    None draws new ones (the long fuzzer's)."""
    from hypothesis import seed as fixed_seed
    from hypothesis.stateful import get_state_machine_test

    test = get_state_machine_test(AgentSessions, settings=settings(
        max_examples=examples, stateful_step_count=steps, deadline=None, database=None,
        phases=[Phase.generate], suppress_health_check=list(HealthCheck), print_blob=True))
    if seed is not None:
        test = fixed_seed(seed)(test)
    test()
    return STATS


def rules() -> set[str]:
    """The names of the state machine's rules (each counts its steps in
    ``STATS.steps`` under its own name)."""
    from hypothesis.stateful import RULE_MARKER

    return {name for name, f in vars(AgentSessions).items() if hasattr(f, RULE_MARKER)}


def iter_runs(requests: int, steps: int = 100, examples: int = 10,
              seed: int | None = None) -> Iterator[Stats]:
    """Runs until ``requests`` requests were sent; yields the totals after
    each. With a ``seed``, run N uses ``seed + N``: fixed, and not the same
    worlds again."""
    n = 0
    while STATS.requests < requests:
        yield run(steps, examples, None if seed is None else seed + n)
        n += 1

