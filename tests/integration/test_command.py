"""mode = "command": argv templates (never a shell) and Python Action classes."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.helpers.churn import assert_not_pwned
from tests.helpers.procs import assert_no_leftovers

from ._modes_helpers import (
    FAILER,
    b,
    make_recorder,
    python,
    read_records,
    sync_table,
    wait_until,
    write,
)

pytestmark = pytest.mark.timeout(240)

SYNC = "cmd"


def templates(rec: Path, log: Path) -> dict[str, list[str]]:
    base = [python(), str(rec), str(log)]
    return {
        "on_startup": [*base, "{kind}", "{path}", "{name}", "{source}", "{sync}"],
        "on_create": [*base, "{kind}", "{name}", "{path}", "{source}", "{target}", "{sync}"],
        "on_modify": [*base, "{kind}", "{name}", "{path}", "{source}", "{target}", "{sync}"],
        "on_delete": [*base, "{kind}", "{name}", "{path}", "{source}", "{target}", "{sync}"],
        "on_move": [*base, "{kind}", "{from}", "{to}", "{name}", "{path}"],
    }


# A delay that puts a file's create and its write (microseconds apart) in
# one batch, and still little to wait for after each step.
DELAY = 0.4


def cmd_sync(src, rec, log, **kw):
    return sync_table(
        src,
        kw.pop("targets", []),
        name=SYNC,
        mode="command",
        delay=kw.pop("delay", DELAY),
        **templates(rec, log),
        **kw,
    )


def expect_path_record(kind: bytes, src: Path, name: bytes) -> list[bytes]:
    s = b(src)
    return [kind, name, os.path.join(s, name), s, b"", SYNC.encode()]


class Records:
    """Reads the action log incrementally: ``new()`` returns records since the last call."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.seen = 0

    def all(self) -> list[list[bytes]]:
        return read_records(self.log)

    def wait_new(self, pred, what: str, d, timeout: float = 90) -> list[list[bytes]]:
        def ready():
            recs = self.all()[self.seen :]
            return (recs,) if pred(recs) else None

        (recs,) = wait_until(
            ready, what, timeout, context=lambda: f"records so far: {self.all()!r}\n{d.describe()}"
        )
        self.seen += len(recs)
        return recs


def settle(d) -> None:
    """Wait until the command target is idle (everything reported)."""
    d.wait_idle(timeout=90)


# ------------------------------------------------------------------------ tests
def test_each_action_fires_with_right_arguments(tmp_path, src, daemon_factory):
    rec, log = make_recorder(tmp_path), tmp_path / "actions.log"
    write(src / "pre-existing", b"old")  # startup reports the tree once, not file by file
    staging = tmp_path / "staging"
    (staging / "sub").mkdir(parents=True)
    write(staging / "sub" / "inner", b"inner")

    d = daemon_factory([cmd_sync(src, rec, log)])
    r = Records(log)
    s = b(src)

    got = r.wait_new(lambda rs: len(rs) >= 1, "the startup action", d)
    settle(d)
    got += r.wait_new(lambda rs: True, "nothing", d)
    assert got == [[b"startup", s, b"", s, SYNC.encode()]], got

    # create: one batch (the delay) sees the create and the write
    write(src / "new.txt", b"hello")
    got = r.wait_new(lambda rs: any(x[1] == b"new.txt" for x in rs), "create of new.txt", d)
    settle(d)
    got += r.wait_new(lambda rs: True, "nothing", d)
    assert got == [expect_path_record(b"create", src, b"new.txt")], got

    # modify
    with open(src / "new.txt", "ab") as f:
        f.write(b" world")
    got = r.wait_new(lambda rs: any(x[1] == b"new.txt" for x in rs), "modify of new.txt", d)
    settle(d)
    got += r.wait_new(lambda rs: True, "nothing", d)
    assert got == [expect_path_record(b"modify", src, b"new.txt")], got

    # move: on_move only, no create/delete for its two ends
    os.rename(src / "new.txt", src / "moved.txt")
    got = r.wait_new(lambda rs: any(x[0] == b"move" for x in rs), "move record", d)
    settle(d)
    got += r.wait_new(lambda rs: True, "nothing", d)
    assert got == [
        [
            b"move",
            os.path.join(s, b"new.txt"),
            os.path.join(s, b"moved.txt"),
            b"moved.txt",
            os.path.join(s, b"moved.txt"),
        ]
    ], got

    # delete
    os.unlink(src / "moved.txt")
    got = r.wait_new(lambda rs: any(x[0] == b"delete" for x in rs), "delete record", d)
    settle(d)
    got += r.wait_new(lambda rs: True, "nothing", d)
    assert got == [expect_path_record(b"delete", src, b"moved.txt")], got

    # a directory moved in from outside: create for it and for what is inside, parents first
    os.rename(staging / "sub", src / "sub")
    got = r.wait_new(lambda rs: any(x[1] == b"sub/inner" for x in rs), "create of sub/inner", d)
    settle(d)
    got += r.wait_new(lambda rs: True, "nothing", d)
    assert got == [
        expect_path_record(b"create", src, b"sub"),
        expect_path_record(b"create", src, b"sub/inner"),
    ], got

    d.stop()
    assert_no_leftovers(tmp_path)


