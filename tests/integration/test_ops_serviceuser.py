"""The daemon as the systemd unit runs it, without systemd: a uid that is not
0 holding, as ambient capabilities, exactly the unit's
``AmbientCapabilities=`` (``setpriv`` sets them up as systemd does for
``User=`` with ``AmbientCapabilities=``). It must mirror as root does:
other users' owners, groups, setgid and private modes kept on a local
target (its rsync gets ``--super``) and over ssh, and root's CLI must
reach it while another user is refused. Without ``CAP_CHOWN`` the same
daemon runs as any non-root user does: contents and modes arrive, owners
become its own, and ``syncsup check`` says so in one line; where other
users own directories of the source, start refuses, as the rsync probe
cannot run without ``CAP_CHOWN``. The rsync probe itself runs as the
service user, and tells a following sender from a fixed one."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.daemon import run_cli, sync_entry, syncsup_argv, syncsup_env
from tests.helpers.procs import assert_no_leftovers
from tests.helpers.tree import snapshot, wait_converged
from tests.integration.test_security import STATUS_CLIENT

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(os.geteuid() != 0, reason="switching to another uid needs root"),
    pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv is not installed"),
]

SERVICE_UID = 65534  # nobody: a uid with no file of its own in the trees
OWNERS = [(4321, 4322), (5321, 5322), (0, 0)]
MIRROR_CAPS = "+chown,+dac_override,+dac_read_search,+fowner,+fsetid"
# Reaching the interpreter and the checkout (under root's 0700 home) takes
# reading past permissions; only CAP_CHOWN is left out.
NO_CHOWN_CAPS = "+dac_override,+dac_read_search,+fowner,+fsetid"


def as_user(uid: int, caps: str, argv: list[str]) -> list[str]:
    """``argv`` run as ``uid`` with ``caps`` ambient (kept across exec, as
    systemd's ``AmbientCapabilities=``) and bounding the rest away."""
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
            f"--inh-caps=-all,{caps}", f"--ambient-caps=-all,{caps}",
            f"--bounding-set=-all,{caps}", "--", *argv]


