"""The command line contract: config errors, single instance, signals, status,
and a mirror started from the command line alone."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.helpers.daemon import (
    COMPONENT_ROLES,
    COMPONENT_STATES,
    TARGET_STATES,
    Daemon,
    run_cli,
    sync_entry,
    syncsup_argv,
    write_config,
)
from tests.helpers.procs import assert_no_leftovers, cmdline_of, kill_leftovers
from tests.helpers.tree import wait_converged

pytestmark = pytest.mark.timeout(180)


def _good(tmp_path: Path) -> dict:
    (tmp_path / "src").mkdir(exist_ok=True)
    (tmp_path / "dst").mkdir(exist_ok=True)
    return {
        "settings": {"state_dir": str(tmp_path / "state"), "log_level": "info"},
        "sync": [
            {
                "name": "www",
                "source": str(tmp_path / "src"),
                "mode": "rsync",
                "delay": 0,
                "delete": True,
                "targets": [str(tmp_path / "dst")],
                "exclude": ["*.swp"],
                "ssh": {"port": 22, "options": ["StrictHostKeyChecking=yes"]},
            }
        ],
    }


def _bad(mutate):
    def make(tmp_path):
        doc = _good(tmp_path)
        mutate(doc)
        return doc

    return make


def _del(d, k):
    del d[k]


BAD_CONFIGS = {
    # id: (mutation, key that must be named)
    "unknown-settings-key": (_bad(lambda d: d["settings"].update(frobnicate=1)), "frobnicate"),
    "unknown-sync-key": (_bad(lambda d: d["sync"][0].update(colour="blue")), "colour"),
    "negative-delay": (_bad(lambda d: d["sync"][0].update(delay=-1)), "delay"),
    "string-delay": (_bad(lambda d: d["sync"][0].update(delay="soon")), "delay"),
    "bogus-mode": (_bad(lambda d: d["sync"][0].update(mode="bogus")), "mode"),
    "missing-source": (_bad(lambda d: _del(d["sync"][0], "source")), "source"),
    "empty-targets": (_bad(lambda d: d["sync"][0].update(targets=[])), "targets"),
    "ssh-port-too-big": (_bad(lambda d: d["sync"][0]["ssh"].update(port=70000)), "port"),
    "ssh-port-zero": (_bad(lambda d: d["sync"][0]["ssh"].update(port=0)), "port"),
    "ssh-port-string": (_bad(lambda d: d["sync"][0]["ssh"].update(port="ssh")), "port"),
    "unknown-ssh-key": (_bad(lambda d: d["sync"][0]["ssh"].update(cipher="none")), "cipher"),
    "bad-log-level": (_bad(lambda d: d["settings"].update(log_level="loud")), "log_level"),
    "delete-not-bool": (_bad(lambda d: d["sync"][0].update(delete="sometimes")), "delete"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_exits_78_naming_the_key(case, tmp_path):
    mutate, key = BAD_CONFIGS[case]
    cfg = write_config(tmp_path / "bad.toml", mutate(tmp_path))
    r = run_cli("start", cfg, timeout=30, cwd=tmp_path)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 78, (
        f"exit {r.returncode}, stderr:\n{r.stderr}\nconfig:\n{cfg.read_text()}"
    )
    assert len(lines) == 1, f"expected exactly one stderr line, got {len(lines)}:\n{r.stderr}"
    assert key in lines[0], f"stderr does not name {key!r}: {lines[0]!r}"
    assert_no_leftovers(tmp_path)


def test_toml_syntax_error_exits_78(tmp_path):
    cfg = tmp_path / "broken.toml"
    cfg.write_text('[settings]\nstate_dir = "unterminated\n')
    r = run_cli("start", cfg, timeout=30)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 78, r.stderr
    assert len(lines) == 1, r.stderr
    assert_no_leftovers(tmp_path)


def test_second_start_on_same_state_dir_refuses(tmp_path, src, dst, daemon_factory):
    d = daemon_factory([sync_entry(src, [dst])])
    # same config file
    r = run_cli("start", d.config, timeout=30)
    assert r.returncode == 1, f"second start exited {r.returncode}: {r.stdout}{r.stderr}"
    assert "already running" in (r.stdout + r.stderr), r.stdout + r.stderr
    # another config file that names the same state_dir
    other = write_config(tmp_path / "other.toml", d.doc)
    r = run_cli("start", other, timeout=30)
    assert r.returncode == 1, (
        f"second start (other file) exited {r.returncode}: {r.stdout}{r.stderr}"
    )
    assert "already running" in (r.stdout + r.stderr), r.stdout + r.stderr
    # the first one is unharmed
    st = d.status()
    assert st["components"], st
    (src / "after").write_bytes(b"still syncing")
    wait_converged(src, dst, timeout=120, on_timeout=d.describe)
    d.stop()
    assert_no_leftovers(tmp_path)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_cleanly(sig, tmp_path, src, dst, sshd, daemon_factory):
    dst_ssh = tmp_path / "dst_ssh"
    dst_ssh.mkdir()
    (src / "f").write_bytes(os.urandom(1000))
    d = daemon_factory([sync_entry(src, [dst, sshd.target(dst_ssh)], ssh=sshd.ssh_config())])
    pids = [c["pid"] for c in d.components() if c.get("pid")]
    assert len(pids) >= 4, d.status()
    d.stop(sig)  # exit 0 within 10 s
    assert_no_leftovers(tmp_path)
    for pid in pids:
        assert os.fsencode(d.config) not in b"\0".join(cmdline_of(pid)), (
            f"component pid {pid} survived"
        )
    r = d.status_raw()
    assert r.returncode == 3, f"status after stop exited {r.returncode}: {r.stdout}{r.stderr}"


def test_signal_during_transfer_stops_cleanly(tmp_path, src, dst, daemon_factory):
    """SIGTERM while rsync is copying a large initial tree: still exit 0, nothing left."""
    for i in range(40):
        (src / f"big{i}").write_bytes(os.urandom(4 * 1024 * 1024))
    d = daemon_factory([sync_entry(src, [dst])], wait=False)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        st = d.try_status()
        if st and any(
            c.get("role") == "syncer" and c.get("state") == "running" for c in st["components"]
        ):
            break
        time.sleep(0.1)
    d.stop()
    assert_no_leftovers(tmp_path)


def test_status_when_not_running_exits_3(tmp_path):
    cfg = write_config(tmp_path / "syncsup.toml", _good(tmp_path))
    for args in (("status", "--json", cfg), ("status", cfg)):
        r = run_cli(*args, timeout=30)
        assert r.returncode == 3, f"{args[:-1]} exited {r.returncode}: {r.stdout}{r.stderr}"
        assert (r.stdout + r.stderr).strip(), "status printed no message"
    assert_no_leftovers(tmp_path)


def test_status_json_shape(tmp_path, src, dst, sshd, daemon_factory):
    dst_ssh = tmp_path / "dst_ssh"
    dst_ssh.mkdir()
    remote = sshd.target(dst_ssh)
    d = daemon_factory([sync_entry(src, [dst, remote], ssh=sshd.ssh_config())])
    st = d.status()
    assert set(st) >= {"components", "syncs"}, st

    comps = st["components"]
    roles = {c["role"] for c in comps}
    assert roles >= set(COMPONENT_ROLES), f"roles present: {roles}"
    for c in comps:
        assert set(c) >= {"name", "role", "pid", "state", "restarts", "uptime"}, c
        assert isinstance(c["name"], str) and c["name"], c
        assert c["role"] in COMPONENT_ROLES, c
        assert c["pid"] is None or (isinstance(c["pid"], int) and not isinstance(c["pid"], bool)), c
        assert c["state"] in COMPONENT_STATES, c
        assert isinstance(c["restarts"], int) and c["restarts"] >= 0, c
        assert c["uptime"] is None or isinstance(c["uptime"], (int, float)), c
    assert len({c["name"] for c in comps}) == len(comps), "component names must be unique"

    sup = [c for c in comps if c["role"] == "supervisor"]
    assert len(sup) == 1 and sup[0]["pid"] == d.pid, f"supervisor is the started process: {sup}"
    for c in comps:
        if c["role"] != "supervisor" and c["state"] == "running":
            argv = cmdline_of(c["pid"])
            joined = b"\0".join(argv)
            assert f"syncsup.{c['role']}".encode() in joined, f"{c}: cmdline {argv}"
            assert os.fsencode(d.config) in joined, f"{c}: config path not in cmdline {argv}"

    syncs = st["syncs"]
    assert len(syncs) == 1, syncs
    s = syncs[0]
    assert s["name"] == "www" and s["source"] == str(src), s
    assert [t["target"] for t in s["targets"]] == [str(dst), remote], s
    for t in s["targets"]:
        assert set(t) >= {"target", "state", "pending", "last_sync", "last_error"}, t
        assert t["state"] in TARGET_STATES and t["state"] != "startup", t
        assert isinstance(t["pending"], int) and t["pending"] >= 0, t
        assert t["last_sync"] is None or isinstance(t["last_sync"], (int, float)), t
        assert t["last_error"] is None or isinstance(t["last_error"], str), t
    d.wait_idle()
    ts = d.targets()
    assert all(isinstance(t["last_sync"], (int, float)) for t in ts), (
        f"initial sync done but no last_sync: {ts}"
    )
    d.stop()
    assert_no_leftovers(tmp_path)


def test_status_human_readable(tmp_path, src, dst, daemon_factory):
    d = daemon_factory([sync_entry(src, [dst], name="webroot")])
    r = d.status_raw(as_json=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "webroot" in r.stdout, r.stdout
    assert str(dst) in r.stdout, r.stdout
    with pytest.raises(json.JSONDecodeError):
        json.loads(r.stdout)
    d.stop()
    assert_no_leftovers(tmp_path)


def test_relative_paths_resolve_against_config_dir(tmp_path, daemon_factory):
    """source, targets and state_dir relative to the config file's folder, not the cwd."""
    (tmp_path / "src").mkdir()
    (tmp_path / "dst").mkdir()
    (tmp_path / "src" / "hello").write_bytes(b"hi")
    d = daemon_factory(
        [sync_entry("../src", ["../dst"])],
        settings_override={"state_dir": "../state", "log_level": "info"},
        config=tmp_path / "etc" / "syncsup.toml",
    )  # the daemon's cwd is tmp_path/cwd
    assert (tmp_path / "state").is_dir()
    wait_converged(tmp_path / "src", tmp_path / "dst", timeout=120, on_timeout=d.describe)
    st = d.status()
    assert st["syncs"][0]["source"] == str(tmp_path / "src"), st["syncs"][0]
    d.stop()
    assert_no_leftovers(tmp_path)


