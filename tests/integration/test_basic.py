"""Basic mirroring: initial sync, live changes of every kind, hostile names, delay."""

from __future__ import annotations

import os
import re
import shutil
import time
import warnings
from pathlib import Path

import pytest

from tests.helpers.churn import HOSTILE, Churn, ChurnThread, assert_not_pwned
from tests.helpers.daemon import sync_entry
from tests.helpers.procs import assert_no_leftovers
from tests.helpers.tree import b, snapshot, wait_converged, write

pytestmark = pytest.mark.timeout(300)


def converge(d, src, *dsts, timeout: float = 120):
    return wait_converged(src, dsts, timeout=timeout, on_timeout=d.describe)


def finish(d, tmp_path, src, *dsts):
    """The common ending: converged byte for byte, clean stop, nothing left behind."""
    converge(d, src, *dsts)
    d.stop()
    assert_no_leftovers(tmp_path)
    assert_not_pwned(tmp_path, src, *dsts)


def make_sample_tree(root: Path) -> None:
    r = b(root)
    os.makedirs(os.path.join(r, b"a/b/c"))
    write(os.path.join(r, b"top.txt"), b"hello\n")
    write(os.path.join(r, b"a/one.bin"), os.urandom(70_000), 0o600)
    write(os.path.join(r, b"a/b/two"), b"", 0o755)
    write(os.path.join(r, b"a/b/c/three"), os.urandom(3 * 1024 * 1024), 0o444)
    os.chmod(os.path.join(r, b"a/b"), 0o750)
    os.symlink(b"../top.txt", os.path.join(r, b"a/rel-link"))
    os.symlink(b"/etc/hostname", os.path.join(r, b"a/abs-link"))
    os.symlink(b"no/such/target", os.path.join(r, b"dangling"))
    os.symlink(b"b", os.path.join(r, b"a/dir-link"))
    os.mkdir(os.path.join(r, b"empty-dir"))
    os.mkdir(os.path.join(r, b"\xff\xfe-dir"))
    write(os.path.join(r, b"\xff\xfe-dir", b"new\nline"), b"x")


# ------------------------------------------------------------------------ tests
def test_initial_sync_copies_tree_and_deletes_extras(tmp_path, src, dst, daemon_factory):
    make_sample_tree(src)
    # pre-existing junk on the target: extra files, an extra non-empty dir,
    # a same-named file with other content and same size, and type conflicts
    d_ = b(dst)
    os.makedirs(os.path.join(d_, b"a"))
    os.makedirs(os.path.join(d_, b"stale/deeper"))
    write(os.path.join(d_, b"stale/deeper/old"), b"old")
    write(os.path.join(d_, b"extra.txt"), b"extra")
    write(os.path.join(d_, b"top.txt"), b"HELLO, WORLD\n")  # other size and mtime
    write(os.path.join(d_, b"a/one.bin"), b"old", 0o644)
    os.makedirs(os.path.join(d_, b"dangling/sub"))  # a dir where the source has a symlink
    write(os.path.join(d_, b"empty-dir"), b"file where the source has a dir")

    d = daemon_factory([sync_entry(src, [dst], delete=True)])
    finish(d, tmp_path, src, dst)


def test_initial_sync_fixes_same_size_same_mtime_target_file(tmp_path, src, dst, daemon_factory):
    """A target file with the source's size and mtime but other content is still fixed.

    This is what a same-size rewrite with a restored mtime looks like to the
    initial sync (or to any RESCAN) when it happened while nobody was
    watching: daemon down, or watcher restarting.  A size+mtime quick check
    cannot see it; a first start (no clean-stop mark) compares content.
    """
    s, d_ = b(src), b(dst)
    for i in range(3):
        write(os.path.join(s, b"same%d" % i), b"source content %d\n" % i)
        write(os.path.join(d_, b"same%d" % i), b"TARGET CONTENT %d\n" % i)
        st = os.stat(os.path.join(s, b"same%d" % i))
        os.utime(os.path.join(d_, b"same%d" % i), ns=(st.st_atime_ns, st.st_mtime_ns))
    d = daemon_factory([sync_entry(src, [dst], delete=True)])
    finish(d, tmp_path, src, dst)


