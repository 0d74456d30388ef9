"""Recovery costs what changed, and state heals itself.

* After lost events (a killed watcher, an overflowed inotify queue, an
  unclean start, changes made while syncsup was stopped) a rewrite that kept
  the size and put the old mtime back still reaches the target, and rsync
  reads a few percent of the tree to find it: every byte read from a file by
  every rsync process is counted with ``strace`` (rsync runs through a
  wrapper given as ``[sync.rsync] binary``).
* ``syncsup resync`` still compares everything.
* A damaged journal is moved aside and rebuilt; a full disk under
  ``state_dir`` is an error in status and a retry, and heals by itself.
* A config of binary garbage, or a missing source at start, is a config
  error (exit 78, one line).
* No fault here leaves a traceback in any log (checked for every fault
  suite by ``conftest.no_traceback_in_faults``).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from syncsup.seen import read_seen
from tests.helpers.daemon import Daemon, run_cli, sync_entry
from tests.helpers.procs import assert_no_leftovers
from tests.helpers.tree import wait_converged

from ._modes_helpers import wait_until

pytestmark = pytest.mark.timeout(300)

# 40 files of 250 kB: one rewritten file is 2.5 % of the tree, as in any
# larger tree of 40 files, so "reads a few percent" and "reads it all"
# stay as far apart; the bytes are few, because every read of every rsync
# process is traced.
FILES, SIZE = 40, 250_000
# The seen-point comes after the shortest idle wait the margin allows:
# ``mirrored`` and the quiet-sync test wait for it.
QUICK_SEEN = {"seen_delay": 1.1, "seen_margin": 1.0}
STRACE = shutil.which("strace")


@pytest.fixture
def counted(tmp_path: Path) -> Path:
    """An rsync that logs every read(2) of every process it starts.

    ``--seccomp-bpf`` stops the traced processes at the traced calls only
    (read, pread64), not at every system call: the count is the same, the
    cost of tracing a transfer of many files a fraction."""
    if STRACE is None:
        pytest.fail("strace is required to count the bytes rsync reads (apt-get install strace)")
    logs = tmp_path / "io"
    logs.mkdir()
    wrapper = tmp_path / "rsync-counted"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"exec {STRACE} -ff -qq --seccomp-bpf -y -e trace=read,pread64 -e signal=none "
        f"-o {logs}/rsync -- {shutil.which('rsync')} \"$@\"\n")
    os.chmod(wrapper, 0o755)
    return wrapper


_READ = re.compile(rb"^(?:read|pread64)\(\d+<(?P<path>[^>]*)>.*\)\s+=\s+(?P<n>\d+)", re.M)


def bytes_read(logs: Path, roots: list[Path]) -> int:
    """Bytes read from files below ``roots`` by every traced rsync process."""
    prefixes = tuple(os.fsencode(r) + b"/" for r in roots)
    total = 0
    for f in logs.iterdir():
        for m in _READ.finditer(f.read_bytes()):
            if m["path"].startswith(prefixes):
                total += int(m["n"])
    return total


def reset(logs: Path) -> None:
    for f in logs.iterdir():
        f.unlink()


def make_tree(src: Path) -> None:
    for i in range(FILES):
        (src / f"big{i:02d}").write_bytes(os.urandom(SIZE))
    (src / "sub").mkdir()
    (src / "sub" / "small").write_bytes(b"small")


def rewrite_keeping_mtime(path: Path) -> None:
    """New content, same size, the old mtime put back: rsync's quick check
    cannot see it; only the ctime moves."""
    st = path.stat()
    with open(path, "r+b") as fh:
        fh.seek(SIZE // 2)
        fh.write(os.urandom(4096))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_mtime_ns == st.st_mtime_ns


def daemon_with(daemon_factory, src: Path, dst: Path, binary: Path, **kw) -> Daemon:
    entry = sync_entry(src, [dst], delay=0)
    entry["rsync"] = {"binary": str(binary)}
    entry.update(kw)
    return daemon_factory([entry], timings=QUICK_SEEN)


def wait_seen(d: Daemon, after: float) -> None:
    """Until the watcher committed a seen-point later than ``after``."""
    d.wait_for(lambda st: (st["syncs"][0].get("seen") or 0) > after,
               "a seen-point after the last change", timeout=60)


def mirrored(daemon_factory, src: Path, dst: Path, binary: Path) -> Daemon:
    """The daemon started on the tree already in ``src``, converged, idle,
    and with a seen-point later than the tree: the tree is then older than
    the seen-point's safety margin, so a recovery has only what changed
    afterwards to compare (a stop right after the tree was made would leave
    every file inside the margin, and all of them compared: correct, not
    cheap)."""
    made = time.time()
    d = daemon_with(daemon_factory, src, dst, binary)
    wait_converged(src, dst, timeout=120, on_timeout=d.describe)
    d.wait_idle()
    wait_seen(d, made)
    return d


def assert_cheap(logs: Path, src: Path, dst: Path, what: str) -> None:
    read = bytes_read(logs, [src, dst])
    tree = FILES * SIZE
    assert read <= 0.05 * tree, (
        f"{what}: rsync read {read} bytes, {100 * read / tree:.1f} % of the tree's {tree}")


def restarted_watcher(d: Daemon, before: int) -> None:
    d.wait_for(lambda st: next(c for c in st["components"] if c["role"] == "watcher")
               ["restarts"] > before and all(c["state"] == "running" for c in st["components"]),
               "the watcher to be restarted", timeout=90)


# ------------------------------------------------------------ recovery cost
def test_a_killed_watcher_costs_what_changed(tmp_path, src, dst, counted, daemon_factory):
    make_tree(src)
    d = mirrored(daemon_factory, src, dst, counted)
    logs = tmp_path / "io"
    reset(logs)
    assert d.kill_component("watcher") is not None
    rewrite_keeping_mtime(src / "big07")
    restarted_watcher(d, 0)
    wait_converged(src, dst, timeout=120, on_timeout=d.describe)
    assert_cheap(logs, src, dst, "after a killed watcher")
    d.stop()
    assert_no_leftovers(tmp_path)


def test_an_overflow_costs_what_changed(tmp_path, src, dst, counted, daemon_factory):
    make_tree(src)
    spam = src / "spam"
    spam.mkdir()
    # Distinct names in turn: the kernel merges an event only with the one
    # queued last, so 200 names are never coalesced, and fewer files to
    # mirror than the queue's limit of events keeps the transfer small.
    names = [spam / f"s{i:05d}" for i in range(200)]
    for p in names:
        p.write_bytes(b"x")
    d = mirrored(daemon_factory, src, dst, counted)
    logs = tmp_path / "io"
    reset(logs)
    watcher = next(c for c in d.status()["components"] if c["role"] == "watcher")
    max_q = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    os.kill(watcher["pid"], signal.SIGSTOP)
    try:
        rewrite_keeping_mtime(src / "big11")
        events = 0
        while events <= max_q + 2000:  # distinct names: never coalesced
            os.utime(names[events % len(names)])
            events += 1
    finally:
        os.kill(watcher["pid"], signal.SIGCONT)
    d.wait_for(lambda st: (st["syncs"][0].get("overflows") or 0) >= 1, "the overflow", 60)
    wait_converged(src, dst, timeout=120, on_timeout=d.describe)
    assert_cheap(logs, src, dst, "after an overflow")
    d.stop()
    assert_no_leftovers(tmp_path)


def test_an_unclean_start_costs_what_changed(tmp_path, src, dst, counted, daemon_factory):
    make_tree(src)
    d = mirrored(daemon_factory, src, dst, counted)
    os.killpg(d.pid, signal.SIGKILL)  # the supervisor and (by PDEATHSIG) every child
    d.proc.wait(30)
    wait_until(lambda: not any(Path(f"/proc/{p}").exists() for p in _tree_pids(tmp_path)),
               "every process of the killed daemon to be gone", 30)
    logs = tmp_path / "io"
    reset(logs)
    rewrite_keeping_mtime(src / "big23")
    d.start()
    wait_converged(src, dst, timeout=120, on_timeout=d.describe)
    assert_cheap(logs, src, dst, "after an unclean start")
    d.stop()
    assert_no_leftovers(tmp_path)


def test_changes_while_stopped_cost_what_changed(tmp_path, src, dst, counted, daemon_factory):
    """The gap that a clean stop used to leave open: a same-size rewrite
    with the old mtime, made while syncsup was not running, is found."""
    make_tree(src)
    d = mirrored(daemon_factory, src, dst, counted)
    d.stop()
    logs = tmp_path / "io"
    reset(logs)
    rewrite_keeping_mtime(src / "big31")
    (src / "sub" / "new while stopped").write_bytes(b"new")
    d.start()
    wait_converged(src, dst, timeout=120, on_timeout=d.describe)
    assert_cheap(logs, src, dst, "after changes made while stopped")
    d.stop()
    assert_no_leftovers(tmp_path)


def test_a_quiet_sync_commits_one_seen_point_per_quiet_stretch(tmp_path, src, dst,
                                                              daemon_factory):
    """The seen-point is written once, a few seconds after a burst: a quiet
    sync costs nothing at rest (no journal write every few seconds)."""
    (src / "a").write_bytes(b"a")
    started = time.time()
    d = daemon_factory([sync_entry(src, [dst], delay=0)], timings=QUICK_SEEN)
    wait_converged(src, dst, timeout=120, on_timeout=d.describe)
    wait_seen(d, started)
    first = d.status()["syncs"][0]["seen"]
    time.sleep(3.5 * d.timings.seen_delay)  # more than three times the wait before one
    assert d.status()["syncs"][0]["seen"] == first, "a seen-point was written while quiet"
    changed = time.time()
    (src / "b").write_bytes(b"b")
    wait_converged(src, dst, timeout=120, on_timeout=d.describe)
    wait_seen(d, changed)  # the next burst gets its own
    d.stop()
    assert_no_leftovers(tmp_path)


def test_a_clean_stop_commits_a_seen_point_after_the_last_change(tmp_path, src, dst,
                                                                  daemon_factory, settings):
    """Stopped right after a change, the watcher hands its last changes and
    a seen-point to the collator (which still runs) before anything ends:
    the next start compares only what changes while syncsup is stopped.
    Each child leaves at once on TERM (none is killed at the deadline)."""
    d = daemon_factory([sync_entry(src, [dst], delay=0, name="s")])
    (src / "a").write_bytes(b"a")
    wait_converged(src, dst, timeout=120, on_timeout=d.describe)
    changed = time.time()
    (src / "b").write_bytes(b"b")
    time.sleep(0.2)  # read by the watcher, maybe not yet acknowledged
    d.stop()
    seen = read_seen(Path(settings["state_dir"]) / "journal-s.db")
    assert seen is not None and seen.wall > changed, (seen, changed)
    assert "did not stop" not in d.log_text(), d.log_tail(20)
    assert_no_leftovers(tmp_path)


def test_resync_still_compares_everything(tmp_path, src, dst, counted, daemon_factory):
    make_tree(src)
    d = daemon_with(daemon_factory, src, dst, counted)
    wait_converged(src, dst, timeout=120, on_timeout=d.describe)
    d.wait_idle()
    logs = tmp_path / "io"
    reset(logs)
    victim = dst / "big05"
    st = victim.stat()
    with open(victim, "r+b") as fh:  # damage on the target behind our back
        fh.write(os.urandom(100))
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    r = run_cli("resync", d.config)
    assert r.returncode == 0, r.stderr
    wait_converged(src, dst, timeout=120, on_timeout=d.describe)
    assert bytes_read(logs, [src, dst]) >= FILES * SIZE, "resync did not read every file"
    d.stop()
    assert_no_leftovers(tmp_path)


def _tree_pids(tmp_path: Path) -> list[int]:
    from tests.helpers.procs import processes_mentioning

    return processes_mentioning(tmp_path)


# ------------------------------------------------------------ state heals
def test_a_damaged_journal_is_moved_aside_and_rebuilt(tmp_path, src, dst, settings,
                                                      daemon_factory):
    for i in range(20):
        (src / f"f{i}").write_bytes(os.urandom(3000))
    d = daemon_factory([sync_entry(src, [dst])])
    wait_converged(src, dst, timeout=120, on_timeout=d.describe)
    d.stop()
    journal = Path(settings["state_dir"]) / "journal-www.db"
    with open(journal, "r+b") as fh:
        fh.write(b"\xde\xad" * 2048)  # the head of the file: SQLite's header and schema
    (src / "changed while stopped").write_bytes(b"x")
    (dst / "f3").write_bytes(b"damage on the target too")
    d.start(wait=False)
    st = d.wait_for(lambda st: st["syncs"][0]["journal"].startswith("rebuilt"),
                    "status to show the rebuilt journal", 60)
    lines = [ln for ln in d.log_text().splitlines() if "journal was damaged" in ln]
    assert len(lines) == 1 and "ERROR" in lines[0], lines
    aside = next(p for p in journal.parent.iterdir() if p.name.startswith("journal-www.db.damaged"))
    assert str(aside) in lines[0] and str(aside) in st["syncs"][0]["journal"]
    wait_converged(src, dst, timeout=120, on_timeout=d.describe)
    comps = {c["role"]: c for c in d.status()["components"]}
    assert comps["collator"]["restarts"] == 0, comps["collator"]
    d.stop()
    assert_no_leftovers(tmp_path)


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str = "4m"):
    where.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                        str(where)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}); the disk-full path is "
                    "covered by the unit tests of the collator")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_a_full_state_dir_is_an_error_and_heals(tmp_path, src, dst, daemon_factory):
    with small_tmpfs(tmp_path / "state") as state:
        d = daemon_factory([sync_entry(src, [dst])],
                           settings_override={"state_dir": str(state), "log_level": "info"})
        (src / "before").write_bytes(b"before")
        wait_converged(src, dst, timeout=60, on_timeout=d.describe)
        filler = state / "filler"
        with open(filler, "wb") as fh, contextlib.suppress(OSError):
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        for i in range(30):
            (src / f"during-{i}").write_bytes(os.urandom(2000))
        st = d.wait_for(lambda st: st["syncs"][0]["journal"].startswith("error"),
                        "status to show the full disk", 60)
        assert "disk full" in st["syncs"][0]["journal"], st["syncs"][0]
        errors = [ln for ln in d.log_text().splitlines() if "disk full" in ln]
        assert errors and all("ERROR" in ln for ln in errors), errors
        assert len(errors) <= 2, f"the error is repeated instead of reported once: {errors}"
        filler.unlink()
        wait_converged(src, dst, timeout=120, on_timeout=d.describe)
        d.wait_for(lambda st: st["syncs"][0]["journal"] == "ok", "the journal to heal", 60)
        comps = {c["role"]: c for c in d.status()["components"]}
        assert all(c["restarts"] == 0 for c in comps.values()), comps
        d.stop()
    assert_no_leftovers(tmp_path)


# ------------------------------------------------------------ bad input
def test_a_config_of_binary_garbage_is_exit_78(tmp_path):
    conf = tmp_path / "garbage.toml"
    conf.write_bytes(os.urandom(2000) + b"\xff\xfe\x00")
    os.chmod(conf, 0o600)
    for cmd in ("start", "check", "status"):
        r = run_cli(cmd, conf)
        assert r.returncode == 78, (cmd, r.returncode, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "config" in lines[0], (cmd, r.stderr)
        assert "Traceback" not in r.stderr

