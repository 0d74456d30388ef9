"""syncsup-target's pure parts: which service a request selects, the rsync
daemon module it generates, the applier's descriptor-only renames and
deletes, the home protection and the agent's framed protocol (no ssh: the
integration tests in test_security.py go through a real sshd)."""

from __future__ import annotations

import ctypes
import errno
import io
import os
from pathlib import Path

import pytest

from syncsup.target import Applier, Protection
from syncsup.target._agent import serve
from syncsup.target._apply import Attrs, Clear
from syncsup.target._command import Refused, classify
from syncsup.target._daemon import ALLOWED_OPTIONS, daemon_config, exclude_rules
from syncsup.target._protocol import MAX_FRAME, VERSION, encode_frame, read_frame


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "mirror"
    (r / "sub").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_text("s")
    os.symlink(tmp_path / "outside", r / "escape")
    return r


# ------------------------------------------------------------ classify
def test_services(root: Path) -> None:
    r = str(root)
    assert classify(r, ["true"]) == "true"
    assert classify(r, ["rsync", "--version"]) == "version"
    assert classify(r, ["rsync", "--server", "--daemon", "."]) == "daemon"
    assert classify(r, ["syncsup-target", r, "agent"]) == "agent"
    assert classify(r, ["syncsup-target", r + "/", "info"]) == "info"
    assert classify(r, ["syncsup-target", r, "status"]) == "status"
    assert classify(r, ["syncsup-target", r, "stats"]) == "stats"


@pytest.mark.parametrize("command", [
    [], ["sh"], ["bash", "-c", "id"], ["cat", "/etc/passwd"],
    ["rsync", "--server", "-logDtpre.iLsfxC", ".", "{root}/"],
    ["rsync", "--server", "-sr", ".", "{root}/"],
    ["rsync", "--server", "--sender", "-r", ".", "{root}/"],
    ["syncsup-target", "{root}/../outside", "agent"],
    ["syncsup-target", "/etc", "agent"],
    ["syncsup-target", "{root}", "shell"],
    ["syncsup-target", "{root}", "agent", "extra"],
    ["syncsup-target", "{root}", "status", "/etc/shadow"],
    ["syncsup-target", "--relay-status=/etc/shadow", "{root}", "status"],
    ["true", "&&", "sh"],
])
def test_everything_else_is_refused(root: Path, command: list[str]) -> None:
    with pytest.raises(Refused):
        classify(str(root), [w.format(root=root) for w in command])


