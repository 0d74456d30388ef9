"""import-lsyncd's mapping as pure logic: recorded Lsyncd syncs (as the Lua
sandbox hands them over, after Lsyncd's inheritance) in, a syncsup TOML
document and findings out. Every generated document must pass syncsup's
own config parser."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from syncsup import config as cfg
from syncsup.lsyncd import render
from syncsup.lsyncd._lua import LuaFunction, Recorded, RecordedSync
from syncsup.lsyncd._mapping import RSYNC_EXIT, SSH_EXIT, map_config

CWD = Path("/work/here")


def fn(name: str) -> LuaFunction:
    return LuaFunction(builtin=name)


def rsync_layer(**over: Any) -> dict[Any, Any]:
    """A sync{default.rsync, ...} as Lsyncd's inheritance resolves it."""
    base: dict[Any, Any] = {
        "action": fn("default.rsync.action"), "init": fn("default.rsync.init"),
        "prepare": fn("default.rsync.prepare"), "collect": fn("default.collect"),
        "checkgauge": {}, "delete": True, "exitcodes": dict(RSYNC_EXIT), "delay": 15,
        "maxDelays": 1000, "maxProcesses": 1,
        "rsync": {"binary": "/usr/bin/rsync", "links": True, "times": True,
                  "protect_args": True},
        "source": "/srv/www", "target": "/mnt/www",
    }
    rsync_over = over.pop("rsync", None)
    base.update(over)
    if rsync_over is not None:
        base["rsync"] = {**base["rsync"], **rsync_over}
    return base


def rsyncssh_layer(**over: Any) -> dict[Any, Any]:
    base = rsync_layer()
    del base["target"]
    base.update({"action": fn("default.rsyncssh.action"),
                 "prepare": fn("default.rsyncssh.prepare"),
                 "collect": fn("default.rsyncssh.collect"), "exitcodes": False,
                 "rsyncExitCodes": dict(RSYNC_EXIT), "sshExitCodes": dict(SSH_EXIT),
                 "onMove": True, "ssh": {"binary": "/usr/bin/ssh", "_extra": {}},
                 "host": "backup@h1", "targetdir": "/srv/www"})
    base.update(over)
    return base


def direct_layer(**over: Any) -> dict[Any, Any]:
    base = rsync_layer()
    base.update({"action": fn("default.direct.action"), "prepare": fn("default.direct.prepare"),
                 "collect": fn("default.direct.collect"), "rsyncExitCodes": dict(RSYNC_EXIT),
                 "delay": 1, "onMove": True})
    del base["exitcodes"]
    base.update(over)
    return base


def run(*configs: dict[Any, Any], settings: dict[str, Any] | None = None,
        assigned: bool = False, from_settings: frozenset[str] = frozenset()):
    rec = Recorded(settings=settings or {}, settings_assigned=assigned,
                   syncs=[RecordedSync(index=i, line=10 + i, config=c,
                                       from_settings=from_settings)
                          for i, c in enumerate(configs, start=1)])
    imported = map_config(rec, CWD)
    return imported.doc, imported.messages


def levels(msgs, level: str) -> list[str]:
    return [m.line() for m in msgs if m.level == level]


def parses(doc: dict[str, Any]) -> cfg.Config:
    """The document as syncsup reads it, after a trip through the TOML writer."""
    text = render(doc, Path("/etc/lsyncd/lsyncd.conf.lua"), False)
    assert text.startswith("# syncsup config imported from the Lsyncd config /etc/lsyncd/")
    return cfg.parse(tomllib.loads(text), CWD / "sync.toml")


# ------------------------------------------------------------------ rsync
def test_flat_rsync_keeps_lsyncd_defaults():
    doc, msgs = run(rsync_layer())
    assert not msgs.partial, msgs
    (s,) = doc["sync"]
    # Lsyncd ran rsync -lts under its umask (022): syncsup's daemon has umask
    # 077, so the same modes need --perms with go-w masked off.
    assert s == {"name": "www", "source": "/srv/www", "mode": "rsync", "targets": ["/mnt/www"],
                 "delay": 15, "rsync": {"archive": False, "chmod": "go-w", "extra": ["--perms"]}}
    assert any("umask" in n for n in levels(msgs, "note"))
    conf = parses(doc)
    assert conf.syncs[0].delay == 15 and conf.syncs[0].rsync.archive is False
    assert "settings" not in doc, "no state_dir or other setting is invented"


