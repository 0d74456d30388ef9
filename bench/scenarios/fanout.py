"""Fan-out: one source, K local targets (8 and 32; ``--fanout 100`` adds
others) and K ssh targets on the throw-away sshd (``--fanout-ssh 32``; none
by default): one syncsup sync with K targets, K Lsyncd ``sync {}`` blocks
(Lsyncd has one target per sync). A burst of files is written; the figures:

* the time from the last write until every target is identical;
* the RSS of the tree before the burst, and its peak during it (sampled
  every ~100 files written and at every poll), and the peak PSS (sampled at
  most every 0.5 s: ``smaps_rollup`` of hundreds of processes is not free).
  Over ssh the remote side's processes (per-connection sshd, agent, rsync)
  are on this machine and count too.

  The burst is written twice, under new names the second time: the first
  is timed, with its CPU and reads, and nothing sampled; the second is
  sampled for memory, and not timed. Sampling loads what it measures:
  reading the RSS of a hundred processes every 20 ms and their PSS every
  0.5 s doubled the CPU the tree was charged for a burst and decided which
  of two configurations looked faster;
* the peak RSS at the first start, from the daemon's start until the
  startup sync is done and a first change went through (syncsup proves
  what each remote target holds then, having no seen-point);
* the PSS at rest, 2 s after convergence; over ssh also the PSS per target
  once the agent sessions are idle (:data:`IDLE_WAIT`): every process but
  the daemon's own, local and remote, divided by the number of targets;
* the CPU seconds of the tree (reaped children included) and the bytes it
  read (``rchar`` of ``/proc/PID/io``, pipes and sockets included), from
  the start of the burst to convergence; the bytes read against the bytes
  written to the source (read once per target: K times).

``--fanout-files`` sets the burst's size and ``--fanout-kb`` each file's
(default ~100 bytes)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from bench.context import Ctx, Session, tag
from bench.converge import ready, wait_converged
from bench.procs import (
    children_map,
    pss_by_name,
    tree_cpu,
    tree_memory,
    tree_memory_one,
    tree_pids,
    tree_rchar,
    tree_rss_kb,
)
from bench.report import Figure, Goal
from bench.scenarios.base import BOTH_TRANSPORTS, Scenario
from bench.tools import Remote, Target
from bench.trees import make_tree, write_file


def _writer(kb: int) -> Callable[[str, int], int]:
    """Write file ``i`` (~100 bytes, or ``kb`` KiB); returns bytes written."""
    def write(path: str, i: int) -> int:
        if not kb:
            write_file(path, i)
            return os.stat(path).st_size
        data = (b"%d\n" % i) * (kb * 1024 // len(b"%d\n" % i) + 1)
        with open(path, "wb") as f:
            f.write(data[: kb * 1024])
        return kb * 1024
    return write


def _case(ctx: Ctx, tool: str, run: int, k: int, ssh: bool) -> dict[str, float]:
    m = ctx.size["fanout_files"]
    write = _writer(int(ctx.size.get("fanout_kb", 0)))
    name = f"fanoutssh_{k}" if ssh else f"fanout_{k}"
    root = ctx.dir(f"fan{'s' if ssh else ''}{k}-{tag(tool)}{run}")
    src = root / "src"
    make_tree(src / "f", 100, 10, prefix="seed")
    dsts = [root / f"t{j:03d}" for j in range(k)]
    targets: list[Target] = [Remote(ctx.sshd(), d) if ssh else d for d in dsts]
    remote: Callable[[], list[int]] = ctx.sshd().session_pids if ssh else list

    def logins() -> list[int]:
        """The target side's per-connection sshd processes: each the root of
        one login's tree, so a sum of trees over them counts every remote
        process once (a sum over all of ``remote()`` would count an agent
        once for itself and once more for each of its ancestors)."""
        listener = ctx.sshd().proc if ssh else None
        return children_map().get(listener.pid, []) if listener is not None else []

    def rss() -> int:
        return tree_rss_kb(t.pid) + sum(tree_rss_kb(p) for p in logins())

    def pss() -> int:
        return tree_memory(t.pid).pss_kb + sum(tree_memory(p).pss_kb for p in logins())

    # Differences over the burst: the listener's tree, whose reaped
    # sessions' CPU and reads stay in its counters after they end.
    def rchar() -> int:
        listener = ctx.sshd().proc if ssh else None
        return tree_rchar(t.pid) + (tree_rchar(listener.pid) if listener is not None else 0)

    def cpu() -> float:
        listener = ctx.sshd().proc if ssh else None
        return tree_cpu(t.pid) + (tree_cpu(listener.pid) if listener is not None else 0.0)

    session = Session(ctx, tool, root / "w", src, targets)
    session.tool.delay = float(ctx.size.get("fanout_delay") or 0.0)
    with session as t:
        # the first start: its startup sync (and syncsup's proofs, every
        # remote target having no seen-point) into empty targets
        start_peak = [0, 0.0]  # rss, time of the last sample

        def start_sample() -> None:
            # every 20 ms, as during the burst: not at every 5 ms poll,
            # a walk of /proc for each that would load what it measures
            now = time.monotonic()
            if now - start_peak[1] >= 0.02:
                start_peak[0], start_peak[1] = max(start_peak[0], rss()), now

        ready(t, src, dsts, ctx.timeout, on_poll=start_sample)
        t.expect_transport(dsts if ssh else None)
        time.sleep(0.5)
        steady = rss()
        dirs = [os.fspath(src / "f" / f"d{j:04d}") for j in range(10)]

        def burst(first: int, sample: Callable[[], None] | None) -> tuple[int, float]:
            """Files ``first`` to ``first + m``: bytes written, time of the last."""
            written = 0
            for i in range(first, first + m):
                written += write(f"{dirs[i % 10]}/n{i:06d}", i)
                if sample is not None and i % 100 == 0:
                    sample()
            return written, time.monotonic()

        # timed, nothing sampled
        read0, cpu0 = rchar(), cpu()
        written, t_last = burst(0, None)
        t_conv = wait_converged(t, src, dsts, ctx.timeout, poll=0.02)
        read, cpu_s = rchar() - read0, cpu() - cpu0
        time.sleep(2.0)
        # sampled, not timed: the same burst under new names
        peak: list[float] = [steady, pss(), 0.0]  # rss, pss, time of the last pss sample

        def sample() -> None:
            peak[0] = max(peak[0], rss())
            now = time.monotonic()
            if now - peak[2] >= 0.5:
                peak[1], peak[2] = max(peak[1], pss()), now

        burst(m, sample)
        wait_converged(t, src, dsts, ctx.timeout, on_poll=sample, poll=0.02)
        time.sleep(2.0)
        rest = pss()
        idle = rested = None
        if ssh and tool != "lsyncd":
            idle = _per_target_at_rest(t.pid, remote, k, IDLE_WAIT)
            later = int(ctx.size.get("fanout_rest") or 0)
            if later > IDLE_WAIT:
                rested = _per_target_at_rest(t.pid, remote, k, later - IDLE_WAIT)
    ctx.discard(root)
    out = {} if idle is None else {f"{name}_idle_pss_mb": idle / 1024}
    if rested is not None:
        out[f"{name}_rested_pss_mb"] = rested / 1024
    return out | {
        f"{name}_s": t_conv - t_last,
        f"{name}_rss_mb": peak[0] / 1024,
        f"{name}_start_rss_mb": start_peak[0] / 1024,
        f"{name}_pss_mb": peak[1] / 1024,
        f"{name}_steady_rss_mb": steady / 1024,
        f"{name}_rest_pss_mb": rest / 1024,
        f"{name}_read_x": read / max(1, written),
        f"{name}_cpu_s": cpu_s,
    }


IDLE_WAIT = 75.0
"""Seconds after convergence until syncsup is at rest over ssh: its agent
sessions close after ``[sync.ssh] agent_idle`` (60 s), checked at least once
a heartbeat (10 s)."""


def _per_target_at_rest(root: int, remote: Callable[[], list[int]], k: int,
                        wait: float) -> float:
    """PSS in kB per ssh target after ``wait`` seconds more: every process of
    the tree and of the sshd's sessions but the daemon's own (the supervisor
    and its children), divided by ``k``; the sums by program are printed."""
    time.sleep(wait)
    own = {root, *children_map().get(root, [])}
    pids = [p for p in tree_pids(root) if p not in own] + remote()
    by_name = pss_by_name(pids)
    print("    at rest, PSS by program: " + ", ".join(
        f"{n} {v / 1024:.1f} MB" for n, v in sorted(by_name.items(), key=lambda x: -x[1])))
    print(f"    the daemon's own processes: {sum(map(tree_memory_one, own)) / 1024:.1f} MB PSS")
    return sum(by_name.values()) / k


def run(ctx: Ctx, tool: str, run: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for k in (k for k in ctx.size["fanout"] if k > 0):  # --fanout 0: none
        out.update(_case(ctx, tool, run, k, ssh=False))
    for k in ctx.size.get("fanout_ssh", []):
        out.update(_case(ctx, tool, run, k, ssh=True))
    return out


def describe(key: str) -> Figure:
    where, n, *_ = key.split("_")
    group = f"fan-out {n}" + (" ssh" if where == "fanoutssh" else "")
    if key.endswith("steady_rss_mb"):
        return Figure(group, "total RSS before the burst", "MB")
    if key.endswith("idle_pss_mb"):
        return Figure(group, "PSS per target at rest (agents idle), daemon excluded", "MB",
                      Goal("max", 3.0))
    if key.endswith("rested_pss_mb"):
        return Figure(group, "PSS per target at rest (masters closed too), daemon excluded",
                      "MB", Goal("max", 3.0))
    if key.endswith("rest_pss_mb"):
        return Figure(group, "total PSS at rest after the burst", "MB")
    if key.endswith("start_rss_mb"):
        big = where == "fanoutssh" or int(n) >= 100
        return Figure(group, "peak total RSS at the first start (startup sync, proofs)", "MB",
                      Goal("max", 300.0) if big else Goal("ratio", 2.0))
    if key.endswith("rss_mb"):
        # the memory goals: 100 local or 32 ssh targets within 300 MB; fewer
        # local ones at most twice Lsyncd's
        big = where == "fanoutssh" or int(n) >= 100
        return Figure(group, "peak total RSS during the burst", "MB",
                      Goal("max", 300.0) if big else Goal("ratio", 2.0))
    if key.endswith("pss_mb"):
        return Figure(group, "peak total PSS during the burst", "MB")
    if key.endswith("cpu_s"):
        return Figure(group, "CPU seconds of the tree, burst to identical", "s")
    if key.endswith("read_x"):
        return Figure(group, "bytes read by the tree / bytes written", "x")
    return Figure(group, "last write → all targets identical", "s", Goal("ratio", 1.0))


def order(key: str) -> str:
    """Local before ssh, fewer targets first (8 before 32), then by name."""
    where, n, *_ = key.split("_")
    return f"{where == 'fanoutssh':d}{int(n):04d}{key}"


SCENARIO = Scenario("fanout", run, describe, order, tools=BOTH_TRANSPORTS)