def owners(root: Path) -> dict[str, tuple[int, int, int]]:
    """Relative path -> (uid, gid, mode): what the byte snapshot leaves out."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_uid, st.st_gid, st.st_mode)
    return out


def status_field(pid: int, key: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return line.split(":", 1)[1].split()[0]
    raise AssertionError(f"no {key} in /proc/{pid}/status")


def make_tree(src: Path) -> None:
    """Files, directories and a symlink of three owners: 0600 files, a 0700
    directory of another user (only DAC_READ_SEARCH enters it), a setgid
    file of a group the daemon is not in (only CAP_FSETID keeps the bit)."""
    for i, (uid, gid) in enumerate(OWNERS):
        d = src / f"user{i}"
        d.mkdir()
        (d / "private.txt").write_bytes(os.urandom(2000 + i))
        (d / "inner").mkdir()
        (d / "inner" / "data.bin").write_bytes(os.urandom(70000))
        os.symlink("../private.txt", d / "inner" / "link")
        for p in (d / "inner" / "link", d / "inner" / "data.bin", d / "inner",
                  d / "private.txt", d):
            os.lchown(p, uid, gid)
        os.chmod(d / "private.txt", 0o600)
        os.chmod(d, 0o700)
    setgid = src / "user0" / "tool"
    setgid.write_bytes(b"#!/bin/sh\n")
    os.chown(setgid, *OWNERS[0])
    os.chmod(setgid, 0o2750)


@pytest.fixture(autouse=True)
def service_user(monkeypatch):
    """Root's CLI trusts the state_dir of the unit's service user: here
    that user is ``nobody``."""
    monkeypatch.setenv("SYNCSUP_SERVICE_USER", pwd.getpwuid(SERVICE_UID).pw_name)


def test_service_user_with_capabilities_mirrors_owners_like_root(
        tmp_path, src, dst, sshd, settings, daemon_factory):
    remote = tmp_path / "remote"
    runtime = tmp_path / "run"
    make_tree(src)
    d = daemon_factory([sync_entry(src, [dst, sshd.target(remote)], ssh=sshd.ssh_config())],
                       settings_override={**settings, "log_level": "info"}, start=False)
    d.env["SYNCSUP_RUNTIME_DIR"] = str(runtime)
    d.start_argv = lambda: as_user(SERVICE_UID, MIRROR_CAPS, syncsup_argv("start", d.config))
    d.start()
    # it really is the service user, holding the capabilities
    assert status_field(d.pid, "Uid") == str(SERVICE_UID)
    assert int(status_field(d.pid, "CapEff"), 16) == 0x1F
    wait_converged(src, [dst, remote], timeout=120, on_timeout=d.describe)
    for target in (dst, remote):
        assert owners(target) == owners(src), f"owners or modes differ in {target}"

    # live changes by several users, a chown and a chmod of another's file
    (src / "user1" / "inner" / "new.txt").write_bytes(b"new\n")
    os.chown(src / "user1" / "inner" / "new.txt", *OWNERS[1])
    os.chown(src / "user2" / "private.txt", *OWNERS[0])
    os.chmod(src / "user0" / "inner" / "data.bin", 0o640)
    (src / "user1" / "private.txt").unlink()
    wait_converged(src, [dst, remote], timeout=120, on_timeout=d.describe)
    for target in (dst, remote):
        assert owners(target) == owners(src), f"owners or modes differ in {target}"

    # root's CLI finds it through the runtime directory and talks to it
    env = {**syncsup_env(), "SYNCSUP_RUNTIME_DIR": str(runtime)}
    r = subprocess.run(syncsup_argv("status"), env=env, capture_output=True, text=True,
                       timeout=60, stdin=subprocess.DEVNULL)
    rows = [ln.split() for ln in r.stdout.splitlines()[1:]]
    assert r.returncode == 0 and rows == [["state", str(d.pid), str(d.config)]], \
        r.stdout + r.stderr
    st = d.status()
    assert not any(c["restarts"] for c in d.components(st=st)), d.log_tail()
    # another non-root user, even one who can reach the socket, is refused
    control = Path(settings["state_dir"]) / "control.sock"
    client = tmp_path / "client.py"
    client.write_text(STATUS_CLIENT)  # prints REPLY StatusReply or NO-REPLY
    other = subprocess.run(as_user(OWNERS[0][0], "+dac_override,+dac_read_search",
                                   [sys.executable, str(client), str(control)]),
                           env=syncsup_env(), capture_output=True, text=True, timeout=60)
    assert other.stdout.strip() == "NO-REPLY", other.stdout + other.stderr
    mine = subprocess.run([sys.executable, str(client), str(control)], env=syncsup_env(),
                          capture_output=True, text=True, timeout=60)
    assert mine.stdout.strip() == "REPLY StatusReply", mine.stdout + mine.stderr

    assert d.stop() == 0
    assert snapshot(dst) == snapshot(src) == snapshot(remote)
    assert_no_leftovers(tmp_path)


def test_without_chown_owners_become_the_daemons_and_check_says_so(
        tmp_path, src, dst, settings, daemon_factory):
    make_tree(src)
    d = daemon_factory([sync_entry(src, [dst])],
                       settings_override={**settings, "log_level": "info"}, start=False)
    d.env["SYNCSUP_RUNTIME_DIR"] = str(tmp_path / "run")
    r = subprocess.run(as_user(SERVICE_UID, NO_CHOWN_CAPS, syncsup_argv("check", d.config)),
                       env=d.env, capture_output=True, text=True, timeout=120,
                       stdin=subprocess.DEVNULL)
    warnings = [ln for ln in r.stdout.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "CAP_CHOWN" in warnings[0], r.stdout + r.stderr
    assert f"get uid {SERVICE_UID}" in warnings[0], warnings
    # root (CAP_CHOWN) gets no such line for the same config
    assert not [ln for ln in run_cli("check", d.config).stdout.splitlines()
                if ln.startswith("warning:")]

    d.start_argv = lambda: as_user(SERVICE_UID, NO_CHOWN_CAPS,
                                   syncsup_argv("start", d.config))
    # Directories of other users: without CAP_CHOWN the rsync probe cannot
    # run, and a source others can write is refused, in one line.
    d.start(wait=False)
    assert d.proc is not None and d.proc.wait(timeout=120) == 78
    refusal = d.log_text().strip().splitlines()
    assert len(refusal) == 1 and "CAP_CHOWN" in refusal[0], refusal
    assert snapshot(dst) == {}, "something was written before the refusal"

    # Only root's directories: it runs, and other users' files arrive as its own.
    for dirpath, dirnames, _ in os.walk(src):
        for name in dirnames:
            os.chown(Path(dirpath, name), 0, 0)
    d.start()
    wait_converged(src, dst, timeout=120, on_timeout=d.describe)
    got, want = owners(dst), owners(src)
    assert got.keys() == want.keys()
    foreign = [rel for rel, (uid, _gid, _mode) in want.items() if uid != 0]
    assert foreign, "the tree has no file of another user"
    for rel, (uid, gid, mode) in got.items():
        assert (uid, gid) == (SERVICE_UID, SERVICE_UID), f"{rel}: {uid}:{gid}"
        assert mode == want[rel][2], rel
    assert d.stop() == 0
    assert_no_leftovers(tmp_path)


PROBE = """
import sys
from syncsup.rsync_probe import sender_follows
print(sender_follows(sys.argv[1]))
"""
FOLLOWING_RSYNC = """#!/bin/sh
exec {rsync} --insecure-links "$@"
"""


@pytest.mark.parametrize(("caps", "following", "expected"), [
    (MIRROR_CAPS, False, "False"),     # this machine's rsync (3.5.0) does not follow
    (MIRROR_CAPS, True, "True"),       # rsync's switch back to the old open by path
    (NO_CHOWN_CAPS, False, "None"),    # another user's symlink cannot be planted
])
def test_the_rsync_probe_runs_as_the_service_user(tmp_path, caps, following, expected):
    """The probe plants a symlink of a user other than the daemon's and
    root: run as uid 65534, the one it plants for root, it picks another
    (a fixed sender trusts its own user's symlinks, and would be taken for
    one that follows)."""
    binary = shutil.which("rsync")
    assert binary is not None
    if following:
        wrapper = tmp_path / "rsync-follows"
        wrapper.write_text(FOLLOWING_RSYNC.format(rsync=binary))
        wrapper.chmod(0o755)
        binary = str(wrapper)
    r = subprocess.run(as_user(SERVICE_UID, caps, [sys.executable, "-c", PROBE, binary]),
                       env=syncsup_env(), capture_output=True, text=True, timeout=120,
                       stdin=subprocess.DEVNULL)
    assert r.stdout.strip() == expected, r.stdout + r.stderr
