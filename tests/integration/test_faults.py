"""Faults in depth: hung components and transfers, inotify overflow, the
watch limit, dead or read-only targets, flapping and fatal components, a killed
supervisor, a vanished or emptied source, ``max_delete`` and ``full_sync_interval``.

Every test ends with the source and the target(s) identical byte for byte (where
that is meaningful) and with no process of the test left behind.  Waits are
generous polls, never assertions on elapsed time: the machine is small and
shared.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.churn import Churn, assert_not_pwned
from tests.helpers.daemon import READY_TIMEOUT, Daemon, sync_entry, syncsup_argv, syncsup_env
from tests.helpers.procs import alive, assert_no_leftovers, cmdline_of
from tests.helpers.tree import b, diff_trees, snapshot, wait_converged, write

from ._modes_helpers import wait_until

pytestmark = pytest.mark.timeout(300)

NAME = "www"  # sync_entry's default sync name

# Heartbeats for the tests that freeze a component: the freeze is found
# after ``heartbeat_timeout`` (not the tests' general 10 s), while a child
# that is merely slow on a loaded machine still has 4 s, eight beats, to
# send one (the other components' restart counts are asserted to stay 0).
FAST_BEATS = {"heartbeat_interval": 0.5, "heartbeat_timeout": 4.0}


# ------------------------------------------------------------------ helpers


def comp_of(st: dict, name: str) -> dict[str, Any]:
    for c in st.get("components", []):
        if c.get("name") == name:
            return c
    raise AssertionError(f"no component {name!r} in status: {st}")


def sync_of(st: dict) -> dict[str, Any]:
    return st["syncs"][0]


def target_of(st: dict, spec: str | os.PathLike) -> dict[str, Any]:
    spec = os.fspath(spec)
    for t in sync_of(st)["targets"]:
        if t.get("target") == spec:
            return t
    raise AssertionError(f"no target {spec!r} in status: {sync_of(st)}")


def is_ours(pid: int, marker: os.PathLike | str | bytes) -> bool:
    return b(marker) in b"\0".join(cmdline_of(pid))


def pids_matching(*needles: bytes, prog: bytes | None = None) -> list[int]:
    """Live processes whose argv holds every needle (and whose argv[0] is ``prog``)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        argv = cmdline_of(int(d))
        if not argv or not alive(int(d)):
            continue
        if prog is not None and os.path.basename(argv[0]) != prog:
            continue
        joined = b"\0".join(argv)
        if all(n in joined for n in needles):
            out.append(int(d))
    return out


def rsync_pids(target_dir: os.PathLike | str) -> list[int]:
    return pids_matching(b(target_dir), prog=b"rsync")


def log_lines(d: Daemon, *needles: str) -> list[str]:
    return [ln for ln in d.log_text().splitlines() if all(n in ln for n in needles)]


def wait_log(d: Daemon, *needles: str, timeout: float = 60.0) -> list[str]:
    return wait_until(
        lambda: log_lines(d, *needles),
        f"a log line containing {needles!r}",
        timeout,
        0.2,
        d.describe,
    )


def converge(d: Daemon, src, dsts, timeout: float = 120.0, churn: Churn | None = None):
    def ctx() -> str:
        return (churn.summary() + "\n" if churn else "") + d.describe()

    return wait_converged(src, dsts, timeout=timeout, on_timeout=ctx)


def finish(d: Daemon, tmp_path: Path, src, *dsts) -> None:
    """The common ending: byte-for-byte equal, clean stop, nothing left behind."""
    converge(d, src, list(dsts))
    d.stop()
    assert_no_leftovers(tmp_path)
    assert_not_pwned(tmp_path, src, *dsts)


def frozen(pid: int, marker) -> contextlib.AbstractContextManager:
    """SIGSTOP ``pid`` for the block; SIGCONT it afterwards if it is still ours."""

    @contextlib.contextmanager
    def cm():
        os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            if alive(pid) and is_ours(pid, marker):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)

    return cm()