HOSTILE_NAMES = [
    b"$(touch pwned)",
    b"`touch pwned`",
    b";touch pwned;",
    b"new\nline",
    b"-e",
    b"--delete",
    b'it\'s "q" \\ back',
    b"\xff\xfe-not-utf8",
]


def test_a_file_written_slowly_is_created_once(tmp_path, src, daemon_factory):
    """A writer that takes its time: the CREATE event is read long before
    the data and the close, together with another file's whole life. With
    no delay both must be reported as created (once), not as modified."""
    rec, log = make_recorder(tmp_path), tmp_path / "actions.log"
    d = daemon_factory([cmd_sync(src, rec, log, delay=0)])
    r = Records(log)
    r.wait_new(lambda rs: len(rs) >= 1, "the startup action", d)
    settle(d)
    r.wait_new(lambda rs: True, "nothing", d)
    with open(src / "slow.txt", "wb") as f:
        write(src / "quick.txt", b"done at once")  # read with slow.txt's CREATE
        time.sleep(0.3)  # the watcher has read both by now
        f.write(b"partial ")
        f.flush()
        time.sleep(0.1)
        f.write(b"and the rest")
    got = r.wait_new(lambda rs: any(x[1] == b"slow.txt" for x in rs), "slow.txt", d)
    settle(d)
    got += r.wait_new(lambda rs: True, "nothing", d)
    assert sorted(got) == sorted([expect_path_record(b"create", src, b"quick.txt"),
                                  expect_path_record(b"create", src, b"slow.txt")]), got
    d.stop()
    assert_no_leftovers(tmp_path)


def test_hostile_names_are_one_argv_element_and_run_nothing(tmp_path, src, daemon_factory):
    rec, log = make_recorder(tmp_path), tmp_path / "actions.log"
    d = daemon_factory([cmd_sync(src, rec, log)])
    r = Records(log)
    r.wait_new(lambda rs: len(rs) >= 1, "the startup action", d)
    settle(d)
    r.seen = len(r.all())

    for n in HOSTILE_NAMES:
        write(os.path.join(b(src), n), b"x")
    got = r.wait_new(
        lambda rs: {x[1] for x in rs if x[0] == b"create"} >= set(HOSTILE_NAMES),
        "a create for every hostile name",
        d,
    )
    settle(d)
    got += r.wait_new(lambda rs: True, "nothing", d)
    # every record has exactly the template's 6 elements: no name was split or expanded
    assert sorted(got) == sorted(expect_path_record(b"create", src, n) for n in HOSTILE_NAMES)

    # and renames between hostile names: {from} and {to} verbatim
    os.rename(os.path.join(b(src), b"$(touch pwned)"), os.path.join(b(src), b"-n\n$(id)"))
    got = r.wait_new(lambda rs: any(x[0] == b"move" for x in rs), "move record", d)
    settle(d)
    got += r.wait_new(lambda rs: True, "nothing", d)
    s = b(src)
    assert got == [
        [
            b"move",
            os.path.join(s, b"$(touch pwned)"),
            os.path.join(s, b"-n\n$(id)"),
            b"-n\n$(id)",
            os.path.join(s, b"-n\n$(id)"),
        ]
    ], got

    d.stop()
    assert_no_leftovers(tmp_path)
    assert_not_pwned(tmp_path, src, d.cwd, Path.home())
    assert not os.path.lexists(os.path.join(b(src), b"pwned"))


