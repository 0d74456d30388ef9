"""The agent beside rsync, end to end: real inotify, rsync, sshd and processes.

Every target has an agent (docs/config.md, "The agent"): a local target's is
the syncer itself, a remote one's a long-lived ``syncsup-target ROOT agent``
session over ssh. Small files, directories, symlinks, deletes and attributes
go through it; rsync keeps larger files, special files, rescans and syncs
whose settings only rsync honours.

How a test knows which way a change went: rsync runs through a wrapper given
as ``[sync.rsync] binary`` (:func:`rsync_logger`) that records each
invocation's argv and a copy of its ``--files-from`` list. A ``paths`` step
(``-d -I``, the per-path transfer) after the initial sync means the agent did
not take those paths; ``tree`` steps (``-r``) are rescans, which stay
rsync's (the initial sync, and every new or moved-in directory, which the
watcher watches and then rescans).

Every test ends with a byte-for-byte comparison of the trees (or, with
excludes, with what rsync itself makes of the same target), no
``.syncsup.*`` temporary name left in the target and nothing left running.

A wedged agent is given up after the daemon's ``agent_timeout`` (the
tests' ``[timings]`` make it a few seconds instead of production's 30), so
the tests that SIGSTOP an agent wait seconds, not half a minute; the one
that needs the agent to stay wedged while it looks gives it a long one.

Three tests guard against faults found here: a directory deleted through
the agent must keep the target's excluded files (as rsync does); a wedged
remote agent that wakes after being given up must apply nothing it still
had buffered; a session lost before its hello on a target whose agent
worked must not turn the agent off.
"""

from __future__ import annotations

import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from syncsup.timings import Timings
from tests.helpers.attack import make_world
from tests.helpers.churn import HOSTILE, Churn, ChurnThread, assert_not_pwned
from tests.helpers.daemon import REPO, Daemon, run_cli, sync_entry
from tests.helpers.procs import (
    alive,
    assert_no_leftovers,
    cmdline_of,
    parent_of,
    processes_mentioning,
)
from tests.helpers.tree import b, diff_trees, snapshot, wait_converged

from ._modes_helpers import wait_until

pytestmark = pytest.mark.timeout(300)

RSYNC = shutil.which("rsync") or "/usr/bin/rsync"
CONVERGE = 150.0
# Seconds a slowed agent start (write_target_command's ``slow_if``) sleeps
# before the agent runs: time for a test to find its ssh and kill it.
SLOW_START = 2.0


# ============================================================ rsync, recorded
@dataclass(frozen=True)
class RsyncRun:
    """One invocation of rsync by the daemon."""

    stamp: str
    argv: tuple[bytes, ...]
    names: tuple[bytes, ...] | None  # the --files-from list, without the "./" prefix

    @property
    def kind(self) -> str:
        if not any(a.startswith(b"--files-from=") for a in self.argv):
            return "other"  # rsync --version
        if any(b"/syncsup-rsync-probe-" in a for a in self.argv):
            return "probe"  # the receiver probe at start, in a private temporary tree
        if b"-r" in self.argv:
            return "tree"
        if b"-I" in self.argv and b"-d" in self.argv:
            return "paths"
        return "other"

    def describe(self) -> str:
        names = list(self.names or ())
        return f"{self.kind} {names[:12]!r}{' ...' if len(names) > 12 else ''}"


def rsync_logger(tmp_path: Path) -> tuple[Path, Path]:
    """An rsync that records every invocation in a directory: ``N.list``
    (a copy of its ``--files-from`` list), then ``N.argv`` (NUL-separated),
    then execs the real rsync. Returns (wrapper, directory)."""
    runs = tmp_path / "rsync-runs"
    runs.mkdir()
    wrapper = tmp_path / "rsync-logged"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"n={shlex.quote(str(runs))}/$(date +%s%N).$$\n"
        'for a in "$@"; do\n'
        '    case "$a" in --files-from=*) cp -- "${a#--files-from=}" "$n.list" ;; esac\n'
        "done\n"
        "printf '%s\\0' \"$@\" > \"$n.part\"\n"
        'mv -- "$n.part" "$n.argv"\n'
        f"exec {shlex.quote(RSYNC)} \"$@\"\n")
    os.chmod(wrapper, 0o755)
    return wrapper, runs


def rsync_runs(runs: Path) -> list[RsyncRun]:
    out = []
    for f in sorted(runs.glob("*.argv"), key=lambda p: int(p.name.split(".")[0])):
        stamp = f.name[: -len(".argv")]
        argv = tuple(f.read_bytes().split(b"\0")[:-1])
        lst = runs / f"{stamp}.list"
        names = None
        if lst.exists():
            names = tuple(n[2:] if n.startswith(b"./") else (b"" if n == b"." else n)
                          for n in lst.read_bytes().split(b"\0")[:-1])
        out.append(RsyncRun(stamp, argv, names))
    return out


def runs_after(runs: Path, mark: int, kind: str | None = None) -> list[RsyncRun]:
    return [r for r in rsync_runs(runs)[mark:] if kind is None or r.kind == kind]


# ================================================================ the daemon
def with_rsync(sync: dict, binary: Path, **rsync_opts) -> dict:
    sync["rsync"] = {"binary": str(binary), **rsync_opts}
    return sync


def transports(d: Daemon, st: dict | None = None) -> dict[str, str]:
    return {t["target"]: t.get("transport") for t in d.targets(st)}


def pending(d: Daemon) -> int:
    st = d.try_status()
    return -1 if st is None else sum(t.get("pending") or 0 for t in d.targets(st))


def control(d: Daemon, verb: str) -> None:
    r = run_cli(verb, d.config)
    assert r.returncode == 0, f"syncsup {verb}: {r.returncode} {r.stdout}{r.stderr}"


def settle_paused(d: Daemon, quiet: float = 1.0, timeout: float = 60) -> int:
    """With the target paused: until the journal's pending count has stopped
    growing for ``quiet`` seconds (every event of the round recorded). The
    source is already quiet when this is called, so ``quiet`` only has to
    outlast the watcher's hold (a fifth of a second at these delays) and
    the trip to the journal, several status polls."""
    deadline = time.monotonic() + timeout
    last, since = -2, time.monotonic()
    while time.monotonic() < deadline:
        n = pending(d)
        if n != last:
            last, since = n, time.monotonic()
        elif n > 0 and time.monotonic() - since >= quiet:
            return n
        time.sleep(0.3)
    raise AssertionError(f"pending never settled (last {last})\n{d.describe()}")