def big_file(tmp_path: Path, dest: Path, size: int) -> None:
    """Create ``dest`` atomically (written outside the tree, renamed in)."""
    tmp = tmp_path / f".{dest.name}.part"
    with open(tmp, "wb") as f:
        for _ in range(size // (1 << 20)):
            f.write(os.urandom(1 << 20))
        f.write(os.urandom(size % (1 << 20)))
    os.rename(tmp, dest)


# ======================================================= 1. hung components
@pytest.mark.parametrize("role", ["watcher", "collator", "syncer"])
def test_sigstopped_component_is_killed_and_restarted(role, tmp_path, src, dst, daemon_factory):
    """A component that stops answering (SIGSTOP) is detected by its missing
    heartbeats, killed with its process group (SIGKILL, last_exit -9) and
    restarted; what changed meanwhile still arrives. (The heartbeat-loss
    decision itself is the supervisor core's unit tests'; here the real
    process is frozen, found silent, and its group killed.)"""
    c = Churn(src, seed={"watcher": 11, "collator": 12, "syncer": 13}[role])
    c.populate(n_files=60, n_dirs=8)
    d = daemon_factory([sync_entry(src, [dst], delay=0.2)], timings=FAST_BEATS)
    converge(d, src, dst, churn=c)

    name = role
    before = comp_of(d.status(), name)
    assert before["state"] == "running" and before["pid"], before
    pid = int(before["pid"])
    assert is_ours(pid, d.config)

    with frozen(pid, d.config):
        c.run(80, sleep_prob=0.2, max_sleep=0.02)  # changes while it is frozen

        def restarted(st: dict) -> bool:
            x = comp_of(st, name)
            return (
                x["restarts"] > before["restarts"]
                and x["pid"] not in (None, pid)
                and x["state"] == "running"
            )

        st = d.wait_for(restarted, f"frozen {name} to be killed and restarted", timeout=90)
    after = comp_of(st, name)
    assert after["last_exit"] == -signal.SIGKILL, f"expected a SIGKILL exit: {after}"
    wait_until(lambda: not alive(pid), f"frozen {name} (pid {pid}) to be gone", 30)
    assert log_lines(d, name, "no heartbeat"), "the supervisor logged no heartbeat timeout"
    for other in ("watcher", "collator", "syncer"):
        if other != role:
            assert comp_of(st, other)["restarts"] == 0, (
                f"freezing {name} restarted {other} too: {st['components']}"
            )

    c.run(40, sleep_prob=0.2, max_sleep=0.02)  # and after the restart
    finish(d, tmp_path, src, dst)


# ========================================================= 2. hung transfer
def test_frozen_rsync_is_killed_and_retried(tmp_path, src, dst, daemon_factory):
    """An rsync that reads and writes nothing for ``[sync.rsync] timeout`` (2)
    seconds is TERMed, then KILLed with its group, and the batch is retried
    with backoff; the syncer itself stays responsive (no restart).

    The file takes ~3 s at the bandwidth limit: long enough to be caught
    and frozen mid-transfer, and its retry after the kill costs no more
    than that; the TERM that a stopped rsync cannot act on is followed by
    the KILL after a short ``step_stop_grace``."""
    write(src / "small", b"small\n")
    entry = sync_entry(src, [dst], delay=0)
    entry["rsync"] = {"bwlimit": 1000, "timeout": 2}  # 3 MB take ~3 s
    d = daemon_factory([entry], timings={"step_stop_grace": 0.5})
    converge(d, src, dst)

    big_file(tmp_path, src / "big", 3_000_000)
    pids = wait_until(lambda: rsync_pids(dst), "the transfer of the big file to start", 60)
    # local rsync forks its receiver (and generator): freeze all of them
    time.sleep(0.5)
    pids = sorted(set(pids) | set(rsync_pids(dst)))
    for p in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        # the daemon answers while the transfer hangs
        st = d.status()
        assert comp_of(st, "syncer")["state"] == "running", st["components"]
        wait_log(d, "made no progress for 2s", timeout=90)
        wait_until(
            lambda: not any(alive(p) for p in pids),
            f"the frozen rsync processes {pids} to be killed",
            60,
            context=d.describe,
        )
    finally:
        for p in pids:  # only if the daemon did not kill them
            if alive(p) and is_ours(p, dst):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGCONT)
    print(f"frozen rsync killed {time.monotonic() - stopped_at:.1f}s after SIGSTOP")
    retry = wait_log(d, "no progress for 2s: transfer killed, will retry", timeout=30)
    assert retry, "the killed transfer was not reported as a retry"

    write(src / "after", b"written while the big file is retried\n")
    converge(d, src, dst, timeout=120)
    st = d.wait_for(lambda st: target_of(st, dst)["last_error"] is None, "last_error cleared", 60)
    syncer = comp_of(st, "syncer")
    assert syncer["restarts"] == 0, f"the syncer itself was restarted: {syncer}"
    d.stop()
    assert_no_leftovers(tmp_path)