def test_live_create_modify_delete_rename(tmp_path, src, dst, daemon):
    s = b(src)
    converge(daemon, src, dst)

    # create files and nested dirs
    os.makedirs(os.path.join(s, b"x/y/z"))
    for i in range(20):
        write(os.path.join(s, b"x/y/z/f%d" % i), os.urandom(i * 500))
    write(os.path.join(s, b"root.txt"), b"root\n")
    converge(daemon, src, dst)

    # modify: append, truncate, rewrite, chmod file and dir
    with open(os.path.join(s, b"root.txt"), "ab") as f:
        f.write(b"more\n")
    os.truncate(os.path.join(s, b"x/y/z/f5"), 10)
    write(os.path.join(s, b"x/y/z/f6"), b"rewritten")
    os.chmod(os.path.join(s, b"x/y/z/f7"), 0o600)
    os.chmod(os.path.join(s, b"x/y"), 0o700)
    converge(daemon, src, dst)

    # delete files, an empty dir
    os.unlink(os.path.join(s, b"x/y/z/f1"))
    os.unlink(os.path.join(s, b"x/y/z/f2"))
    os.mkdir(os.path.join(s, b"gone"))
    converge(daemon, src, dst)
    os.rmdir(os.path.join(s, b"gone"))
    converge(daemon, src, dst)

    # rename a file within a dir, across dirs, over an existing file (atomic save)
    os.rename(os.path.join(s, b"x/y/z/f3"), os.path.join(s, b"x/y/z/f3-renamed"))
    os.rename(os.path.join(s, b"x/y/z/f4"), os.path.join(s, b"moved-up"))
    write(os.path.join(s, b"x/.root.txt.tmp"), b"atomically saved\n")
    os.rename(os.path.join(s, b"x/.root.txt.tmp"), os.path.join(s, b"root.txt"))
    converge(daemon, src, dst)

    # rename a directory (with content) elsewhere, then rename it back under a new name
    os.rename(os.path.join(s, b"x/y"), os.path.join(s, b"y-moved"))
    converge(daemon, src, dst)
    os.rename(os.path.join(s, b"y-moved"), os.path.join(s, b"x/y-again"))
    write(os.path.join(s, b"x/y-again/z/new-after-move"), b"new")
    converge(daemon, src, dst)

    # replace a file by a dir and a dir by a file of the same name
    os.unlink(os.path.join(s, b"moved-up"))
    os.mkdir(os.path.join(s, b"moved-up"))
    write(os.path.join(s, b"moved-up/inside"), b"inside")
    shutil.rmtree(os.path.join(s, b"x/y-again"))
    write(os.path.join(s, b"x/y-again"), b"now a file")
    finish(daemon, tmp_path, src, dst)


def test_symlinks(tmp_path, src, dst, daemon):
    s = b(src)
    write(os.path.join(s, b"target.txt"), b"t")
    os.mkdir(os.path.join(s, b"dir"))
    os.symlink(b"target.txt", os.path.join(s, b"rel"))
    os.symlink(b"../target.txt", os.path.join(s, b"dir/rel-up"))
    os.symlink(os.path.join(s, b"target.txt"), os.path.join(s, b"abs"))
    os.symlink(b"does/not/exist", os.path.join(s, b"dangling"))
    os.symlink(b"/nonexistent/abs/dangling", os.path.join(s, b"dangling-abs"))
    os.symlink(b"dir", os.path.join(s, b"link-to-dir"))
    os.symlink(b"loop", os.path.join(s, b"loop"))  # a self-loop
    os.symlink(b"$(touch pwned)\n`touch pwned`", os.path.join(s, b"hostile-target"))
    converge(daemon, src, dst)

    # retarget (atomically and by unlink+symlink), turn a link into a file and back
    os.symlink(b"dir", os.path.join(s, b".tmp-link"))
    os.rename(os.path.join(s, b".tmp-link"), os.path.join(s, b"rel"))
    os.unlink(os.path.join(s, b"dangling"))
    os.symlink(b"target.txt", os.path.join(s, b"dangling"))
    os.unlink(os.path.join(s, b"abs"))
    write(os.path.join(s, b"abs"), b"was a link")
    os.unlink(os.path.join(s, b"target.txt"))  # now rel-up and link targets dangle
    os.symlink(b"dir/rel-up", os.path.join(s, b"target.txt"))
    converge(daemon, src, dst)

    # the target of a link-to-dir is mirrored as a link, not followed
    write(os.path.join(s, b"dir/through-the-dir"), b"x")
    os.unlink(os.path.join(s, b"link-to-dir"))
    finish(daemon, tmp_path, src, dst)


