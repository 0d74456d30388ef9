"""Startup: a tree of N files in D directories (created once per bench run
and shared by every run of both tools), an empty target; the time from
starting the tool until the target is complete and a probe file written
0.2 s after the start has arrived (so the watches are in place too), and
the process tree's RSS at that moment."""

from __future__ import annotations

import os
import time
from pathlib import Path

from bench.context import Ctx, Session, tag
from bench.converge import wait_converged
from bench.procs import tree_rss_kb
from bench.report import Figure, Goal
from bench.scenarios.base import Scenario
from bench.trees import make_tree, write_file


def shared_tree(ctx: Ctx) -> Path:
    if "startup" not in ctx.shared:
        files, dirs = ctx.size["startup"]
        src = ctx.dir("startup-src")
        t0 = time.monotonic()
        make_tree(src, files, dirs)
        print(f"  (created {files} files in {dirs} directories in {time.monotonic() - t0:.1f}s)")
        ctx.shared["startup"] = src
    return ctx.shared["startup"]


def run(ctx: Ctx, tool: str, run: int) -> dict[str, float]:
    src = shared_tree(ctx)
    root = ctx.dir(f"start-{tag(tool)}{run}")
    dst = root / "dst"
    probe = src / f"probe-{tool}-{run}"
    try:
        sess = Session(ctx, tool, root / "w", src, [dst])
        dst.mkdir()
        ctx.reap()
        os.sync()  # what earlier runs wrote is on disk before the clock starts
        t0 = time.monotonic()
        with sess as t:
            time.sleep(0.2)
            write_file(os.fspath(probe), run)
            t_conv = wait_converged(t, src, [dst], ctx.timeout, poll=0.05)
            rss = tree_rss_kb(t.pid)
    finally:
        if probe.exists():
            probe.unlink()
    ctx.discard(root)
    return {"startup_s": t_conv - t0, "startup_rss_mb": rss / 1024}


_FIGURES = {
    "startup_s": Figure(
        "startup", "start → tree complete + probe arrived", "s", Goal("ratio", 1.0)
    ),
    "startup_rss_mb": Figure("startup", "total RSS at that point", "MB"),
}

SCENARIO = Scenario("startup", run, _FIGURES.__getitem__)