def test_archive_sets_every_part_and_a_switched_off_part_falls_back_to_lt():
    doc, _ = run(rsync_layer(rsync={"archive": True}))
    assert doc["sync"][0]["rsync"] == {"archive": True}
    doc, _ = run(rsync_layer(rsync={"archive": True, "owner": False}))
    assert doc["sync"][0]["rsync"] == {"archive": False, "extra": [
        "--perms", "--group", "--devices", "--specials"]}
    doc, _ = run(rsync_layer(rsync={"links": False, "times": False}))
    assert doc["sync"][0]["rsync"]["extra"] == ["--no-links", "--no-times", "--perms"]
    doc, _ = run(rsync_layer(rsync={"chmod": "D750"}))
    assert doc["sync"][0]["rsync"]["chmod"] == "D750,go-w"
    doc, _ = run(rsync_layer(rsync={"perms": True}))
    assert doc["sync"][0]["rsync"] == {"archive": False, "extra": ["--perms"]}
    parses(doc)


def test_rsync_flags_values_and_strings():
    doc, msgs = run(rsync_layer(rsync={
        "compress": True, "checksum": True, "acls": True, "xattrs": True, "hard_links": True,
        "sparse": True, "whole_file": True, "update": True, "executability": True,
        "one_file_system": True, "cvs_exclude": True, "copy_links": True,
        "copy_unsafe_links": True, "keep_dirlinks": True, "inplace": True, "backup": True,
        "backup_dir": "/var/bak", "suffix": ".old", "temp_dir": "/var/tmp",
        "rsync_path": "sudo rsync", "bwlimit": 1000, "chown": "www:www", "chmod": "D755,F644",
        "usermap": "a:b", "groupmap": "c:d", "timeout": 60, "binary": "/opt/rsync",
        "group": True, "perms": True, "owner": False, "protect_args": True}))
    assert not msgs.partial, levels(msgs, "dropped")
    r = doc["sync"][0]["rsync"]
    assert r["compress"] is r["checksum"] is True
    assert (r["bwlimit"], r["chown"], r["chmod"], r["usermap"], r["groupmap"], r["timeout"],
            r["binary"]) == (1000, "www:www", "D755,F644", "a:b", "c:d", 60, "/opt/rsync")
    assert r["archive"] is False
    for opt in ("--perms", "--group", "--acls", "--xattrs", "--hard-links", "--sparse",
                "--whole-file", "--update", "--executability", "--one-file-system",
                "--cvs-exclude", "--copy-links", "--copy-unsafe-links", "--keep-dirlinks",
                "--inplace", "--backup", "--backup-dir=/var/bak", "--suffix=.old",
                "--temp-dir=/var/tmp", "--rsync-path=sudo rsync"):
        assert opt in r["extra"], opt
    assert "--owner" not in r["extra"]
    assert parses(doc).syncs[0].rsync.extra == tuple(r["extra"])


def test_rsync_keys_without_equivalent_are_listed():
    doc, msgs = run(rsync_layer(rsync={"dry_run": True, "password_file": "/p", "verbose": True,
                                       "quiet": True, "frobnicate": True}))
    dropped = levels(msgs, "dropped")
    assert any("rsync.dry_run" in d for d in dropped)
    assert any("rsync.password_file" in d for d in dropped)
    assert any("rsync.frobnicate" in d for d in dropped)
    notes = levels(msgs, "note")
    assert any("rsync.verbose" in n for n in notes) and any("rsync.quiet" in n for n in notes)
    assert doc["sync"][0]["rsync"]["extra"] == ["--perms"]
    assert all(d.startswith("dropped: sync #1 (line 11, source /srv/www): ") for d in dropped)