def test_user_shell_command_gets_names_as_argv(tmp_path, src, daemon_factory):
    """The documented way to use a shell: the user's own ``sh -c`` with names as "$@"."""
    log = tmp_path / "sh.log"
    script = 'printf "%s\\0" "$@" >> "$0"'
    sync = sync_table(
        src,
        [],
        name=SYNC,
        mode="command",
        delay=DELAY,
        on_create=["/bin/sh", "-c", script, str(log), "{kind}", "{name}"],
    )
    d = daemon_factory([sync])
    names = [b"$(touch pwned)", b"a b\nc", b"-x"]
    for n in names:
        write(os.path.join(b(src), n), b"x")

    def records():
        try:
            parts = log.read_bytes().split(b"\0")[:-1]
        except FileNotFoundError:
            return None
        pairs = [tuple(parts[i : i + 2]) for i in range(0, len(parts), 2)]
        return pairs if len(pairs) >= len(names) else None

    pairs = wait_until(records, "three shell records", 90, context=d.describe)
    d.wait_idle(90)
    pairs = records()
    assert sorted(pairs) == sorted((b"create", n) for n in names)
    d.stop()
    assert_no_leftovers(tmp_path)
    assert_not_pwned(tmp_path, src, d.cwd)


def test_failing_action_is_reported_and_retried(tmp_path, src, daemon_factory):
    failer = make_recorder(tmp_path, "failer.py", FAILER)
    log, flag = tmp_path / "fail.log", tmp_path / "succeed-now"
    sync = sync_table(
        src,
        [],
        name=SYNC,
        mode="command",
        delay=0,
        on_create=[python(), str(failer), str(log), str(flag), "{kind}", "{name}"],
    )
    # Three failures alike make the target stuck, then retried from
    # retry_cap: 1 s, so the retry after the fix comes soon.
    d = daemon_factory([sync], timings={"retry_cap": 1.0})
    write(src / "doomed", b"x")

    def failing(st):
        ts = d.targets(st)
        return bool(ts) and ts[0].get("state") == "retrying" and ts[0].get("last_error")

    st = d.wait_for(failing, "the command target retrying with a last_error", 90)
    t = d.targets(st)[0]
    assert t["state"] == "retrying" and t["last_error"], t
    # retried: the action is called again
    wait_until(
        lambda: len(read_records(log)) >= 3,
        "the failing action to be called again",
        90,
        context=d.describe,
    )
    assert all(r == [b"create", b"doomed"] for r in read_records(log)), read_records(log)
    assert os.path.exists(src / "doomed")

    # once the action succeeds the error clears and the target goes idle
    flag.write_text("ok")
    st = d.wait_for(
        lambda st: all(t.get("state") == "idle" and not t.get("last_error") for t in d.targets(st)),
        "the target idle again with last_error cleared",
        120,
    )
    d.stop()
    assert_no_leftovers(tmp_path)


ACTION_MODULE = """
import os
from syncsup.syncer.actions import Action

LOG = {log!r}


class Recorder(Action):
    def _rec(self, *parts):
        line = " ".join(p.hex() if isinstance(p, bytes) else p for p in parts)
        fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(fd, (line + "\\n").encode())
        os.close(fd)

    def on_startup(self):
        self._rec("startup", "sync=" + self.sync.name)

    def on_create(self, path):
        assert isinstance(path, bytes)
        self._rec("create", path)

    def on_modify(self, path):
        self._rec("modify", path)

    def on_delete(self, path):
        self._rec("delete", path)

    def on_move(self, src, dst):
        self._rec("move", src, dst)
"""