def test_status_sees_restart_after_kill(tmp_path, src, dst, daemon_factory):
    d = daemon_factory([sync_entry(src, [dst])])
    for role in ("watcher", "collator", "syncer"):
        before = {c["name"]: c for c in d.components(role)}
        hit = d.kill_component(role)
        assert hit is not None, f"no running {role} to kill: {d.status()}"
        name, pid = hit

        def restarted(st, name=name, pid=pid, before=before):
            c = {c["name"]: c for c in st["components"]}.get(name)
            return (
                c is not None
                and c["state"] == "running"
                and c["pid"] not in (None, pid)
                and (c["restarts"] > before[name]["restarts"])
            )

        d.wait_for(restarted, f"{name} to be restarted after SIGKILL", timeout=60)
        (src / f"after-{role}").write_bytes(role.encode())
        wait_converged(src, dst, timeout=120, on_timeout=d.describe)
    d.stop()
    assert_no_leftovers(tmp_path)


def test_start_with_missing_config_file(tmp_path):
    r = run_cli("start", tmp_path / "nope.toml", timeout=30)
    assert r.returncode != 0
    assert (r.stdout + r.stderr).strip()


# ------------------------------------------- start --source/--target (no config file)
class AdHocDaemon(Daemon):
    """``syncsup start --source ... --target ...``: the daemon writes its own
    config, at ``config`` (in the state directory the test names with
    ``--state-dir``: as root the default is /var/lib/syncsup). HOME and
    XDG_STATE_HOME point into tmp_path, so nothing reaches the real ones."""

    def __init__(self, tmp_path: Path, args: list[str]) -> None:
        super().__init__(tmp_path, None, tmp_path / "state" / "sync.toml")
        self.args = args
        self.env.update(HOME=str(tmp_path / "home"), XDG_STATE_HOME=str(tmp_path / "xdg"))

    def start_argv(self) -> list[str]:
        return syncsup_argv("start", *self.args)