def test_request_as_arguments_without_a_forced_command(root: Path, capsys, monkeypatch) -> None:
    """``syncsup-target ROOT info`` run by a shell (a key without a forced
    command) answers, saying it is not forced: what ``syncsup check``
    reports as a missing forced command."""
    import json

    from syncsup.target import main

    monkeypatch.delenv("SSH_ORIGINAL_COMMAND", raising=False)
    assert main([str(root), "info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["forced"] is False and info["root"] == str(root)
    assert main([str(root), "sh"]) == 1


def test_a_stats_session_only_reads(root: Path) -> None:
    """``syncsup-target ROOT stats`` serves the agent with only the requests
    that read: a write in such a session is refused and changes nothing."""
    from syncsup.target._agent import READ_ONLY

    (root / "f").write_bytes(b"old")
    frames = [{"op": "hello", "version": VERSION}, {"op": "stats", "paths": [b"f"]},
              {"op": "put", "path": b"f", "data": b"new", "mode": 0o644, "mtime": 0},
              {"op": "delete", "path": b"f"}, {"op": "rename", "src": b"f", "dst": b"g"},
              {"op": "bye"}]
    out = io.BytesIO()
    applier = Applier.open(str(root))
    try:
        assert serve(applier, {}, io.BytesIO(b"".join(encode_frame(f) for f in frames)), out,
                     ops=READ_ONLY) == 0
    finally:
        applier.close()
    out.seek(0)
    answers = [read_frame(out) for _ in range(5)]
    assert [a["ok"] for a in answers if a] == [True, True, False, False, False]
    assert answers[1] is not None and answers[1]["sizes"] == [3]
    assert (root / "f").read_bytes() == b"old" and not (root / "g").exists()


def test_a_relay_status_is_the_file_the_forced_command_names(root: Path, tmp_path: Path,
                                                             capsys, monkeypatch) -> None:
    """``status`` serves the JSON status file named by ``--relay-status`` in
    the forced command, one JSON line; the request never chooses the file,
    and without the option, or for a file that is not a JSON status, it is
    refused or fails with a line on stderr."""
    import json

    from syncsup.target import main

    good = tmp_path / "status.json"
    good.write_text(json.dumps({"syncs": [{"targets": []}], "components": []}))
    monkeypatch.setenv("SSH_ORIGINAL_COMMAND", f"syncsup-target {root} status")
    assert main([f"--relay-status={good}", str(root)]) == 0
    served = json.loads(capsys.readouterr().out)
    assert served["status"] == {"syncs": [{"targets": []}], "components": []}
    assert 0 <= served["age"] < 60
    assert main([str(root)]) == 1  # no --relay-status in the forced command
    assert "add --relay-status=FILE" in capsys.readouterr().err
    monkeypatch.setenv("SSH_ORIGINAL_COMMAND",
                       f"syncsup-target --relay-status={tmp_path}/outside/secret {root} status")
    assert main([f"--relay-status={good}", str(root)]) == 1
    assert "refused" in capsys.readouterr().err
    monkeypatch.setenv("SSH_ORIGINAL_COMMAND", f"syncsup-target {root} status")
    for bad in (tmp_path / "outside" / "secret", tmp_path / "missing.json"):
        assert main([f"--relay-status={bad}", str(root)]) == 1
        assert capsys.readouterr().out == ""
    os.symlink(good, tmp_path / "link.json")
    assert main([f"--relay-status={tmp_path / 'link.json'}", str(root)]) == 1
    assert main(["--relay-status=relative.json", str(root)]) == 1
    assert "absolute path" in capsys.readouterr().err


# ---------------------------------------------------------- daemon module
def test_daemon_module_is_chrooted_write_only_and_refuses_devices() -> None:
    conf = daemon_config("/srv/w w%x", 0, 0, None)
    lines = [ln.strip() for ln in conf.splitlines()]
    assert "use chroot = yes" in lines
    assert "path = /srv/w w%%x" in lines  # rsync expands %VAR%: literal %
    assert "write only = yes" in lines and "read only = no" in lines
    assert "munge symlinks = no" in lines
    refuse = next(ln for ln in lines if ln.startswith("refuse options = "))
    words = refuse.split(" = ", 1)[1].split()
    assert words[0] == "*" and words[-2:] == ["D", "devices"]
    assert "!temp-dir" not in words and "!T" not in words and "!sender" not in words
    assert {"!a", "!delete"} <= set(words)
    # a remote --files-from makes the receiving daemon read a file in ROOT
    # and send its lines back in errors; --from0 only serves it
    assert not {"!files-from", "!from0"} & set(words)
    assert "timeout = 600" in lines and "max connections = 0" in lines
    locked = [ln.strip() for ln in daemon_config("/srv", 0, 0, None, "/run/x/l").splitlines()]
    assert "max connections = 16" in locked and "lock file = /run/x/l" in locked
    assert "uid = 0" in lines  # as root: keep owners, not "nobody"
    assert "uid = 1000" not in daemon_config("/srv", 1000, 1000, None)
    with pytest.raises(ValueError):
        daemon_config("/srv/a\nuse chroot = no", 0, 0, None)
    assert "devices" not in ALLOWED_OPTIONS and "D" not in ALLOWED_OPTIONS


def test_daemon_module_strips_setuid_and_root_refuses_xattrs() -> None:
    """A set-user-ID file or a file capability written by a root receiver
    would give every local user who can reach ROOT root on the host."""
    for uid in (0, 1000):
        lines = [ln.strip() for ln in daemon_config("/srv", uid, uid, None).splitlines()]
        assert "incoming chmod = Fug-s" in lines
        refuse = next(ln for ln in lines if ln.startswith("refuse options = ")).split()
        assert ("!xattrs" in refuse) == (uid != 0)
        assert "!acls" in refuse


def test_daemon_module_keeps_directories_private_when_the_home_is_inside() -> None:
    """With the home inside ROOT the mirror sets the home's own mode: no
    directory may become writable by group or others (another local user
    could then replace the home's start-up files)."""
    for uid in (0, 1000):
        lines = [ln.strip() for ln in daemon_config("/srv", uid, uid, "/tmp/x/exclude")
                 .splitlines()]
        assert "incoming chmod = Fug-s,Dgo-w" in lines
        assert "exclude from = /tmp/x/exclude" in lines


def test_home_exclude_rules_escape_wildcards() -> None:
    assert exclude_rules(None) == ""
    assert exclude_rules("") == "/.*\n/.*/***\n"
    assert exclude_rules("home/backup") == "/home/backup/.*\n/home/backup/.*/***\n"
    assert exclude_rules("a*b?[c]\\") == "/a\\*b\\?\\[c]\\\\/.*\n/a\\*b\\?\\[c]\\\\/.*/***\n"


# ----------------------------------------------------------- the applier
def test_renames_keep_inodes_and_replace_like_mv_T(root: Path) -> None:
    (root / "sub" / "f").write_text("x")
    ino = (root / "sub" / "f").stat().st_ino
    a = Applier.open(str(root))
    try:
        a.rename(b"sub/f", b"sub/g")
        a.rename(b"sub", b"moved")
        assert (root / "moved" / "g").stat().st_ino == ino
        (root / "other").write_text("o")
        a.rename(b"other", b"moved/g")  # replaces a file
        assert (root / "moved" / "g").read_text() == "o"
    finally:
        a.close()


def test_renames_and_deletes_never_follow_a_symlink(root: Path, tmp_path: Path) -> None:
    (root / "f").write_text("x")
    a = Applier.open(str(root))
    try:
        for src, dst in ((b"f", b"escape/f"), (b"escape/secret", b"stolen")):
            with pytest.raises(OSError):
                a.rename(src, dst)
        for bad in (b"../x", b"/etc/passwd", b"sub/./g", b"", b"a//b", b"a\0b"):
            with pytest.raises(OSError):
                a.rename(b"f", bad)
        a.delete(b"escape")  # the symlink itself goes, not what it points to
        assert not os.path.lexists(root / "escape")
        with pytest.raises(OSError):
            a.delete(b"../outside")
    finally:
        a.close()
    assert (tmp_path / "outside" / "secret").read_text() == "s"
    assert not (tmp_path / "outside" / "f").exists() and not (root / "stolen").exists()


def test_delete_removes_a_tree_with_hostile_names(root: Path) -> None:
    d = os.fsencode(root / "sub")
    for name in (b"-rf", b"a\nb", b"\xff", b"$(id)"):
        os.mkdir(os.path.join(d, name))
        with open(os.path.join(d, name, name), "wb") as fh:
            fh.write(b"x")
    a = Applier.open(str(root))
    try:
        a.delete(b"sub")
        a.delete(b"sub")  # gone already: fine
    finally:
        a.close()
    assert not (root / "sub").exists()


def test_home_inside_root_is_protected(root: Path) -> None:
    home = root / "sub" / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "authorized_keys").write_text("key")
    (home / ".bashrc").write_text("rc")
    (home / "data").write_text("d")
    (root / "sub" / "other").write_text("o")
    a = Applier.open(str(root), Protection.for_home(str(root), str(home)))
    try:
        for src, dst in ((b"sub/other", b"sub/home/.bashrc"), (b"sub/home/.ssh", b"x"),
                         (b"sub/home", b"moved"), (b"sub", b"moved"),
                         (b"sub/other", b"sub/home/.ssh")):
            with pytest.raises(OSError):
                a.rename(src, dst)
        a.rename(b"sub/home/data", b"sub/home/data2")  # ordinary files are not protected
        with pytest.raises(OSError):
            a.delete(b"sub")
    finally:
        a.close()
    assert (home / ".ssh" / "authorized_keys").read_text() == "key"
    assert (home / ".bashrc").read_text() == "rc"
    assert Protection.for_home(str(root), "/elsewhere") == Protection()


def test_nothing_below_a_protected_home_entry_is_reachable(root: Path) -> None:
    """Renames and deletes may not walk into a dot-entry of the home either:
    renaming a file onto ``.ssh/authorized_keys`` changes no protected name,
    only what is inside one."""
    home = root / "sub" / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "authorized_keys").write_text("key")
    (home / ".config" / "deep").mkdir(parents=True)
    (root / "evil").write_text("attacker's key")
    for h, prefix in ((home, b"sub/home/"), (root, b"")):
        if h == root:  # the home is ROOT itself
            (root / ".ssh").mkdir()
            (root / ".ssh" / "authorized_keys").write_text("key")
        a = Applier.open(str(root), Protection.for_home(str(root), str(h)))
        try:
            for src, dst in ((b"evil", prefix + b".ssh/authorized_keys"),
                             (prefix + b".ssh/authorized_keys", b"stolen"),
                             (b"evil", prefix + b".config/deep/x")):
                with pytest.raises(OSError):
                    a.rename(src, dst)
            with pytest.raises(OSError):
                a.delete(prefix + b".ssh/authorized_keys")
            with pytest.raises(OSError):
                a.delete(prefix + b".config/deep")
        finally:
            a.close()
        assert (h / ".ssh" / "authorized_keys").read_text() == "key"
    assert (home / ".config" / "deep").is_dir()
    assert (root / "evil").read_text() == "attacker's key"


