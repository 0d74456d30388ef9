"""Renames over ssh go through the target's long-lived agent session, and
only there: a rename batch to a confined or an unconfined target starts no
ssh of its own (every ssh the daemon runs is logged by a wrapper put first
on its PATH), resends no data, and keeps the target's inodes. A sync whose
settings keep content off the agent still renames through it. A target
without ``syncsup-target`` converges too: its renames travel as a delete
and a create, said once in the log with the remedy.

Real sshd on loopback, real rsync, real inotify; byte-for-byte comparison."""

from __future__ import annotations

import os
import re
import shlex
import shutil
from pathlib import Path

import pytest

from tests.helpers.attack import make_world
from tests.helpers.daemon import Daemon, run_cli, write_config
from tests.helpers.procs import assert_no_leftovers
from tests.helpers.tree import write

from ._modes_helpers import converge, finish, sync_table
from .test_agent import write_target_command
from .test_modes import inodes

pytestmark = pytest.mark.timeout(300)

FILES, SIZE = 240, 96 * 1024  # 22.5 MiB under the directory renamed


def ssh_logger(tmp_path: Path) -> tuple[Path, Path]:
    """A directory holding an ``ssh`` that logs its arguments (one line per
    run, arguments separated by US) and runs the real one. Returns (dir, log)."""
    real = shutil.which("ssh")
    assert real is not None
    where = tmp_path / "logged-bin"
    where.mkdir()
    log = tmp_path / "ssh-runs.log"
    (where / "ssh").write_text(
        "#!/bin/sh\n"
        f"( IFS=$(printf '\\037'); printf '%s\\n' \"$*\" ) >> {shlex.quote(str(log))}\n"
        f'exec {shlex.quote(real)} "$@"\n')
    os.chmod(where / "ssh", 0o755)
    return where, log


def ssh_runs(log: Path) -> list[list[str]]:
    try:
        return [ln.split("\x1f") for ln in log.read_text().splitlines()]
    except FileNotFoundError:
        return []


def not_rsync(runs: list[list[str]]) -> list[str]:
    """The ssh runs that were neither a transfer nor a master: an agent
    session, a rename command, anything else."""
    out = []
    for argv in runs:
        if "-M" in argv:
            continue  # the target's master connection (restarted after a loss)
        if any(a == "rsync" or a.startswith("rsync --server") for a in argv):
            continue  # a transfer: rsync runs ssh with its own server command
        out.append(" ".join(argv))
    return out


def start(daemon_factory, sync: dict, path_first: Path) -> Daemon:
    d: Daemon = daemon_factory([sync], start=False)
    d.env["PATH"] = f"{path_first}{os.pathsep}{d.env.get('PATH', '')}"
    return d.start()


def big_tree(root: Path) -> int:
    """FILES files of SIZE random bytes under ``root``, in a few levels."""
    for i in range(FILES):
        write(root / f"d{i % 6}" / f"e{i % 4}" / f"f{i:03d}.bin", os.urandom(SIZE))
    return FILES * SIZE


def batch_bytes(log_text: str) -> int:
    """The bytes every finished batch in ``log_text`` sent (agent and rsync)."""
    return sum(int(m) for m in re.findall(r" renames, (\d+) bytes, ", log_text))


def renamed_keeping_inodes(d: Daemon, src: Path, dst: Path, old: str, new: str,
                           size: int) -> None:
    """Rename ``old`` to ``new`` in the source; the target renames it too:
    byte for byte the same, every inode kept, a small fraction of ``size``
    sent."""
    before = {k: v for k, v in inodes(dst).items() if k.startswith(old.encode() + b"/")}
    assert before
    mark = len(d.log_text())
    os.rename(src / old, src / new)
    converge(d, src, dst, timeout=200)
    d.wait_idle(120)
    after = inodes(dst)
    moved = {old.encode() + k[len(new):]: v for k, v in after.items()
             if k.startswith(new.encode() + b"/")}
    assert moved == before, (
        "entries under the renamed directory got new inodes on the target (data resent "
        f"instead of renamed)\n{d.log_tail(30)}")
    sent = batch_bytes(d.log_text()[mark:])
    assert sent < size // 20, f"{sent} bytes sent for a rename of {size}\n{d.log_tail(20)}"


@pytest.fixture
def world(asshd):
    """ROOT and its surroundings, the key confined to ROOT (root account)."""
    yield from make_world("root", asshd)