def temp_names(root: Path) -> list[bytes]:
    """``.syncsup.*`` names (the agent's temporary files) anywhere below ``root``."""
    hits = []
    for dirpath, dirnames, filenames in os.walk(b(root)):
        hits += [os.path.join(dirpath, n) for n in dirnames + filenames
                 if n.startswith(b".syncsup.")]
    return hits


def mtimes(root: Path) -> dict[bytes, int]:
    """Modification time (ns) of every entry below ``root`` and of ``root``."""
    out, r = {}, b(root)
    for dirpath, dirnames, filenames in os.walk(r):
        for n in [b"", *dirnames, *filenames]:
            p = os.path.join(dirpath, n) if n else dirpath
            out[os.path.relpath(p, r)] = os.lstat(p).st_mtime_ns
    return out


def converge(d: Daemon, src: Path, dst: Path, churn: Churn | None = None,
             timeout: float = CONVERGE) -> None:
    wait_converged(src, dst, timeout=timeout,
                   on_timeout=lambda: (churn.summary() + "\n" if churn else "") + d.describe())
    assert not temp_names(dst), f"agent temp files left in the target: {temp_names(dst)}"


def finish(d: Daemon, tmp_path: Path, src: Path, dst: Path, *also: Path) -> None:
    """The common end: converged, stopped cleanly, nothing left behind."""
    converge(d, src, dst)
    d.stop()
    assert not temp_names(dst), f"agent temp files left in the target: {temp_names(dst)}"
    assert_no_leftovers(tmp_path)
    for p in also:
        assert_no_leftovers(p)
    assert_not_pwned(tmp_path, src, dst)


# ========================================================= agent processes
def write_target_command(tmp_path: Path, slow_if: Path | None = None) -> tuple[Path, Path]:
    """A ``[sync.ssh] target_command`` that logs each start (pid and
    arguments) and runs this checkout's ``syncsup-target``, whatever the
    remote PATH holds; while the file ``slow_if`` exists it waits ``SLOW_START``
    before starting the agent. Returns (wrapper, log)."""
    log = tmp_path / "target-command.log"
    wrapper = tmp_path / "syncsup-target-wrapper"
    slow = f"[ -e {shlex.quote(str(slow_if))} ] && sleep {SLOW_START:g}\n" if slow_if else ""
    wrapper.write_text(
        "#!/bin/sh\n"
        f'echo "$$ $*" >> {shlex.quote(str(log))}\n'
        + slow +
        f"PYTHONPATH={shlex.quote(str(REPO))}; export PYTHONPATH\n"
        f'exec {shlex.quote(sys.executable)} -P -m syncsup.target "$@"\n')
    os.chmod(wrapper, 0o755)
    return wrapper, log


def started_agents(log: Path, root: Path) -> list[str]:
    """The lines of the target_command log that started an agent for ``root``."""
    try:
        lines = log.read_text().splitlines()
    except FileNotFoundError:
        return []
    return [ln for ln in lines if ln.split(" ", 1)[-1] == f"{root} agent"]


def _environ(pid: int) -> list[bytes]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def remote_agents(root: Path) -> list[int]:
    """Target side: the ``syncsup-target ROOT agent`` processes serving
    ``root`` (run with ``agent`` as an argument, or behind a forced command
    with the request in SSH_ORIGINAL_COMMAND)."""
    out = []
    for pid in _pids():
        argv = cmdline_of(pid)
        # "-m syncsup.target ROOT agent", or either agent's "-c BOOT ROOT ..."
        if not any(b"syncsup.target" in a for a in argv) or b(root) not in argv:
            continue
        after = argv[argv.index(b(root)) + 1:]
        if after[:1] == [b"agent"] or any(e.startswith(b"SSH_ORIGINAL_COMMAND=")
                                          and e.endswith(b" agent") for e in _environ(pid)):
            out.append(pid)
    return out


def agent_clients(root: Path) -> list[int]:
    """Source side: the ssh processes of the agent sessions for ``root``
    (``ssh ... -- LOGIN 'PROGRAM ROOT agent'``). A session over an ssh
    master has none: the syncer speaks to the master itself; these are the
    sessions that connect directly (no master, or one that refused)."""
    out = []
    for pid in _pids():
        argv = cmdline_of(pid)
        if argv and os.path.basename(argv[0]) == b"ssh" and argv[-1].endswith(b" agent") \
                and b(root) in argv[-1]:
            out.append(pid)
    return out


def ssh_masters(state: Path) -> list[int]:
    """The live ``ssh -M`` processes whose control path is in ``state``."""
    return [pid for pid, cmd in processes_mentioning(state)
            if cmd.split(" ", 1)[0].endswith("ssh") and " -M " in f" {cmd} "]


def masters_listening(state: Path) -> int:
    """How many control sockets in ``state`` a live master answers on
    (``ssh -O check``): a master that runs but could not listen (a stale
    socket file in its way) multiplexes nothing."""
    n = 0
    for path in state.glob("cm-*"):
        r = subprocess.run(["ssh", "-O", "check", "-o", f"ControlPath={path}", "any"],
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=10)
        n += r.returncode == 0
    return n


def _fd_targets(pid: int, write_only: bool = False) -> set[str]:
    """What ``pid``'s descriptors point at (``pipe:[N]`` and so on); with
    ``write_only``, only those it holds open for writing."""
    out = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for fd in fds:
        try:
            what = os.readlink(f"/proc/{pid}/fd/{fd}")
            if write_only:
                with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                    flags = int(next(ln for ln in f if ln.startswith("flags:")).split()[1], 8)
                if flags & os.O_ACCMODE != os.O_WRONLY:
                    continue
        except (OSError, StopIteration):
            continue
        out.add(what)
    return out


def multiplexed_sessions(state: Path) -> set[str]:
    """The agent sessions a syncer holds over its ssh masters (state dir
    ``state``), one name each: the pipe that carries the agent's answers,
    written by the master and read by the syncer. The syncer closes its end
    the moment it ends a session, so this is its own count, not the
    target's (whose agent exits a moment later)."""
    out: set[str] = set()
    for master in ssh_masters(state):
        syncer = parent_of(master)
        if syncer is not None:
            out |= {w for w in _fd_targets(master, write_only=True)
                    if w.startswith("pipe:")} & _fd_targets(syncer)
    return out


