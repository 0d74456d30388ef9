"""rsync daemon targets: how ``host::module`` and ``rsync://`` specs parse,
the config's refusals (each naming its key), the rsync argv (no ssh, the
password file, never a password), and how the daemon's answers are read."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from syncsup import config
from syncsup.check import _daemon_verdict
from syncsup.collator.queue import unreachable
from syncsup.config import ConfigError, Mode
from syncsup.syncer.agents import unusable
from syncsup.syncer.argv import rsync_argv
from syncsup.syncer.exitcodes import Outcome, classify
from syncsup.syncer.plan import Step, StepKind

BASE = Path("/base")


@pytest.mark.parametrize(("spec", "user", "host", "module", "path", "port", "dest"), [
    ("host::mod", None, "host", "mod", "", None, "rsync://host/mod/"),
    ("host::mod/", None, "host", "mod", "", None, "rsync://host/mod/"),
    ("u@host::mod/sub/dir", "u", "host", "mod", "sub/dir", None, "rsync://u@host/mod/sub/dir/"),
    ("host::/mod//a/./b/", None, "host", "mod", "a/b", None, "rsync://host/mod/a/b/"),
    ("rsync://host/mod", None, "host", "mod", "", None, "rsync://host/mod/"),
    ("rsync://u@host:8873/mod/x", "u", "host", "mod", "x", 8873, "rsync://u@host:8873/mod/x/"),
    ("rsync://[::1]:874/m", None, "::1", "m", "", 874, "rsync://[::1]:874/m/"),
    ("rsync://[fe80::1]/m", None, "fe80::1", "m", "", None, "rsync://[fe80::1]/m/"),
    ("[::1]::m/d", None, "::1", "m", "d", None, "rsync://[::1]/m/d/"),
    ("u@[2001:db8::7]::m", "u", "2001:db8::7", "m", "", None, "rsync://u@[2001:db8::7]/m/"),
    ("rsync://a b@h/my mod/d ir", "a b", "h", "my mod", "d ir", None,
     "rsync://a b@h/my mod/d ir/"),
])
def test_daemon_targets_parse(spec: str, user: str | None, host: str, module: str, path: str,
                              port: int | None, dest: str) -> None:
    t = config.parse_target(spec, "k", BASE)
    assert (t.user, t.host, t.module, t.path, t.port, t.spec) == (user, host, module, path,
                                                                  port, spec)
    assert t.is_daemon and t.is_remote and not t.over_ssh
    assert t.rsync_dest() == dest


def test_an_ssh_path_with_two_colons_is_still_ssh() -> None:
    """rsync reads ``host:/a::b`` as ssh (only ``::`` right after the host
    means a daemon), and so does syncsup."""
    t = config.parse_target("host:/a::b", "k", BASE)
    assert t.over_ssh and not t.is_daemon and t.path == "/a::b"


@pytest.mark.parametrize(("spec", "why"), [
    ("host::", "module"),
    ("host::/", "module"),
    ("host::-mod", "module"),
    ("-h::mod", "bad host"),
    ("-u@h::mod", "bad host"),
    ("h::mod/../etc", r"'\.\.'"),
    ("rsync://host", "missing module"),
    ("rsync://host/", "module"),
    ("rsync://host:0/m", "bad port"),
    ("rsync://host:99999/m", "bad port"),
    ("rsync://host:x/m", "bad port"),
    ("rsync://[::1/m", "bad host"),
    ("rsync://u:pw@host/m", "password does not belong"),
    ("rsync:///m", "bad host"),
    ("h::mo\\d", "module"),
])
def test_bad_daemon_targets(spec: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why) as exc:
        config.parse_target(spec, "sync[0].targets[1]", BASE)
    assert exc.value.key == "sync[0].targets[1]"


def _pwfile(tmp_path: Path, mode: int = 0o600) -> Path:
    p = tmp_path / "pw"
    p.write_text("secret\n")
    os.chmod(p, mode)
    return p


def _parse(tmp_path: Path, **sync: Any) -> config.Sync:
    doc = {"sync": [{"source": "/s", "targets": ["h::m"], **sync}]}
    return config.parse(doc, tmp_path / "c.toml").syncs[0]


def test_rsyncd_table(tmp_path: Path) -> None:
    pw = _pwfile(tmp_path)
    s = _parse(tmp_path, targets=["h::m", "rsync://h:900/m2"],
               rsyncd={"password_file": "pw", "port": 8730})
    assert s.rsyncd.password_file == pw
    assert [t.port for t in s.targets] == [8730, 900]  # the URL's own port wins
    assert s.targets[0].rsync_dest() == "rsync://h:8730/m/"


@pytest.mark.parametrize(("sync", "key", "why"), [
    ({"rsyncd": {"password_file": "missing"}}, "sync[0].rsyncd.password_file",
     "no such file"),
    ({"rsyncd": {"password_file": "."}}, "sync[0].rsyncd.password_file",
     "not a regular file"),
    ({"rsyncd": {"port": 0}}, "sync[0].rsyncd.port", "between 1 and 65535"),
    ({"rsyncd": {"pasword_file": "pw"}}, "sync[0].rsyncd.pasword_file", "did you mean"),
    ({"rsyncd": {"port": 873}, "targets": ["h:/p"]}, "sync[0].rsyncd",
     "only used with rsync daemon targets"),
    ({"mode": "direct"}, "sync[0].targets[0]", "needs mode = \"rsync\""),
    ({"mode": "rsyncssh"}, "sync[0].targets[0]", "renames cannot be replayed"),
    ({"ssh": {"confined": True}}, "sync[0].targets[0]", "cannot be confined"),
    ({"targets": ["h::m", "h::m/sub"]}, "sync[0].targets[1]", "overlaps"),
    ({"targets": [{"host": "h", "path": ":m"}]}, "sync[0].targets[0].path",
     "write an rsync daemon target as a string"),
])
def test_daemon_config_refusals(tmp_path: Path, sync: dict[str, Any], key: str,
                                why: str) -> None:
    with pytest.raises(ConfigError, match=why) as exc:
        _parse(tmp_path, **sync)
    assert exc.value.key == key


def test_distinct_modules_and_ports_do_not_overlap(tmp_path: Path) -> None:
    s = _parse(tmp_path, targets=["h::m", "h::m2", "rsync://h:874/m", "h::m3/a", "h::m3/b"])
    assert len(s.targets) == 5


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o602])
def test_a_password_file_others_can_read_is_refused(tmp_path: Path, mode: int) -> None:
    _pwfile(tmp_path, mode)
    with pytest.raises(ConfigError, match="chmod 600") as exc:
        _parse(tmp_path, rsyncd={"password_file": "pw"})
    assert exc.value.key == "sync[0].rsyncd.password_file"


@pytest.mark.skipif(os.geteuid() != 0, reason="rsync's rule for root")
def test_as_root_a_password_file_must_be_roots(tmp_path: Path) -> None:
    pw = _pwfile(tmp_path)
    os.chown(pw, 65534, -1)
    with pytest.raises(ConfigError, match="owned by root") as exc:
        _parse(tmp_path, rsyncd={"password_file": "pw"})
    assert exc.value.key == "sync[0].rsyncd.password_file"


def test_daemon_argv_has_no_ssh_and_no_password(tmp_path: Path) -> None:
    pw = _pwfile(tmp_path)
    s = _parse(tmp_path, targets=["u@h::m/d"], rsyncd={"password_file": "pw"})
    assert s.mode is Mode.RSYNC
    for step in (Step(StepKind.TREE, (b"",)), Step(StepKind.PATHS, (b"a",))):
        argv = rsync_argv(s, s.targets[0], step, "/l", startup=False)
        assert "-e" not in argv and not any(a.startswith(("--rsh", "ssh")) for a in argv)
        assert f"--password-file={pw}" in argv
        assert "--contimeout=10" in argv
        assert argv[-2:] == ["/s/", "rsync://u@h/m/d/"]
        assert not any("secret" in a for a in argv)


def test_a_daemon_connection_goes_without_nagles_delay(tmp_path: Path) -> None:
    """TCP_NODELAY for every daemon target (its handshake stalls 40 ms twice
    without), unless the options set socket options of their own, which
    a later --sockopts would override."""
    s = _parse(tmp_path, targets=["u@h::m/d"])
    argv = rsync_argv(s, s.targets[0], Step(StepKind.PATHS, (b"a",)), "/l", startup=False)
    assert "--sockopts=TCP_NODELAY" in argv
    own = _parse(tmp_path, targets=["u@h::m/d"], rsync={"extra": ["--sockopts=SO_SNDBUF=1"]})
    argv = rsync_argv(own, own.targets[0], Step(StepKind.PATHS, (b"a",)), "/l", startup=False)
    assert [a for a in argv if a.startswith("--sockopts")] == ["--sockopts=SO_SNDBUF=1"]
    local = _parse(tmp_path, targets=[str(tmp_path / "local")])
    argv = rsync_argv(local, local.targets[0], Step(StepKind.PATHS, (b"a",)), "/l",
                      startup=False)
    assert not any(a.startswith("--sockopts") for a in argv)


def test_without_a_password_file_none_is_passed(tmp_path: Path) -> None:
    s = _parse(tmp_path)
    argv = rsync_argv(s, s.targets[0], Step(StepKind.TREE, (b"",)), "/l", startup=True)
    assert not any(a.startswith("--password-file") for a in argv)
    assert argv[-1] == "rsync://h/m/"


def test_a_daemon_target_has_no_agent(tmp_path: Path) -> None:
    s = _parse(tmp_path, targets=["h::m", str(tmp_path / "local")])
    assert unusable(s, s.targets[0]) == "an rsync daemon target"
    assert unusable(s, s.targets[1]) is None


@pytest.mark.parametrize(("rc", "stderr"), [
    (5, "@ERROR: auth failed on module mirror\nrsync error: error starting client-server "
        "protocol (code 5) at main.c(1954) [sender=3.5.0]\n"),
    (5, "@ERROR: Unknown module 'nope'\nrsync error: error starting client-server protocol "
        "(code 5)\n"),
    (10, "rsync: [sender] failed to connect to 127.0.0.1 (127.0.0.1): Connection refused "
         "(111)\nrsync error: error in socket IO (code 10)\n"),
    (35, "rsync error: timeout waiting for daemon connection (code 35)\n"),
])
def test_a_daemon_that_refuses_is_retried_and_never_stuck(rc: int, stderr: str) -> None:
    assert classify(rc) is Outcome.RETRY
    assert unreachable(rc, stderr.replace("\n", " | "))


@pytest.mark.parametrize(("rc", "stderr", "want"), [
    (0, "", None),
    (5, "Password: @ERROR: auth failed on module mirror\nrsync error: ...(code 5)\n",
     "authentication failed (@ERROR: auth failed on module mirror)"),
    (5, "@ERROR: Unknown module 'nope'\nrsync error: (code 5)\n",
     "no such module on the daemon (@ERROR: Unknown module 'nope')"),
    (10, "rsync: [sender] failed to connect to 127.0.0.1 (127.0.0.1): Connection refused\n",
     "the rsync daemon is unreachable (rsync: [sender] failed to connect"),
    (35, "rsync error: timeout waiting for daemon connection (code 35)\n",
     "the rsync daemon is unreachable (rsync error: timeout"),
    (1, "ERROR: module is read only\nrsync error: syntax or usage error (code 1)\n",
     "the module is read only"),
    (12, "", "rsync exited 12"),
])
def test_check_tells_the_daemons_answers_apart(rc: int, stderr: str, want: str | None) -> None:
    got = _daemon_verdict(rc, stderr)
    if want is None:
        assert got is None
    else:
        assert got is not None and got.startswith(want), got


def test_the_unit_sandbox_opens_the_daemons_address_and_password_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``syncsup unit``: the daemon's host is allowed by address like an ssh
    host, and a password file under a home directory keeps it readable."""
    from syncsup import unit

    _pwfile(tmp_path)
    monkeypatch.setattr(unit, "_addresses", lambda host: {"h": ["192.0.2.7"]}[host])
    monkeypatch.setattr(unit, "_HOME", (str(tmp_path),))
    monkeypatch.setattr(unit, "nameservers", lambda: ["192.0.2.53"])
    conf = config.parse({"settings": {"state_dir": "/var/lib/syncsup/www"},
                         "sync": [{"source": "/srv/www", "targets": ["u@h::m/www"],
                                   "rsyncd": {"password_file": "pw"}}]}, tmp_path / "c.toml")
    text = unit.dropin(conf)
    # (the resolvers too: the daemon's host is a name, looked up at each connection)
    assert "IPAddressAllow=localhost 192.0.2.7 192.0.2.53" in text.splitlines()
    assert "ProtectHome=read-only" in text.splitlines()
    assert "ReadWritePaths" not in text