# ====================================================== 3. inotify overflow
def test_inotify_overflow_while_watcher_frozen(tmp_path, src, dst, daemon_factory):
    """More events than fs.inotify.max_queued_events while the watcher is
    frozen: the kernel drops them and queues IN_Q_OVERFLOW, which must become a
    rescan (with --checksum: a lost same-size rewrite with its mtime restored
    is repaired too).  Directories created in the dropped part must be watched
    afterwards: later changes inside them must arrive as well."""
    max_q = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    c = Churn(src, seed=31, hostile_ratio=0.2)
    c.populate(n_files=40, n_dirs=6)
    bulk = src / "bulk"
    bulk.mkdir()
    same = src / "same-size"
    write(same, b"A" * 4096)
    doomed = [src / f"doomed-{i}" for i in range(20)]
    for p in doomed:
        write(p, b"doomed\n")
    d = daemon_factory([sync_entry(src, [dst], delay=0.2)])
    converge(d, src, dst, churn=c)

    st = d.status()
    watcher = comp_of(st, "watcher")
    pid = int(watcher["pid"])
    n_files = 3000  # CREATE + MODIFY + CLOSE_WRITE each
    late = src / "late" / "deeper"
    t0 = time.monotonic()
    with frozen(pid, d.config):
        paths = []
        for i in range(n_files):
            p = os.path.join(b(bulk), b"f%05d" % i)
            write(p, b"%d\n" % i)
            paths.append(p)
        events = 3 * n_files
        i = 0
        while events <= max_q + 4000:  # ATTRIB each, never coalesced (names differ)
            os.utime(paths[i % n_files])
            i += 1
            events += 1
        # lost events: same-size rewrite with the mtime put back, deletes, new dirs
        stt = os.stat(same)
        write(same, b"B" * 4096)
        os.utime(same, ns=(stt.st_atime_ns, stt.st_mtime_ns))
        for p in doomed:
            p.unlink()
        late.mkdir(parents=True)
        write(late / "inside", b"created while events were dropped\n")
        flood_secs = time.monotonic() - t0
    print(f"flood of ~{events} events took {flood_secs:.1f}s (max_queued_events {max_q})")

    st = d.wait_for(
        lambda st: (
            (sync_of(st).get("overflows") or 0) >= 1
            or comp_of(st, "watcher")["restarts"] > 0
        ),
        "the watcher to report the overflow",
        timeout=60,
    )
    w = comp_of(st, "watcher")
    if w["restarts"] > 0:
        # only acceptable if the machine was so slow that the freeze outlasted
        # the heartbeat timeout (less a beat's interval: the last beat may
        # have been that old); then the restart's rescan covers it
        t = d.timings
        assert flood_secs > t.heartbeat_timeout - t.heartbeat_interval, (
            f"the watcher was restarted instead of handling the overflow: {w}\n{d.log_tail()}"
        )
    else:
        assert sync_of(st)["overflows"] >= 1, sync_of(st)
        assert log_lines(d, "inotify queue overflowed"), "no overflow warning was logged"
    converge(d, src, dst, timeout=120, churn=c)

    # Directories that appeared while events were dropped must be watched now.
    write(late / "inside", b"changed after the overflow was handled\n")
    write(late / "new-after", b"new after the overflow\n")
    (src / "late" / "also-new").write_bytes(b"x" * 100)
    converge(d, src, dst, timeout=60, churn=c)

    c.run(60, sleep_prob=0.2, max_sleep=0.01)  # and the rest of the tree still works
    finish(d, tmp_path, src, dst)


def test_a_frozen_collator_costs_no_overflow(tmp_path, src, dst, daemon_factory):
    """The collator stops answering (SIGSTOP: a journal checkpoint stuck on a
    busy disk looks the same to the watcher) while more events than
    fs.inotify.max_queued_events come. The watcher's unacked messages reach
    their bound at once (``delay = 0``: a message per read), and from then
    on it must hold what it reads rather than leave it in the kernel's
    queue: no overflow, so no rescan of the source, and everything arrives
    once the collator runs again."""
    max_q = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    bulk = src / "bulk"
    bulk.mkdir()
    write(src / "seed", b"seed\n")
    d = daemon_factory([sync_entry(src, [dst], delay=0)], timings={"heartbeat_timeout": 120.0})
    converge(d, src, dst)
    collator = int(comp_of(d.status(), "collator")["pid"])
    n_files = max_q // 3 + 3000  # CREATE + MODIFY + CLOSE_WRITE each: twice the queue or more
    with frozen(collator, d.config):
        for i in range(n_files):
            write(os.path.join(b(bulk), b"f%05d" % i), b"%d\n" % i)
        # the watcher has read it all (the kernel's queue alone would have
        # overflowed): what it holds is the paths
        wait_until(lambda: comp_of(d.status(), "watcher")["state"] == "running",
                   "the watcher to answer", 30)
        time.sleep(1.0)
    converge(d, src, dst, timeout=180)
    st = d.status()
    assert (sync_of(st).get("overflows") or 0) == 0, sync_of(st)
    assert not log_lines(d, "inotify queue overflowed"), d.log_tail()
    assert not log_lines(d, "rescan requested: '/'", "events were lost"), d.log_tail()
    for name in ("watcher", "collator", "syncer"):
        assert comp_of(st, name)["restarts"] == 0, st["components"]
    finish(d, tmp_path, src, dst)


# ============================================================ 4. watch limit
class UsernsDaemon(Daemon):
    """``syncsup start`` inside a new user namespace with its own, tiny inotify
    watch limit (/proc/sys/user/max_inotify_watches of that namespace): the
    machine's fs.inotify.max_user_watches is not touched."""

    def __init__(self, tmp_path: Path, doc: dict, max_watches: int) -> None:
        super().__init__(tmp_path, doc)
        self.max_watches = max_watches

    def start(self, wait: bool = True, timeout: float = READY_TIMEOUT) -> Daemon:
        script = 'echo "$1" > /proc/sys/user/max_inotify_watches && shift && exec "$@"'
        argv = [
            "unshare", "--user", "--map-root-user", "--", "sh", "-c", script, "sh",
            str(self.max_watches), *syncsup_argv("start", self.config),
        ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                env=syncsup_env(),
                start_new_session=True,
            )
        if wait:
            self.wait_ready(timeout)
        return self


