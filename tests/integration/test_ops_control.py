"""Operations: ``syncsup resync`` and SIGUSR1 repair changes made
behind the daemon's back (with ``--checksum``), SIGHUP reloads the config
(a new target converges; a broken config is refused and the old one keeps
running)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.helpers.daemon import Daemon, run_cli, sync_entry, write_config
from tests.helpers.procs import assert_no_leftovers
from tests.helpers.tree import diff_trees, snapshot, wait_converged

pytestmark = pytest.mark.timeout(240)


def converge(d, src, *dsts, timeout: float = 120):
    return wait_converged(src, dsts, timeout=timeout, on_timeout=d.describe)


def corrupt_keeping_size_and_mtime(p: Path) -> None:
    """Change a file's content behind the daemon's back so that rsync's quick
    check (size + mtime) cannot see it."""
    st = p.stat()
    data = bytearray(p.read_bytes())
    assert data, p
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    st2 = p.stat()
    assert (st2.st_size, st2.st_mtime_ns) == (st.st_size, st.st_mtime_ns)


def _pids(st: dict) -> dict[str, int]:
    return {c["name"]: c["pid"] for c in st["components"]}


def _make_tree(src: Path) -> None:
    (src / "d").mkdir()
    (src / "a.bin").write_bytes(os.urandom(30_000))
    (src / "d" / "b.txt").write_bytes(b"hello world\n" * 100)


def test_resync_command_repairs_target_changed_behind_our_back(tmp_path, src, daemon_factory):
    _make_tree(src)
    dst1, dst2 = tmp_path / "dst1", tmp_path / "dst2"
    dst1.mkdir()
    dst2.mkdir()
    d = daemon_factory([sync_entry(src, [dst1, dst2])])
    converge(d, src, dst1, dst2)
    d.wait_idle()

    corrupt_keeping_size_and_mtime(dst1 / "a.bin")
    corrupt_keeping_size_and_mtime(dst2 / "d" / "b.txt")
    assert diff_trees(snapshot(src), snapshot(dst1)) and diff_trees(snapshot(src), snapshot(dst2))

    # only dst1
    r = run_cli("resync", "--sync", "www", "--target", str(dst1), d.config, timeout=60)
    assert r.returncode == 0, f"resync exited {r.returncode}: {r.stdout}{r.stderr}"
    converge(d, src, dst1)
    d.wait_idle()
    assert diff_trees(snapshot(src), snapshot(dst2)), (
        "resync --target dst1 must leave dst2 alone (nothing else repairs it)"
    )

    # everything
    r = run_cli("resync", d.config, timeout=60)
    assert r.returncode == 0, f"resync exited {r.returncode}: {r.stdout}{r.stderr}"
    converge(d, src, dst1, dst2)
    st = d.wait_idle()
    assert all(c["restarts"] == 0 for c in st["components"]), st
    d.stop()
    assert_no_leftovers(tmp_path)
    assert not diff_trees(snapshot(src), snapshot(dst1))
    assert not diff_trees(snapshot(src), snapshot(dst2))


def test_sigusr1_resyncs_every_target(tmp_path, src, daemon_factory):
    _make_tree(src)
    dst1, dst2 = tmp_path / "dst1", tmp_path / "dst2"
    dst1.mkdir()
    dst2.mkdir()
    d = daemon_factory([sync_entry(src, [dst1, dst2])])
    converge(d, src, dst1, dst2)
    pids = _pids(d.wait_idle())

    corrupt_keeping_size_and_mtime(dst1 / "d" / "b.txt")
    corrupt_keeping_size_and_mtime(dst2 / "a.bin")
    os.kill(d.pid, signal.SIGUSR1)
    converge(d, src, dst1, dst2)
    st = d.wait_idle()
    assert d.running, "SIGUSR1 stopped the daemon"
    assert _pids(st) == pids, f"SIGUSR1 must not restart anything: {pids} -> {_pids(st)}"
    d.stop()
    assert_no_leftovers(tmp_path)
    assert not diff_trees(snapshot(src), snapshot(dst1))
    assert not diff_trees(snapshot(src), snapshot(dst2))


def _wait_log(d, start: int, needle: str, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = d.log_text()[start:]
        if needle.lower() in text.lower():
            return text
        if time.monotonic() >= deadline:
            raise AssertionError(f"{needle!r} never logged\n{d.log_tail()}")
        time.sleep(0.2)


def test_sighup_reload_adds_target_and_refuses_bad_config(tmp_path, src, daemon_factory):
    _make_tree(src)
    dst1, dst2 = tmp_path / "dst1", tmp_path / "dst2"
    dst1.mkdir()
    dst2.mkdir()
    d = daemon_factory([sync_entry(src, [dst1])])
    converge(d, src, dst1)
    st = d.wait_idle()
    old = _pids(st)

    # Changes made just before the reload must not be lost by it.
    (src / "pending-1").write_bytes(os.urandom(5000))
    (src / "d" / "b.txt").unlink()

    # ---- a valid new config: a second target
    new_doc = {**d.doc, "sync": [sync_entry(src, [dst1, dst2])]}
    write_config(d.config, new_doc)
    os.kill(d.pid, signal.SIGHUP)
    st = d.wait_for(
        lambda s: (
            [t["target"] for t in d.targets(s)] == [str(dst1), str(dst2)]
            and all(c["state"] == "running" for c in s["components"])
        ),
        "the reloaded config with two targets, all components running",
        120,
    )
    new = _pids(st)
    assert new["supervisor"] == old["supervisor"] == d.pid, (old, new)
    for name in ("collator", "syncer", "watcher"):
        assert new[name] != old[name], f"{name} was not restarted on SIGHUP: {old} -> {new}"
    converge(d, src, dst1, dst2)
    d.wait_idle()
    (src / "after-reload").write_bytes(b"new config in force\n")
    converge(d, src, dst1, dst2)
    reloaded = _pids(d.wait_idle())
    # `syncsup status` reads the config file too: while it holds a broken
    # config, ask through an identical copy of the good one (same state_dir).
    view = Daemon(tmp_path, new_doc, tmp_path / "view.toml")

    # ---- an invalid config: refused and logged, the running one stays
    mark = len(d.log_text())
    bad_doc = {**d.doc, "sync": [{**sync_entry(src, [dst1, dst2]), "delay": -1}]}
    write_config(d.config, bad_doc)
    os.kill(d.pid, signal.SIGHUP)
    logged = _wait_log(d, mark, "config error")
    assert "delay" in logged, f"the refused reload must name the key:\n{logged}"
    # A (wrong) restart would follow the refusal at once: by the time later
    # changes are mirrored it shows in the pids, with no fixed wait.
    (src / "after-bad-reload").write_bytes(os.urandom(3000))
    (src / "a.bin").unlink()
    converge(view, src, dst1, dst2)
    assert d.running, f"a bad config on SIGHUP stopped the daemon\n{d.log_tail()}"
    st = view.wait_idle()
    assert _pids(st) == reloaded, (
        f"a refused reload restarted components: {reloaded} -> {_pids(st)}"
    )
    assert [t["target"] for t in view.targets(st)] == [str(dst1), str(dst2)], st

    # ---- a TOML syntax error too
    mark = len(d.log_text())
    d.config.write_text("[settings\nthis is not toml")
    os.kill(d.pid, signal.SIGHUP)
    _wait_log(d, mark, "config error")
    (src / "after-syntax-error").write_bytes(b"still mirrored\n")
    converge(view, src, dst1, dst2)
    assert d.running, f"a broken config file on SIGHUP stopped the daemon\n{d.log_tail()}"
    assert _pids(view.wait_idle()) == reloaded

    # ---- a valid config that moves state_dir: needs a restart, so refused
    mark = len(d.log_text())
    moved = {**new_doc, "settings": {**new_doc["settings"], "state_dir": str(tmp_path / "st2")}}
    write_config(d.config, moved)
    os.kill(d.pid, signal.SIGHUP)
    _wait_log(d, mark, "state_dir")
    (src / "after-state-dir").write_bytes(b"still mirrored\n")
    converge(view, src, dst1, dst2)
    assert d.running, f"moving state_dir on SIGHUP stopped the daemon\n{d.log_tail()}"
    assert _pids(view.wait_idle()) == reloaded
    d.stop()
    assert_no_leftovers(tmp_path)
    assert not diff_trees(snapshot(src), snapshot(dst1))
    assert not diff_trees(snapshot(src), snapshot(dst2))