def test_python_action_class(tmp_path, src, daemon_factory, monkeypatch):
    log = tmp_path / "pyaction.log"
    moddir = tmp_path / "pymods"
    moddir.mkdir()
    (moddir / "syncsup_test_actions.py").write_text(ACTION_MODULE.format(log=str(log)))
    # the daemon inherits os.environ (tests.helpers.daemon.syncsup_env prepends the checkout)
    monkeypatch.setenv("PYTHONPATH", str(moddir))
    sync = sync_table(
        src, [], name=SYNC, mode="command", delay=DELAY, action="syncsup_test_actions:Recorder"
    )
    d = daemon_factory([sync])

    def lines():
        try:
            return log.read_text().splitlines()
        except FileNotFoundError:
            return []

    a = b"a\n$(touch pwned)"
    c = b"\xff-b"
    ha, hc = a.hex(), c.hex()

    def started_or_failed(st):
        ts = d.targets(st)
        return bool(lines()) or any(t.get("last_error") for t in ts)

    st = d.wait_for(started_or_failed, "the startup call (or an error)", 90)
    errors = [t["last_error"] for t in d.targets(st) if t.get("last_error")]
    assert not errors, f"the Python action failed: {errors}"
    d.wait_idle(90)
    assert lines() == ["startup sync=" + SYNC]

    s = b(src)

    def append():
        with open(os.path.join(s, a), "ab") as f:
            f.write(b"2")

    steps = [
        (lambda: write(os.path.join(s, a), b"1"), [f"create {ha}"]),
        (append, [f"modify {ha}"]),
        (lambda: os.rename(os.path.join(s, a), os.path.join(s, c)), [f"move {ha} {hc}"]),
        (lambda: os.unlink(os.path.join(s, c)), [f"delete {hc}"]),
    ]
    for i, (do, want) in enumerate(steps):
        before = len(lines())
        do()
        wait_until(lambda n=before: len(lines()) > n, f"step {i} ({want})", 90,
                   context=d.describe)
        d.wait_idle(90)
        assert lines()[before:] == want, (i, lines())

    d.stop()
    assert_no_leftovers(tmp_path)
    assert_not_pwned(tmp_path, src, d.cwd)


def test_command_mode_with_target_placeholder(tmp_path, src, dst, daemon_factory):
    """A target is optional in command mode; when given, ``{target}`` is its path. A
    copying action (cp, never a shell) mirrors creations into it."""
    sync = sync_table(
        src,
        [dst],
        name=SYNC,
        mode="command",
        delay=DELAY,
        on_create=["/bin/cp", "-P", "--", "{path}", "{target}/{name}"],
        on_modify=["/bin/cp", "-P", "--", "{path}", "{target}/{name}"],
        on_delete=["/bin/rm", "-f", "--", "{target}/{name}"],
    )
    d = daemon_factory([sync])
    for n in (b"plain", b"$(touch pwned)", b"-rf", b"sp ace"):
        write(os.path.join(b(src), n), n * 3)
    wait_until(lambda: len(os.listdir(dst)) == 4, "four files copied", 90, context=d.describe)
    d.wait_idle(90)
    os.unlink(os.path.join(b(src), b"-rf"))
    wait_until(
        lambda: len(os.listdir(dst)) == 3, "the delete to be applied", 90, context=d.describe
    )
    d.wait_idle(90)
    for n in (b"plain", b"$(touch pwned)", b"sp ace"):
        with open(os.path.join(b(dst), n), "rb") as f:
            assert f.read() == n * 3
    d.stop()
    assert_no_leftovers(tmp_path)
    assert_not_pwned(tmp_path, src, dst, d.cwd)
