"""Directory times through rsync alone, with no times step.

A paths step names each entry as ``./name`` in its ``--files-from`` list;
rsync then lists the directories above each name (its implied
directories, the root too) with their attributes, and sets their times
after its writes and deletions there. So the syncer runs no second rsync
for those directories' times when its rsync was probed to do this. A
directory whose only change is a name the rules exclude gets nothing from
the paths step: a times step still runs, for that directory alone.

Towards a local target, an ssh login's rsync and an rsync daemon's
module. Each round ends with the trees identical, every directory's mode
and time the source's (the root's too), and the runs recorded show which
rsync steps ran.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from syncsup.rsync_version import sets_implied_dirs
from tests.helpers.churn import HOSTILE
from tests.helpers.daemon import sync_entry
from tests.helpers.oracle import mtime_diffs
from tests.helpers.procs import assert_no_leftovers
from tests.helpers.rsyncd import RsyncDaemon
from tests.helpers.tree import assert_same_tree

from ._modes_helpers import wait_until
from .test_agent import RSYNC, RsyncRun, converge, one_round, rsync_logger, rsync_runs, with_rsync
from .test_burst_times import omitting_dir_times, times_run

pytestmark = pytest.mark.timeout(300)

DIRS = [b"a", b"a/b", b"a/b/" + HOSTILE[0], b"c/" + HOSTILE[1], b"gone/x"]


@pytest.fixture
def rsyncd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RsyncDaemon]:
    d = RsyncDaemon(tmp_path_factory.mktemp("rsyncd"))
    d.start()
    yield d
    d.close()
    assert_no_leftovers(d.dir)


def modes(root: Path) -> dict[bytes, int]:
    """Relative path -> mode of every directory, the root's (b"") too."""
    r = os.fsencode(root)
    return {(os.path.relpath(p, r) if p != r else b""): os.lstat(p).st_mode
            for p, _dirs, _files in os.walk(r)}


def same_directories(src: Path, dst: Path) -> list[str]:
    a, b = modes(src), modes(dst)
    return mtime_diffs(src, dst) + [f"{k!r}: mode {a[k]:o} != {b.get(k, 0):o}"
                                    for k in a if a[k] != b.get(k)]


def describe(runs: list[RsyncRun]) -> str:
    return "\n".join(f"{r.describe()} {b' '.join(r.argv)[:200]!r}" for r in runs)


def target_of(where: str, request: pytest.FixtureRequest, dst: Path) -> tuple[str, Path, dict]:
    """The target spec, the directory it writes, and the sync's extra keys."""
    if where == "local":
        return str(dst), dst, {}
    if where == "ssh":
        sshd = request.getfixturevalue("sshd")
        return sshd.target(dst), dst, {"ssh": sshd.ssh_config()}
    if os.geteuid() != 0:
        pytest.skip("an rsync daemon's module with owners kept needs root")
    rsyncd = request.getfixturevalue("rsyncd")
    return rsyncd.url(), rsyncd.module_path, {}


def entry(src: Path, spec: str, where: str, request: pytest.FixtureRequest, **kw) -> dict:
    e = sync_entry(src, [spec], delay=0.2, **kw)
    if where == "rsyncd":
        e["rsyncd"] = {"password_file": str(request.getfixturevalue("rsyncd").password_file)}
    return e


def rounds(s: bytes) -> list:
    """Changes that move every directory's time, each round: creations
    below every directory, deletions of a file and of a whole tree, a new
    directory with content, a directory's mode, a new file at the root."""
    def first() -> None:
        for i, d in enumerate(DIRS[:-1]):
            with open(os.path.join(s, d, b"new%d" % i), "wb") as f:
                f.write(b"%d\n" % i)
            os.unlink(os.path.join(s, d, b"old"))
        shutil.rmtree(os.path.join(s, b"gone/x"))
        os.makedirs(os.path.join(s, b"fresh/er"))
        with open(os.path.join(s, b"fresh/er/f"), "wb") as f:
            f.write(b"f\n")
        os.chmod(os.path.join(s, b"a/b"), 0o750)
        with open(os.path.join(s, b"top"), "wb") as f:
            f.write(b"top\n")

    def deletions_only() -> None:
        os.unlink(os.path.join(s, b"a/b/new1"))
        os.unlink(os.path.join(s, b"top"))

    return [first, deletions_only]


def populate(s: bytes) -> None:
    for d in DIRS:
        os.makedirs(os.path.join(s, d), exist_ok=True)
        with open(os.path.join(s, d, b"old"), "wb") as f:
            f.write(b"old\n")
        with open(os.path.join(s, d, b"kept"), "wb") as f:
            f.write(b"kept\n")
    os.chmod(s, 0o751)


