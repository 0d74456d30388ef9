"""Blindness and containment: one sync's hostile or unusual tree (paths too
long to watch, a root replaced by a symlink or unmounted, a filesystem
mounted inside) never stops the watching of the other syncs, and every way
of losing sight is a named state in ``status``, a log line when it starts
and one when it ends, never silence.

Every test runs several syncs, ends with a byte comparison of the others'
mirrors (and of the hostile one's, where that is meaningful), checks that
the watcher was never restarted, and that no process is left behind.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from syncsup.timings import Timings
from tests.helpers.daemon import TEST_TIMINGS, Daemon, sync_entry
from tests.helpers.procs import assert_no_leftovers
from tests.helpers.tree import snapshot, wait_converged, write

from ._modes_helpers import wait_until

pytestmark = pytest.mark.timeout(400)


# ------------------------------------------------------------------ helpers

def sync_st(st: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in st["syncs"] if s["name"] == name)


def watcher(st: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in st["components"] if c["role"] == "watcher")


def log_lines(d: Daemon, *needles: str) -> list[str]:
    return [ln for ln in d.log_text().splitlines() if all(n in ln for n in needles)]


def nest(root: Path, names: list[bytes], leaf: bytes = b"leaf") -> None:
    """Create ``root/names[0]/names[1]/...`` and a file at the bottom, by
    file descriptors (the whole path is longer than any path call takes)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in names:
            os.mkdir(name, dir_fd=fd)
            nfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        out = os.open(leaf, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(out, b"deep\n")
        os.close(out)
    finally:
        os.close(fd)


def remove(path: Path) -> None:
    """rm -rf (no recursion limit; argv, never a shell)."""
    subprocess.run(["rm", "-rf", "--", os.fspath(path)], check=True)


def three_syncs(tmp_path: Path, hostile: str) -> tuple[list[dict[str, Any]], dict[str, Path]]:
    """Syncs ``a`` and ``b`` with ordinary trees, and ``hostile``."""
    paths = {}
    syncs = []
    for name in ("a", "b", hostile):
        src, dst = tmp_path / f"{name}-src", tmp_path / f"{name}-dst"
        src.mkdir()
        dst.mkdir()
        for i in range(5):
            write(src / "dir" / f"f{i}", b"%s %d\n" % (name.encode(), i))
        paths[name], paths[name + "-dst"] = src, dst
        syncs.append(sync_entry(src, [dst], name=name))
    return syncs, paths


def others_keep_mirroring(d: Daemon, paths: dict[str, Path], tag: bytes) -> None:
    """New files in ``a`` and ``b`` arrive, byte for byte."""
    for name in ("a", "b"):
        write(paths[name] / f"new-{tag.decode()}", tag * 100)
        write(paths[name] / "dir" / "f0", b"changed " + tag)
    for name in ("a", "b"):
        wait_converged(paths[name], paths[name + "-dst"], timeout=120, on_timeout=d.describe)


def assert_watcher_never_restarted(d: Daemon, pid: int) -> dict[str, Any]:
    st = d.status()
    w = watcher(st)
    assert w["restarts"] == 0 and w["pid"] == pid and w["state"] == "running", w
    assert "Traceback" not in d.log_text(), d.log_tail(80)
    return st


def finish(d: Daemon, tmp_path: Path, paths: dict[str, Path], names: tuple[str, ...]) -> None:
    for name in names:
        wait_converged(paths[name], paths[name + "-dst"], timeout=120, on_timeout=d.describe)
    d.stop()
    assert_no_leftovers(tmp_path)


# ------------------------------------------------------------------ tests

def test_paths_too_long_blind_one_subtree_and_nothing_else(tmp_path, settings, daemon_factory):
    """17 nested 255-byte names (a path over 4,095 bytes) and 520 nested
    7-byte names (past 4,095 bytes, with the source's own path, at a depth
    near 500) in one sync: PATH_MAX crossed by a few long names and by many
    short levels. 520 levels cross it as the 2,100 one-byte levels did, at a
    sixth of the cost: every rsync try walks the tree with a path lookup per
    level of every directory's path (kernel time growing with the square of
    the depth), and a tree deeper than Python's recursion limit, for the
    watcher's walk, costs milliseconds in tests/unit/test_unit_watch_depth.py,
    with no rsync. That sync reports
    the subtrees as ``too_long`` (one WARNING), the other syncs keep
    mirroring, the watcher is never restarted and logs no traceback; once
    the trees are removed the blindness ends (one line), and every mirror is
    identical to its source."""
    syncs, paths = three_syncs(tmp_path, "h")
    d = daemon_factory(syncs)
    st = d.wait_idle()
    pid = watcher(st)["pid"]

    h = paths["h"]
    try:
        (h / "long").mkdir()
        nest(h / "long", [bytes([ord("a") + i % 26]) * 255 for i in range(17)])
        (h / "deep").mkdir()
        nest(h / "deep", [b"ddddddd"] * 520)
        write(h / "beside", b"a file beside the hostile trees\n")

        st = d.wait_for(lambda st: set(sync_st(st, "h")["blind_counts"]) == {"too_long"}
                        and sync_st(st, "h")["blind_counts"]["too_long"] == 2,
                        "both hostile trees reported too_long", timeout=180)
        blind = sync_st(st, "h")["blind"]
        assert {b["reason"] for b in blind} == {"too_long"}, blind
        assert all(b["error"] == os.strerror(36) for b in blind), blind
        assert sorted(b["path"].split("/", 1)[0] for b in blind) == ["deep", "long"], blind
        assert sync_st(st, "h")["unwatched"] == 2
        others_keep_mirroring(d, paths, b"during")
        # h itself goes on too: a file beside the hostile trees arrives
        wait_until(lambda: (paths["h-dst"] / "beside").exists(), "h's file beside them", 180,
                   1.0, d.describe)
        assert (paths["h-dst"] / "beside").read_bytes() == (h / "beside").read_bytes()
        assert len(log_lines(d, "WARNING", "h:", "path too long")) >= 1
        text = d.status_raw(as_json=False).stdout
        assert "BLIND: 2 too_long" in text, text
        assert max(len(line) for line in text.splitlines()) < 400, text
        assert_watcher_never_restarted(d, pid)

        remove(h / "long")
        remove(h / "deep")
        d.wait_for(lambda st: not sync_st(st, "h")["blind_counts"], "the blindness ended", 120)
        assert log_lines(d, "INFO", "h: path too long: every such subtree is watched again")
        others_keep_mirroring(d, paths, b"after")
        assert_watcher_never_restarted(d, pid)
        # rsync's partial copies reach as deep as its relative paths allow:
        # past PATH_MAX once the mirror's own path is put before them, where
        # no path-based snapshot can read. Their deletion comes first.
        for name in ("long", "deep"):
            wait_until(lambda name=name: not os.path.lexists(paths["h-dst"] / name),
                       f"h's mirror rid of {name}", 180, 0.5, d.describe)
        finish(d, tmp_path, paths, ("a", "b", "h"))  # h's mirror lost them too
    finally:
        # pytest's own clean-up of tmp_path recurses: it cannot remove these
        for name in ("long", "deep"):
            remove(h / name)
            remove(paths["h-dst"] / name)


def test_root_replaced_by_a_symlink_is_never_followed(tmp_path, settings, daemon_factory):
    """The root of sync ``r`` is moved away and a symlink to another tree
    put in its place: status says ``root: symlink`` (one ERROR), the mirror
    is never replaced by the link's tree, the other syncs go on; when the
    directory is back, so is the watch (one line), and changes made
    meanwhile arrive."""
    syncs, paths = three_syncs(tmp_path, "r")
    elsewhere = tmp_path / "elsewhere"
    write(elsewhere / "foreign", b"must never reach r's mirror\n")
    d = daemon_factory(syncs)
    st = d.wait_idle()
    pid = watcher(st)["pid"]
    r, aside = paths["r"], tmp_path / "r-aside"
    before = snapshot(paths["r-dst"])

    r.rename(aside)
    r.symlink_to(elsewhere)
    d.wait_for(lambda st: sync_st(st, "r")["root"] == "symlink", "root: symlink", 60)
    write(elsewhere / "foreign2", b"nor this\n")
    write(aside / "while-away", b"written while the root was away\n")
    others_keep_mirroring(d, paths, b"during")
    assert snapshot(paths["r-dst"]) == before, "the mirror followed the symlink"
    assert len(log_lines(d, "ERROR", "is a symlink")) == 1, d.log_tail()
    text = d.status_raw(as_json=False).stdout
    assert "SOURCE ROOT symlink" in text, text

    r.unlink()
    aside.rename(r)
    d.wait_for(lambda st: sync_st(st, "r")["root"] == "ok", "root: ok", 60)
    assert log_lines(d, "INFO", f"source {r} of r is back")
    assert not log_lines(d, "another"), d.log_tail()  # the same directory came back
    assert_watcher_never_restarted(d, pid)
    finish(d, tmp_path, paths, ("a", "b", "r"))


@contextmanager
def tmpfs(where: Path) -> Iterator[Path]:
    """A tmpfs mounted at ``where`` (unmounted, lazily if busy, at the end)."""
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "syncsup-test",
                        os.fspath(where)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", os.fspath(where)], check=False)


def test_a_mount_inside_a_source_is_reported_and_mirrored(tmp_path, settings, daemon_factory):
    """A filesystem mounted inside sync ``m``'s source while it runs (inotify
    says nothing of it): the change of the mount table is noticed, status
    says ``mount`` (one WARNING), what it holds is mirrored, and so is what
    is written there later; after the unmount, the directory it covered is
    mirrored again and the state ends (one line)."""
    syncs, paths = three_syncs(tmp_path, "m")
    (paths["m"] / "mnt").mkdir()
    d = daemon_factory(syncs)
    st = d.wait_idle()
    pid = watcher(st)["pid"]
    with tmpfs(paths["m"] / "mnt") as mnt:
        write(mnt / "inside", b"on another filesystem\n")
        d.wait_for(lambda st: sync_st(st, "m")["blind_counts"].get("mount") == 1,
                   "the mount reported", 120)
        assert log_lines(d, "WARNING", "m: 1 filesystem(s) mounted inside the source")
        others_keep_mirroring(d, paths, b"during")
        wait_converged(paths["m"], paths["m-dst"], timeout=180, on_timeout=d.describe)
        write(mnt / "later", b"written on the mount later\n")
        wait_converged(paths["m"], paths["m-dst"], timeout=180, on_timeout=d.describe)
    d.wait_for(lambda st: not sync_st(st, "m")["blind_counts"], "the mount state ended", 60)
    assert log_lines(d, "INFO", "m: mounted filesystem: every such subtree is watched again")
    others_keep_mirroring(d, paths, b"after")
    assert_watcher_never_restarted(d, pid)
    finish(d, tmp_path, paths, ("a", "b", "m"))


def test_root_unmounted_and_mounted_again(tmp_path, settings, daemon_factory):
    """Sync ``u``'s source is a filesystem of its own. Unmounted while
    running: one line says the root went, one that it is back on another
    filesystem; the empty mount point never empties the mirror (the target
    says why it waits). Mounted again with its files: watched again, and
    what changed is mirrored. The other syncs never notice."""
    syncs, paths = three_syncs(tmp_path, "u")
    u = paths["u"]
    remove(u)
    u.mkdir()
    with tmpfs(u):
        for i in range(5):
            write(u / "dir" / f"f{i}", b"u %d\n" % i)
        d = daemon_factory(syncs)
        st = d.wait_idle()
        pid = watcher(st)["pid"]
        mirrored = snapshot(paths["u-dst"])
    # unmounted (the context manager's exit): an empty directory is left
    d.wait_for(lambda st: "source is empty" in (sync_st(st, "u")["targets"][0]["last_error"]
                                                or ""), "u waiting for its source", 120)
    # Said by whichever comes first: inotify's IN_UNMOUNT or the mount table.
    assert (log_lines(d, "ERROR", f"source {u} of u is missing (moved, deleted or unmounted)")
            or log_lines(d, "INFO", f"u: a filesystem was mounted or unmounted at the source "
                         f"root {u}: watching it again"))
    assert log_lines(d, "WARNING", f"source {u} of u is back on another filesystem")
    others_keep_mirroring(d, paths, b"during")
    assert snapshot(paths["u-dst"]) == mirrored, "an unmounted source emptied the mirror"

    with tmpfs(u):
        for i in range(5):
            write(u / "dir" / f"f{i}", b"u %d\n" % i)
        write(u / "new", b"written after the mount came back\n")
        wait_converged(u, paths["u-dst"], timeout=180, on_timeout=d.describe)
        write(u / "dir" / "later", b"and watched again\n")
        wait_converged(u, paths["u-dst"], timeout=180, on_timeout=d.describe)
        others_keep_mirroring(d, paths, b"after")
        assert_watcher_never_restarted(d, pid)
        d.stop()
    assert_no_leftovers(tmp_path)


class CappedDaemon(Daemon):
    """The daemon as root without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH
    (dropped from its bounding set, so from rsync's too): permissions apply
    to it as to any user, and a file or directory can be unreadable for it."""

    def start_argv(self) -> list[str]:
        drop = "-dac_override,-dac_read_search"
        return ["setpriv", f"--inh-caps={drop}", f"--bounding-set={drop}",
                *super().start_argv()]


@pytest.fixture
def capped_factory(request, tmp_path, settings):
    """``make(syncs, timings=None) -> CappedDaemon``, started, on the tests'
    timings (``timings`` replaces some); stopped at the end if still
    running."""
    if subprocess.run(["setpriv", "--bounding-set=-dac_override", "true"],
                      capture_output=True).returncode != 0:
        pytest.skip("setpriv cannot drop capabilities here")
    made: list[Daemon] = []
    request.node._syncsup_daemons = made  # the conftest's report and traceback check

    def make(syncs: list[dict[str, Any]], timings: dict[str, float] | None = None
             ) -> CappedDaemon:
        d = CappedDaemon(tmp_path, {"settings": settings, "sync": syncs,
                                    "timings": {**TEST_TIMINGS, **(timings or {})}})
        made.append(d)
        d.start()
        return d

    yield make
    for d in made:
        if d.running:
            try:
                d.stop()
            finally:
                d._kill_hard()


def unreadable(path: Path, data: bytes) -> None:
    """A file at ``path`` that only uid 65534 may read."""
    write(path, data)
    os.chown(path, 65534, 65534)
    os.chmod(path, 0o600)


def test_an_identical_failure_backs_off_until_something_changes(tmp_path, capped_factory):
    """A file the daemon cannot read (it runs without CAP_DAC_OVERRIDE):
    inotify watches its directory, rsync cannot send it (rc 23, the same
    error every time). After a few identical tries the target shows
    ``failed`` and says so, and waits 30 s and more instead of resending
    the tree every few seconds; the other syncs go on; a change in the sync
    is tried at once (and its file arrives: the partial tree transfer no
    longer holds back the paths); once the file is gone it converges. What
    fails does not matter here, only that it fails the same way until
    something changes: one unreadable file costs rsync milliseconds a try,
    where a tree too deep for rsync's receiver (1,100 levels) cost seconds
    of path lookups at each. On the production retry delays: "one try at
    most while the others converge" needs a stuck delay longer than their
    convergence on a loaded machine."""
    syncs, paths = three_syncs(tmp_path, "k")
    d = capped_factory(syncs, timings={"retry_cap": Timings().retry_cap,
                                       "stuck_cap": Timings().stuck_cap})
    st = d.wait_idle()
    pid = watcher(st)["pid"]
    k = paths["k"]

    def target(st: dict[str, Any]) -> dict[str, Any]:
        return sync_st(st, "k")["targets"][0]

    unreadable(k / "deep" / "secret", b"only uid 65534 reads this\n")
    st = d.wait_for(lambda st: target(st)["state"] == "failed", "k stuck", 240)
    error = target(st)["last_error"]
    assert "times in a row" in error and "code 23" in error, error
    assert "Permission denied" in error, error
    tries = target(st)["transfers"].get("retry", 0)
    assert log_lines(d, "ERROR", "the same failure 3 times in a row")
    others_keep_mirroring(d, paths, b"during")
    others_keep_mirroring(d, paths, b"during2")
    st = d.status()
    assert target(st)["state"] == "failed", target(st)
    # 24 s at least before the next try, 48 more before the one after:
    # one try at most while the others converge (seconds), where the
    # old 0.5-30 s backoff made several
    assert target(st)["transfers"].get("retry", 0) <= tries + 1, target(st)
    text = d.status_raw(as_json=False).stdout
    assert max(len(line) for line in text.splitlines()) < 400, text

    write(k / "beside", b"a change is tried at once\n")
    wait_until(lambda: (paths["k-dst"] / "beside").exists(), "k's new file", 120, 0.5,
               d.describe)
    remove(k / "deep")
    d.wait_for(lambda st: target(st)["state"] == "idle", "k idle again", 360)
    assert_watcher_never_restarted(d, pid)
    finish(d, tmp_path, paths, ("a", "b", "k"))


def test_an_unreadable_directory_is_reported_and_mirrored_once_readable(tmp_path,
                                                                       capped_factory):
    """A directory the daemon cannot read moved into sync ``p``: status says
    ``unreadable`` with the kernel's error (one WARNING), the other syncs go
    on; made readable, it is watched and mirrored, and the state ends (one
    line)."""
    syncs, paths = three_syncs(tmp_path, "p")
    d = capped_factory(syncs)
    st = d.wait_idle()
    pid = watcher(st)["pid"]
    stage = tmp_path / "stage"
    unreadable(stage / "private" / "secret", b"readable later\n")
    os.chown(stage / "private", 65534, 65534)
    os.chmod(stage / "private", 0o700)
    (stage / "private").rename(paths["p"] / "private")

    st = d.wait_for(lambda st: sync_st(st, "p")["blind_counts"] == {"unreadable": 1},
                    "p's unreadable directory reported", 120)
    assert [(b["path"], b["error"]) for b in sync_st(st, "p")["blind"]] == [
        ("private", os.strerror(13))]
    assert len(log_lines(d, "WARNING", "p: 1 subtree(s) cannot be watched "
                                       "(permission denied")) == 1
    others_keep_mirroring(d, paths, b"during")
    assert "BLIND: 1 unreadable" in d.status_raw(as_json=False).stdout

    # given to the daemon's user (its copy must be writable for it too)
    for p in (paths["p"] / "private" / "secret", paths["p"] / "private"):
        os.chown(p, 0, 0)
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    d.wait_for(lambda st: not sync_st(st, "p")["blind_counts"], "readable again", 120)
    assert log_lines(d, "INFO", "p: permission denied: every such subtree is watched "
                                "again")
    assert_watcher_never_restarted(d, pid)
    finish(d, tmp_path, paths, ("a", "b", "p"))


def test_a_directory_above_the_root_moved_away_and_back(tmp_path, settings, daemon_factory):
    """The directory holding sync ``q``'s source is renamed: the root's own
    watch hears nothing, yet the watcher notices that nothing is at the path
    any more (status ``missing``, one ERROR) and waits; renamed back, the
    same directory is watched again (one line), and a change made while it
    was away arrives. The other syncs never notice."""
    syncs, paths = three_syncs(tmp_path, "q")
    parent = tmp_path / "parent"
    parent.mkdir()
    q = parent / "q-src"
    paths["q"].rename(q)
    syncs[2]["source"] = os.fspath(q)
    paths["q"] = q
    d = daemon_factory(syncs)
    st = d.wait_idle()
    pid = watcher(st)["pid"]

    parent.rename(tmp_path / "parent-away")
    d.wait_for(lambda st: sync_st(st, "q")["root"] == "missing", "root: missing", 120)
    assert log_lines(d, "ERROR", f"source {q} of q is missing (not the directory watched")
    write(tmp_path / "parent-away" / "q-src" / "while-away", b"written while away\n")
    others_keep_mirroring(d, paths, b"during")
    assert "SOURCE ROOT missing" in d.status_raw(as_json=False).stdout

    (tmp_path / "parent-away").rename(parent)
    d.wait_for(lambda st: sync_st(st, "q")["root"] == "ok", "root: ok", 60)
    assert log_lines(d, "INFO", f"source {q} of q is back")
    assert_watcher_never_restarted(d, pid)
    finish(d, tmp_path, paths, ("a", "b", "q"))