# ------------------------------------------------------------ the agent
def _session(root: Path, *frames: bytes) -> list[dict[str, object]]:
    out = io.BytesIO()
    a = Applier.open(str(root))
    try:
        serve(a, {"root": str(root)}, io.BytesIO(b"".join(frames)), out)
    finally:
        a.close()
    out.seek(0)
    replies = []
    while (doc := read_frame(out)) is not None:
        replies.append(doc)
    return replies


def test_agent_session(root: Path) -> None:
    (root / "a").write_text("a")
    replies = _session(
        root, encode_frame({"op": "hello", "version": VERSION}),
        encode_frame({"op": "rename", "src": b"missing", "dst": b"x"}),
        encode_frame({"op": "rename", "src": b"a", "dst": b"b"}),
        encode_frame({"op": "rename", "src": b"b", "dst": b"escape/b"}),
        encode_frame({"op": "rename", "src": "not bytes", "dst": b"c"}),
        encode_frame({"op": "launch", "cmd": b"sh"}),
        encode_frame({"op": "bye"}))
    assert [r["ok"] for r in replies] == [True, False, True, False, False, False]
    assert replies[0]["version"] == VERSION and replies[0]["root"] == str(root)
    assert (root / "b").read_text() == "a"


def test_agent_refuses_another_version_and_bad_frames(root: Path) -> None:
    (root / "a").write_text("a")
    rename = encode_frame({"op": "rename", "src": b"a", "dst": b"b"})
    # another version, or no hello at all: one fatal answer, nothing done
    for first in (encode_frame({"op": "hello", "version": 99}), rename):
        replies = _session(root, first, rename)
        assert len(replies) == 1 and replies[0]["ok"] is False and replies[0]["fatal"] is True
        assert (root / "a").exists() and not (root / "b").exists()
    huge = (MAX_FRAME + 1).to_bytes(4, "big")
    replies = _session(root, huge)
    assert replies[-1]["ok"] is False and replies[-1]["fatal"] is True
    nested = b"\x91" * 100  # 100 nested arrays
    replies = _session(root, len(nested).to_bytes(4, "big") + nested)
    assert replies[-1]["fatal"] is True