@pytest.mark.parametrize("where", ["local", "ssh", "rsyncd"])
def test_the_paths_step_sets_its_directories_times_and_no_times_step_runs(
        where, request, tmp_path: Path, src: Path, dst: Path, daemon_factory) -> None:
    assert sets_implied_dirs(RSYNC)
    spec, out, extra = target_of(where, request, dst)
    rsync_bin, runs = rsync_logger(tmp_path)
    s = os.fsencode(src)
    populate(s)
    # compress: rsync for every change (no agent), here as for a daemon
    d = daemon_factory([with_rsync(entry(src, spec, where, request, **extra), rsync_bin,
                                   compress=True)])
    converge(d, src, out)
    for change in rounds(s):
        mark = len(rsync_runs(runs))
        one_round(d, change)
        converge(d, src, out)
        wait_until(lambda: not same_directories(src, out), "the directories' modes and times",
                   timeout=60, context=lambda m=mark: "\n".join(same_directories(src, out))
                   + describe(rsync_runs(runs)[m:]) + d.describe())
        d.wait_idle(60)
        done = rsync_runs(runs)[mark:]
        assert [r for r in done if r.kind == "paths"], describe(done)
        assert not [r for r in done if times_run(r)], (
            "rsync's paths step set these directories' times: no times step was to run\n"
            + describe(done))
    assert_same_tree(src, out)
    assert os.lstat(out).st_mode == os.lstat(src).st_mode


@pytest.mark.parametrize("where", ["exclude", "extra"])
def test_a_directory_only_an_excluded_name_changed_gets_a_times_step(
        where, tmp_path: Path, src: Path, dst: Path, daemon_factory) -> None:
    """rsync drops an excluded name before its directories: the times step
    stays, for that directory alone; with a filter among rsync's extra
    options, which the syncer does not read, for every directory."""
    rsync_bin, runs = rsync_logger(tmp_path)
    s = os.fsencode(src)
    populate(s)
    if where == "exclude":
        entry = with_rsync(sync_entry(src, [dst], delay=0.2, exclude=["*.tmp"]), rsync_bin,
                           compress=True)
    else:
        entry = with_rsync(sync_entry(src, [dst], delay=0.2), rsync_bin,
                           extra=["--exclude=*.tmp"])
    d = daemon_factory([entry])
    converge(d, src, dst)
    mark = len(rsync_runs(runs))

    def change() -> None:
        with open(os.path.join(s, b"a/b/x.tmp"), "wb") as f:
            f.write(b"excluded\n")
        with open(os.path.join(s, b"c", HOSTILE[1], b"sent"), "wb") as f:
            f.write(b"sent\n")

    one_round(d, change)
    wait_until(lambda: not same_directories(src, dst), "the directories' modes and times",
               timeout=60, context=lambda: "\n".join(same_directories(src, dst))
               + describe(rsync_runs(runs)[mark:]) + d.describe())
    d.wait_idle(60)
    done = rsync_runs(runs)[mark:]
    want = (b"a/b",) if where == "exclude" else (b"a/b", b"c/" + HOSTILE[1])
    assert [r.names for r in done if times_run(r)] == [want], describe(done)
    assert not os.path.lexists(dst / "a/b/x.tmp")


def test_an_rsync_that_leaves_directory_times_keeps_the_times_step(
        tmp_path: Path, src: Path, dst: Path, daemon_factory) -> None:
    """The probe asks the binary: one that sets no directory's time in a
    paths step (here ``--omit-dir-times`` added to every such run) is
    answered False, and the times step sets them."""
    rsync_bin, runs = rsync_logger(tmp_path)
    omitting = omitting_dir_times(tmp_path, rsync_bin)
    assert not sets_implied_dirs(str(omitting))
    s = os.fsencode(src)
    populate(s)
    d = daemon_factory([with_rsync(sync_entry(src, [dst], delay=0.2), omitting,
                                   compress=True)])
    converge(d, src, dst)
    mark = len(rsync_runs(runs))
    one_round(d, rounds(s)[0])
    converge(d, src, dst)
    wait_until(lambda: not same_directories(src, dst), "the directories' modes and times",
               timeout=60, context=lambda: "\n".join(same_directories(src, dst))
               + describe(rsync_runs(runs)[mark:]) + d.describe())
    d.wait_idle(60)
    assert [r for r in rsync_runs(runs)[mark:] if times_run(r)], describe(
        rsync_runs(runs)[mark:])


def test_with_deletions_off_a_directory_that_lost_a_name_gets_a_times_step(
        tmp_path: Path, src: Path, dst: Path, daemon_factory) -> None:
    """With ``delete = false`` the paths step passes ``--ignore-missing-args``,
    and rsync drops a missing name with the directories above it: the times
    step sets the directory that lost it."""
    rsync_bin, runs = rsync_logger(tmp_path)
    s = os.fsencode(src)
    populate(s)
    d = daemon_factory([with_rsync(sync_entry(src, [dst], delay=0.2, delete=False), rsync_bin,
                                   compress=True)])
    converge(d, src, dst)
    mark = len(rsync_runs(runs))
    one_round(d, lambda: os.unlink(os.path.join(s, b"a/b/old")))
    wait_until(lambda: not mtime_diffs(src, dst), "the directories' times", timeout=60,
               context=lambda: "\n".join(mtime_diffs(src, dst))
               + describe(rsync_runs(runs)[mark:]) + d.describe())
    d.wait_idle(60)
    done = rsync_runs(runs)[mark:]
    assert [r.names for r in done if times_run(r)] == [(b"a/b",)], describe(done)
    assert (dst / "a/b/old").exists()  # not deleted: deletions are off
