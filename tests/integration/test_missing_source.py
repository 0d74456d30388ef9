"""A source missing at start (a network mount that comes up late) does not
stop the daemon, nor hold up its other syncs: that sync waits, says so in
the log and in systemd's STATUS=, deletes nothing on its targets, and runs
its startup sync once the source appears. ``check`` reports it; a source
path that is not a directory is still a config error (exit 78)."""

from __future__ import annotations

import os

import pytest

from tests.helpers.daemon import run_cli, sync_entry, write_config
from tests.helpers.procs import assert_no_leftovers
from tests.helpers.tree import snapshot, wait_converged
from tests.integration.test_ops_observe import NotifyListener, poll, start_with_env

pytestmark = pytest.mark.timeout(240)


def test_a_missing_source_at_start_is_waited_for(tmp_path, settings, daemon_factory):
    ok_src, late_src = tmp_path / "src-ok", tmp_path / "mnt" / "late"
    ok_dst, late_dst = tmp_path / "dst-ok", tmp_path / "dst-late"
    ok_src.mkdir()
    (ok_src / "a").write_bytes(os.urandom(3000))
    late_dst.mkdir()
    (late_dst / "keep.txt").write_bytes(b"already mirrored before the restart\n")
    syncs = [sync_entry(ok_src, [ok_dst], name="a"), sync_entry(late_src, [late_dst], name="b")]
    listener = NotifyListener(tmp_path / "notify.sock")
    try:
        d = daemon_factory(syncs, start=False)
        r = run_cli("check", d.config, timeout=120)
        assert r.returncode == 1, r.stdout + r.stderr
        problems = [ln for ln in r.stdout.splitlines() if ln.startswith("problem:")]
        assert len(problems) == 1 and "sync[1].source" in problems[0] \
            and "waits for it" in problems[0], r.stdout

        start_with_env(d, {"NOTIFY_SOCKET": str(listener.path)}, wait=False)

        def ctx():
            return listener.describe() + "\n" + d.describe()

        # The other sync runs, and READY=1 does not wait for the late source.
        wait_converged(ok_src, ok_dst, timeout=120, on_timeout=ctx)
        poll(lambda: "READY=1" in listener.fields(), "READY=1", 120, context=ctx)
        poll(lambda: f"waiting for source {late_src}" in listener.last_status(),
             "STATUS= naming the missing source", 60, context=ctx)
        assert "is missing; waiting for it" in d.log_text(), d.log_tail()
        assert snapshot(late_dst) == {b"keep.txt": snapshot(late_dst)[b"keep.txt"]}, \
            "the target of a missing source was changed"

        # The mount comes up: the startup sync runs.
        late_src.mkdir(parents=True)
        (late_src / "sub").mkdir()
        (late_src / "sub" / "f").write_bytes(os.urandom(5000))
        wait_converged(late_src, late_dst, timeout=120, on_timeout=ctx)
        poll(lambda: "waiting" not in listener.last_status(), "STATUS= without waiting", 60,
             context=ctx)
        restarts = {c["role"]: c["restarts"] for c in d.components()}
        assert not any(restarts.values()), restarts
        assert d.stop() == 0
    finally:
        listener.close()
    assert_no_leftovers(tmp_path)


def test_a_source_that_is_not_a_directory_is_a_config_error(tmp_path, dst, settings):
    not_dir = tmp_path / "file"
    not_dir.write_bytes(b"x")
    conf = write_config(tmp_path / "syncsup.toml", {
        "settings": settings, "sync": [sync_entry(not_dir, [dst])]})
    r = run_cli("start", conf, timeout=60)
    assert r.returncode == 78, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "sync[0].source" in lines[0] \
        and "is not a directory" in lines[0], r.stderr
    assert os.listdir(dst) == []
    assert_no_leftovers(tmp_path)
