"""Settings Lsyncd users rely on: delete modes, init = false, exclude/filter,
max_processes across syncs, targets written as tables."""

from __future__ import annotations

import os
import threading
import time

import pytest

from tests.helpers.churn import Churn, ChurnThread
from tests.helpers.procs import assert_no_leftovers, processes_mentioning
from tests.helpers.tree import diff_trees, snapshot

from ._modes_helpers import b, converge, finish, sync_table, wait_until, write

pytestmark = pytest.mark.timeout(240)


def seed_trees(src, dst) -> None:
    """Source: a, b, sub/c. Target: an extra file and an extra directory the source lacks."""
    write(src / "a", b"aaa")
    write(src / "b", b"bbb")
    (src / "sub").mkdir()
    write(src / "sub" / "c", b"ccc")
    write(dst / "extra", b"only on the target")
    (dst / "extra-dir").mkdir()
    write(dst / "extra-dir" / "e", b"e")


def live_changes(src) -> None:
    """Delete a file and a directory, then create a marker (the last change)."""
    os.unlink(src / "a")
    os.unlink(src / "sub" / "c")
    os.rmdir(src / "sub")
    write(src / "new", b"new file")


def wait_marker(d, dst, name: str = "new") -> None:
    wait_until(lambda: (dst / name).exists(), f"{name} to reach the target", 120,
               context=d.describe)
    d.wait_idle(120)


def expect(dst, src_snap: dict, plus: dict, d) -> None:
    want = dict(src_snap)
    want.update(plus)
    diffs = diff_trees(want, snapshot(dst), names=("expected", "dst"))
    assert not diffs, "target is not as expected:\n" + "\n".join(diffs) + "\n" + d.log_tail(30)


def entries(root, *rels: str) -> dict:
    s = snapshot(root)
    out = {}
    for r in rels:
        rb = b(r)
        for k, v in s.items():
            if k == rb or k.startswith(rb + b"/"):
                out[k] = v
    return out


# ------------------------------------------------------------------ delete modes
def test_delete_false(tmp_path, src, dst, daemon_factory):
    seed_trees(src, dst)
    extras = entries(dst, "extra", "extra-dir")
    d = daemon_factory([sync_table(src, [dst], delete=False)])
    expect(dst, snapshot(src), extras, d)  # startup: extras kept
    kept = entries(src, "a", "sub")
    live_changes(src)
    wait_marker(d, dst)
    # deletes in the source stay on the target; the new file arrived
    expect(dst, snapshot(src), {**extras, **kept}, d)
    finish(d, tmp_path, src)


def test_delete_startup(tmp_path, src, dst, daemon_factory):
    seed_trees(src, dst)
    d = daemon_factory([sync_table(src, [dst], delete="startup")])
    converge(d, src, dst)  # extras removed at startup
    kept = entries(src, "a", "sub")
    live_changes(src)
    wait_marker(d, dst)
    # live deletes are not mirrored
    expect(dst, snapshot(src), kept, d)
    finish(d, tmp_path, src)


def test_delete_running(tmp_path, src, dst, daemon_factory):
    seed_trees(src, dst)
    extras = entries(dst, "extra", "extra-dir")
    d = daemon_factory([sync_table(src, [dst], delete="running")])
    expect(dst, snapshot(src), extras, d)  # startup: pre-existing extras kept
    live_changes(src)
    wait_marker(d, dst)
    # live deletes mirrored, the old extras still there
    expect(dst, snapshot(src), extras, d)
    finish(d, tmp_path, src)


def test_delete_true(tmp_path, src, dst, daemon_factory):
    seed_trees(src, dst)
    d = daemon_factory([sync_table(src, [dst], delete=True)])
    converge(d, src, dst)
    live_changes(src)
    finish(d, tmp_path, src, dst)


# ---------------------------------------------------------------------- init
def test_init_false(tmp_path, src, dst, daemon_factory):
    write(src / "pre1", b"pre-existing 1")
    (src / "predir").mkdir()
    write(src / "predir" / "pre2", b"pre-existing 2")
    write(dst / "extra", b"target only")
    d = daemon_factory([sync_table(src, [dst], init=False)])
    write(src / "later", b"a change after startup")
    wait_marker(d, dst, "later")
    # nothing of the pre-existing tree was copied, and nothing deleted
    assert sorted(os.listdir(dst)) == ["extra", "later"]
    assert (dst / "later").read_bytes() == b"a change after startup"
    # a later change to a pre-existing file is sent
    with open(src / "pre1", "ab") as f:
        f.write(b" changed")
    wait_marker(d, dst, "pre1")
    assert (dst / "pre1").read_bytes() == b"pre-existing 1 changed"
    assert not (dst / "predir" / "pre2").exists()
    # the status shows the target current, not stuck in startup
    st = d.status()
    assert all(t["state"] == "idle" for t in d.targets(st)), st
    finish(d, tmp_path, src)