@pytest.mark.parametrize("kind", ["confined", "unconfined", "unconfined-rsync-writes"])
def test_a_large_directory_rename_starts_no_ssh_of_its_own(kind, request, tmp_path, src, dst,
                                                           daemon_factory):
    """``unconfined-rsync-writes``: compress = true keeps every write on
    rsync, yet renames still go through the agent's session."""
    bindir, log = ssh_logger(tmp_path)
    if kind == "confined":
        w = request.getfixturevalue("world")
        s = request.getfixturevalue("asshd")
        dst = w.root
        target = f"{w.login}:{w.root}"
        ssh = {**s.ssh_config(), "confined": True}
    else:
        s = request.getfixturevalue("sshd")
        wrapper, _started = write_target_command(tmp_path)
        target = s.target(dst)
        ssh = {**s.ssh_config(), "target_command": str(wrapper)}
    rsync = {"compress": True} if kind == "unconfined-rsync-writes" else {}
    size = big_tree(src / "big")
    write(src / "small" / "x", b"x")
    sync = sync_table(src, [target], mode="rsyncssh", delay=0.2, ssh=ssh,
                      **({"rsync": rsync} if rsync else {}))
    d = start(daemon_factory, sync, bindir)
    converge(d, src, dst, timeout=200)
    d.wait_idle(120)
    # a first rename opens the agent's session, if no write did yet
    renamed_keeping_inodes(d, src, dst, "small", "small2", 10**9)
    mark = len(ssh_runs(log))

    renamed_keeping_inodes(d, src, dst, "big", "big-renamed $(touch pwned) -x", size)
    (src / "big-renamed $(touch pwned) -x" / "d1").rename(src / "moved-out")
    converge(d, src, dst, timeout=200)
    new = ssh_runs(log)[mark:]
    assert not not_rsync(new), (
        f"ssh runs other than transfers for the rename batches: {not_rsync(new)}\n"
        + d.log_tail(20))
    assert "no agent there" not in d.log_text(), d.log_tail(20)
    finish(d, tmp_path, src, dst)


def test_a_target_without_syncsup_target_converges_by_delete_and_create(sshd, tmp_path, src,
                                                                        dst, daemon_factory):
    """An unconfined login whose PATH has no such program: each rename is a
    delete and a create by rsync, the mirror converges, and the log says so
    once, with what to install where."""
    bindir, _log = ssh_logger(tmp_path)
    write(src / "a" / "b" / "f", os.urandom(5000))
    write(src / "g", b"g")
    sync = sync_table(src, [sshd.target(dst)], mode="rsyncssh", delay=0.2,
                      ssh={**sshd.ssh_config(), "target_command": "syncsup-target-not-on-path"})
    d = start(daemon_factory, sync, bindir)
    converge(d, src, dst)
    for i in range(3):
        os.rename(src / ("a" if i == 0 else f"a{i - 1}"), src / f"a{i}")
        os.rename(src / ("g" if i == 0 else f"g{i - 1}"), src / f"g{i}")
        converge(d, src, dst)
    lines = [ln for ln in d.log_text().splitlines() if "no agent there" in ln]
    assert len(lines) == 1, "\n".join(lines) + "\n" + d.log_tail(20)
    assert (f"renames travel as a delete and a create until syncsup-target is installed on "
            f"{sshd.host}") in lines[0], lines[0]
    assert (dst / "a2" / "b" / "f").is_file() and not (dst / "a").exists()
    # the target answered that it has no agent: no batch failed for it
    (target,) = d.targets()
    assert not target["transfers"].get("retry"), target
    assert "rename" not in (target.get("last_error") or ""), target
    finish(d, tmp_path, src, dst)


@pytest.mark.parametrize("installed", [False, True])
def test_check_says_whether_renames_can_be_replayed(installed, sshd, tmp_path, src, dst):
    wrapper, _started = write_target_command(tmp_path)
    program = str(wrapper) if installed else "syncsup-target-not-on-path"
    sync = sync_table(src, [sshd.target(dst)], mode="rsyncssh",
                      ssh={**sshd.ssh_config(), "target_command": program})
    config = write_config(tmp_path / "check.toml", {
        "settings": {"state_dir": str(tmp_path / "state")}, "sync": [sync]})
    r = run_cli("check", config, timeout=120, cwd=tmp_path)
    problems = [ln for ln in r.stdout.splitlines() if ln.startswith("problem:")]
    warnings = [ln for ln in r.stdout.splitlines() if ln.startswith("warning:")]
    # it mirrors either way: without the agent it is a warning, not a problem
    assert r.returncode == 0 and not problems, r.stdout + r.stderr
    if installed:
        assert not warnings, r.stdout
    else:
        assert len(warnings) == 1, r.stdout + r.stderr
        assert (f"{program} does not run on {sshd.host}, so renames cannot be replayed there"
                in warnings[0]), warnings[0]
        assert f"install syncsup-target on {sshd.host}" in warnings[0], warnings[0]
    assert not (tmp_path / "state").exists()
    assert_no_leftovers(tmp_path)
