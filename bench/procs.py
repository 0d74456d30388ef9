"""What a tool's process tree costs, read from ``/proc``.

Both tools are measured the same way: the process the bench started and every
live descendant (syncsup's supervisor and its children, Lsyncd and the rsyncs
it runs).  Processes on the far side of ssh (sshd, the remote rsync) are not
counted for either tool.

Two ways of counting CPU live here, on purpose:

* :func:`tree_cpu` sums ``utime + stime + cutime + cstime`` from
  ``/proc/PID/stat``.  It is in clock ticks (10 ms) but includes every
  child the tree already reaped (each finished rsync), so it is right for
  busy scenarios (burst) where thousands of short rsyncs come and go.
* :func:`cpu_sample` / :func:`cpu_seconds_between` read the nanosecond run
  time of every live thread from ``/proc/PID/task/TID/schedstat``.  A daemon
  at rest uses a few milliseconds a minute, well below one tick per process,
  so idle figures must be measured this way (ticks read 0 or 0.01 at random).
  Children reaped during the window are added from ``cutime``/``cstime``.

Memory: :func:`tree_rss_kb` (``VmRSS``, what the older scenarios report) and
:func:`tree_memory` (``Rss`` and ``Pss`` from ``/proc/PID/smaps_rollup``).  PSS
divides each shared page among the processes mapping it, so the PSS sum of a
tree counts pages its processes share with each other (syncsup's children are
forked from one parent) once, which RSS sums count once per process.
"""

from __future__ import annotations

import ctypes
import os
import platform
from dataclasses import dataclass, field

from tests.helpers.procs import cmdline_of

CLK_TCK = os.sysconf("SC_CLK_TCK")