# --------------------------------------------------------------- exclude/filter
def test_an_exclude_after_an_include_keeps_its_directory_off_target(tmp_path, src, dst,
                                                                     daemon_factory):
    """``+ /keep/`` before ``- /scratch/``: the watcher cannot trust the
    exclude (first match wins), so it watches scratch/ and reports the files
    written there; listed one by one, rsync would send them (it checks a
    listed name, not its directories). Neither they nor the directory may
    reach the target, whether the change is a file or a new subtree."""
    (src / "scratch").mkdir()
    sync = sync_table(src, [dst], delay=0, filter=["+ /keep/", "- /scratch/", "- *.tmp"])
    d = daemon_factory([sync])
    write(src / "first", b"1")
    wait_marker(d, dst, "first")
    d.wait_idle(120)
    time.sleep(1)  # scratch/ is watched by now
    write(src / "scratch" / "s.txt", b"in an excluded directory")
    (src / "scratch" / "sub").mkdir()
    write(src / "scratch" / "sub" / "deep", b"deeper")
    (src / "keep").mkdir()
    write(src / "keep" / "k.txt", b"kept")
    write(src / "keep" / "k.tmp", b"excluded by name")
    time.sleep(1)
    write(src / "zz-marker", b"last")
    wait_marker(d, dst, "zz-marker")
    d.wait_idle(120)
    assert (dst / "keep" / "k.txt").read_bytes() == b"kept"
    assert not (dst / "keep" / "k.tmp").exists()
    assert not (dst / "scratch").exists(), sorted(os.listdir(dst / "scratch"))
    d.stop()
    assert_no_leftovers(tmp_path)


def test_exclude_and_filter_keep_files_off_target(tmp_path, src, dst, daemon_factory):
    (tmp_path / "excl.txt").write_text("*.swp\n")
    (tmp_path / "filt.txt").write_text("- *.bak\n")
    write(src / "keep.txt", b"keep")
    write(src / "pre.tmp", b"excluded at startup")
    write(src / "pre.swp", b"excluded at startup by exclude_from")
    write(src / "pre.bak", b"excluded at startup by filter_from")
    (src / "cache").mkdir()
    write(src / "cache" / "pre", b"excluded dir at startup")
    write(dst / "old.tmp", b"excluded files on the target are left alone")
    sync = sync_table(src, [dst], exclude=["*.tmp", "/cache/"], filter=["- *.log"],
                      exclude_from=str(tmp_path / "excl.txt"),
                      filter_from=str(tmp_path / "filt.txt"))
    d = daemon_factory([sync])

    def excluded(rel: bytes) -> bool:
        name = os.path.basename(rel)
        return (rel == b"cache" or rel.startswith(b"cache/")
                or any(name.endswith(x) for x in (b".tmp", b".swp", b".log", b".bak")))

    def expected() -> dict:
        want = {k: v for k, v in snapshot(src).items() if not excluded(k)}
        want[b"old.tmp"] = snapshot(dst)[b"old.tmp"]
        return want

    wait_until(lambda: (dst / "keep.txt").exists(), "startup sync", 120, context=d.describe)
    d.wait_idle(120)
    diffs = diff_trees(expected(), snapshot(dst), names=("expected", "dst"))
    assert not diffs, "after startup:\n" + "\n".join(diffs) + "\n" + d.log_tail(30)

    # live: files matching each kind of rule, a new excluded dir, and a subdir
    (src / "sub").mkdir()
    for rel in ("a.tmp", "sub/b.tmp", "c.swp", "sub/d.log", "e.bak", "cache/live",
                "sub/ok.txt"):
        write(src / rel, rel.encode())
    (src / "cache" / "deep").mkdir()
    write(src / "cache" / "deep" / "f", b"f")
    os.rename(src / "keep.txt", src / "keep-renamed.txt")
    write(src / "zz-marker", b"last")
    wait_marker(d, dst, "zz-marker")
    diffs = diff_trees(expected(), snapshot(dst), names=("expected", "dst"))
    assert not diffs, "\n".join(diffs) + "\n" + d.log_tail(30)
    finish(d, tmp_path, src)


# ------------------------------------------------------------- max_processes
def _transfers_to(dst) -> list[int]:
    """Live rsync processes whose command line names ``dst`` (a transfer to it)."""
    return [pid for pid, cmd in processes_mentioning(dst) if "rsync" in cmd.split(" ", 1)[0]]


