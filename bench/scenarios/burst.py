"""Burst: N new small files written as fast as Python can into 100 existing
directories; the time from the last write until the target is identical, how
long the writing took (the same workload for both; a slower figure means the
tool's own work competed with the writer) and CPU seconds per 1 000 changes
over the whole burst (writing + syncing, clock ticks: thousands of rsyncs
come and go, which only the reaped children's cutime/cstime can count)."""

from __future__ import annotations

import os
import time

from bench.context import Ctx, Session, tag
from bench.converge import ready, wait_converged
from bench.procs import tree_cpu
from bench.report import Figure, Goal
from bench.scenarios.base import BOTH_TRANSPORTS, Scenario
from bench.trees import make_tree, write_file


def run(ctx: Ctx, tool: str, run: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for n in ctx.size["bursts"]:
        root = ctx.dir(f"burst-{tag(tool)}{run}")
        src, dst = root / "src", root / "dst"
        make_tree(src / "b", 100, 100, prefix="seed")
        with Session(ctx, tool, root / "w", src, [dst]) as t:
            ready(t, src, [dst], ctx.timeout)
            t.expect_transport()
            cpu0 = tree_cpu(t.pid)
            t_first = time.monotonic()
            dirs = [os.fspath(src / "b" / f"d{j:04d}") for j in range(100)]
            for i in range(n):
                write_file(f"{dirs[i % 100]}/n{i:06d}", i)
            t_last = time.monotonic()
            t_conv = wait_converged(t, src, [dst], ctx.timeout, poll=0.02)
            cpu1 = tree_cpu(t.pid)
        out[f"burst_{n}_s"] = t_conv - t_last
        out[f"burst_{n}_write_s"] = t_last - t_first
        out[f"cpu_per_1k_{n}_s"] = (cpu1 - cpu0) / (n / 1000)
        ctx.discard(root)
    return out


def _n(n: int) -> str:
    return f"{n:,}".replace(",", " ")


def describe(key: str) -> Figure:
    k = key.split("_")
    if key.startswith("cpu_per_1k_"):
        return Figure("CPU", f"CPU s per 1 000 changes (burst {_n(int(k[3]))})", "s")
    n = int(k[1])
    if key.endswith("_write_s"):
        return Figure(f"burst {_n(n)}", "writing the files (same for all)", "s")
    goal = 0.5 if n >= 100000 else 0.7
    return Figure(f"burst {_n(n)}", "last write → identical", "s", Goal("ratio", goal))


def order(key: str) -> str:
    if key.startswith("cpu_per_1k_"):
        return f"1{int(key.split('_')[3]):09d}"
    return f"0{int(key.split('_')[1]):09d}{key}"


SCENARIO = Scenario("burst", run, describe, order, tools=BOTH_TRANSPORTS)