def _userns_watch_limit_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    r = subprocess.run(
        ["unshare", "--user", "--map-root-user", "sh", "-c",
         "echo 7 > /proc/sys/user/max_inotify_watches"],
        capture_output=True,
    )  # fmt: skip
    return r.returncode == 0


def _inotify_watches_in_use() -> int:
    n = 0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{d}/fdinfo")
        except OSError:
            continue
        for fd in fds:
            try:
                with open(f"/proc/{d}/fdinfo/{fd}", "rb") as f:
                    n += f.read().count(b"inotify wd:")
            except OSError:
                continue
    return n


def watched_inodes(pid: int) -> set[int]:
    """Inode numbers of every directory ``pid`` holds an inotify watch on."""
    out: set[int] = set()
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            text = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        for m in re.finditer(r"inotify wd:\S+ ino:([0-9a-f]+)", text):
            out.add(int(m.group(1), 16))
    return out


def test_watch_limit_reported_and_blind_part_rescanned(request, tmp_path, src, dst, daemon_factory):
    """inotify_add_watch fails with ENOSPC: one clear ERROR naming
    fs.inotify.max_user_watches and the count needed, status shows
    ``unwatched`` and ``watch_limit_needed``, and changes in the blind
    directories still arrive through the periodic rescans (every 10 s)."""
    limit = 20
    dirs = []
    for i in range(10):
        for j in range(6):
            p = src / f"top{i:02d}" / f"sub{j}"
            p.mkdir(parents=True)
            write(p / "file", b"%d %d\n" % (i, j))
            write(p / "same", b"S" * 1000)
            dirs.append(p)
    doc = {"settings": request.getfixturevalue("settings"), "sync": [sync_entry(src, [dst])]}

    restore: tuple[Path, str] | None = None
    if _userns_watch_limit_works():
        d = UsernsDaemon(tmp_path, doc, limit)
        request.node._syncsup_daemons.append(d)  # daemon_factory's teardown stops it
        d.start()
    else:
        # No user namespaces: lower the machine-wide limit for as short a
        # window as possible, and always put it back.
        knob = Path("/proc/sys/fs/inotify/max_user_watches")
        if not os.access(knob, os.W_OK):
            pytest.skip("neither a user namespace nor a writable fs.inotify.max_user_watches")
        restore = (knob, knob.read_text())
        knob.write_text(str(_inotify_watches_in_use() + limit))
        d = daemon_factory([sync_entry(src, [dst])], wait=False)
    try:
        line = wait_log(d, "ERROR", "fs.inotify.max_user_watches", timeout=120)[0]
        st = d.wait_for(lambda st: (sync_of(st).get("unwatched") or 0) > 0, "unwatched > 0", 60)
    finally:
        if restore is not None:
            restore[0].write_text(restore[1])
    s = sync_of(st)
    m = re.search(r"max_user_watches to at least (\d+)", line)
    assert m, f"the watch-limit error names no count: {line}"
    assert s["watch_limit_needed"] == int(m.group(1)), (s, line)
    assert s["watch_limit_needed"] > 0
    watcher_pid = int(comp_of(st, "watcher")["pid"])
    watched = watched_inodes(watcher_pid)
    blind = [p for p in dirs if os.stat(p).st_ino not in watched]
    if restore is None:
        assert s["watches"] <= limit, s
        assert blind, f"every directory is watched despite a limit of {limit}: {s}"
    d.wait_ready()
    converge(d, src, dst)

    # changes everywhere, most of them in directories nobody watches
    for i, p in enumerate(dirs):
        write(p / "file", b"changed %d\n" % i)
        write(p / f"new-{i}", os.urandom(200))
        if i % 7 == 0:
            (p / "same").unlink()
    converge(d, src, dst, timeout=90)
    errors = log_lines(d, "ERROR", "fs.inotify.max_user_watches")
    assert len(errors) == 1, "the watch-limit error should be logged once:\n" + "\n".join(errors)

    # a same-size rewrite with the mtime put back inside a blind directory:
    # a rescan that follows lost events must compare contents (--checksum)
    if blind:
        target = blind[0] / "file"
        data = target.read_bytes()
        stt = os.stat(target)
        write(target, bytes(reversed(data)) if data != data[::-1] else data.swapcase())
        os.utime(target, ns=(stt.st_atime_ns, stt.st_mtime_ns))
        converge(d, src, dst, timeout=60)
    finish(d, tmp_path, src, dst)