def test_max_processes_one_with_two_syncs(tmp_path, settings, daemon_factory):
    srcs = [tmp_path / "src1", tmp_path / "src2"]
    dsts = [tmp_path / "dst1", tmp_path / "dst2"]
    churns = []
    for i, (s, t) in enumerate(zip(srcs, dsts, strict=True)):
        s.mkdir()
        t.mkdir()
        c = Churn(s, 40 + i, hostile_ratio=0.2)
        c.populate(n_files=60, n_dirs=8, big_every=20)
        churns.append(c)
    syncs = [sync_table(s, [t], name=f"s{i}", delay=0.2)
             for i, (s, t) in enumerate(zip(srcs, dsts, strict=True))]

    # sample while the daemon runs: never a transfer to both targets at once
    overlaps: list[tuple[list[int], list[int]]] = []
    sampling = threading.Event()

    def sample():
        # One scan of /proc takes a while on a loaded machine: a transfer to
        # the first target seen early in it may have ended before the one to
        # the second began. Two ran at once only if the first is still there
        # after the second was seen.
        while not sampling.is_set():
            a, c = _transfers_to(dsts[0]), _transfers_to(dsts[1])
            if a and c:
                still = set(a) & set(_transfers_to(dsts[0]))
                if still:
                    overlaps.append((sorted(still), c))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        d = daemon_factory(syncs, settings_override={**settings, "max_processes": 1})
        threads = [ChurnThread(c, 120, sleep_prob=0.4, max_sleep=0.02) for c in churns]
        for t in threads:
            t.start()
        for t in threads:
            t.join_checked(120)
        converge(d, srcs[1], dsts[1])
        converge(d, srcs[0], dsts[0])
    finally:
        sampling.set()
        sampler.join(10)
    assert not overlaps, f"{len(overlaps)} samples saw two transfers at once: {overlaps[:3]}"
    finish(d, tmp_path, srcs[0], dsts[0])
    converge(d, srcs[1], dsts[1], timeout=1)


# ------------------------------------------------------------- table targets
def test_targets_as_tables(tmp_path, src, dst, sshd, daemon_factory):
    dst_ssh = tmp_path / "dst_ssh"
    dst_ssh.mkdir()
    write(src / "f", b"content")
    (src / "d").mkdir()
    write(src / "d" / "g", os.urandom(10000))
    sync = sync_table(
        src,
        [{"path": str(dst)},
         {"path": str(dst_ssh), "host": sshd.host, "user": sshd.user}],
        ssh=sshd.ssh_config(),
    )
    d = daemon_factory([sync])
    st = d.status()
    specs = sorted(t["target"] for t in d.targets(st))
    assert specs == sorted([str(dst), f"{sshd.user}@{sshd.host}:{dst_ssh}"]), specs
    converge(d, src, dst, dst_ssh)
    write(src / "d" / "h", b"live")
    os.unlink(src / "f")
    finish(d, tmp_path, src, dst, dst_ssh)


def test_excluded_directories_are_not_watched(tmp_path, src, dst, daemon_factory):
    """Excludes apply to watching too: an excluded subtree costs no watches,
    at startup or when created later, and nothing of it reaches the target."""
    (src / "keep" / "a").mkdir(parents=True)
    for i in range(30):
        (src / "node_modules" / f"pkg{i}" / "lib").mkdir(parents=True)
        write(src / "node_modules" / f"pkg{i}" / "lib" / "x.js", b"x")
    (src / "logs" / "old").mkdir(parents=True)
    sync = sync_table(src, [dst], exclude=["node_modules/", "/logs/"])
    d = daemon_factory([sync])
    d.wait_idle(120)

    def watches() -> int:
        return int(d.status()["syncs"][0]["watches"])

    # root, keep, keep/a: the 61 excluded directories have no watch
    assert watches() == 3, d.status()["syncs"][0]
    (src / "keep" / "node_modules" / "deep").mkdir(parents=True)  # unanchored rule
    (src / "logs" / "new").mkdir()
    (src / "keep" / "b").mkdir()
    write(src / "keep" / "node_modules" / "deep" / "y.js", b"y")
    write(src / "keep" / "b" / "marker", b"m")
    wait_marker(d, dst, "keep/b/marker")
    # the watcher places the new watches right after the events: wait for them
    wait_until(lambda: watches() != 3, "the watch count to change", 60, context=d.describe)
    time.sleep(2.5)  # a late extra watch would show by now
    assert watches() == 4  # only keep/b was added
    assert not (dst / "node_modules").exists() and not (dst / "logs").exists()
    assert not (dst / "keep" / "node_modules").exists()
    d.stop()