def stat_fields(pid: int) -> list[bytes] | None:
    """Fields of ``/proc/PID/stat`` after the command name: index 0 is the state
    (field 3 in proc(5)), index 1 the parent pid; None if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rindex(b")") + 2 :].split()


def children_map() -> dict[int, list[int]]:
    """Parent pid -> child pids, for every process on the machine."""
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        f = stat_fields(int(d))
        if f is None:
            continue
        kids.setdefault(int(f[1]), []).append(int(d))
    return kids


def tree_pids(root: int, kids: dict[int, list[int]] | None = None) -> list[int]:
    """``root`` and all its live descendants (zombies included); ``kids``: a
    :func:`children_map` already read."""
    kids = children_map() if kids is None else kids
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def start_time(pid: int) -> int | None:
    """Start time in ticks since boot: with the pid, identifies a process (pids are reused)."""
    f = stat_fields(pid)
    return int(f[19]) if f else None


def is_dead(pid: int) -> bool:
    """Gone, or a zombie waiting to be reaped."""
    f = stat_fields(pid)
    return f is None or f[0] in (b"Z", b"X")


def cmdline(pid: int) -> bytes:
    """The raw NUL-separated command line (empty for a kernel thread or a gone process)."""
    return b"\0".join(cmdline_of(pid))


# ------------------------------------------------------------------------ CPU
def tree_cpu(root: int) -> float:
    """CPU seconds (user+system) of ``root`` and all live descendants, including
    the children each of them already reaped (cutime/cstime).  Tick resolution."""
    ticks = 0
    for pid in tree_pids(root):
        f = stat_fields(pid)
        if f is None:
            continue
        ticks += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
    return ticks / CLK_TCK


def tree_cpu_by(root: int) -> dict[str, float]:
    """:func:`tree_cpu` split by process: ``syncsup.watcher`` etc. for
    syncsup's children (their reaped children, rsync, included), else the
    program's name (``python3`` for syncsup's supervisor, ``lsyncd``)."""
    out: dict[str, float] = {}
    for pid in tree_pids(root):
        f = stat_fields(pid)
        if f is None:
            continue
        argv = cmdline_of(pid)
        label = next((a.split()[0].decode() for a in argv if a.startswith(b"syncsup.")), "")
        if not label:
            label = os.path.basename(argv[0]).decode(errors="replace") if argv else "?"
        secs = (int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])) / CLK_TCK
        out[label] = out.get(label, 0.0) + secs
    return out


@dataclass
class CpuSample:
    """Run time of every live thread of a tree, and the CPU of what it reaped.

    ``threads`` maps (pid, process start time, tid) to nanoseconds on a CPU;
    ``reaped_ticks`` maps (pid, process start time) to that process's
    ``cutime + cstime``.  Keys carry the start time so that a reused pid is
    never taken for the process it replaced.
    """

    threads: dict[tuple[int, int, int], int] = field(default_factory=dict)
    reaped_ticks: dict[tuple[int, int], int] = field(default_factory=dict)


def cpu_sample(root: int) -> CpuSample:
    """Read ``/proc/PID/task/*/schedstat`` of every process in the tree of ``root``."""
    s = CpuSample()
    for pid in tree_pids(root):
        f = stat_fields(pid)
        if f is None:
            continue
        st = int(f[19])
        s.reaped_ticks[(pid, st)] = int(f[13]) + int(f[14])
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as fh:
                    ns = int(fh.read().split()[0])
            except (OSError, ValueError, IndexError):
                continue
            s.threads[(pid, st, int(tid))] = ns
    return s


def cpu_seconds_between(a: CpuSample, b: CpuSample) -> float:
    """CPU seconds the tree used from sample ``a`` to sample ``b``.

    Threads alive at ``b`` count from ``a`` (or from their start if they are
    new); a process reaped meanwhile by a member of the tree counts through
    the reaper's ``cutime``/``cstime`` (ticks, its whole life, so a process
    that was already running at ``a`` is over-counted by what it used before
    ``a``).  A thread that ended inside the window
    without its process ending is lost: the kernel keeps its time only in the
    process's tick-rounded ``utime``.  At rest neither happens.
    """
    ns = sum(v - a.threads.get(k, 0) for k, v in b.threads.items())
    ticks = sum(v - a.reaped_ticks.get(k, 0) for k, v in b.reaped_ticks.items())
    return ns / 1e9 + ticks / CLK_TCK


# --------------------------------------------------------------------- memory
_KCMP = {"x86_64": 312, "aarch64": 272}.get(platform.machine())
_KCMP_VM = 1
_libc = ctypes.CDLL(None, use_errno=True)


def borrows_memory(pid: int, parent: int) -> bool:
    """Does ``pid`` run in its parent's memory (a ``vfork`` child between
    the fork and its exec)? Its ``VmRSS`` and ``smaps_rollup`` then describe
    the parent's pages, which a sum would count twice: every spawn of a
    child by Python's ``subprocess`` (vfork) shows, for a moment, a second
    process as large as the spawner. ``kcmp(KCMP_VM)`` says whether two
    processes share one address space; False where it cannot be asked."""
    if _KCMP is None:
        return False
    same: int = _libc.syscall(_KCMP, pid, parent, _KCMP_VM, 0, 0)
    return same == 0


def memory_pids(root: int, kids: dict[int, list[int]] | None = None) -> list[int]:
    """The tree's processes whose memory is their own: ``root`` and its
    descendants, less those that borrow their parent's (see
    :func:`borrows_memory`). ``kids``: a :func:`children_map` already read."""
    kids = children_map() if kids is None else kids
    out, todo = [root], [root]
    while todo:
        p = todo.pop()
        for kid in kids.get(p, []):
            todo.append(kid)
            if not borrows_memory(kid, p):
                out.append(kid)
    return out


def _tree_field(root: int, name: str, key: bytes) -> int:
    """Sum over the tree of the first number after ``key`` in
    ``/proc/PID/name`` (a process gone meanwhile counts 0; one that borrows
    its parent's memory is not counted again)."""
    total = 0
    for pid in memory_pids(root):
        try:
            with open(f"/proc/{pid}/{name}", "rb") as f:
                for line in f:
                    if line.startswith(key):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total


def tree_rss_kb(root: int) -> int:
    """Sum of ``VmRSS`` over the tree, in kB."""
    return _tree_field(root, "status", b"VmRSS:")


@dataclass(frozen=True)
class TreeMemory:
    """Processes in a tree and the sums of their ``Rss`` and ``Pss``, in kB."""

    processes: int
    rss_kb: int
    pss_kb: int


def pss_by_name(pids: list[int]) -> dict[str, int]:
    """PSS in kB of ``pids``, summed by the name of their program (the first
    word of the command line, or the Python module run with ``-m``)."""
    out: dict[str, int] = {}
    for pid in pids:
        words = cmdline(pid).split(b"\0")
        name = os.path.basename(words[0]).decode(errors="replace") if words[0] else "?"
        if b"-m" in words[:-1]:
            name = words[words.index(b"-m") + 1].decode(errors="replace")
        elif name.startswith("python") and len(words) > 1:
            name = os.path.basename(words[1]).decode(errors="replace")
        out[name] = out.get(name, 0) + tree_memory_one(pid)
    return out


def tree_memory_one(pid: int) -> int:
    """``Pss`` of one process in kB (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_memory(root: int) -> TreeMemory:
    """Count the tree's processes and sum ``Rss``/``Pss`` from ``smaps_rollup``.

    Zombies and processes that vanish while being read count as processes
    with no memory (a zombie has none); a ``vfork`` child before its exec
    counts as a process whose memory is its parent's (counted there)."""
    kids = children_map()
    pids = tree_pids(root, kids)
    rss = pss = 0
    for pid in memory_pids(root, kids):
        try:
            with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
                for line in f:
                    if line.startswith(b"Rss:"):
                        rss += int(line.split()[1])
                    elif line.startswith(b"Pss:"):
                        pss += int(line.split()[1])
        except OSError:
            pass
    return TreeMemory(len(pids), rss, pss)


# ------------------------------------------------------------------------ i/o
def tree_rchar(root: int) -> int:
    """Bytes the tree's processes read with ``read()`` and kin (``rchar`` of
    ``/proc/PID/io``), pipes and sockets included.

    A process's counters include those of the children it has reaped, so
    the sum over the live tree counts every transfer that came and went
    under it; take it twice, while the tree lives, and subtract."""
    return _tree_field(root, "io", b"rchar:")


# -------------------------------------------------------------------- network
def lo_rx_bytes() -> int:
    """Bytes received on the loopback interface so far (machine-wide)."""
    with open("/proc/net/dev") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name.strip() == "lo":
                return int(rest.split()[0])
    return 0


# ------------------------------------------------------------ CPU per process
@dataclass
class RoleCpu:
    """One process of a tree: its label, its own CPU (nanosecond run time of
    its threads, ``schedstat``), the CPU of the children it reaped
    (``cutime + cstime``, ticks) and how many times its threads were put
    on a CPU (``schedstat``'s third field: its wake-ups, near enough)."""

    label: str
    own_s: float
    reaped_s: float
    runs: int = 0


def _label(pid: int) -> str:
    """``watcher``, ``collator``, ``syncer``... for syncsup's roles (``syncsup.ROLE``
    first in the command line), else the program's base name (``lsyncd``, ``rsync``,
    ``python3`` for syncsup's supervisor)."""
    argv = cmdline_of(pid)
    for a in argv:
        # setproctitle makes a child's command line one string,
        # ``syncsup.ROLE CONFIG``: the role is its first word
        word = a.split(b" ", 1)[0]
        if word.startswith(b"syncsup."):
            return word.split(b".", 1)[1].decode(errors="replace")
    return os.path.basename(argv[0]).decode(errors="replace") if argv else "?"


def role_cpu(root: int) -> dict[tuple[int, int], RoleCpu]:
    """Every live process of the tree of ``root``, keyed by (pid, start time)
    so that a reused pid is never taken for the process it replaced."""
    out: dict[tuple[int, int], RoleCpu] = {}
    for pid in tree_pids(root):
        f = stat_fields(pid)
        if f is None:
            continue
        ns = runs = 0
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as fh:
                    fields = fh.read().split()
                ns += int(fields[0])
                runs += int(fields[2])
            except (OSError, ValueError, IndexError):
                continue
        out[(pid, int(f[19]))] = RoleCpu(_label(pid), ns / 1e9,
                                         (int(f[13]) + int(f[14])) / CLK_TCK, runs)
    return out


def role_runs_between(a: dict[tuple[int, int], RoleCpu],
                      b: dict[tuple[int, int], RoleCpu]) -> dict[str, int]:
    """Times each label's threads were put on a CPU from sample ``a`` to
    ``b`` (live processes only): what a change to a loop's wake-ups moves
    even when the machine's load blurs its CPU time."""
    out: dict[str, int] = {}
    for k, v in b.items():
        p = a.get(k)
        out[v.label] = out.get(v.label, 0) + v.runs - (p.runs if p else 0)
    return out


def role_cpu_between(a: dict[tuple[int, int], RoleCpu],
                     b: dict[tuple[int, int], RoleCpu]) -> dict[str, float]:
    """CPU seconds per label from sample ``a`` to sample ``b``: each process's
    own time under its label, and what the processes reaped meanwhile (the
    rsyncs, with their ssh) under ``"LABEL children"``; a process born in the
    window counts whole, one gone by ``b`` counts in its reaper's children.
    Live children (an rsync running at ``b``) count under their own name."""
    out: dict[str, float] = {}
    for k, v in b.items():
        p = a.get(k)
        own = v.own_s - (p.own_s if p else 0.0)
        reaped = v.reaped_s - (p.reaped_s if p else 0.0)
        out[v.label] = out.get(v.label, 0.0) + own
        if reaped > 0:
            key = f"{v.label} children"
            out[key] = out.get(key, 0.0) + reaped
    return out