# ------------------------------------------------------------ mode rules
def test_clear_takes_bits_off_files_and_directories(root: Path) -> None:
    """Behind a confined key the agent leaves the tree the rsync module
    would: no set-user-ID or set-group-ID file, and (home inside ROOT) no
    directory writable by group or others."""
    a = Applier.open(str(root))
    a.clear = Clear(files=0o6000, dirs=0o022)
    try:
        a.put(b"suid", b"#!/bin/sh\n", Attrs(mode=0o6755, mtime_ns=10**18))
        a.mkdir(b"open", Attrs(mode=0o1777, mtime_ns=10**18))
        a.commit()
    finally:
        a.close()
    assert (root / "suid").stat().st_mode & 0o7777 == 0o755
    assert (root / "open").stat().st_mode & 0o7777 == 0o1755
    b = Applier.open(str(root))  # no rules (a local target): exact modes
    try:
        b.put(b"suid2", b"x", Attrs(mode=0o6755, mtime_ns=10**18))
        b.mkdir(b"open2", Attrs(mode=0o777, mtime_ns=10**18))
    finally:
        b.close()
    assert (root / "suid2").stat().st_mode & 0o7777 == 0o6755
    assert (root / "open2").stat().st_mode & 0o7777 == 0o777


def test_without_tree_only_empty_directories_are_removed(root: Path) -> None:
    """A sync with excludes: the target's directory may hold excluded files
    rsync would keep, so the agent removes only an empty one and the path
    goes to rsync otherwise."""
    (root / "full").mkdir()
    (root / "full" / "x.tmp").write_text("excluded")
    (root / "empty").mkdir()
    (root / "file").write_text("f")
    a = Applier.open(str(root))
    try:
        with pytest.raises(OSError):
            a.delete(b"full", tree=False)
        with pytest.raises(OSError):
            a.put(b"full", b"now a file", Attrs(mode=0o644, mtime_ns=10**18), tree=False)
        a.delete(b"empty", tree=False)
        a.delete(b"file", tree=False)
        a.put(b"gone", b"x", Attrs(mode=0o644, mtime_ns=10**18), tree=False)
    finally:
        a.close()
    assert (root / "full" / "x.tmp").read_text() == "excluded"
    assert not (root / "empty").exists() and not (root / "file").exists()
    assert not [p for p in os.listdir(root) if p.startswith(".syncsup.")]