def test_same_size_rewrite_same_mtime(tmp_path, src, dst, daemon):
    """rsync's quick check (size+mtime) would skip these; the daemon must not rely on it."""
    s = b(src)
    paths = [os.path.join(s, b"f%d" % i) for i in range(5)]
    for p in paths:
        write(p, b"A" * 4096)
    converge(daemon, src, dst)

    # after the target has the old content: same size, mtime put back exactly
    for i, p in enumerate(paths):
        st = os.stat(p)
        with open(p, "r+b") as f:
            f.seek(i * 100)
            f.write(b"B" * 50)
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert os.stat(p).st_mtime_ns == st.st_mtime_ns and os.stat(p).st_size == st.st_size
    converge(daemon, src, dst)

    # write then rewrite at once (same mtime tick), new files and an existing one
    for i in range(5):
        p = os.path.join(s, b"quick%d" % i)
        write(p, b"1" * 1000)
        st = os.stat(p)
        with open(p, "r+b") as f:
            f.write(b"2" * 1000)
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    st = os.stat(paths[0])
    with open(paths[0], "r+b") as f:
        f.write(b"C" * 4096)
    os.utime(paths[0], ns=(st.st_atime_ns, st.st_mtime_ns))
    finish(daemon, tmp_path, src, dst)


def test_rmtree_non_empty(tmp_path, src, dst, daemon):
    s = b(src)
    c = Churn(os.path.join(s, b"big"), seed=7, hostile_ratio=0.2)
    os.mkdir(os.path.join(s, b"big"))
    c.populate(n_files=300, n_dirs=40)
    os.makedirs(os.path.join(s, b"keep/sub"))
    write(os.path.join(s, b"keep/sub/file"), b"keep")
    converge(daemon, src, dst)

    shutil.rmtree(os.path.join(s, b"big"))
    converge(daemon, src, dst)

    # remove a tree and at once recreate the same name with other content
    c = Churn(os.path.join(s, b"keep"), seed=8)
    c.populate(n_files=50, n_dirs=10)
    converge(daemon, src, dst)
    shutil.rmtree(os.path.join(s, b"keep"))
    os.makedirs(os.path.join(s, b"keep/sub"))
    write(os.path.join(s, b"keep/sub/file"), b"different")
    finish(daemon, tmp_path, src, dst)


def test_hostile_names(tmp_path, src, dst, daemon):
    s = b(src)
    names = [
        *HOSTILE,
        b"-",
        b"--",
        b"-rf",
        b"--rsh=touch pwned",
        b"*",
        b"?",
        b"[",
        b"\\",
        b"'",
        b'"',
        b"\n",
        b" ",
        b"\t",
        b"\xff",
        b"\xc3(",
        b"a" * 255,
    ]
    for i, n in enumerate(names):
        write(os.path.join(s, n), b"file %d\n" % i)
    os.mkdir(os.path.join(s, b"dir \n$(touch pwned)"))
    for i, n in enumerate(names[:10]):
        write(os.path.join(s, b"dir \n$(touch pwned)", n), b"nested %d" % i)
        os.symlink(n, os.path.join(s, b"dir \n$(touch pwned)", b"link-" + n[:200]))
    converge(daemon, src, dst)

    # rename, modify and delete hostile names live
    for n in names[:12]:
        os.rename(os.path.join(s, n), os.path.join(s, b"renamed " + n[:200]))
    for n in names[12:20]:
        with open(os.path.join(s, n), "ab") as f:
            f.write(b"appended")
    for n in names[20:]:
        os.unlink(os.path.join(s, n))
    os.rename(os.path.join(s, b"dir \n$(touch pwned)"), os.path.join(s, b"--dir\\'\"*?["))
    converge(daemon, src, dst)
    shutil.rmtree(os.path.join(s, b"--dir\\'\"*?["))
    finish(daemon, tmp_path, src, dst)


