"""Idle: a synced 100-file tree where nothing changes; the CPU the whole
process tree uses over the window, per minute, and its RSS at the end.

CPU is the nanosecond run time of every thread (``schedstat``, see
:mod:`bench.procs`): a daemon at rest uses milliseconds a minute, which
clock ticks (10 ms, per process) cannot resolve.
"""

from __future__ import annotations

import time

from bench.context import Ctx, Session, tag
from bench.converge import ready
from bench.procs import cpu_sample, cpu_seconds_between, tree_rss_kb
from bench.report import Figure, Goal
from bench.scenarios.base import Scenario
from bench.trees import make_tree


def run(ctx: Ctx, tool: str, run: int) -> dict[str, float]:
    root = ctx.dir(f"idle-{tag(tool)}{run}")
    src, dst = root / "src", root / "dst"
    make_tree(src, 100, 5)
    secs = ctx.size["idle_s"]
    with Session(ctx, tool, root / "w", src, [dst]) as t:
        ready(t, src, [dst], ctx.timeout)
        time.sleep(ctx.size["idle_settle_s"])
        c0 = cpu_sample(t.pid)
        time.sleep(secs)
        t.check()
        c1 = cpu_sample(t.pid)
        rss = tree_rss_kb(t.pid)
    ctx.discard(root)
    cpu = cpu_seconds_between(c0, c1)
    return {"idle_cpu_s_per_min": cpu * 60.0 / secs, "idle_rss_mb": rss / 1024}


_FIGURES = {
    "idle_cpu_s_per_min": Figure("idle", "CPU s per minute idle", "s", Goal("ratio", 1.0)),
    "idle_rss_mb": Figure("idle", "total RSS idle", "MB"),
}

SCENARIO = Scenario("idle", run, _FIGURES.__getitem__)