def wait_agent(find, root: Path, d: Daemon, timeout: float = 60) -> int:
    pids = wait_until(lambda: find(root), f"an agent session for {root}", timeout=timeout,
                      context=d.describe)
    return pids[0]


def age(pid: int) -> float:
    """Seconds since ``pid`` started (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        with open("/proc/uptime") as f:
            up = float(f.read().split()[0])
    except OSError:
        return 0.0
    started = int(data[data.rindex(b")") + 2:].split()[19])
    return up - started / os.sysconf("SC_CLK_TCK")


def established_session(root: Path, state: Path,
                        settled: float = 2.0) -> tuple[int, int] | None:
    """(target-side agent, source-side ssh) of a session whose agent has run
    for ``settled`` seconds (its hello long answered), or None. The source
    side is the session's own ssh client where it connected directly, else
    the ssh master that carries it."""
    agents = [p for p in remote_agents(root) if age(p) >= settled]
    links = agent_clients(root) or ssh_masters(state)
    if len(agents) == 1 and len(links) == 1:
        return agents[0], links[0]
    return None


# ============================================================== the source
class SmallChurn(Churn):
    """Churn whose files all stay well under the default agent_max_size."""

    def _size(self) -> int:
        r = self.rng.random()
        return 0 if r < 0.08 else self.rng.randint(1, 64 * 1024)


def hostile_tree(root: Path) -> None:
    """Every hostile name as a file, and as a directory holding a file of
    that name: newline, backslash, quotes, ``$(...)``, leading ``-``, bytes
    that are not UTF-8..."""
    r = b(root)
    for i, n in enumerate(HOSTILE):
        with open(os.path.join(r, n), "wb") as f:
            f.write(n * 3)
        os.mkdir(os.path.join(r, n + b".d"))
        with open(os.path.join(r, n + b".d", n), "wb") as f:
            f.write(bytes([i]) * 99)


def scripted_round(root: Path, rnd: int) -> None:
    """The operations the agent must get exactly right, all of them every
    time (the random churn may or may not hit each): hostile names, a
    same-size rewrite within the same second (mtime put back), symlinks
    dangling and not, mode changes, renames of a file and of a directory,
    a type change, and a whole tree deleted."""
    r = b(root)
    tag = b"r%d-" % rnd
    hostile = [HOSTILE[(rnd * 7 + k) % len(HOSTILE)] for k in range(6)]
    # new files with hostile names, in the root and in an existing hostile dir
    for k, n in enumerate(hostile):
        where = r if k % 2 else os.path.join(r, HOSTILE[k] + b".d")
        if os.path.isdir(where):
            with open(os.path.join(where, tag + n), "wb") as f:
                f.write(os.urandom(100 + 997 * k))
    # write, then rewrite the same size within the same second, old mtime back
    p = os.path.join(r, tag + b"same-size")
    with open(p, "wb") as f:
        f.write(b"A" * 4000)
    st = os.stat(p)
    with open(p, "r+b") as f:
        f.write(b"B" * 4000)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    # an earlier round's file rewritten the same way
    if rnd:
        p = os.path.join(r, b"r%d-same-size" % (rnd - 1))
        if os.path.exists(p):
            st = os.stat(p)
            with open(p, "r+b") as f:
                f.seek(1000)
                f.write(os.urandom(1000))
            os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    # symlinks: to a file, to a directory, dangling, absolute outside, hostile text
    os.symlink(tag + b"same-size", os.path.join(r, tag + b"ln-file"))
    os.symlink(HOSTILE[0] + b".d", os.path.join(r, tag + b"ln-dir"))
    os.symlink(b"../no/such/" + hostile[0], os.path.join(r, tag + b"ln-dangling"))
    os.symlink(b"/etc/hostname", os.path.join(r, tag + b"ln-abs"))
    os.symlink(hostile[1] + b"\n$(touch pwned)", os.path.join(r, tag + b"ln-hostile"))
    # mode changes: a file and a directory
    os.chmod(os.path.join(r, tag + b"same-size"), 0o640 if rnd % 2 else 0o604)
    os.chmod(os.path.join(r, HOSTILE[rnd % len(HOSTILE)] + b".d"), 0o750 if rnd % 2 else 0o755)
    # a tree to delete next round, renames of a file and of a directory
    t = os.path.join(r, tag + b"tree")
    os.makedirs(os.path.join(t, b"a", b"b"))
    for k in range(5):
        with open(os.path.join(t, b"a", b"b", b"%d-" % k + hostile[k % 6]), "wb") as f:
            f.write(os.urandom(3000))
    if rnd:
        prev = b"r%d-" % (rnd - 1)
        shutil.rmtree(os.path.join(r, prev + b"tree"), ignore_errors=True)
        for old, new in ((prev + b"ln-file", tag + b"moved-" + hostile[2]),
                         (HOSTILE[2 + rnd % 5] + b".d", tag + b"moved-dir-" + hostile[3])):
            if os.path.lexists(os.path.join(r, old)):
                os.rename(os.path.join(r, old), os.path.join(r, new))
        # a file becomes a directory, a symlink a file
        p = os.path.join(r, prev + b"ln-abs")
        if os.path.lexists(p):
            os.unlink(p)
            with open(p, "wb") as f:
                f.write(b"was a symlink")
        p = os.path.join(r, HOSTILE[(rnd + 11) % len(HOSTILE)])
        if os.path.isfile(p) and not os.path.islink(p):
            os.unlink(p)
            os.mkdir(p)
            with open(os.path.join(p, b"inside"), "wb") as f:
                f.write(b"was a file")


def churned_source(src: Path, seed: int, n_files: int = 80) -> tuple[Churn, Path]:
    """``src/s``: every hostile name (scripted rounds change it); ``src/c``:
    a seeded churn of small files (its own model, nothing else touches it)."""
    (src / "s").mkdir()
    hostile_tree(src / "s")
    (src / "c").mkdir()
    c = SmallChurn(src / "c", seed, hostile_ratio=0.4)
    c.populate(n_files=n_files, n_dirs=10)
    return c, src / "s"


def agent_rounds(d: Daemon, src: Path, dst: Path, runs: Path, c: Churn, scripted: Path,
                 rounds: int = 2, ops: int = 60, links: bool = True) -> list[RsyncRun]:
    """Rounds of changes made while the target is paused, sent once the
    source is quiet: the agent reads a source nobody is changing, so nothing
    it takes may end in an rsync ``paths`` step. ``links`` false (a
    confined target): symlinks go to rsync, and nothing else. Returns the
    rsync runs of the rounds."""
    mark = len(rsync_runs(runs))
    links_sent: set[str] = set()  # rsync runs of symlinks only (links false)
    for rnd in range(rounds):
        control(d, "pause")
        scripted_round(scripted, rnd)
        c.run(ops, sleep_prob=0.2, max_sleep=0.01)
        settle_paused(d)
        control(d, "resume")
        converge(d, src, dst, c)
        d.wait_idle(60)
        # rsync -a keeps modification times: so does the agent (files, links,
        # and directories once their entries are written)
        a, z = mtimes(src), mtimes(dst)
        wrong = sorted(k for k in a if a[k] != z.get(k))
        assert not wrong, f"round {rnd}: {len(wrong)} times differ: {wrong[:10]!r}"
        paths = [r for r in runs_after(runs, mark, "paths") if r.stamp not in links_sent]
        if not links:
            links_sent.update(r.stamp for r in paths if all(
                os.path.islink(os.path.join(b(src), n)) for n in r.names or ()))
            paths = [r for r in paths if r.stamp not in links_sent]
        assert not paths, (
            f"round {rnd}: small files, directories, symlinks and deletes went through rsync "
            f"instead of the agent:\n" + "\n".join(r.describe() for r in paths)
            + f"\n{c.summary()}\n{d.log_tail(40)}")
    return runs_after(runs, mark)


# ====================================================== 1. local target
def test_local_small_file_churn_goes_through_the_agent(tmp_path, src, dst, daemon_factory):
    rsync_bin, runs = rsync_logger(tmp_path)
    c, scripted = churned_source(src, seed=71)
    d = daemon_factory([with_rsync(sync_entry(src, [dst], delay=0.2), rsync_bin)])
    converge(d, src, dst, c)
    st = d.wait_idle()
    assert transports(d, st) == {str(dst): "agent"}, d.describe()
    initial = [r for r in rsync_runs(runs) if r.kind not in ("other", "probe")]
    assert initial and all(r.kind == "tree" for r in initial), (
        "the initial sync is rsync's recursive comparison: "
        + "; ".join(r.describe() for r in initial))

    rounds = agent_rounds(d, src, dst, runs, c, scripted)
    # rsync only rescanned the directories that appeared (new or moved in)
    assert all(r.kind == "tree" for r in rounds if r.kind != "other"), rounds

    # and live, while the tree keeps changing
    t = ChurnThread(c, 200, sleep_prob=0.4, max_sleep=0.02)
    t.start()
    t.join_checked(120)
    converge(d, src, dst, c)
    assert transports(d) == {str(dst): "agent"}, d.describe()
    finish(d, tmp_path, src, dst)


# ====================================================== 2. remote targets
@pytest.fixture
def world(asshd):
    """ROOT and its surroundings, the key confined to ROOT (root account)."""
    yield from make_world("root", asshd)


def test_confined_key_small_file_churn_goes_through_the_agent(world, asshd, tmp_path, src,
                                                              daemon_factory):
    w, s = world, asshd
    rsync_bin, runs = rsync_logger(tmp_path)
    c, scripted = churned_source(src, seed=72)
    target = f"{w.login}:{w.root}"
    sync = sync_entry(src, [target], delay=0.2, ssh={**s.ssh_config(), "confined": True})
    d = daemon_factory([with_rsync(sync, rsync_bin)])
    converge(d, src, w.root, c)  # ROOT's own a, sub/ and links are deleted: delete = true
    assert transports(d, d.wait_idle()) == {target: "agent"}, d.describe()

    # a confined agent cannot set a symlink's time: links go by rsync
    agent_rounds(d, src, w.root, runs, c, scripted, links=False)
    agents = remote_agents(w.root)
    assert len(agents) == 1, f"one long-lived agent session, not {agents}"
    t = ChurnThread(c, 150, sleep_prob=0.4, max_sleep=0.02)
    t.start()
    t.join_checked(120)
    converge(d, src, w.root, c)
    assert remote_agents(w.root) == agents, "the agent session was replaced\n" + d.log_tail()
    assert transports(d) == {target: "agent"}, d.describe()
    finish(d, tmp_path, src, w.root, w.base)
    w.assert_unchanged("the mirror through the confined key")


def test_unconfined_key_runs_the_agent_given_as_target_command(sshd, tmp_path, src, dst,
                                                               daemon_factory):
    rsync_bin, runs = rsync_logger(tmp_path)
    wrapper, started = write_target_command(tmp_path)
    c, scripted = churned_source(src, seed=73)
    target = sshd.target(dst)
    sync = sync_entry(src, [target], delay=0.2,
                      ssh={**sshd.ssh_config(), "target_command": str(wrapper)})
    d = daemon_factory([with_rsync(sync, rsync_bin)])
    converge(d, src, dst, c)
    assert transports(d, d.wait_idle()) == {target: "agent"}, d.describe()

    agent_rounds(d, src, dst, runs, c, scripted)
    t = ChurnThread(c, 150, sleep_prob=0.4, max_sleep=0.02)
    t.start()
    t.join_checked(120)
    converge(d, src, dst, c)
    assert len(started_agents(started, dst)) == 1, (
        "one long-lived agent session, started through target_command: "
        f"{started_agents(started, dst)}\n{d.log_tail()}")
    assert transports(d) == {target: "agent"}, d.describe()
    finish(d, tmp_path, src, dst)


# ====================================================== 3. what stays rsync's
def one_round(d: Daemon, change) -> None:
    """``change()`` made while the target is paused, sent once it is done."""
    control(d, "pause")
    change()
    settle_paused(d)
    control(d, "resume")


def names_in(runs: list[RsyncRun]) -> set[bytes]:
    return {n for r in runs for n in (r.names or ())}


def test_larger_files_and_fifos_go_by_rsync(tmp_path, src, dst, daemon_factory):
    """agent_max_size = 4096: a file of 4096 bytes goes through the agent,
    one of 4097 or 10 KiB through rsync's paths step, and so does a fifo;
    each path once, in the same batch, and the trees converge."""
    rsync_bin, runs = rsync_logger(tmp_path)
    s = b(src)
    os.mkdir(os.path.join(s, b"d"))
    for n in (b"big-old", b"small-old"):
        with open(os.path.join(s, b"d", n), "wb") as f:
            f.write(os.urandom(10240 if n.startswith(b"big") else 100))
    sync = with_rsync(sync_entry(src, [dst], delay=0.2), rsync_bin)
    sync["agent_max_size"] = 4096
    d = daemon_factory([sync])
    converge(d, src, dst)
    assert transports(d, d.wait_idle()) == {str(dst): "agent"}, d.describe()
    mark = len(rsync_runs(runs))

    big = [b"big-" + n for n in HOSTILE[:6]] + [b"d/big-old", b"edge-4097"]
    small = [b"small-" + n for n in HOSTILE[:6]] + [b"d/small-old", b"edge-4096", b"d/new-dir"]
    fifos = [b"fifo", b"d/-fifo\n$(touch pwned)"]

    def change() -> None:
        for n in big:
            size = 4097 if n == b"edge-4097" else 10240
            with open(os.path.join(s, n), "wb") as f:
                f.write(os.urandom(size))
        for n in small:
            if n == b"d/new-dir":
                os.mkdir(os.path.join(s, n))
                continue
            with open(os.path.join(s, n), "wb") as f:
                f.write(os.urandom(4096 if n == b"edge-4096" else 200))
        for n in fifos:
            os.mkfifo(os.path.join(s, n), 0o640)

    one_round(d, change)
    converge(d, src, dst)
    d.wait_idle(60)
    done = runs_after(runs, mark)
    paths = [r for r in done if r.kind == "paths"]
    assert names_in(paths) == set(big) | set(fifos), (
        "rsync's paths step must take exactly the files over agent_max_size and the fifos:\n"
        + "\n".join(r.describe() for r in done))
    assert not names_in(done) & (set(small) - {b"d/new-dir"}), "small files went through rsync"
    # a new directory is watched, then rescanned: rsync's tree step, by design
    assert names_in([r for r in done if r.kind == "tree"]) == {b"d/new-dir"}

    # rewritten in place, same size, old mtime back: the agent for the small,
    # rsync (-I, no quick check) for the big one
    def rewrite() -> None:
        for n in (b"d/big-old", b"d/small-old"):
            p = os.path.join(s, n)
            st = os.stat(p)
            with open(p, "r+b") as f:
                f.write(os.urandom(50))
            os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))

    mark = len(rsync_runs(runs))
    one_round(d, rewrite)
    converge(d, src, dst)
    assert names_in(runs_after(runs, mark, "paths")) == {b"d/big-old"}, (
        "\n".join(r.describe() for r in runs_after(runs, mark)))
    assert transports(d) == {str(dst): "agent"}, d.describe()
    finish(d, tmp_path, src, dst)


@pytest.mark.parametrize("opts,why", [
    ({"compress": True}, "[sync.rsync] compress"),
    ({"chmod": "Fu+r"}, "[sync.rsync] chmod"),  # changes no mode Churn uses
], ids=["compress", "chmod"])
def test_settings_only_rsync_honours_send_everything_by_rsync(opts, why, tmp_path, src, dst,
                                                            daemon_factory):
    rsync_bin, runs = rsync_logger(tmp_path)
    c, scripted = churned_source(src, seed=74, n_files=40)
    d = daemon_factory([with_rsync(sync_entry(src, [dst], delay=0.2), rsync_bin, **opts)])
    converge(d, src, dst, c)
    assert transports(d, d.wait_idle()) == {str(dst): "rsync"}, d.describe()
    assert f"www: every change goes through rsync ({why})" in d.log_text(), d.log_tail()
    mark = len(rsync_runs(runs))

    def change() -> None:
        scripted_round(scripted, 0)
        c.run(40, sleep_prob=0.2, max_sleep=0.01)

    one_round(d, change)
    converge(d, src, dst, c)
    paths = runs_after(runs, mark, "paths")
    assert paths, "the paths of the round went nowhere near rsync"
    flag = b"-z" if "compress" in opts else b"--chmod=Fu+r"
    assert all(flag in r.argv for r in runs_after(runs, mark) if r.kind != "other")
    # every changed small file went through rsync: e.g. the scripted ones
    assert {b"s/r0-same-size", b"s/r0-ln-dangling"} <= names_in(paths)
    assert transports(d) == {str(dst): "rsync"}, d.describe()
    finish(d, tmp_path, src, dst)


# excludes: the agent must leave alone what rsync leaves alone
EXCLUDES = ["*.tmp", "/cache/", "build/"]


def rsync_reference(src: Path, ref: Path) -> None:
    """What rsync itself makes of ``ref`` (the oracle): -a, --delete, the excludes."""
    subprocess.run([RSYNC, "-a", "--delete", *(f"--exclude={e}" for e in EXCLUDES),
                    f"{src}/", f"{ref}/"], check=True, capture_output=True)


def wait_same(d: Daemon, dst: Path, ref: Path, timeout: float = CONVERGE) -> None:
    deadline = time.monotonic() + timeout
    while True:
        diff = diff_trees(snapshot(ref), snapshot(dst, tolerate_vanish=True),
                          names=("rsync", "agent"))
        if not diff:
            return
        if time.monotonic() >= deadline:
            raise AssertionError("the target is not what rsync makes of it:\n"
                                 + "\n".join(diff) + "\n" + d.describe())
        time.sleep(0.3)


def write_all(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


def test_plain_excludes_through_the_agent_do_what_rsync_does(tmp_path, src, dst,
                                                             daemon_factory):
    """Plain excludes keep the agent (docs: only other filter rules need
    rsync); what it sends, skips, deletes and leaves alone on the target is
    what rsync -a --delete --exclude makes of the same target."""
    rsync_bin, runs = rsync_logger(tmp_path)
    write_all(dst, {"keep.tmp": b"target only", "cache/old": b"target only",
                    "sub/build/old": b"target only"})
    write_all(src, {"a.txt": b"a", "b.tmp": b"b", "cache/c": b"c", "sub/d.txt": b"d",
                    "sub/build/e": b"e", "sub/cache/f": b"f", "build": b"a file named build"})
    ref = tmp_path / "reference"
    shutil.copytree(dst, ref, symlinks=True)
    d = daemon_factory([with_rsync(sync_entry(src, [dst], delay=0.2, exclude=EXCLUDES),
                                   rsync_bin)])
    rsync_reference(src, ref)
    wait_same(d, dst, ref)
    d.wait_idle()
    assert transports(d) == {str(dst): "agent"}, d.describe()
    mark = len(rsync_runs(runs))

    def change() -> None:
        write_all(src, {"x.tmp": b"x", "sub/new.tmp": b"n", "cache/new": b"n",
                        "sub/build/new": b"n", "sub/cache/g": b"g", "sub/d.txt": b"dd",
                        "build": b"still a file"})
        os.rename(src / "a.txt", src / "a2.tmp")   # now excluded: a.txt goes
        os.rename(src / "b.tmp", src / "b.txt")    # now sent
        os.unlink(src / "sub" / "cache" / "f")
        os.chmod(src / "sub" / "d.txt", 0o600)

    one_round(d, change)
    rsync_reference(src, ref)
    wait_same(d, dst, ref)
    done = runs_after(runs, mark)
    assert not [r for r in done if r.kind == "paths"], "\n".join(r.describe() for r in done)
    finish_same(d, tmp_path, dst, ref)


def finish_same(d: Daemon, tmp_path: Path, dst: Path, ref: Path) -> None:
    wait_same(d, dst, ref)
    d.stop()
    assert not temp_names(dst), temp_names(dst)
    assert_no_leftovers(tmp_path)


def test_a_deleted_directory_keeps_the_targets_excluded_files(tmp_path, src, dst,
                                                             daemon_factory):
    write_all(dst, {"d/x.tmp": b"excluded: the target's own"})
    write_all(src, {"d/y": b"y", "other": b"o"})
    ref = tmp_path / "reference"
    shutil.copytree(dst, ref, symlinks=True)
    d = daemon_factory([sync_entry(src, [dst], delay=0.2, exclude=EXCLUDES)])
    rsync_reference(src, ref)
    wait_same(d, dst, ref)
    d.wait_idle()
    shutil.rmtree(src / "d")
    rsync_reference(src, ref)  # rsync: "cannot delete non-empty directory: d", keeps d/x.tmp
    assert (ref / "d" / "x.tmp").exists()
    wait_until(lambda: not (dst / "d" / "y").exists(), "the delete to reach the target",
               timeout=60, context=d.describe)
    d.wait_idle(60)
    assert (dst / "d" / "x.tmp").exists(), (
        "the agent deleted a file the sync excludes, which rsync leaves on the target")
    finish_same(d, tmp_path, dst, ref)


# ====================================================== 4. no agent there
def test_remote_agent_that_cannot_start_falls_back_to_rsync(sshd, tmp_path, src, dst,
                                                          daemon_factory):
    rsync_bin, runs = rsync_logger(tmp_path)
    missing = tmp_path / "not-installed" / "syncsup-target"
    c, scripted = churned_source(src, seed=75, n_files=40)
    target = sshd.target(dst)
    sync = sync_entry(src, [target], delay=0.2,
                      ssh={**sshd.ssh_config(), "target_command": str(missing)})
    d = daemon_factory([with_rsync(sync, rsync_bin)])
    converge(d, src, dst, c)
    d.wait_idle()
    mark = len(rsync_runs(runs))

    for rnd in range(2):
        scripted_round(scripted, rnd)
        c.run(40, sleep_prob=0.2, max_sleep=0.01)
        converge(d, src, dst, c)
        d.wait_for(lambda st: transports(d, st) == {target: "rsync"},
                   "the target's transport to say rsync", timeout=60)
    assert names_in(runs_after(runs, mark, "paths")) >= {b"s/r0-same-size", b"s/r1-same-size"}
    lines = [ln for ln in d.log_text().splitlines() if "no agent there" in ln]
    assert len(lines) == 1, (
        "one clear line, and no new attempt before AGENT_RETRY (10 minutes):\n"
        + "\n".join(lines) + "\n" + d.log_tail())
    assert f"target {target}: no agent there (" in lines[0], lines[0]
    assert "No such file or directory" in lines[0] or "not found" in lines[0], lines[0]
    assert "rsync does everything, the agent is tried again in 10 minutes" in lines[0], lines[0]
    finish(d, tmp_path, src, dst)


# ====================================================== 5. chaos
def remote_sync(sshd, src: Path, dst: Path, wrapper: Path, **kw) -> dict:
    """A sync to ``dst`` over the session's sshd, the agent started by ``wrapper``."""
    return sync_entry(src, [sshd.target(dst)],
                      ssh={**sshd.ssh_config(), "target_command": str(wrapper)}, **kw)


