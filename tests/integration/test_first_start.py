"""A first start on a target that already holds a copy reads what changed.

The target is copied with ``rsync -a`` before syncsup has ever run (no
journal, no seen-point), as a user moving from Lsyncd has it. Every byte
read from a file below the source or the target by every rsync process is
counted with ``strace`` (rsync runs through a wrapper given as
``[sync.rsync] binary``); over ssh the remote rsync is not traced, so the
count there is the source side's. Each test also makes a change that the
quick check cannot see (same size, mtime put back) and checks that it is
found, and ends with a byte-for-byte comparison and no process left behind.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from syncsup.timings import Timings
from tests.helpers.attack import make_world
from tests.helpers.daemon import sync_entry
from tests.helpers.procs import assert_no_leftovers
from tests.helpers.tree import wait_converged

from .test_agent import write_target_command
from .test_recovery import FILES, SIZE, bytes_read, counted, make_tree, rewrite_keeping_mtime

__all__ = ["counted"]  # the fixture, used by name

pytestmark = pytest.mark.timeout(300)

TREE = FILES * SIZE


AGED_TREES = 7  # the tests below that copy a tree before the first start


@pytest.fixture(scope="module")
def aged(tmp_path_factory):
    """``aged(src)``: ``src`` becomes a tree made when the module began, at
    least the proof's margin ago, so that a copy made now is provably newer.

    The margin is a wait of seconds that every such test would spend
    itself; made once for the module, it is spent once. Renaming a tree's
    directory into place keeps the ctimes of everything inside it (only
    the renamed directory's own changes, and directories are not proven)."""
    pool = tmp_path_factory.mktemp("aged")
    trees: list[tuple[Path, float]] = []  # (tree, when a copy of it is provably newer)

    def made() -> None:
        t = pool / f"tree{len(list(pool.iterdir()))}"
        t.mkdir()
        make_tree(t)
        trees.append((t, time.time() + Timings().proof_margin + 0.5))

    for _ in range(AGED_TREES):
        made()

    def take(src: Path) -> None:
        if not trees:  # more takers than trees: one more, aged now
            made()
        tree, ready = trees.pop()
        time.sleep(max(0.0, ready - time.time()))
        src.rmdir()
        os.rename(tree, src)

    return take


def copied(aged, src: Path, dst: Path) -> None:
    """The tree made, then copied as a user would before the first start:
    later than the proof's margin, so the copy is provably newer."""
    aged(src)
    subprocess.run(["rsync", "-a", f"{src}/", f"{dst}/"], check=True)


def rewrite_target_behind_the_back(path: Path) -> None:
    rewrite_keeping_mtime(path)


def started(daemon_factory, entry: dict, binary: Path, **kw) -> object:
    entry["rsync"] = {"binary": str(binary)}
    entry.update(kw)
    return daemon_factory([entry])


def converged_cheaply(d, tmp_path: Path, src: Path, dst: Path, roots: list[Path],
                      changed: int) -> int:
    """Converged, and rsync read at most 5 % of the tree for the files that
    did not change, plus three reads of each file that did (its content
    compared on both sides, then the source read again to send it)."""
    wait_converged(src, dst, timeout=120, on_timeout=d.describe)
    d.wait_idle()
    read = bytes_read(tmp_path / "io", roots)
    assert read <= 0.05 * TREE + 3 * changed * SIZE, (
        f"rsync read {read} bytes, {100 * read / TREE:.1f} % of the tree's {TREE}\n"
        + d.log_tail(40))
    return read


def finish(d, tmp_path: Path, src: Path, dst: Path) -> None:
    wait_converged(src, dst, timeout=60, on_timeout=d.describe)
    d.stop()
    assert_no_leftovers(tmp_path)


def test_a_first_start_on_an_identical_copy_reads_next_to_nothing(
        tmp_path, src, dst, counted, aged, daemon_factory):
    copied(aged, src, dst)
    d = started(daemon_factory, sync_entry(src, [dst], delay=0), counted)
    converged_cheaply(d, tmp_path, src, dst, [src, dst], changed=0)
    assert ("41 of 41 files proven current, 0 missing or different (sent), 0 to compare by "
            "content") in d.log_tail(400), d.log_tail(60)
    finish(d, tmp_path, src, dst)


def test_a_first_start_on_a_copied_target_reads_little_and_finds_a_source_rewrite(
        tmp_path, src, dst, counted, aged, daemon_factory):
    """A same-size rewrite of a source file, its mtime put back, after the
    copy: the source file's ctime is then after its copy's, so it is
    compared by content and sent; every other file is proven current and
    only quick-checked."""
    copied(aged, src, dst)
    rewrite_keeping_mtime(src / "big07")
    d = started(daemon_factory, sync_entry(src, [dst], delay=0), counted)
    converged_cheaply(d, tmp_path, src, dst, [src, dst], changed=1)
    assert ("40 of 41 files proven current, 0 missing or different (sent), 1 to compare by "
            "content") in d.log_tail(400), d.log_tail(60)
    finish(d, tmp_path, src, dst)


def test_a_target_rewritten_behind_the_back_is_found_when_not_proven(
        tmp_path, src, dst, counted, aged, daemon_factory):
    """A target file rewritten behind the daemon's back (same size, mtime
    put back) whose source file changed afterwards (a chmod back and forth:
    the ctime moves, nothing else) cannot be proven current: compared, and
    repaired."""
    copied(aged, src, dst)
    rewrite_target_behind_the_back(dst / "big03")
    time.sleep(0.05)
    os.chmod(src / "big03", 0o600)
    os.chmod(src / "big03", (src / "big07").stat().st_mode & 0o7777)
    d = started(daemon_factory, sync_entry(src, [dst], delay=0), counted)
    converged_cheaply(d, tmp_path, src, dst, [src, dst], changed=1)
    finish(d, tmp_path, src, dst)


def test_startup_checksum_compares_every_file(tmp_path, src, dst, counted, aged, daemon_factory):
    """``startup_checksum = true`` trusts no ctime: a target rewritten behind
    the back, which the ctimes would vouch for, is found, at the cost of
    reading both trees."""
    copied(aged, src, dst)
    rewrite_target_behind_the_back(dst / "big05")
    d = started(daemon_factory, sync_entry(src, [dst], delay=0), counted,
                startup_checksum=True)
    wait_converged(src, dst, timeout=120, on_timeout=d.describe)
    d.wait_idle()
    read = bytes_read(tmp_path / "io", [src, dst])
    assert read >= 1.9 * TREE, f"read {read} bytes of {TREE}: not a full content comparison"
    finish(d, tmp_path, src, dst)


def test_an_empty_target_is_filled_with_one_read_of_the_source(
        tmp_path, src, dst, counted, daemon_factory):
    """Nothing to prove on an empty target: every file is missing there, the
    quick check sends it, and the source is read once (not once more for a
    content comparison); no proof step runs at all."""
    make_tree(src)
    d = started(daemon_factory, sync_entry(src, [dst], delay=0), counted)
    wait_converged(src, dst, timeout=120, on_timeout=d.describe)
    d.wait_idle()
    read = bytes_read(tmp_path / "io", [src, dst])
    assert read <= 1.05 * TREE, f"read {read} bytes to send a tree of {TREE}"
    assert "prove:" not in d.log_text(), d.log_tail(20)
    finish(d, tmp_path, src, dst)


def test_over_ssh_the_agent_reports_target_ctimes_and_the_skew_is_measured(
        tmp_path, src, dst, counted, sshd, aged, daemon_factory):
    """A remote target: the ctimes come from the target's agent, with its
    clock read over the same channel. The source side reads little, and a
    source rewrite after the copy is found."""
    wrapper, _log = write_target_command(tmp_path)
    copied(aged, src, dst)
    rewrite_keeping_mtime(src / "big11")
    entry = sync_entry(src, [sshd.target(dst)],
                       ssh={**sshd.ssh_config(), "target_command": str(wrapper)}, delay=0)
    d = started(daemon_factory, entry, counted)
    converged_cheaply(d, tmp_path, src, dst, [src], changed=1)
    log = d.log_tail(400)
    assert "prove: target clock" in log and "40 of 41 files proven current" in log, \
        d.log_tail(60)
    # in the syncer's thread, its session over the master that was still
    # connecting when the proof began: no ssh client of its own
    assert "over the ssh master" in log, d.log_tail(60)
    finish(d, tmp_path, src, dst)


def test_over_ssh_without_an_agent_every_file_is_compared(
        tmp_path, src, dst, counted, sshd, aged, daemon_factory):
    """No ``syncsup-target`` on the target: nothing can prove a copy there,
    so the startup sync compares every file's content, and a target
    rewritten behind the back is found."""
    copied(aged, src, dst)
    rewrite_target_behind_the_back(dst / "big13")
    entry = sync_entry(src, [sshd.target(dst)],
                       ssh={**sshd.ssh_config(),
                            "target_command": str(tmp_path / "no-such-program")}, delay=0)
    d = started(daemon_factory, entry, counted)
    wait_converged(src, dst, timeout=120, on_timeout=d.describe)
    d.wait_idle()
    read = bytes_read(tmp_path / "io", [src])
    assert read >= 0.95 * TREE, f"read {read} bytes of {TREE}: not a full content comparison"
    finish(d, tmp_path, src, dst)


@pytest.fixture
def world(asshd):
    """ROOT behind a key confined to it (root account)."""
    yield from make_world("root", asshd)


def test_through_a_confined_key_the_confined_agent_reports_target_ctimes(
        world, asshd, tmp_path, src, counted, aged, daemon_factory):
    """The forced command's agent answers ``stats`` too (reading only, under
    its confinement), so a confined target gets the same proof."""
    w = world
    aged(src)
    subprocess.run(["rsync", "-a", "--delete", f"{src}/", f"{w.root}/"], check=True)
    rewrite_keeping_mtime(src / "big17")
    entry = sync_entry(src, [f"{w.login}:{w.root}"], delay=0,
                       ssh={**asshd.ssh_config(), "confined": True})
    d = started(daemon_factory, entry, counted)
    converged_cheaply(d, tmp_path, src, w.root, [src], changed=1)
    log = d.log_tail(400)
    assert "prove: target clock" in log and "40 of 41 files proven current" in log, \
        d.log_tail(60)
    finish(d, tmp_path, src, w.root)
    w.assert_unchanged("a first start through the confined key")