def test_extra_joined_refused_and_rsh():
    doc, msgs = run(rsync_layer(target="h1:/srv/www", rsync={"_extra": {
        1: "--exclude", 2: "*.tmp", 3: "--dry-run", 4: "-avn", 5: "-e",
        6: "ssh -p 2222 -o StrictHostKeyChecking=yes", 7: "--delete-excluded", 8: "junk"}}))
    s = doc["sync"][0]
    assert s["rsync"]["extra"] == ["--perms", "--exclude=*.tmp", "--delete-excluded"]
    assert s["ssh"] == {"port": 2222, "options": ["StrictHostKeyChecking=yes"]}
    dropped = levels(msgs, "dropped")
    assert len(dropped) == 3, dropped  # --dry-run, -avn, junk
    parses(doc)


def test_rsh_mapped_or_listed():
    doc, msgs = run(rsync_layer(target="h1:/srv/www",
                                rsync={"rsh": "/usr/bin/ssh -l backup -p 22 -i /k/id"}))
    s = doc["sync"][0]
    assert s["ssh"] == {"port": 22, "identity_file": "/k/id"}
    assert s["targets"] == ["backup@h1:/srv/www"]
    assert not msgs.partial
    _, msgs = run(rsync_layer(target="h1:/x", rsync={"rsh": "ssh -F /etc/ssh/other"}))
    assert any("rsync.rsh" in d for d in levels(msgs, "dropped"))
    _, msgs = run(rsync_layer(target="h1:/x", rsync={"rsh": "rsh"}))
    assert any("always connects with ssh" in d for d in levels(msgs, "dropped"))


# -------------------------------------------------------------- rsyncssh
def test_rsyncssh_host_targetdir_and_ssh_table():
    doc, msgs = run(rsyncssh_layer(delay=3, ssh={
        "binary": "/usr/bin/ssh", "port": 2222, "identityFile": "/etc/lsyncd/id",
        "options": {"StrictHostKeyChecking": "yes", "UserKnownHostsFile": "/k"},
        "_extra": {1: "-o", 2: "Compression=no"}}))
    assert not msgs.partial, levels(msgs, "dropped")
    s = doc["sync"][0]
    assert (s["mode"], s["targets"], s["delay"]) == ("rsyncssh", ["backup@h1:/srv/www"], 3)
    assert s["ssh"] == {"port": 2222, "identity_file": "/etc/lsyncd/id", "options": [
        "StrictHostKeyChecking=yes", "UserKnownHostsFile=/k", "Compression=no"]}
    conf = parses(doc)
    assert conf.syncs[0].targets[0].host == "h1" and conf.syncs[0].ssh.port == 2222


def test_a_process_cap_below_the_ssh_targets_is_said_with_its_cost():
    """syncsup's max_processes also counts each open agent session of an
    ssh target: a cap below their number closes and reopens them in turn."""
    two = [rsyncssh_layer(source=f"/srv/s{i}", targetdir=f"/srv/t{i}") for i in range(3)]
    _, msgs = run(*two, rsync_layer(source="/srv/local", target="/srv/l"),
                    settings={"maxProcesses": 2})
    notes = [n for n in levels(msgs, "note") if "maxProcesses = 2" in n]
    assert len(notes) == 1 and "(3 here)" in notes[0], levels(msgs, "note")
    _, msgs = run(*two, settings={"maxProcesses": 3})
    assert not [n for n in levels(msgs, "note") if "agent session" in n]


def test_rsyncssh_custom_ssh_binary_and_missing_host():
    _, msgs = run(rsyncssh_layer(ssh={"binary": "/opt/ssh"}))
    assert any("ssh.binary" in d for d in levels(msgs, "dropped"))
    doc, msgs = run(rsyncssh_layer(host=None))
    assert "sync" not in doc and msgs.partial


