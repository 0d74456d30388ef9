"""Modes that replay renames on the target: ``rsyncssh`` (real sshd on loopback) and
``direct`` (local target, rename(2)). Hostile-name churn, large directory renames that
must keep the target's inodes, and renames whose replay fails and must be repaired."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.helpers.churn import HOSTILE, Churn, ChurnThread
from tests.helpers.tree import snapshot

from ._modes_helpers import b, converge, finish, sync_table, write
from .test_agent import write_target_command

pytestmark = pytest.mark.timeout(300)

MODES = ["rsyncssh", "direct"]


def mode_sync(mode: str, request, src, dst, **kw):
    """A sync of ``mode`` from src to dst (over the session sshd for rsyncssh,
    whose renames go through this checkout's ``syncsup-target`` there)."""
    if mode == "rsyncssh":
        sshd = request.getfixturevalue("sshd")
        wrapper, _log = write_target_command(request.getfixturevalue("tmp_path"))
        return sync_table(src, [sshd.target(dst)], mode=mode,
                          ssh={**sshd.ssh_config(), "target_command": str(wrapper)}, **kw)
    return sync_table(src, [dst], mode=mode, **kw)


def inodes(root) -> dict[bytes, int]:
    """Relative path -> inode of every entry under ``root``."""
    r = b(root)
    out = {}
    for dirpath, dirnames, filenames in os.walk(r):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            out[os.path.relpath(p, r)] = os.lstat(p).st_ino
    return out


# ------------------------------------------------------------------- churn
@pytest.mark.parametrize("mode,seed", [("rsyncssh", 31), ("direct", 32)])
def test_hostile_churn_converges(mode, seed, tmp_path, src, dst, request, daemon_factory):
    s = b(src)
    # every hostile fragment as a whole name, as a file and as a directory with content
    for i, n in enumerate(HOSTILE):
        write(os.path.join(s, n), n * 10)
        os.mkdir(os.path.join(s, n + b".d"))
        write(os.path.join(s, n + b".d", n), bytes([i]) * 100)
    c = Churn(src, seed, hostile_ratio=0.5)
    c.populate(n_files=100, n_dirs=15, big_every=50)
    d = daemon_factory([mode_sync(mode, request, src, dst, delay=0.3)])
    converge(d, src, dst)

    t = ChurnThread(c, 300, sleep_prob=0.4, max_sleep=0.02)
    t.start()
    t.join_checked(150)
    converge(d, src, dst)

    # renames between hostile names (replayed on the target by its agent)
    pairs = list(zip(HOSTILE, HOSTILE[1:] + HOSTILE[:1], strict=True))
    renamed = 0
    for i, (a, z) in enumerate(pairs):
        for old, new in ((a + b".d", b"%d-" % i + z + b".moved"), (a, b"%d" % i + z)):
            old, new = os.path.join(s, old), os.path.join(s, new)
            if os.path.lexists(old) and not os.path.lexists(new):
                os.rename(old, new)
                renamed += 1
    assert renamed > len(HOSTILE)  # the churn may have removed a few of them
    finish(d, tmp_path, src, dst)


# ------------------------------------------------------- large directory rename
N_BIG, BIG_SIZE = 20, 4 * 1024 * 1024  # 80 MiB


@pytest.mark.parametrize("mode", MODES)
def test_large_directory_rename_keeps_inodes(mode, tmp_path, src, dst, request, daemon_factory):
    big = src / "big"
    big.mkdir()
    (big / "sub").mkdir()
    (src / "elsewhere").mkdir()
    for i in range(N_BIG):
        where = big / "sub" if i % 4 == 0 else big
        write(where / f"part-{i:02d}.bin", os.urandom(BIG_SIZE))
    d = daemon_factory([mode_sync(mode, request, src, dst, delay=0)])
    converge(d, src, dst, timeout=240)
    d.wait_idle(120)

    before = {k: v for k, v in inodes(dst).items() if k.startswith(b"big/")}
    assert len(before) == N_BIG + 1  # files + sub/

    # a rename across directories, to a name that needs care on a command line
    new_rel = b"elsewhere/-renamed big $(touch pwned)"
    os.rename(big, os.path.join(b(src), new_rel))
    converge(d, src, dst, timeout=240)
    after = inodes(dst)
    moved = {b"big/" + k[len(new_rel) + 1:]: v for k, v in after.items()
             if k.startswith(new_rel + b"/")}
    assert set(moved) == set(before)
    resent = sorted(k for k in before if moved[k] != before[k])
    assert not resent, (
        f"{len(resent)} of {len(before)} entries under the renamed directory got new inodes on "
        f"the target (data resent instead of renamed): {resent[:5]}\n{d.log_tail(30)}")
    finish(d, tmp_path, src, dst)


# ------------------------------------------------------- failed rename replays
@pytest.mark.parametrize("mode", MODES)
def test_failed_rename_is_repaired_by_transfer(mode, tmp_path, src, dst, request,
                                               daemon_factory):
    write(src / "a.txt", b"file a")
    (src / "dir1").mkdir()
    write(src / "dir1" / "x", os.urandom(5000))
    write(src / "dir1" / "y", b"y")
    write(src / "c.txt", b"file c")
    write(src / "keep", b"keep")
    d = daemon_factory([mode_sync(mode, request, src, dst, delay=0)])
    converge(d, src, dst)
    d.wait_idle(120)

    # break the target behind the daemon's back: the renames below cannot be replayed
    os.unlink(dst / "a.txt")                      # rename source missing
    shutil.rmtree(dst / "dir1")                   # directory rename source missing
    (dst / "occupied").mkdir()                    # rename onto a non-empty directory
    write(dst / "occupied" / "junk", b"junk")

    os.rename(src / "a.txt", src / "b.txt")
    os.rename(src / "dir1", src / "dir2")
    os.rename(src / "c.txt", src / "occupied")
    finish(d, tmp_path, src, dst)
    snap = snapshot(dst)
    assert b"b.txt" in snap and b"dir2/x" in snap and snap[b"occupied"][0] == "file"