def test_delay_batches(tmp_path, src, dst, daemon_factory):
    """delay=2: changes arrive after convergence; early arrival is only reported, never failed."""
    d = daemon_factory([sync_entry(src, [dst], delay=2)])
    converge(d, src, dst)
    d.wait_idle()
    time.sleep(0.5)

    s = b(src)
    t0 = time.monotonic()
    write(os.path.join(s, b"delayed"), b"arrives after the delay")
    early = False
    while time.monotonic() - t0 < 0.5:
        if os.path.exists(os.path.join(b(dst), b"delayed")):
            early = True
            break
        time.sleep(0.05)
    if early and time.monotonic() - t0 < 1.0:
        warnings.warn("delay=2 sync delivered a change in under 1 s", stacklevel=1)

    # a burst within the delay window
    for i in range(50):
        write(os.path.join(s, b"burst%d" % i), os.urandom(100))
    finish(d, tmp_path, src, dst)


def test_delay_zero(tmp_path, src, dst, daemon_factory):
    d = daemon_factory([sync_entry(src, [dst], delay=0)])
    s = b(src)
    for i in range(30):
        os.makedirs(os.path.join(s, b"d%d" % (i % 5)), exist_ok=True)
        write(os.path.join(s, b"d%d/f%d" % (i % 5, i)), os.urandom(i * 100))
        if i % 7 == 0:
            time.sleep(0.05)
    converge(d, src, dst)
    write(os.path.join(s, b"d0/f0"), b"changed")
    os.unlink(os.path.join(s, b"d1/f1"))
    finish(d, tmp_path, src, dst)


@pytest.mark.timeout(400)
def test_changes_during_initial_sync_are_not_lost(tmp_path, src, dst, daemon_factory):
    """Churn starts right after ``start``, while the initial sync is still copying.

    The churn (seconds of it) begins before the daemon is up, so it spans
    the whole initial sync: a tree of ~20 MB in 2,000 files takes long
    enough to copy for many changes to land during it."""
    c = Churn(src, seed=11)
    c.populate(n_files=2000, n_dirs=100, big_every=200, max_size=16 * 1024)
    d = daemon_factory([sync_entry(src, [dst])], wait=False)
    t = ChurnThread(c, 400, sleep_prob=0.5, max_sleep=0.04)
    t.start()
    t.join_checked(120)
    churn_ended = time.time()
    d.wait_ready()
    converge(d, src, dst, timeout=180)
    # the churn began before the start: it overlapped the initial sync if
    # it still ran when the first transfer began
    began = first_batch_began(d.log_text())
    assert began is not None and began < churn_ended, (
        f"the first batch began at {began}, after the churn ended at {churn_ended}")
    d.stop()
    assert_no_leftovers(tmp_path)
    assert_not_pwned(tmp_path, src, dst)


_BATCH_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) \w+\s+syncer \d+: "
                         r"target .*: batch \d+, .*, ([\d.]+)s: ", re.MULTILINE)


def first_batch_began(log: str) -> float | None:
    """When the first batch the syncer logged began (its end, the line's
    time, minus the seconds it says it took), as a wall-clock time."""
    m = _BATCH_LINE.search(log)
    if m is None:
        return None
    end = time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) + int(m.group(2)) / 1000
    return end - float(m.group(3))


def test_snapshot_sanity(tmp_path):
    """The comparison itself must see every kind of difference (no daemon involved)."""
    a, c = tmp_path / "a", tmp_path / "c"
    a.mkdir()
    make_sample_tree(a)
    shutil.copytree(a, c, symlinks=True, copy_function=shutil.copy2)
    os.chmod(c / "a" / "b", 0o750)
    from tests.helpers.tree import diff_trees

    assert diff_trees(snapshot(a), snapshot(c)) == []
    with open(c / "top.txt", "r+b") as f:
        f.write(b"J")
    os.chmod(c / "a" / "one.bin", 0o644)
    os.unlink(c / "dangling")
    os.symlink("elsewhere", c / "dangling")
    diffs = diff_trees(snapshot(a), snapshot(c))
    assert len(diffs) == 3, diffs