@pytest.mark.parametrize("files", [2, 40])
def test_commit_makes_every_write_durable_and_keeps_no_descriptor(
        root: Path, files: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A few entries get an fsync each, many one syncfs per filesystem; either
    way commit() leaves no descriptor open and its calls really reach the
    kernel (a failure is raised, not swallowed)."""
    import syncsup.target._apply as apply_mod

    calls: list[str] = []
    real_fsync, real_syncfs = os.fsync, apply_mod._libc.syncfs

    def fsync(fd: int) -> None:
        calls.append("fsync")
        real_fsync(fd)

    def syncfs(fd: int) -> int:
        calls.append("syncfs")
        return int(real_syncfs(fd))

    monkeypatch.setattr(apply_mod.os, "fsync", fsync)
    monkeypatch.setattr(apply_mod._libc, "syncfs", syncfs)
    before = set(os.listdir("/proc/self/fd"))
    a = Applier.open(str(root))
    try:
        a.mkdir(b"d", Attrs(mode=0o755, mtime_ns=10**18))
        for i in range(files):
            a.put(b"d/f%d" % i, b"x" * i, Attrs(mode=0o644, mtime_ns=10**18))
        a.commit()
        assert not a.unsynced and not a.touched
    finally:
        a.close()
    assert set(os.listdir("/proc/self/fd")) <= before
    if files + 2 <= apply_mod.FSYNC_MAX:
        assert calls == ["fsync"] * (files + 2)
    else:
        assert calls == ["syncfs"]  # one filesystem
    assert sorted(os.listdir(root / "d")) == sorted(f"f{i}" for i in range(files))

    def failing(fd: int) -> int:
        ctypes.set_errno(errno.EIO)  # as a failed writeback reports it
        return -1

    monkeypatch.setattr(apply_mod._libc, "syncfs", failing)
    b = Applier.open(str(root))
    try:
        for i in range(files):
            b.put(b"g%d" % i, b"y", Attrs(mode=0o644, mtime_ns=10**18))
        if files + 1 > apply_mod.FSYNC_MAX:
            with pytest.raises(OSError):
                b.commit()
    finally:
        b.close()
    assert set(os.listdir("/proc/self/fd")) <= before


def test_a_relay_status_inside_root_or_not_a_file_is_refused(root: Path, tmp_path: Path,
                                                             capsys, monkeypatch) -> None:
    """The status file is read outside the agent's confinement: one inside
    ROOT (which the key writes: a symlink planted in a parent directory
    would make it any file of that name) is refused, and so is a FIFO (it
    would block), a directory, or a JSON document with NaN or nested too
    deep."""
    import json

    from syncsup.target import main

    monkeypatch.setenv("SSH_ORIGINAL_COMMAND", f"syncsup-target {root} status")
    inside = root / "sub" / "status.json"
    inside.write_text(json.dumps({"syncs": []}))
    assert main([f"--relay-status={inside}", str(root)]) == 1
    assert "inside ROOT" in capsys.readouterr().err
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    assert main([f"--relay-status={fifo}", str(root)]) == 1
    assert "not a regular file" in capsys.readouterr().err
    assert main([f"--relay-status={tmp_path / 'outside'}", str(root)]) == 1
    for text in ('{"syncs": [], "lag": NaN}', "[" * 100000 + "]" * 100000):
        bad = tmp_path / "bad.json"
        bad.write_text(text)
        assert main([f"--relay-status={bad}", str(root)]) == 1
        captured = capsys.readouterr()
        assert captured.out == "" and "Traceback" not in captured.err
