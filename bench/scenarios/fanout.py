"""Fan-out: one source, 8 and 32 local targets (one syncsup sync with K
targets; K Lsyncd ``sync {}`` blocks, as Lsyncd has one target per sync); a
burst of small files; the time from the last write until every target is
identical, the tree's RSS before the burst and its peak during it (sampled
every ~100 files written and at every poll)."""

from __future__ import annotations

import os
import time

from bench.context import Ctx, Session, tag
from bench.converge import ready, wait_converged
from bench.procs import tree_rss_kb
from bench.report import Figure, Goal
from bench.scenarios.base import BOTH_TRANSPORTS, Scenario
from bench.tools import Target
from bench.trees import make_tree, write_file


def run(ctx: Ctx, tool: str, run: int) -> dict[str, float]:
    out: dict[str, float] = {}
    m = ctx.size["fanout_files"]
    for k in ctx.size["fanout"]:
        root = ctx.dir(f"fan{k}-{tag(tool)}{run}")
        src = root / "src"
        make_tree(src / "f", 100, 10, prefix="seed")
        dsts = [root / f"t{j:02d}" for j in range(k)]
        targets: list[Target] = list(dsts)
        with Session(ctx, tool, root / "w", src, targets) as t:
            ready(t, src, dsts, ctx.timeout)
            t.expect_transport()
            time.sleep(0.5)
            steady = tree_rss_kb(t.pid)
            peak = [steady]

            def sample(peak: list[int] = peak, pid: int = t.pid) -> None:
                peak[0] = max(peak[0], tree_rss_kb(pid))

            dirs = [os.fspath(src / "f" / f"d{j:04d}") for j in range(10)]
            for i in range(m):
                write_file(f"{dirs[i % 10]}/n{i:06d}", i)
                if i % 100 == 0:
                    sample()
            t_last = time.monotonic()
            t_conv = wait_converged(t, src, dsts, ctx.timeout, on_poll=sample, poll=0.02)
        out[f"fanout_{k}_s"] = t_conv - t_last
        out[f"fanout_{k}_rss_mb"] = peak[0] / 1024
        out[f"fanout_{k}_steady_rss_mb"] = steady / 1024
        ctx.discard(root)
    return out


def describe(key: str) -> Figure:
    n = key.split("_")[1]
    if key.endswith("steady_rss_mb"):
        return Figure(f"fan-out {n}", "total RSS before the burst", "MB")
    if key.endswith("rss_mb"):
        return Figure(f"fan-out {n}", "peak total RSS during the burst", "MB", Goal("ratio", 2.0))
    return Figure(f"fan-out {n}", "last write → all targets identical", "s", Goal("ratio", 1.0))


def order(key: str) -> str:
    """8 targets before 32 (the original table's order), then by name."""
    return f"{int(key.split('_')[1]):04d}{key}"


SCENARIO = Scenario("fanout", run, describe, order, tools=BOTH_TRANSPORTS)
