"""Steady churn at a realistic delay: the CPU each change costs, per process.

The churn scenario runs at ``delay = 0``, where Lsyncd starts an rsync for
every change; with a delay both tools batch, and what is left is each
tool's cost per event.  This scenario measures that: the churn workload
(:class:`bench.scenarios.churn.Churner`: creates, same-size rewrites,
renames and deletes of small files, from a fixed seed so every tool gets
the same sequence) at 50 operations a second for ``steady_s`` seconds
(full: 120 s; smoke: 6 s), once at ``delay = 0.5`` and once at Lsyncd's
default ``delay = 15``, local target in rsync mode.  The ``steady-quick``
variant runs 20 s of each (for iterating on the code).

Figures, per delay: CPU per change of the whole tree (from the first
operation until the target is identical, reaped rsyncs included), and the
same split by process, in ms per operation: the watcher, the collator,
the syncer and the children it ran (rsync), the supervisor; Lsyncd and its
rsyncs.  Own CPU is each live process's nanosecond run time
(``schedstat``), children are ``cutime + cstime`` of what each reaped
(:func:`bench.procs.role_cpu`).  Goals: CPU per change ≤ 0.5 x Lsyncd's;
the watcher's and the collator's cost ≤ 0.1 ms per operation each.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from bench.context import Ctx, Session, tag
from bench.converge import ready, wait_converged
from bench.procs import role_cpu, role_cpu_between, role_runs_between
from bench.report import Figure, Goal
from bench.scenarios.base import BOTH_TRANSPORTS, Scenario
from bench.scenarios.churn import SEED, Churner

RATE = 50.0
DELAYS = (0.5, 15.0)
QUICK_S = 20.0

# What each process is called in the figures: (label from role_cpu_between, name).
PARTS = (
    ("watcher", "watcher"),
    ("collator", "collator"),
    ("syncer", "syncer"),
    ("syncer children", "syncer's rsyncs"),
    ("python3", "supervisor"),
    ("lsyncd", "Lsyncd"),
    ("lsyncd children", "Lsyncd's rsyncs"),
)


def _key(delay: float, part: str) -> str:
    return f"steady_d{delay:g}_{part}"


def _one(ctx: Ctx, tool: str, run: int, delay: float, secs: float) -> dict[str, float]:
    root = ctx.dir(f"steady-{tag(tool)}{run}-{delay:g}")
    src, dst = root / "src", root / "dst"
    churner = Churner(os.fspath(src / "c"), SEED + run)
    churner.seed()
    n = int(secs * RATE)
    s = Session(ctx, tool, root / "w", src, [dst])
    s.tool.delay = delay
    with s as t:
        ready(t, src, [dst], ctx.timeout)
        t.expect_transport()
        time.sleep(0.5)
        c0 = role_cpu(t.pid)
        t0 = time.monotonic()
        for i in range(n):
            wait = t0 + i / RATE - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            churner.step()
            if i % 200 == 0:
                t.check()
        t_last = time.monotonic()
        t_conv = wait_converged(t, src, [dst], ctx.timeout + delay, poll=0.05)
        c1 = role_cpu(t.pid)
    ctx.discard(root)
    by = role_cpu_between(c0, c1)
    shown = ", ".join(f"{k} {v * 1000 / n:.3f}" for k, v in sorted(by.items()) if v > 0)
    print(f"    {t.name} delay {delay:g}: CPU ms per operation by process: {shown}", flush=True)
    secs_run = t_conv - t0
    runs = ", ".join(f"{k} {v / secs_run:.1f}" for k, v in
                     sorted(role_runs_between(c0, c1).items()) if v > 0)
    print(f"    {t.name} delay {delay:g}: times on a CPU per second (all threads): {runs}",
          flush=True)
    out = {
        _key(delay, "cpu_ms_per_change"): sum(by.values()) * 1000 / n,
        _key(delay, "settle_s"): t_conv - t_last,
        _key(delay, "rate"): n / (t_last - t0),
    }
    for label, _ in PARTS:
        if label in by:
            out[_key(delay, label.replace(" ", "_"))] = by[label] * 1000 / n
    return out


def _runner(cap: float | None) -> Callable[[Ctx, str, int], dict[str, float]]:
    """The scenario's run: each delay in turn, ``steady_s`` seconds (at most ``cap``)."""
    def run(ctx: Ctx, tool: str, run: int) -> dict[str, float]:
        secs = float(ctx.size["steady_s"])
        if cap is not None:
            secs = min(secs, cap)
        out: dict[str, float] = {}
        for delay in DELAYS:
            out.update(_one(ctx, tool, run, delay, secs))
        return out
    return run


def _split(key: str) -> tuple[str, str]:
    delay, part = key.removeprefix("steady_d").split("_", 1)
    return delay, part


def _describer(name: str) -> Callable[[str], Figure]:
    def describe(key: str) -> Figure:
        delay, part = _split(key)
        scn = f"{name} (50/s, delay {delay})"
        if part == "cpu_ms_per_change":
            return Figure(scn, "CPU ms per change (whole tree)", "ms", Goal("ratio", 0.5))
        if part == "settle_s":
            return Figure(scn, "last change → identical", "s")
        if part == "rate":
            return Figure(scn, "changes per second achieved", "/s")
        words = dict(PARTS)[part.replace("_", " ")]
        goal = Goal("max", 0.1) if part in ("watcher", "collator") else None
        return Figure(scn, f"{words}: CPU ms per operation", "ms", goal)
    return describe


_ORDER = ["cpu_ms_per_change", *(p.replace(" ", "_") for p, _ in PARTS), "settle_s", "rate"]


def _order(key: str) -> str:
    delay, part = _split(key)
    return f"{float(delay):08.2f}{_ORDER.index(part):02d}"


SCENARIO = Scenario("steady", _runner(None), _describer("steady"), _order,
                    default_runs=1, tools=BOTH_TRANSPORTS)
QUICK = Scenario("steady-quick", _runner(QUICK_S), _describer("steady-quick"), _order,
                 default_runs=1, tools=BOTH_TRANSPORTS)
"""The same, 20 s at each delay: for measuring a change to the code quickly."""