def test_watch_limit_reached_by_one_sync_blinds_only_what_it_must(request, tmp_path,
                                                                 daemon_factory):
    """Three syncs in one watcher; the last one's tree needs more watches
    than the limit allows. The watch limit is the kernel's, per user, so
    whichever directories are left over go blind: reported once, rescanned,
    and every sync's mirror still converges, with no restart of the
    watcher."""
    limit = 30
    roots: list[tuple[Path, Path]] = []
    syncs = []
    for name in ("calm1", "calm2", "big"):
        s_dir, d_dir = tmp_path / f"{name}-src", tmp_path / f"{name}-dst"
        s_dir.mkdir()
        d_dir.mkdir()
        roots.append((s_dir, d_dir))
        syncs.append(sync_entry(s_dir, [d_dir], name=name))
    for i in range(3):
        for s_dir, _ in roots[:2]:
            (s_dir / f"d{i}").mkdir()
            write(s_dir / f"d{i}" / "f", b"calm %d\n" % i)
    big = roots[2][0]
    for i in range(60):
        p = big / f"top{i // 6:02d}" / f"sub{i % 6}"
        p.mkdir(parents=True)
        write(p / "file", b"%d\n" % i)
    doc = {"settings": request.getfixturevalue("settings"), "sync": syncs}
    if not _userns_watch_limit_works():
        pytest.skip("no user namespace with its own inotify watch limit here")
    d = UsernsDaemon(tmp_path, doc, limit)
    request.node._syncsup_daemons.append(d)  # daemon_factory's teardown stops it
    d.start()
    wait_log(d, "ERROR", "fs.inotify.max_user_watches", timeout=120)
    st = d.wait_for(lambda st: sum(s.get("unwatched") or 0 for s in st["syncs"]) > 0,
                    "unwatched > 0", 60)
    watcher = comp_of(st, "watcher")
    for s_dir, d_dir in roots:
        wait_converged(s_dir, d_dir, timeout=120, on_timeout=d.describe)
    # changes in every sync, in watched and blind directories alike
    for n, (s_dir, _) in enumerate(roots):
        for dirpath, _dirs, _files in os.walk(s_dir):
            write(Path(dirpath) / f"new-{n}", os.urandom(100))
    for s_dir, d_dir in roots:
        wait_converged(s_dir, d_dir, timeout=120, on_timeout=d.describe)
    st = d.status()
    now = comp_of(st, "watcher")
    assert (now["pid"], now["restarts"]) == (watcher["pid"], 0), (watcher, now)
    errors = log_lines(d, "ERROR", "fs.inotify.max_user_watches")
    assert len(errors) == 1, "the watch-limit error should be logged once:\n" + "\n".join(errors)
    assert not log_lines(d, "Traceback"), d.log_tail(60)
    d.stop()
    assert_no_leftovers(tmp_path)


# ============================================================ 5. targets down
def test_ssh_target_down_backs_off_and_catches_up(tmp_path, src, dst, sshd, daemon_factory):
    """sshd stopped: the remote target is retried with exponential backoff (no
    busy loop) and reported, the local target is not held up, and everything
    catches up when sshd is back. The backoff runs on short timers (a
    tenth of a second doubling up to one): five attempts cross the whole
    schedule, doubling and then capped, in a few seconds. (Each delay's
    value is the retry queue's unit tests'; here it is a real ssh that
    cannot connect, and the real collator that waits.)"""
    dst_ssh = tmp_path / "dst_ssh"
    dst_ssh.mkdir()
    spec = sshd.target(dst_ssh)
    c = Churn(src, seed=51)
    c.populate(n_files=60, n_dirs=8)
    d = daemon_factory([sync_entry(src, [dst, spec], ssh=sshd.ssh_config(), delay=0.2)],
                       timings={"retry_base": 0.1, "retry_cap": 1.0})
    converge(d, src, [dst, dst_ssh], churn=c)

    sshd.stop()
    down_at = time.monotonic()
    try:
        c.run(60, sleep_prob=0.2, max_sleep=0.01)
        converge(d, src, dst, churn=c)  # the live target does not wait for the dead one
        st = d.wait_for(
            lambda st: (
                target_of(st, spec)["state"] == "retrying"
                and target_of(st, spec)["last_error"]
                and target_of(st, spec)["pending"] > 0
            ),
            "the ssh target to be retrying with an error",
            timeout=60,
        )
        print("while down:", target_of(st, spec))

        pat = re.compile(re.escape(f"target {spec}: transfer retry") + r".*retrying in ([0-9.]+)s")

        def delays() -> list[float]:
            return [float(m.group(1)) for ln in d.log_text().splitlines() if (m := pat.search(ln))]

        wait_until(lambda: len(delays()) >= 5, "five failed attempts on the dead target", 120,
                   0.3, d.describe)  # fmt: skip
        down_secs = time.monotonic() - down_at
        ds = delays()
    finally:
        if not sshd.running:
            sshd.start()
    # exponential: each delay about twice the one before (+-20 % jitter), capped at
    # the daemon's retry_cap
    base, cap = d.timings.retry_base, d.timings.retry_cap
    for a, b_ in itertools.pairwise(ds):
        assert b_ >= min(a * 1.3, cap * 0.8), f"backoff does not grow: {ds}"
    assert max(ds) <= cap * 1.2 + 0.1, f"backoff exceeds its {cap:g} s cap: {ds}"
    # no busy loop: attempts bounded by the doubling schedule up to the cap, then
    # one per capped delay, over the time down
    bound = math.log2(cap / (0.8 * base)) + 3 + down_secs / (0.8 * cap)
    assert len(ds) <= bound, f"{len(ds)} attempts in {down_secs:.0f}s: {ds}"
    assert target_of(d.status(), spec)["pending"] > 0, "work was marked done on a dead target"

    c.run(30, sleep_prob=0.2, max_sleep=0.01)
    converge(d, src, [dst, dst_ssh], timeout=150, churn=c)
    # status follows once a heartbeat carried the success
    d.wait_for(lambda st: target_of(st, spec)["last_error"] is None, "last_error cleared", 60)
    finish(d, tmp_path, src, dst, dst_ssh)


