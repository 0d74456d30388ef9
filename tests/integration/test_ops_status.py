"""Operations: ``syncsup status`` fields against a running daemon,
pause / resume (changes recorded, nothing sent, lag and pending visible),
``syncsup stop``, control-command errors, and the status file."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest

from tests.helpers.daemon import (
    COMPONENT_ROLES,
    COMPONENT_STATES,
    TARGET_STATES,
    run_cli,
    sync_entry,
)
from tests.helpers.procs import assert_no_leftovers, cmdline_of
from tests.helpers.tree import diff_trees, snapshot, wait_converged

pytestmark = pytest.mark.timeout(240)

TARGET_STATES_OPS = (*TARGET_STATES, "paused")


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _target(st: dict, spec: str) -> dict:
    for s in st["syncs"]:
        for t in s["targets"]:
            if t["target"] == spec:
                return t
    raise AssertionError(f"no target {spec!r} in status: {json.dumps(st, indent=1)}")


def _cli_ok(*args):
    r = run_cli(*args, timeout=60)
    assert r.returncode == 0, (
        f"syncsup {' '.join(map(str, args))} exited {r.returncode}: {r.stdout}{r.stderr}"
    )
    return r


def converge(d, src, *dsts, timeout: float = 120):
    return wait_converged(src, dsts, timeout=timeout, on_timeout=d.describe)


def check_status_document(st: dict, d, src: Path, specs: list[str]) -> None:
    """Every field docs/status.md promises, with its type."""
    assert st.get("version") == 1, st
    assert st.get("config") == str(d.config), st
    assert _num(st.get("started")) and st["started"] <= time.time(), st

    comps = st["components"]
    names = {c["name"] for c in comps}
    assert names == {"supervisor", "collator", "syncer", "watcher"}, names
    for c in comps:
        assert set(c) >= {"name", "role", "pid", "state", "restarts", "uptime", "last_exit"}, c
        assert c["role"] in COMPONENT_ROLES, c
        assert (
            c["name"] == "supervisor"
            if c["role"] == "supervisor"
            else c["name"] == c["role"]
        ), c
        assert c["state"] in COMPONENT_STATES, c
        assert c["state"] == "running", f"nothing was killed, yet: {c}"
        assert _int(c["pid"]) and c["pid"] > 0, c
        assert _int(c["restarts"]) and c["restarts"] == 0, c
        assert _num(c["uptime"]) and c["uptime"] >= 0, c
        assert c["last_exit"] is None, c
        if c["role"] == "supervisor":
            assert c["pid"] == d.pid, c
        else:
            assert f"syncsup.{c['role']}".encode() in b"\0".join(cmdline_of(c["pid"])), c

    (s,) = st["syncs"]
    assert set(s) >= {
        "name",
        "source",
        "mode",
        "watches",
        "unwatched",
        "watch_limit_needed",
        "overflows",
        "rescans",
        "targets",
    }, s
    assert (s["name"], s["source"], s["mode"]) == ("www", str(src), "rsync"), s
    # src, src/sub, src/sub/deeper
    assert _int(s["watches"]) and s["watches"] >= 3, s
    assert s["unwatched"] == 0, s
    assert s["watch_limit_needed"] is None, s
    assert s["overflows"] == 0, s
    assert _int(s["rescans"]) and s["rescans"] >= 1, f"the startup sync is a rescan: {s}"
    assert [t["target"] for t in s["targets"]] == specs, s
    for t in s["targets"]:
        assert set(t) >= {
            "target",
            "state",
            "pending",
            "lag",
            "last_sync",
            "last_error",
            "transfers",
            "bytes_sent",
        }, t
        assert t["state"] in TARGET_STATES_OPS, t
        assert _int(t["pending"]) and t["pending"] >= 0, t
        assert t["lag"] is None or (_num(t["lag"]) and t["lag"] >= 0), t
        assert t["last_sync"] is None or _num(t["last_sync"]), t
        assert t["last_error"] is None or isinstance(t["last_error"], str), t
        assert isinstance(t["transfers"], dict), t
        assert all(k in ("ok", "retry", "fatal") and _int(v) for k, v in t["transfers"].items()), t
        assert _int(t["bytes_sent"]) and t["bytes_sent"] >= 0, t


def test_status_fields_and_pause_resume_lag(tmp_path, src, dst, daemon_factory):
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "sub" / "a.bin").write_bytes(os.urandom(50_000))
    d = daemon_factory([sync_entry(src, [dst])])
    converge(d, src, dst)
    st = d.wait_idle()
    check_status_document(st, d, src, [str(dst)])
    t0 = _target(st, str(dst))
    assert t0["state"] == "idle" and t0["pending"] == 0 and t0["lag"] is None, t0
    assert _num(t0["last_sync"]) and t0["last_sync"] <= time.time(), t0
    assert t0["last_error"] is None, t0
    assert t0["transfers"].get("ok", 0) >= 1, t0
    assert t0["bytes_sent"] >= 50_000, f"the initial sync sent a 50 kB random file: {t0}"

    # ---- pause: changes are recorded (pending, lag) but nothing is sent
    r = _cli_ok("pause", d.config)
    assert r.stdout.strip(), "pause printed nothing"
    d.wait_for(lambda s: _target(s, str(dst))["state"] == "paused", "target paused", 60)
    payload = {f"p{i}.bin": os.urandom(20_000) for i in range(3)}
    for name, data in payload.items():
        (src / name).write_bytes(data)
    (src / "sub" / "a.bin").unlink()
    st1 = d.wait_for(
        lambda s: _target(s, str(dst))["pending"] >= 4, "4 changes recorded while paused", 60
    )
    t1 = _target(st1, str(dst))
    assert t1["state"] == "paused", t1
    assert _num(t1["lag"]) and t1["lag"] >= 0, f"pending work must have a lag: {t1}"
    time.sleep(2.0)
    st2 = d.status()
    t2 = _target(st2, str(dst))
    assert t2["state"] == "paused" and t2["pending"] >= 4, t2
    assert t2["lag"] > t1["lag"], f"lag must grow while nothing is sent: {t1} then {t2}"
    assert t2["transfers"] == t0["transfers"], f"a transfer ran while paused: {t0} -> {t2}"
    assert t2["last_sync"] == t0["last_sync"], (t0, t2)
    for name in payload:
        assert not (dst / name).exists(), f"{name} was sent while paused"
    assert (dst / "sub" / "a.bin").exists(), "a delete was sent while paused"
    # the human table says it too
    r = _cli_ok("status", d.config)
    row = [ln for ln in r.stdout.splitlines() if str(dst) in ln and "paused" in ln]
    assert row, f"no paused row for {dst} in:\n{r.stdout}"
    assert re.search(rf"\bpaused\s+{t2['pending']}\s", row[0]), (
        f"pending count {t2['pending']} not in the table row: {row[0]!r}"
    )
    # the components keep running; pausing restarts nothing
    assert all(c["state"] == "running" and c["restarts"] == 0 for c in st2["components"]), st2

    # ---- resume: everything recorded is sent
    r = _cli_ok("resume", d.config)
    converge(d, src, dst)
    st3 = d.wait_idle()
    t3 = _target(st3, str(dst))
    assert t3["pending"] == 0 and t3["lag"] is None and t3["last_error"] is None, t3
    assert t3["transfers"].get("ok", 0) > t0["transfers"].get("ok", 0), (t0, t3)
    assert t3["last_sync"] > t0["last_sync"], (t0, t3)
    assert t3["bytes_sent"] - t0["bytes_sent"] >= 60_000, (
        f"three 20 kB random files were sent: bytes_sent {t0['bytes_sent']} -> {t3['bytes_sent']}"
    )
    d.stop()
    assert_no_leftovers(tmp_path)
    assert not diff_trees(snapshot(src), snapshot(dst))


def test_pause_resume_one_target(tmp_path, src, daemon_factory):
    dst1, dst2 = tmp_path / "dst1", tmp_path / "dst2"
    dst1.mkdir()
    dst2.mkdir()
    (src / "base").write_bytes(b"base\n")
    d = daemon_factory([sync_entry(src, [dst1, dst2])])
    converge(d, src, dst1, dst2)
    d.wait_idle()

    _cli_ok("pause", "--sync", "www", "--target", str(dst2), d.config)
    d.wait_for(lambda s: _target(s, str(dst2))["state"] == "paused", "dst2 paused", 60)
    (src / "new").write_bytes(os.urandom(10_000))
    (src / "base").unlink()
    converge(d, src, dst1)  # the other target is not held back
    st = d.wait_for(
        lambda s: (
            _target(s, str(dst2))["pending"] >= 2 and _target(s, str(dst1))["state"] == "idle"
        ),
        "dst1 idle, dst2 holding 2",
        60,
    )
    assert _target(st, str(dst1))["pending"] == 0, st
    assert _target(st, str(dst2))["state"] == "paused", st
    assert (dst2 / "base").exists() and not (dst2 / "new").exists(), "dst2 got changes while paused"

    _cli_ok("resume", "--target", str(dst2), d.config)
    converge(d, src, dst1, dst2)
    d.wait_idle()
    d.stop()
    assert_no_leftovers(tmp_path)


def test_control_commands_errors_and_stop(tmp_path, src, dst, daemon_factory):
    (src / "f").write_bytes(b"x" * 100)
    d = daemon_factory([sync_entry(src, [dst])])
    converge(d, src, dst)
    for cmd in ("resync", "pause", "resume"):
        for extra in (
            ["--sync", "nosuch"],
            ["--target", str(tmp_path / "nosuch")],
            ["--sync", "www", "--target", "nosuch:/x"],
        ):
            r = run_cli(cmd, *extra, d.config, timeout=60)
            assert r.returncode == 1, f"{cmd} {extra} exited {r.returncode}: {r.stdout}{r.stderr}"
            assert r.stderr.strip() or r.stdout.strip(), f"{cmd} {extra}: no message"
    # the daemon is unaffected by the refused commands
    st = d.wait_idle()
    assert _target(st, str(dst))["state"] == "idle", st
    pids = [c["pid"] for c in st["components"]]

    r = run_cli("stop", d.config, timeout=60)
    assert r.returncode == 0, f"stop exited {r.returncode}: {r.stdout}{r.stderr}"
    assert d.proc is not None
    rc = d.proc.wait(30)
    assert rc == 0, f"syncsup start exited {rc} after `syncsup stop`\n{d.log_tail()}"
    assert_no_leftovers(tmp_path)
    for pid in pids:
        assert os.fsencode(d.config) not in b"\0".join(cmdline_of(pid)), f"pid {pid} survived"
    for args in (
        ("status", d.config),
        ("status", "--json", d.config),
        ("stop", d.config),
        ("pause", d.config),
        ("resume", d.config),
        ("resync", d.config),
    ):
        r = run_cli(*args, timeout=60)
        assert r.returncode == 3, (
            f"{args[0]} while stopped exited {r.returncode}: {r.stdout}{r.stderr}"
        )
    assert_no_leftovers(tmp_path)


def test_pause_survives_component_restarts(tmp_path, src, dst, daemon_factory):
    """An operator's pause holds even when the collator and syncer crash and
    are restarted; what was recorded meanwhile is sent on resume."""
    (src / "base").write_bytes(b"base\n")
    d = daemon_factory([sync_entry(src, [dst])])
    converge(d, src, dst)
    d.wait_idle()
    _cli_ok("pause", d.config)
    d.wait_for(lambda s: _target(s, str(dst))["state"] == "paused", "target paused", 60)
    for i in range(3):
        (src / f"held{i}").write_bytes(os.urandom(5000))
    d.wait_for(lambda s: _target(s, str(dst))["pending"] >= 3, "3 changes recorded", 60)
    for role in ("collator", "syncer"):
        killed = d.kill_component(role)
        assert killed is not None, d.describe()
        d.wait_for(
            lambda s, name=killed[0], pid=killed[1]: (
                any(
                    c["name"] == name and c["state"] == "running" and c["pid"] != pid
                    for c in s["components"]
                )
                and _target(s, str(dst))["state"] != "startup"
            ),
            f"{killed[0]} restarted",
            60,
        )
    time.sleep(2)  # room for a wrongly resumed transfer to happen
    t = _target(d.status(), str(dst))
    assert t["state"] == "paused" and t["pending"] >= 3, f"the pause was lost: {t}"
    for i in range(3):
        assert not (dst / f"held{i}").exists(), f"held{i} was sent while paused"
    _cli_ok("resume", d.config)
    converge(d, src, dst)
    d.wait_idle()
    d.stop()
    assert_no_leftovers(tmp_path)


def test_status_exits_1_when_the_daemon_does_not_answer(tmp_path, src, dst, daemon_factory):
    (src / "f").write_bytes(b"x")
    # the command waits [timings] command_timeout for the answer
    d = daemon_factory([sync_entry(src, [dst])], timings={"command_timeout": 2.0})
    converge(d, src, dst)
    d.wait_idle()
    os.kill(d.pid, signal.SIGSTOP)
    try:
        r = run_cli("status", d.config, timeout=60)
    finally:
        os.kill(d.pid, signal.SIGCONT)
    assert r.returncode == 1, (
        f"status of a stopped supervisor exited {r.returncode}: {r.stdout}{r.stderr}"
    )
    assert r.stderr.strip(), "no message"
    d.wait_idle()
    (src / "g").write_bytes(b"after SIGCONT\n")
    converge(d, src, dst)
    d.stop()
    assert_no_leftovers(tmp_path)


def test_status_file_rewritten_atomically(tmp_path, src, dst, settings, daemon_factory):
    (src / "f").write_bytes(b"x" * 100)
    status_file = tmp_path / "status.txt"
    d = daemon_factory(
        [sync_entry(src, [dst])],
        settings_override={**settings, "status_file": str(status_file), "status_interval": 1},
    )
    converge(d, src, dst)
    d.wait_idle()

    def read_until(pred, what, timeout=60.0):
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            try:
                text = status_file.read_text()
            except FileNotFoundError:
                text = ""
            if pred(text):
                return text
            time.sleep(0.2)
        raise AssertionError(
            f"status file never showed {what}; last content:\n{text}\n" + d.log_tail()
        )

    text = read_until(
        lambda t: re.search(rf"{re.escape(str(dst))}\s+idle\b", t) is not None, "the target idle"
    )
    for name in ("supervisor", "collator", "syncer", "watcher"):
        assert name in text, f"{name} missing from the status file:\n{text}"
    assert str(src) in text, text

    # Atomic rewrites: each version is a new inode (renamed into place), and a
    # reader never sees a partial file.
    first_ino = status_file.stat().st_ino
    inodes = {first_ino}
    deadline = time.monotonic() + 60
    reads = 0
    while (len(inodes) < 3 or reads < 300) and time.monotonic() < deadline:
        try:
            fd = os.open(status_file, os.O_RDONLY)
        except FileNotFoundError:
            raise AssertionError("the status file vanished during a rewrite") from None
        try:
            inodes.add(os.fstat(fd).st_ino)
            data = b""
            while chunk := os.read(fd, 65536):
                data += chunk
        finally:
            os.close(fd)
        reads += 1
        t = data.decode()
        assert t.endswith("\n") and "watcher" in t and str(dst) in t, (
            f"partial status file read:\n{t!r}"
        )
        time.sleep(0.01)
    assert len(inodes) >= 3, (
        f"the status file was not rewritten (by rename) every second: inodes {inodes}"
    )

    _cli_ok("pause", d.config)
    read_until(
        lambda t: re.search(rf"{re.escape(str(dst))}\s+paused\b", t) is not None,
        "the target paused",
    )
    _cli_ok("resume", d.config)
    read_until(
        lambda t: re.search(rf"{re.escape(str(dst))}\s+idle\b", t) is not None,
        "the target idle again",
    )
    d.stop()
    assert_no_leftovers(tmp_path)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".status.txt")]
    assert not leftovers, f"temporary status files left behind: {leftovers}"