def test_rsyncssh_rsh_becomes_the_targets_user_and_ssh_options():
    """rsync.rsh under default.rsyncssh: its login user, port, key and
    options are the target's (not the daemon's own user), exit 0."""
    doc, msgs = run(rsyncssh_layer(host="h1", rsync={
        "rsh": "/usr/bin/ssh -l backup -p 2222 -i /etc/lsyncd/id -o StrictHostKeyChecking=yes"}))
    assert not msgs.partial, levels(msgs, "dropped")
    s = doc["sync"][0]
    assert s["targets"] == ["backup@h1:/srv/www"]
    assert s["ssh"] == {"port": 2222, "identity_file": "/etc/lsyncd/id",
                        "options": ["StrictHostKeyChecking=yes"]}
    conf = parses(doc)
    assert conf.syncs[0].targets[0].user == "backup" and conf.syncs[0].ssh.port == 2222


def test_rsyncssh_rsh_agreeing_with_the_ssh_table_is_a_note():
    doc, msgs = run(rsyncssh_layer(ssh={"binary": "/usr/bin/ssh", "port": 2222},
                                   rsync={"rsh": "ssh -p 2222"}))
    assert not msgs.partial, levels(msgs, "dropped")
    assert any("port = 2222 is also in the ssh table" in n for n in levels(msgs, "note"))
    assert doc["sync"][0]["ssh"] == {"port": 2222}


def test_rsyncssh_rsh_that_cannot_be_mapped_is_named():
    """Two ports, two values of one option, two users: one ssh configuration
    cannot hold both; the ssh table's (and the target's) is kept, rsh's named."""
    doc, msgs = run(rsyncssh_layer(
        ssh={"binary": "/usr/bin/ssh", "port": 22, "options": {"Compression": "no"}},
        rsync={"rsh": "ssh -p 2222 -l other -o Compression=yes -o BatchMode=yes"}))
    dropped = levels(msgs, "dropped")
    assert any("port = 2222" in d and "22" in d for d in dropped), dropped
    assert any("Compression=yes" in d for d in dropped), dropped
    assert any("ssh -l other" in d and "backup@h1" in d for d in dropped), dropped
    s = doc["sync"][0]
    assert s["ssh"] == {"port": 22, "options": ["Compression=no", "BatchMode=yes"]}
    assert s["targets"] == ["backup@h1:/srv/www"]
    _, msgs = run(rsyncssh_layer(rsync={"rsh": "ssh -F /etc/ssh/other"}))
    assert any("-F" in d for d in levels(msgs, "dropped"))


# ---------------------------------------------------------------- direct
def test_direct_local_only():
    doc, msgs = run(direct_layer(delete="running"))
    assert not msgs.partial
    s = doc["sync"][0]
    assert (s["mode"], s["delay"], s["delete"]) == ("direct", 1, "running")
    assert s["rsync"] == {"archive": False, "extra": ["--perms"]}, "cp -p: modes, no go-w"
    parses(doc)
    doc, msgs = run(direct_layer(target="h1:/x"))
    assert "sync" not in doc and any("default.direct is for local" in d
                                     for d in levels(msgs, "dropped"))


# ------------------------------------------------------------ sync keys
@pytest.mark.parametrize("delete", [True, False, "startup", "running"])
def test_delete_values(delete):
    doc, msgs = run(rsync_layer(delete=delete))
    assert doc["sync"][0].get("delete", True) == delete and not msgs.partial
    assert parses(doc).syncs[0].delete == delete


def test_bad_delete_and_delay_listed_with_a_safe_value():
    doc, msgs = run(rsync_layer(delete="sometimes", delay=-1))
    assert "delete" not in doc["sync"][0] and doc["sync"][0]["delay"] == 15
    assert len(levels(msgs, "dropped")) == 2


