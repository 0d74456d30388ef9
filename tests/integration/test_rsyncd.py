"""rsync daemon targets (``host::module``, ``rsync://host:port/module``)
against a real ``rsync --daemon`` on 127.0.0.1 with ``auth users`` and a
secrets file: mirroring with churn and hostile names, a wrong password, a
daemon that dies, ``syncsup check``, and an imported Lsyncd config.

Every test ends with a byte-for-byte comparison of source and module and
with no process left behind (the daemon's included)."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from syncsup.collator.queue import REPEATS
from tests.helpers.churn import Churn, ChurnThread, assert_not_pwned
from tests.helpers.daemon import run_cli, sync_entry, write_config
from tests.helpers.procs import assert_no_leftovers, cmdline_of, processes_mentioning
from tests.helpers.rsyncd import MODULE, PASSWORD, USER, RsyncDaemon
from tests.helpers.sshd import free_port
from tests.helpers.tree import wait_converged, write

pytestmark = pytest.mark.timeout(300)

HOSTILE = [b"new\nline", b"back\\slash", b"it's \"quoted\"", b"$(touch pwned)", b"-leading",
           b"--delete", b"\xff\xfe-not-utf8", b"sp ace", b"#hash", b"host::module"]

# Failed transfers retried after 0.05 s, doubling to 0.5 s: the tests of a
# refusing or dead daemon see many retries without waiting out the usual
# backoff (which the collator's unit tests prove).
FAST_RETRIES = {"retry_base": 0.05, "retry_cap": 0.5}


@pytest.fixture
def rsyncd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RsyncDaemon]:
    """A private rsync daemon; outside the test's tmp_path, so the syncsup
    daemon's teardown (nothing left mentioning tmp_path) does not count it,
    and checked on its own here."""
    d = RsyncDaemon(tmp_path_factory.mktemp("rsyncd"))
    d.start()
    yield d
    d.close()
    assert_no_leftovers(d.dir)


def _daemon_sync(src: Path, rsyncd: RsyncDaemon, path: str = "www", **kw: object
                 ) -> dict[str, object]:
    entry = sync_entry(src, [rsyncd.url(path)], **kw)  # type: ignore[arg-type]
    entry["rsyncd"] = {"password_file": str(rsyncd.password_file)}
    return entry


def _target(d, spec: str) -> dict:
    return next(t for t in d.targets() if t["target"] == spec)


def _populate_hostile(src: Path) -> None:
    for i, name in enumerate(HOSTILE):
        raw = os.path.join(os.fsencode(src), name)
        write(raw, b"content %d\n" % i, mode=0o640 if i % 2 else 0o644)
        os.makedirs(raw + b".d/sub", exist_ok=True)
        write(raw + b".d/sub/f", b"in a hostile directory\n")
        os.symlink(name, raw + b".link")
    os.symlink(b"/nonexistent/abs\ntarget", os.path.join(os.fsencode(src), b"dangling"))


@pytest.mark.skipif(os.geteuid() != 0, reason="an exact mirror of absolute symlinks needs a "
                    "chrooted daemon, which only root can start")
def test_initial_sync_and_churn_mirror_to_the_module(tmp_path, src, rsyncd, daemon_factory):
    """Startup sync of a tree of hostile names and symlinks, then churn
    (renames, deletes, type changes): the module ends identical, renames
    arrive as rsync sends them, and no ssh or agent is ever started."""
    _populate_hostile(src)
    write(src / "owned", b"owner kept\n")
    os.lchown(src / "owned", 4321, 8765)
    c = Churn(src, 11)
    c.populate(n_files=80, n_dirs=12, big_every=40)
    target = rsyncd.module_path / "www"
    d = daemon_factory([_daemon_sync(src, rsyncd, delay=0.2)])
    wait_converged(src, target, timeout=150, on_timeout=d.describe)
    st = os.lstat(target / "owned")
    assert (st.st_uid, st.st_gid) == (4321, 8765)
    os.rename(src / "sp ace", src / "renamed \n away")
    os.rename(src / "sp ace.d", src / "-renamed dir")
    c = Churn(src, 12)  # knows the tree as it is now
    t = ChurnThread(c, 250, sleep_prob=0.4, max_sleep=0.02)
    t.start()
    t.join_checked(120)
    wait_converged(src, target, timeout=150, on_timeout=lambda: c.summary() + d.describe())
    assert _target(d, rsyncd.url("www"))["transport"] == "rsync"
    log = d.log_text()
    assert PASSWORD not in log
    ssh = [cmd for pid, cmd in processes_mentioning(tmp_path)
           if any(os.path.basename(a) == b"ssh" for a in cmdline_of(pid))]
    assert not ssh, f"ssh runs for an rsync daemon target: {ssh}"
    assert not list((tmp_path / "state").glob("cm-*")), "an ssh master's socket exists"
    assert "www: every change goes through rsync (an rsync daemon target)" in log, log
    d.stop()
    assert_no_leftovers(tmp_path)
    assert_not_pwned(tmp_path, src, target)
    wait_converged(src, target, timeout=5)


def test_a_wrong_password_is_reported_retried_and_never_done(src, rsyncd, daemon_factory,
                                                             tmp_path):
    """The daemon expects another password: the target retries (never
    done, never stuck), status shows rsync's "auth failed", and once the
    secrets file is fixed it converges without a restart."""
    write(src / "a.txt", b"first\n")
    write(src / "b.txt", b"second\n")
    rsyncd.set_password("not-what-the-client-sends")
    target = rsyncd.module_path / "www"
    # Retries come within a fraction of a second: what is proved is how a
    # refusal is classed (retried, never stuck, never done), not the pace.
    d = daemon_factory([_daemon_sync(src, rsyncd)], wait=False, timings=FAST_RETRIES)
    spec = rsyncd.url("www")
    d.wait_for(lambda st: "auth failed" in (_target(d, spec).get("last_error") or ""),
               "rsync's auth failure in status", 120)
    # More identical failures, with no change in between, than make a target
    # 'stuck' (shown failed, waiting ever longer between tries; a change
    # would end that, so the tree is written before the start): a daemon
    # that refuses is unreachable, retried within the usual backoff;
    # nothing is done, nothing arrived.
    d.wait_for(lambda st: _target(d, spec)["transfers"].get("retry", 0) >= REPEATS + 2,
               "repeated failures", 150)
    t = _target(d, spec)
    assert t["state"] in ("retrying", "startup", "syncing"), t
    assert "auth failed" in t["last_error"] and "the same failure" not in t["last_error"], t
    assert t["transfers"].get("ok", 0) == 0, t
    assert not target.exists() or not any(target.iterdir())
    rsyncd.set_password(PASSWORD)
    wait_converged(src, target, timeout=150, on_timeout=d.describe)
    d.wait_for(lambda st: _target(d, spec)["last_error"] is None, "last_error cleared", 60)
    d.stop()
    assert_no_leftovers(tmp_path)
    wait_converged(src, target, timeout=5)


def test_a_daemon_that_dies_is_retried_until_it_is_back(src, rsyncd, daemon_factory, tmp_path):
    write(src / "a.txt", b"before\n")
    target = rsyncd.module_path / "www"
    d = daemon_factory([_daemon_sync(src, rsyncd)], timings=FAST_RETRIES)
    wait_converged(src, target, timeout=120, on_timeout=d.describe)
    rsyncd.stop()
    write(src / "b.txt", b"while the daemon is down\n")
    (src / "a.txt").rename(src / "a-renamed.txt")
    spec = rsyncd.url("www")
    d.wait_for(lambda st: _target(d, spec)["last_error"] is not None, "the failure", 120)
    assert "failed to connect" in _target(d, spec)["last_error"]
    rsyncd.start()
    wait_converged(src, target, timeout=150, on_timeout=d.describe)
    d.stop()
    assert_no_leftovers(tmp_path)
    wait_converged(src, target, timeout=5)


def test_check_tells_ok_auth_failure_unknown_module_and_unreachable(tmp_path, src, rsyncd):
    write(src / "x", b"x\n")
    (rsyncd.module_path / "deep").mkdir()
    ok = {rsyncd.url("www"), rsyncd.url("deep/www")}
    down = f"rsync://{USER}@127.0.0.1:{free_port()}/{MODULE}/www"
    works = "the rsync daemon's module answers, the login works and it is not read only"
    targets = {rsyncd.url("www"): works,
               rsyncd.url("deep/www"): works,
               rsyncd.url("other", user="intruder"): "authentication failed (@ERROR: auth "
                                                     f"failed on module {MODULE})",
               rsyncd.url(module="nope"): "no such module on the daemon (@ERROR: Unknown "
                                          "module 'nope')",
               rsyncd.url(module="readonly"): "the module is read only",
               rsyncd.url("no/such/dir"): "no/such is not a directory in module mirror",
               down: "the rsync daemon is unreachable"}
    doc = {"settings": {"state_dir": str(tmp_path / "state")},
           "sync": [{**_daemon_sync(src, rsyncd), "targets": list(targets)}]}
    conf = write_config(tmp_path / "syncsup.toml", doc)
    r = run_cli("check", conf, timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    for spec, says in targets.items():
        mine = [ln for ln in lines if f"-> {spec}:" in ln]
        assert len(mine) == 1, (spec, lines)
        prefix = "ok: " if spec in ok else "problem: "
        assert mine[0].startswith(prefix) and says in mine[0], mine
    assert sorted(p.name for p in rsyncd.module_path.rglob("*")) == ["deep"], \
        "check wrote to the module"
    assert_no_leftovers(tmp_path)


def test_a_password_file_others_can_read_exits_78(tmp_path, src, rsyncd):
    rsyncd.password_file.chmod(0o644)
    doc = {"settings": {"state_dir": str(tmp_path / "state")}, "sync": [_daemon_sync(src, rsyncd)]}
    conf = write_config(tmp_path / "syncsup.toml", doc)
    for command in ("check", "start"):
        r = run_cli(command, conf, timeout=60)
        assert r.returncode == 78, (command, r.stdout, r.stderr)
        assert "sync[0].rsyncd.password_file" in r.stderr and "chmod 600" in r.stderr
    rsyncd.password_file.chmod(0o600)
    assert_no_leftovers(tmp_path)
    assert not (rsyncd.module_path / "www").exists()


def test_an_imported_lsyncd_config_mirrors_to_the_daemon(tmp_path, src, rsyncd, daemon_factory):
    _populate_hostile(src)
    lua = tmp_path / "lsyncd.conf.lua"
    lua.write_text(f'''settings {{ nodaemon = true }}
sync {{
    default.rsync,
    source = "{src}",
    target = "{USER}@127.0.0.1::{MODULE}/imported",
    delay = 1,
    rsync = {{ archive = true, password_file = "{rsyncd.password_file}" }},
}}
''')
    r = run_cli("import-lsyncd", lua, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    doc = tomllib.loads(r.stdout)
    sync = doc["sync"][0]
    assert sync["targets"] == [f"{USER}@127.0.0.1::{MODULE}/imported"]
    assert sync["rsyncd"] == {"password_file": str(rsyncd.password_file)}
    sync["rsyncd"]["port"] = rsyncd.port  # the fixture's daemon is not on 873
    target = rsyncd.module_path / "imported"
    d = daemon_factory([sync], settings_override={"state_dir": str(tmp_path / "state")})
    wait_converged(src, target, timeout=150, on_timeout=d.describe)
    write(src / "later", b"after the startup sync\n")
    (src / "sp ace").rename(src / "moved")
    wait_converged(src, target, timeout=150, on_timeout=d.describe)
    d.stop()
    assert_no_leftovers(tmp_path)