@pytest.fixture
def adhoc_daemon(tmp_path, request):
    made: list[AdHocDaemon] = []
    request.node._syncsup_daemons = made

    def make(*args: str) -> AdHocDaemon:
        d = AdHocDaemon(tmp_path, list(args))
        made.append(d)
        return d

    yield make
    for d in made:
        if d.running:
            d._kill_hard()
    kill_leftovers(tmp_path)


def _adhoc_run(tmp_path: Path, *args: str | os.PathLike):
    """``syncsup start`` run to completion, its state (if any) under tmp_path."""
    return run_cli("start", *args, "--state-dir", tmp_path / "state", timeout=30, cwd=tmp_path)


def test_start_without_config_mirrors_and_stops(tmp_path, src, dst, adhoc_daemon):
    (src / "before").write_bytes(b"1")
    (src / "gone").write_bytes(b"2")
    # relative paths are taken from the working directory (tmp_path/cwd)
    args = ("--source", "../src", "--target", "../dst", "--delay", "0", "--state-dir", "../state")
    d = adhoc_daemon(*args)
    d.start()
    named = [ln for ln in d.log_text().splitlines() if str(d.config) in ln]
    assert len(named) == 1 and "config written to" in named[0], d.log_tail()
    assert (d.config.stat().st_mode & 0o777) == 0o600, oct(d.config.stat().st_mode)
    assert (d.config.parent.stat().st_mode & 0o777) == 0o700

    (src / "new").write_bytes(b"new")
    (src / "before").write_bytes(b"changed")
    (src / "gone").unlink()
    (src / "dir").mkdir()
    (src / "dir" / "deep").write_bytes(os.urandom(3000))
    wait_converged(src, dst, timeout=120, on_timeout=d.describe)

    r = run_cli("status", d.config, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    assert str(src) in r.stdout and str(dst) in r.stdout, r.stdout
    st = d.status()
    (sync,) = st["syncs"]
    assert sync["name"].startswith("adhoc-") and sync["source"] == str(src), sync
    assert [t["target"] for t in sync["targets"]] == [str(dst)], sync

    # the same command again: refused, the running daemon's config untouched
    written = d.config.read_bytes()
    again = list(args)
    again[again.index("--delay") + 1] = "5"
    r = run_cli("start", *again, timeout=30, cwd=d.cwd)
    assert r.returncode == 1 and "already running" in r.stderr, r.stdout + r.stderr
    assert d.config.read_bytes() == written
    d.stop()  # SIGTERM, exit 0
    assert_no_leftovers(tmp_path)
    assert not (tmp_path / "xdg").exists() and not (tmp_path / "home").exists()
    assert not Path("/var/lib/syncsup", sync["name"]).exists()


def test_start_without_config_missing_source_exits_78(tmp_path, dst):
    r = _adhoc_run(tmp_path, "--source", tmp_path / "nope", "--target", dst)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 78, r.stdout + r.stderr
    assert len(lines) == 1 and "sync[0].source" in lines[0], r.stderr
    assert not (tmp_path / "state").exists(), "a refused start wrote its state directory"
    assert_no_leftovers(tmp_path)


def test_start_without_config_target_inside_source_exits_78(tmp_path, src):
    r = _adhoc_run(tmp_path, "--source", src, "--target", src / "mirror")
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 78, r.stdout + r.stderr
    assert len(lines) == 1 and "sync[0].targets[0]" in lines[0], r.stderr
    assert "inside its own source" in lines[0], r.stderr
    assert not (tmp_path / "state").exists()
    assert_no_leftovers(tmp_path)


def test_start_without_config_bad_name_exits_78(tmp_path, src, dst):
    r = _adhoc_run(tmp_path, "--source", src, "--target", dst, "--name", "../escape")
    assert r.returncode == 78, r.stdout + r.stderr
    assert "sync[0].name" in r.stderr, r.stderr
    assert not (tmp_path / "state").exists() and not (tmp_path / "escape").exists()


@pytest.mark.parametrize("args", [
    ("CONFIG", "--source", "SRC", "--target", "DST"),
    ("CONFIG", "--delay", "0"),
    (),
    ("--source", "SRC"),
    ("--target", "DST"),
], ids=["config-and-source", "config-and-delay", "nothing", "no-target", "no-source"])
def test_start_usage_errors_exit_2(tmp_path, src, dst, args):
    cfg = write_config(tmp_path / "syncsup.toml", _good(tmp_path))
    subst = {"CONFIG": str(cfg), "SRC": str(src), "DST": str(dst)}
    r = run_cli("start", *[subst.get(a, a) for a in args], timeout=30, cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "usage: syncsup start CONFIG" in r.stderr, r.stderr
    assert "error: give " in r.stderr, r.stderr
    assert_no_leftovers(tmp_path)