def kill_quietly(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def restarts(d: Daemon, role: str) -> int:
    return sum(c.get("restarts") or 0 for c in d.components(role))


def test_local_agent_killed_with_the_syncer_during_churn(tmp_path, src, dst, daemon_factory):
    """The local agent is the syncer: SIGKILLed at random under churn, its
    unfinished batches are leased again and resent; nothing is lost and no
    half-written file (``.syncsup.*``) stays."""
    c = Churn(src, 81, hostile_ratio=0.3)  # a few files over 1 MiB: rsync's, killed too
    c.populate(n_files=120, n_dirs=12)
    d = daemon_factory([sync_entry(src, [dst], delay=0.1)])
    converge(d, src, dst, c)
    # ~6 s of churn, a kill every second or so: enough kills to land
    # several, too few to make the syncer degraded (more than 10 restarts)
    t = ChurnThread(c, 300, sleep_prob=1.0, max_sleep=0.04)
    rng = random.Random(81)
    kills = []
    t.start()
    while t.is_alive():
        time.sleep(rng.uniform(0.7, 1.5))
        hit = d.kill_component("syncer", rng)
        if hit is not None:
            kills.append(hit)
    t.join_checked(120)
    assert len(kills) >= 3, f"too few kills landed: {kills}"
    converge(d, src, dst, c)
    assert restarts(d, "syncer") >= 1, d.describe()
    assert transports(d) == {str(dst): "agent"}, d.describe()
    finish(d, tmp_path, src, dst)


def test_remote_agent_and_its_ssh_killed_during_churn(sshd, tmp_path, src, dst, daemon_factory):
    """SIGKILL, in turn, the agent on the target (``syncsup-target ROOT
    agent``) and the ssh process of its session on the source (the ssh
    master that carries it, or its own client while the master is down):
    each time the step's paths go to rsync and the next batch starts a new
    session."""
    wrapper, started = write_target_command(tmp_path)
    c = SmallChurn(src, 82, hostile_ratio=0.3)
    c.populate(n_files=100, n_dirs=12)
    d = daemon_factory([remote_sync(sshd, src, dst, wrapper, delay=0.1)])
    converge(d, src, dst, c)
    t = ChurnThread(c, 300, sleep_prob=1.0, max_sleep=0.03)
    kills: dict[str, list[int]] = {"target-side agent": [], "source-side ssh": []}
    t.start()
    turn, nudges = 0, 0
    deadline = time.monotonic() + 120
    # Kill while the churn runs, and after it until both kinds have landed
    # (a change each round then starts the next session): the churn need
    # not last as long as the slowest machine takes for two sessions.
    while t.is_alive() or (not all(kills.values()) and time.monotonic() < deadline):
        time.sleep(0.5)
        if not t.is_alive():
            nudges += 1
            (src / "nudge").write_bytes(b"%d" % nudges)
        # only sessions past their hello (a session lost while starting is
        # the test of its own below)
        session = established_session(dst, tmp_path / "state", settled=1.5)
        if session is not None:
            name = ("target-side agent", "source-side ssh")[turn % 2]
            kill_quietly(session[turn % 2], signal.SIGKILL)
            kills[name].append(session[turn % 2])
            turn += 1
    t.join_checked(120)
    assert all(kills.values()), f"not every kind of kill landed: {kills}"
    converge(d, src, dst, c)
    # the last kill may have come after the last batch: one more change
    (src / "after-the-kills").write_bytes(b"x" * 300)
    converge(d, src, dst, c)
    assert len(started_agents(started, dst)) >= 2, started.read_text()
    assert "the agent session ended" in d.log_text(), d.log_tail()
    assert "no agent there" not in d.log_text(), d.log_tail()
    assert transports(d) == {sshd.target(dst): "agent"}, d.describe()
    finish(d, tmp_path, src, dst)


@pytest.mark.timeout(240)
def test_remote_agent_stopped_past_the_deadline_during_churn(sshd, tmp_path, src, dst,
                                                             daemon_factory):
    """SIGSTOP the agent on the target under churn and keep it stopped: after
    ``agent_timeout`` without an answer the syncer kills the session, the
    step's paths go to rsync and a new session serves the next batches. The
    stopped process is then SIGKILLed by the test (what it does when woken
    instead is the test of a wedged agent woken after its replacement,
    below)."""
    wrapper, started = write_target_command(tmp_path)
    c = SmallChurn(src, 83, hostile_ratio=0.3)
    c.populate(n_files=80, n_dirs=10)
    d = daemon_factory([remote_sync(sshd, src, dst, wrapper, delay=0.1)])
    (src / "wake-the-agent").write_bytes(b"1")
    converge(d, src, dst, c)
    stopped = wait_agent(remote_agents, dst, d)
    # ~4.5 s of churn: batches keep coming while the agent is being waited
    # on, and after it is given up
    t = ChurnThread(c, 300, sleep_prob=1.0, max_sleep=0.03)
    try:
        os.kill(stopped, signal.SIGSTOP)
        t.start()
        t.join_checked(120)
        wedged = f"the agent answered nothing for {d.timings.agent_timeout:g}s: killing it"
        wait_until(lambda: wedged in d.log_text(),
                   "the wedged agent to be given up", timeout=d.timings.agent_timeout + 60,
                   context=d.describe)
        converge(d, src, dst, c)
        assert alive(stopped), "the test's stopped agent is gone: nothing was tested"
        assert len(started_agents(started, dst)) >= 2, "no new session after the wedged one"
        assert transports(d) == {sshd.target(dst): "agent"}, d.describe()
    finally:
        kill_quietly(stopped, signal.SIGKILL)
    finish(d, tmp_path, src, dst)


# ====================================================== 6. acknowledged once durable
def in_agent_step(d: Daemon):
    def pred(st: dict) -> bool:
        ts = d.targets(st)
        return bool(ts) and all((t.get("transfer") or {}).get("phase") == "agent"
                                and (t.get("pending") or 0) > 0 for t in ts)
    return pred


def read(p: Path) -> bytes | None:
    try:
        return p.read_bytes()
    except FileNotFoundError:
        return None


def test_local_change_survives_a_syncer_killed_around_its_batch(tmp_path, src, dst,
                                                                daemon_factory):
    """The local agent writes, fsyncs, then the batch is acknowledged: a
    syncer SIGKILLed at any moment around that (before, during, after the
    write) loses nothing; the collator leases the batch again."""
    d = daemon_factory([sync_entry(src, [dst], delay=0)])
    for i, pause in enumerate((0.0, 0.02, 0.08, 0.3)):
        d.wait_for(lambda st: all(c.get("state") == "running" for c in d.components("syncer", st)),
                   "the syncer running", timeout=60)
        (src / f"f{i}").write_bytes(os.urandom(5000))
        if i:
            (src / f"f{i - 1}").write_bytes(os.urandom(3000))  # rewrite the last one
        time.sleep(pause)
        assert d.kill_component("syncer") is not None
        converge(d, src, dst)
    assert restarts(d, "syncer") >= 4, d.describe()
    finish(d, tmp_path, src, dst)


def test_a_local_target_made_again_gets_the_changes_that_follow(tmp_path, src, dst,
                                                                daemon_factory):
    """The local agent holds the target directory open. Replaced while the
    daemon runs (moved away and made again: a disk mounted there), the new
    one gets the next changes, never the old one that nobody sees; a resync
    then brings the rest."""
    (src / "old").write_bytes(b"o" * 3000)
    d = daemon_factory([sync_entry(src, [dst], delay=0)])
    converge(d, src, dst)
    d.wait_idle()
    (src / "first").write_bytes(b"f" * 3000)  # through the agent, which opens the target
    converge(d, src, dst)
    assert transports(d, d.wait_idle()) == {str(dst): "agent"}, d.describe()
    dst.rename(tmp_path / "dst-away")
    dst.mkdir()
    (src / "new").write_bytes(b"n" * 3000)
    wait_until(lambda: read(dst / "new") == b"n" * 3000, "the change in the new target",
               timeout=60, context=d.describe)
    assert not (tmp_path / "dst-away" / "new").exists()
    control(d, "resync")
    finish(d, tmp_path, src, dst)


def test_remote_batch_is_acknowledged_only_once_the_agent_confirmed(sshd, tmp_path, src, dst,
                                                                    daemon_factory):
    """A batch waiting on a stopped agent stays pending (not acknowledged,
    nothing written); the syncer SIGKILLed right then, the restarted one
    sends the batch again through a new session. The agent is given the
    production timeout: it must still be waited on when the syncer dies."""
    wrapper, started = write_target_command(tmp_path)
    d = daemon_factory([remote_sync(sshd, src, dst, wrapper, delay=0)],
                       timings={"agent_timeout": Timings().agent_timeout})
    (src / "g").write_bytes(b"first")
    converge(d, src, dst)
    stopped = wait_agent(remote_agents, dst, d)
    try:
        os.kill(stopped, signal.SIGSTOP)
        (src / "f").write_bytes(b"v1" * 2000)
        d.wait_for(in_agent_step(d), "the batch to wait on the stopped agent", timeout=30)
        time.sleep(2)
        st = d.status()
        assert [t["pending"] >= 1 for t in d.targets(st)] == [True], st
        assert read(dst / "f") is None
        assert d.kill_component("syncer") is not None
        converge(d, src, dst)
        d.wait_idle(60)
        assert len(started_agents(started, dst)) >= 2, started.read_text()
    finally:
        kill_quietly(stopped, signal.SIGKILL)
    finish(d, tmp_path, src, dst)


def test_wedged_agent_woken_after_its_replacement_writes_nothing_stale(sshd, tmp_path, src, dst,
                                                                      daemon_factory):
    """f is v1 in a batch sent to a stopped agent, then v2; the syncer gives
    the agent up after ``agent_timeout`` and rsync, then a new session, deliver v2. When
    the stopped agent wakes (a wedge that clears: a hung NFS server back, a
    frozen cgroup thawed) its stdin still holds ``put f v1``: it must not
    write it. (The agent's timeout, 6 s, leaves room for the look at the
    target while the batch waits on it: a few status polls.)"""
    wrapper, _started = write_target_command(tmp_path)
    (src / "f").write_bytes(b"v0" * 2000)
    d = daemon_factory([remote_sync(sshd, src, dst, wrapper, delay=0)],
                       timings={"agent_timeout": 6.0})
    (src / "g").write_bytes(b"first")
    converge(d, src, dst)
    agent = wait_agent(remote_agents, dst, d)
    os.kill(agent, signal.SIGSTOP)
    try:
        (src / "f").write_bytes(b"v1" * 2000)
        d.wait_for(in_agent_step(d), "the batch to wait on the stopped agent", timeout=30)
        assert read(dst / "f") == b"v0" * 2000
        (src / "f").write_bytes(b"v2" * 2000)
        wedged = f"the agent answered nothing for {d.timings.agent_timeout:g}s: killing it"
        wait_until(lambda: wedged in d.log_text(),
                   "the wedged agent to be given up", timeout=d.timings.agent_timeout + 60,
                   context=d.describe)
        converge(d, src, dst)
        d.wait_idle(60)
        assert read(dst / "f") == b"v2" * 2000
    finally:
        kill_quietly(agent, signal.SIGCONT)
    wait_until(lambda: not alive(agent), "the woken agent to end", timeout=30)
    time.sleep(0.5)
    # the batch was acknowledged: nothing will send f again until it changes
    assert d.wait_idle(10) and read(dst / "f") == b"v2" * 2000, (
        f"the woken agent overwrote f with the stale {read(dst / 'f')[:6]!r}... after its "
        "batch was acknowledged; nothing is pending to repair it")
    finish(d, tmp_path, src, dst)


def test_a_session_lost_while_starting_does_not_turn_a_working_agent_off(sshd, tmp_path, src,
                                                                         dst, daemon_factory):
    """The agent works on this target; then one session's ssh dies while the
    agent is starting (a network drop, the connection killed: here the ssh
    master that carries the session): that is a session that ended, not a
    target without an agent. The next batch should start a new session."""
    slow = tmp_path / "slow-start"
    wrapper, started = write_target_command(tmp_path, slow_if=slow)
    d = daemon_factory([remote_sync(sshd, src, dst, wrapper, delay=0)])
    # after the startup sync, so that "a" goes through the agent, which then
    # has worked on this target (else a file written early went with the
    # startup rsync, no session had answered yet, and losing one while it
    # starts rightly means "no agent there")
    wait_until(lambda: " 1 trees, " in d.log_text(), "the startup sync", timeout=60,
               context=d.describe)
    d.wait_idle()
    (src / "a").write_bytes(b"a" * 100)
    converge(d, src, dst)
    wait_until(lambda: " 1 paths, 0 trees" in d.log_text(), "a batch of a's path",
               timeout=30, context=d.describe)
    first = wait_agent(remote_agents, dst, d)
    slow.touch()
    kill_quietly(first, signal.SIGKILL)
    wait_until(lambda: "the agent session ended" in d.log_text(), "the session to end",
               timeout=30, context=d.describe)
    (src / "b").write_bytes(b"b" * 100)  # a new session, slow to start
    wait_until(lambda: len(started_agents(started, dst)) == 2, "a second session", timeout=30,
               context=d.describe)
    kill_quietly(wait_until(lambda: agent_clients(dst) or ssh_masters(tmp_path / "state"),
                            "the second session's ssh", timeout=60, context=d.describe)[0],
                 signal.SIGKILL)
    converge(d, src, dst)  # b by rsync: the batch falls back
    slow.unlink()
    time.sleep(SLOW_START)  # the abandoned wrapper's sleep
    (src / "c").write_bytes(b"c" * 100)
    converge(d, src, dst)
    assert "no agent there" not in d.log_text(), (
        "a working agent was turned off for 10 minutes after one session was lost while "
        "starting:\n" + d.log_tail(10))
    assert len(started_agents(started, dst)) == 3
    assert transports(d) == {sshd.target(dst): "agent"}, d.describe()
    finish(d, tmp_path, src, dst)