def test_readonly_target_dir_is_retried_then_catches_up(tmp_path, src, dst, daemon_factory):
    """A target directory that cannot be written (chattr +i: root ignores mode
    bits) makes rsync fail (23): retried and reported, never marked done; once
    writable again, the target converges."""
    if shutil.which("chattr") is None:
        pytest.skip("chattr is not installed")
    sub = src / "sub"
    sub.mkdir()
    write(sub / "old", b"old content\n")
    write(src / "top", b"top\n")
    d = daemon_factory([sync_entry(src, [dst], delay=0.2)])
    converge(d, src, dst)

    locked = dst / "sub"
    r = subprocess.run(["chattr", "+i", str(locked)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"chattr +i does not work here: {r.stderr.strip()}")
    try:
        write(sub / "old", b"new content of old\n")
        write(sub / "fresh", b"a new file\n")
        # "retrying", or already "failed": the same failure a few times in a
        # row makes the target stuck, which is still retried (on a change,
        # else after a growing delay); with the tests' short timings that
        # comes within seconds, so a status poll may see either
        st = d.wait_for(
            lambda st: (
                target_of(st, dst)["state"] in ("retrying", "failed")
                and target_of(st, dst)["last_error"]
            ),
            "the target to be retrying with an error",
            timeout=60,
        )
        t = target_of(st, dst)
        print("while read-only:", t)
        assert t["pending"] > 0, f"failed work must stay pending: {t}"
        pat = f"target {dst}: transfer retry (rc 23)"
        wait_until(lambda: len(log_lines(d, pat)) >= 2, "a second failed attempt (rc 23)", 60,
                   0.3, d.describe)  # fmt: skip
        assert (locked / "old").read_bytes() == b"old content\n"
        assert not (locked / "fresh").exists()
        assert target_of(d.status(), dst)["pending"] > 0, "work was marked done"
    finally:
        subprocess.run(["chattr", "-i", str(locked)], check=False)
    converge(d, src, dst, timeout=90)
    d.wait_for(lambda st: target_of(st, dst)["last_error"] is None, "last_error cleared", 60)
    finish(d, tmp_path, src, dst)


# ================================================================ 6. flapping
def test_flapping_component_becomes_degraded(tmp_path, src, dst, daemon_factory):
    """More than 10 restarts in the window mark the component degraded
    (status and log) and slow its restarts down; it still comes back and
    nothing is lost. On short restart timers (the backoff itself is the
    unit tests' of the supervisor's policy): the flapping takes seconds, and a
    degraded restart waits at least a quarter of ``degraded_cap`` (at 4 s,
    still more than twice the slowest normal restart, and a few seconds
    of status polls to see it waiting)."""
    c = Churn(src, seed=61)
    c.populate(n_files=40, n_dirs=6)
    d = daemon_factory([sync_entry(src, [dst], delay=0.2)],
                       timings={"restart_base": 0.01, "restart_cap": 0.2, "degraded_cap": 4.0})
    converge(d, src, dst, churn=c)

    name = "collator"
    role_arg = b"syncsup.collator"
    killed: list[int] = []
    deadline = time.monotonic() + 150
    degraded = False
    while not degraded:
        if time.monotonic() >= deadline or len(killed) >= 25:
            raise AssertionError(f"not degraded after {len(killed)} kills\n{d.describe()}")
        # a fresh incarnation of the collator: kill it as soon as it exists
        fresh = [p for p in pids_matching(role_arg, b(d.config)) if p not in killed]
        if not fresh:
            time.sleep(0.02)
            continue
        for p in fresh:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
            killed.append(p)
        c.run(3, sleep_prob=0)  # changes keep coming while it flaps
        if len(killed) >= 11:
            st = d.try_status()
            degraded = st is not None and comp_of(st, name)["state"] == "degraded"
    print(f"degraded after {len(killed)} kills")
    st = d.status()
    comp = comp_of(st, name)
    assert comp["restarts"] >= 11 and comp["last_exit"] == -signal.SIGKILL, comp
    lines = log_lines(d, name, "degraded")
    assert lines, "no log line says the component is degraded"
    m = re.search(r"restart #\d+ in ([0-9.]+)s", lines[-1])
    # degraded: restarts at least a quarter of degraded_cap apart (minus the 20 % jitter)
    slowest_normal = d.timings.restart_cap * 1.2
    assert m and float(m.group(1)) >= max(0.8 * d.timings.degraded_cap / 4, slowest_normal), (
        f"degraded restarts are not slowed down: {lines[-1]}")
    for other in ("watcher", "syncer"):
        assert comp_of(st, other)["state"] == "running", st["components"]

    assert comp["pid"] is None, f"a degraded restart should wait, not happen at once: {comp}"

    # it keeps retrying, slowly (up to degraded_cap +- 20 %), comes back by itself
    # and catches up with what changed while it flapped
    c.run(20, sleep_prob=0.2, max_sleep=0.01)
    d.wait_for(lambda st: comp_of(st, name)["pid"] not in (None, *killed), f"{name} back", 100)
    finish(d, tmp_path, src, dst)


def test_config_error_is_fatal_and_never_restarted(tmp_path, src, dst, daemon_factory):
    """A component that exits 78 (its config became invalid) is "fatal": not
    restarted. Once the config is fixed, a restart of syncsup loses nothing."""
    c = Churn(src, seed=62)
    c.populate(n_files=30, n_dirs=5)
    d = daemon_factory([sync_entry(src, [dst], delay=0.2)])
    converge(d, src, dst, churn=c)

    config = d.config
    good = config.read_text()
    # the status CLI reads the config too: ask through an intact copy
    d.config = tmp_path / "intact-copy.toml"
    d.config.write_text(good)
    config.write_text(good + "\nthis is [not toml\n")
    name = "collator"
    pid = int(comp_of(d.status(), name)["pid"])
    os.kill(pid, signal.SIGKILL)
    st = d.wait_for(lambda st: comp_of(st, name)["state"] == "fatal", f"{name} to be fatal", 60)
    comp = comp_of(st, name)
    assert comp["last_exit"] == 78 and comp["pid"] is None, comp
    assert log_lines(d, name, "configuration error (78)"), "no log line about the exit 78"

    c.run(30, sleep_prob=0.2, max_sleep=0.01)  # changes while the sync is halted
    # a fatal component stays down: it is not restarted, ever (were its
    # exit a crash, the restart would come at once or after restart_base,
    # 0.2 s +- 20 %; this waits six times that)
    time.sleep(1.5)
    again = comp_of(d.status(), name)
    assert again["state"] == "fatal" and again["pid"] is None, again
    assert again["restarts"] == comp["restarts"], (comp, again)
    assert not pids_matching(b"syncsup.collator", b(config)), "a collator is running again"

    # the operator fixes the config and restarts syncsup: nothing was lost
    config.write_text(good)
    d.config = config
    d.stop()
    assert_no_leftovers(tmp_path)
    d.start()
    finish(d, tmp_path, src, dst)


# ======================================================= 7. supervisor death
def test_supervisor_sigkill_then_start_again(tmp_path, src, dst, daemon_factory):
    """SIGKILL of the supervisor during a transfer: every child and every rsync
    exits within seconds; the next start resumes from the journal and a rescan
    and loses nothing, including what changed while it was down."""
    c = Churn(src, seed=71)
    c.populate(n_files=50, n_dirs=6)
    write(src / "same-while-down", b"1" * 5000)
    entry = sync_entry(src, [dst], delay=0.2)
    entry["rsync"] = {"bwlimit": 2000}
    d = daemon_factory([entry])
    converge(d, src, dst, churn=c)

    big_file(tmp_path, src / "big-in-flight", 4_000_000)  # ~2 s at 2000 KiB/s
    rs = wait_until(lambda: rsync_pids(dst), "the big transfer to start", 60)
    st = d.status()
    children = [int(x["pid"]) for x in st["components"] if x["role"] != "supervisor" and x["pid"]]
    assert len(children) == 3, st["components"]
    os.kill(d.pid, signal.SIGKILL)
    d.proc.wait(10)
    victims = sorted(set(children) | set(rs))
    wait_until(lambda: not any(alive(p) for p in victims),
               f"children and rsync {victims} to exit after the supervisor died", 30)  # fmt: skip
    assert_no_leftovers(tmp_path, timeout=30)

    # changes while nothing runs: a same-size rewrite of a mirrored file with
    # its mtime put back (its event is lost like any other while the daemon
    # is down) ...
    victim = src / "same-while-down"
    stt = os.stat(victim)
    write(victim, b"2" * 5000)
    os.utime(victim, ns=(stt.st_atime_ns, stt.st_mtime_ns))
    # ... and random churn that leaves that file alone (and whose own
    # same-size rewrites are left out, so that a diff names the one above)
    quiet = Churn(src, seed=72)
    quiet.files.discard(b"same-while-down")
    quiet.OPS = [(n, w) for n, w in Churn.OPS if n != "op_rewrite_same_size"]
    quiet.run(60, sleep_prob=0.1, max_sleep=0.01)
    d.start()
    quiet.run(20, sleep_prob=0.1, max_sleep=0.01)
    finish(d, tmp_path, src, dst)


# ========================================== 8. vanished or emptied source
def test_source_moved_away_emptied_and_back(tmp_path, src, dst, daemon_factory):
    """The source root moved away: a loud error, nothing deleted on the target.
    An empty directory in its place (an unmounted disk): the mirror is not
    wiped and status says why. The source back: everything converges."""
    c = Churn(src, seed=81)
    c.populate(n_files=50, n_dirs=6)
    d = daemon_factory([sync_entry(src, [dst], delay=0.2)])
    converge(d, src, dst, churn=c)
    mirror = snapshot(dst)
    assert mirror, "the mirror should not be empty"

    away = tmp_path / "src.away"
    os.rename(src, away)
    wait_log(d, "ERROR", str(src), "missing", timeout=60)
    write(away / "changed-while-away", b"written while the source was elsewhere\n")
    time.sleep(3)  # give a wrong delete every chance to happen
    assert not diff_trees(mirror, snapshot(dst)), "the target changed while the source was gone"

    src.mkdir()  # an empty directory where the source was: an unmounted disk
    d.wait_for(
        lambda st: (
            "empty" in (target_of(st, dst)["last_error"] or "")
            and target_of(st, dst)["state"] in ("retrying", "failed")
        ),
        "status to say the source is empty (between retries)",
        timeout=60,
    )
    assert log_lines(d, "ERROR", "empty"), "no ERROR line about the empty source"
    assert not diff_trees(mirror, snapshot(dst)), "the mirror was (partly) wiped"

    src.rmdir()
    os.rename(away, src)
    write(src / "after-return", b"new after the source came back\n")
    finish(d, tmp_path, src, dst)


def test_max_delete_stops_mass_deletion(tmp_path, src, dst, daemon_factory):
    """``max_delete = 3``: a batch deleting 8 entries is refused (rsync 25),
    the target is "failed" and keeps most of its files; an operator raising the
    limit and restarting gets the target converged."""
    victims = src / "victims"
    victims.mkdir()
    for i in range(8):
        write(victims / f"v{i}", b"victim %d\n" % i)
    write(src / "keep", b"keep\n")
    entry = sync_entry(src, [dst], delay=1.0)
    entry["max_delete"] = 3
    d = daemon_factory([entry])
    converge(d, src, dst)

    for i in range(8):
        (victims / f"v{i}").unlink()
    st = d.wait_for(
        lambda st: target_of(st, dst)["state"] == "failed", "the target to be failed", 60
    )
    t = target_of(st, dst)
    assert t["last_error"] and "max-delete" in t["last_error"], t
    assert t["pending"] > 0, t
    left = [p for p in (dst / "victims").iterdir()]
    assert len(left) >= 8 - 3, f"more than max_delete entries were deleted: {left}"
    # failed means: not retried right away (a retry would come after
    # retry_base, 0.5 s; this waits three times that)
    time.sleep(1.5)
    assert target_of(d.status(), dst)["state"] == "failed"

    # the operator looks, decides the deletes are wanted and lifts the limit
    d.stop()
    assert_no_leftovers(tmp_path)
    entry2 = dict(entry)
    del entry2["max_delete"]
    d2 = daemon_factory([entry2], config=d.config)
    finish(d2, tmp_path, src, dst)


# ================================================ 9. periodic verification
def test_full_sync_interval_repairs_drift_on_target(tmp_path, src, dst, daemon_factory):
    """``full_sync_interval = 10``: changes made on the target behind the
    daemon's back (even same size and mtime) are repaired."""
    c = Churn(src, seed=91, hostile_ratio=0.2)
    c.populate(n_files=40, n_dirs=5)
    write(src / "victim", b"V" * 3000)
    entry = sync_entry(src, [dst], delay=0.2)
    entry["full_sync_interval"] = 10
    d = daemon_factory([entry])
    converge(d, src, dst, churn=c)

    victim = dst / "victim"
    stt = os.stat(victim)
    write(victim, b"W" * 3000)
    os.utime(victim, ns=(stt.st_atime_ns, stt.st_mtime_ns))
    write(dst / "stray", b"not in the source\n")
    some_dir = next(p for p in dst.iterdir() if p.is_dir() and not p.is_symlink())
    shutil.rmtree(some_dir)
    converge(d, src, dst, timeout=90, churn=c)
    assert log_lines(d, "full_sync_interval"), "no full comparison was logged"
    finish(d, tmp_path, src, dst)