def test_excludes_filters_and_relative_paths(tmp_path):
    (tmp_path / "ex.txt").write_text("*.o\n")
    doc, msgs = run(rsync_layer(source="src", target="../mirror", exclude="*.log",
                                excludeFrom="ex.txt",
                                filter={1: "- *.tmp", 2: "+ /keep/"}, filterFrom="/etc/f"))
    s = doc["sync"][0]
    assert s["source"] == "/work/here/src" and s["targets"] == ["/work/mirror"]
    assert s["exclude"] == ["*.log"] and s["filter"] == ["- *.tmp", "+ /keep/"]
    assert s["exclude_from"] == "/work/here/ex.txt" and s["filter_from"] == "/etc/f"
    notes = levels(msgs, "note")
    assert sum("is relative" in n for n in notes) == 3
    assert not msgs.partial
    doc, msgs = run(rsync_layer(exclude={1: "*.a", 2: "*.b"}))
    assert doc["sync"][0]["exclude"] == ["*.a", "*.b"]
    doc, msgs = run(rsync_layer(exclude={1: 3}))
    assert "exclude" not in doc["sync"][0] and msgs.partial


def test_init_false_maxdelays_maxprocesses():
    doc, msgs = run(rsync_layer(init=False, maxDelays=20, maxProcesses=4))
    s = doc["sync"][0]
    assert s["init"] is False and s["max_delays"] == 20
    assert any("maxProcesses = 4" in n for n in levels(msgs, "note")) and not msgs.partial
    parses(doc)


@pytest.mark.parametrize("target", ["h1::module/path", "backup@h1::module",
                                    "rsync://h1/module", "rsync://u@h1:8873/module/d"])
def test_daemon_targets_import_as_daemon_targets(target, tmp_path):
    """default.rsync to an rsync daemon: the target as written, the password
    file in [sync.rsyncd], exit 0."""
    pw = tmp_path / "pw"
    pw.write_text("secret\n")
    pw.chmod(0o600)
    doc, msgs = run(rsync_layer(target=target, rsync={"password_file": str(pw)}))
    s = doc["sync"][0]
    assert s["targets"] == [target] and s["mode"] == "rsync"
    assert s["rsyncd"] == {"password_file": str(pw)}
    assert not msgs.partial, [m.line() for m in msgs]
    conf = parses(doc).syncs[0]
    assert conf.targets[0].is_daemon and conf.rsyncd.password_file == pw


def test_daemon_targets_that_cannot_be_mapped_say_so():
    """default.direct to a daemon, and a daemon over ssh (rsync.rsh with
    host::module): one line each, no sync, exit 2."""
    for layer, why in ((rsync_layer(target="h1::m", rsync={"rsh": "/usr/bin/ssh -p 2222"}),
                        "rsync.rsh"),
                       (rsync_layer(target="h1::m", rsync={"rsh": "ssh"}), "rsync.rsh"),
                       (direct_layer(target="h1::m"), "default.direct")):
        doc, msgs = run(layer)
        assert "sync" not in doc and msgs.partial
        dropped = levels(msgs, "dropped")
        assert len([d for d in dropped if "rsync daemon" in d]) == 1, dropped
        assert any(why in d for d in dropped), dropped
    doc, msgs = run(rsync_layer(target="h1:/srv", rsync={"password_file": "/p"}))
    assert any("rsync.password_file is for rsync daemon targets" in d
               for d in levels(msgs, "dropped"))


# ----------------------------------------------------------- custom code
def test_custom_handlers_on_a_default_layer_are_dropped_but_the_sync_imports():
    doc, msgs = run(rsync_layer(onCreate=LuaFunction(line=7), onModify="logger ^pathname",
                                onAttrib=LuaFunction(line=9), collect=LuaFunction(line=12),
                                init=LuaFunction(line=14), prepare=LuaFunction(line=15)))
    assert doc["sync"][0]["mode"] == "rsync"
    dropped = levels(msgs, "dropped")
    assert len(dropped) == 6, dropped
    create = next(d for d in dropped if "onCreate" in d)
    assert 'mode = "command"' in create and "on_create" in create and "line 7" in create
    assert any("onModify is the shell command 'logger ^pathname'" in d for d in dropped)


def test_layer_three_sync_is_not_imported():
    config = {"action": fn("default.action"), "init": fn("default.init"),
              "prepare": fn("default.prepare"), "collect": fn("default.collect"),
              "delay": 5, "source": "/srv/in", "onCreate": "cp ^sourcePathname /x",
              "maxDelays": 1000, "maxProcesses": 1}
    doc, msgs = run(rsync_layer(), config)
    assert len(doc["sync"]) == 1
    dropped = levels(msgs, "dropped")
    assert any("sync #2" in d and "uses no default layer" in d for d in dropped)
    assert any("sync #2" in d and "onCreate" in d for d in dropped)


def test_custom_action_on_a_layer_keeps_the_layer():
    doc, msgs = run(rsyncssh_layer(action=LuaFunction(line=3)))
    assert doc["sync"][0]["mode"] == "rsyncssh"
    assert any("action is a Lua function (line 3)" in d for d in levels(msgs, "dropped"))


def test_custom_exit_codes_and_unknown_keys():
    codes = dict(RSYNC_EXIT)
    codes[12] = "die"  # syncsup retries 12
    config = rsync_layer(exitcodes=codes, tunnel={"x": 1}, frob=1)
    config[3] = "stray"
    _, msgs = run(config)
    dropped = levels(msgs, "dropped")
    assert any("exitcodes is a custom exit code table" in d and "code 12 otherwise" in d
               for d in dropped)
    assert any("tunnel" in d for d in dropped)
    assert any("frob = 1: unknown key" in d for d in dropped)
    assert any("positional value 'stray'" in d for d in dropped)


def test_no_source_is_not_imported():
    doc, msgs = run(rsync_layer(source=None))
    assert "sync" not in doc
    assert any("no source" in d for d in levels(msgs, "dropped"))


# --------------------------------------------------------------- merging
def test_same_source_and_settings_merge_into_one_sync():
    doc, msgs = run(rsync_layer(target="/m/a"), rsync_layer(target="/m/b"),
                    rsync_layer(target="/m/a"))
    (s,) = doc["sync"]
    assert s["targets"] == ["/m/a", "/m/b"]
    notes = levels(msgs, "note")
    assert any("merged into the [[sync]] of sync #1" in n for n in notes)
    assert any("repeats" in n for n in notes)
    parses(doc)


def test_same_source_different_settings_stay_apart_and_say_why():
    doc, msgs = run(rsync_layer(target="/m/a"), rsync_layer(target="/m/b", delay=2),
                    rsyncssh_layer())
    assert [s["name"] for s in doc["sync"]] == ["www", "www-2", "www-3"]
    notes = levels(msgs, "note")
    assert any("sync #2" in n and "different delay:" in n for n in notes)
    assert any("sync #3" in n and "kept as a separate [[sync]]" in n for n in notes)
    parses(doc)


def test_names_from_lsyncd_name_or_source():
    doc, _ = run(rsync_layer(name="web.main", target="/m/1"),
                 rsync_layer(source="/srv/My Files!", target="/m/2"),
                 rsync_layer(source="/srv/-/", target="/m/3"))
    assert [s["name"] for s in doc["sync"]] == ["web.main", "My-Files", "sync"]
    parses(doc)


# -------------------------------------------------------------- settings
def test_settings_mapping():
    doc, msgs = run(rsync_layer(maxDelays=30), settings={
        "logfile": "/var/log/lsyncd.log", "statusFile": "/run/lsyncd.status",
        "statusInterval": 20, "maxProcesses": 3, "maxDelays": 30, "nodaemon": True,
        "insist": True, "inotifyMode": "CloseWrite"}, from_settings=frozenset({"maxDelays"}))
    assert doc["settings"] == {"log_file": "/var/log/lsyncd.log",
                               "status_file": "/run/lsyncd.status", "status_interval": 20,
                               "max_processes": 3}
    assert doc["sync"][0]["max_delays"] == 30
    assert not msgs.partial, levels(msgs, "dropped")
    notes = " ".join(levels(msgs, "note"))
    for key in ("nodaemon", "insist", "inotifyMode", "statusFile"):
        assert key in notes
    conf = parses(doc)
    assert conf.settings.max_processes == 3 and conf.settings.status_interval == 20


def test_settings_without_equivalent():
    doc, msgs = run(rsync_layer(), settings={
        "pidfile": "/run/l.pid", "logfacility": "daemon", "logident": "l", "insist": False,
        "nodaemon": False, "statusInterval": 0, "bogus": 1}, assigned=True)
    dropped = " ".join(levels(msgs, "dropped"))
    for key in ("logfacility", "logident", "insist = false", "statusInterval = 0", "bogus"):
        assert key in dropped, key
    # no meaning for syncsup, nothing for the user to do: notes, not drops
    notes = " ".join(levels(msgs, "note"))
    for key in ("pidfile", "nodaemon = false"):
        assert key in notes and key not in dropped, key
    assert doc["settings"] == {"status_interval": 1}
    assert any("settings = {...}" in n for n in levels(msgs, "note"))


def test_getenv_reads_are_noted():
    rec = Recorded(syncs=[RecordedSync(1, 1, rsync_layer())], getenv=[("HOME", "/root")])
    imported = map_config(rec, CWD)
    assert any("HOME was read at import time ('/root')" in m.line()
               for m in imported.messages)


def test_nothing_importable_is_partial():
    doc, msgs = run()
    assert doc == {} and msgs.partial


def test_message_lines_are_single_lines():
    _, msgs = run(rsync_layer(source="/srv/a\nb", target="h1::x"))
    assert msgs and all("\n" not in m.line() for m in msgs)


def test_toml_writer_escapes_hostile_names():
    doc, _ = run(rsync_layer(source='/srv/"quoted" $(x)\ttab', target="/m/x"))
    text = tomli_w.dumps(doc)
    assert tomllib.loads(text)["sync"][0]["source"] == '/srv/"quoted" $(x)\ttab'


def test_only_meaningless_settings_import_completely():
    """nodaemon = false and a pidfile change nothing syncsup does: exit 0."""
    _, msgs = run(rsync_layer(), settings={"pidfile": "/run/l.pid", "nodaemon": False})
    assert not msgs.partial, levels(msgs, "dropped")


@pytest.mark.parametrize("delay", [15, 0])
def test_maxdelays_zero_syncs_at_once(delay):
    """Lsyncd delays an event only while fewer than maxDelays wait: 0 means
    every change goes at once, so the import is delay = 0, complete."""
    doc, msgs = run(rsync_layer(maxDelays=0, delay=delay))
    assert not msgs.partial, levels(msgs, "dropped")
    s = doc["sync"][0]
    assert s["delay"] == 0 and "max_delays" not in s
    assert any("maxDelays = 0" in n for n in levels(msgs, "note")) == (delay != 0)
    assert parses(doc).syncs[0].delay == 0
    doc, msgs = run(rsync_layer(maxDelays=-1))
    assert msgs.partial and doc["sync"][0]["delay"] == 15


@pytest.mark.parametrize("extra", [{1: "--port=8873"}, {1: "-z", 2: "--port", 3: 8873.0},
                                   "--port=8873"])
def test_a_daemon_port_in_rsync_extra_is_the_rsyncd_port(extra):
    """rsync._extra = { "--port=N" }: how Lsyncd reaches a daemon that does
    not listen on 873 with host::module; imported as [sync.rsyncd] port (so
    `syncsup check` probes that port too), not as an extra rsync option."""
    doc, msgs = run(rsync_layer(target="h1::m/d", rsync={"_extra": extra}))
    s = doc["sync"][0]
    assert s["rsyncd"] == {"port": 8873}, s
    assert "--port" not in " ".join(s.get("rsync", {}).get("extra", [])), s
    assert not msgs.partial, [m.line() for m in msgs]
    assert parses(doc).syncs[0].targets[0].port == 8873
    # an ssh target's --port is rsync's own business: kept as written
    doc, _ = run(rsync_layer(target="h1:/srv", rsync={"_extra": {1: "--port=8873"}}))
    assert "rsyncd" not in doc["sync"][0] and "--port=8873" in doc["sync"][0]["rsync"]["extra"]
