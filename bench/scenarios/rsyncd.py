"""rsync daemon target: a module of a throw-away ``rsync --daemon`` on
127.0.0.1 (``auth users``, a password file), which both tools reach with
plain rsync over TCP: no ssh, and no agent for syncsup (its transport must
read ``rsync`` in status, or the scenario fails).

Two figures: the latency of one small file (written and closed, then
polled on the module every ~1 ms until it is there with its content; the
next one 20 ms after), p50 and p95; and a burst of small new files into
100 directories, from the last write until the module is identical."""

from __future__ import annotations

import os
import statistics
import time

from bench.context import Ctx, Session, tag
from bench.converge import ready, wait_converged
from bench.report import Figure, Goal
from bench.scenarios.base import Scenario
from bench.scenarios.latency import _await_content, pctl
from bench.tools import BenchFailure, Daemon, Syncsup, Tool
from bench.trees import make_tree, write_file


def _expect_rsync(t: Tool) -> None:
    if isinstance(t, Syncsup) and t.transports() != ["rsync"]:
        raise BenchFailure(f"{t.name}: transport {t.transports()} for an rsync daemon target, "
                           f"expected ['rsync']\n{t.log_tail()}")


def run(ctx: Ctx, tool: str, run: int) -> dict[str, float]:
    out: dict[str, float] = {}
    rsyncd = ctx.rsyncd()
    root = ctx.dir(f"rsyncd-{tag(tool)}{run}")
    src = root / "src"
    (src / "lat").mkdir(parents=True)
    target = Daemon(rsyncd, f"{tag(tool)}{run}")
    dst = target.path
    make_tree(src / "b", 100, 100, prefix="seed")
    with Session(ctx, tool, root / "w", src, [target]) as t:
        ready(t, src, [dst], ctx.timeout)
        _expect_rsync(t)
        lat = []
        for i in range(ctx.size["latency_rsyncd"]):
            data = b"%d " % i + os.urandom(48).hex().encode() + b"\n"
            rel = f"lat/f{i:05d}"
            with open(src / rel, "wb") as f:
                f.write(data)
            t0 = time.perf_counter()
            _await_content(t, dst, rel, data, t0, ctx.timeout, "rsyncd")
            lat.append(time.perf_counter() - t0)
            time.sleep(0.02)
        wait_converged(t, src, [dst], ctx.timeout)
        n = ctx.size["rsyncd_burst"]
        dirs = [os.fspath(src / "b" / f"d{j:04d}") for j in range(100)]
        for i in range(n):
            write_file(f"{dirs[i % 100]}/n{i:06d}", i)
        t_last = time.monotonic()
        t_conv = wait_converged(t, src, [dst], ctx.timeout, poll=0.02)
    out["rsyncd_latency_p50_ms"] = statistics.median(lat) * 1000
    out["rsyncd_latency_p95_ms"] = pctl(lat, 0.95) * 1000
    out[f"rsyncd_burst_{n}_s"] = t_conv - t_last
    ctx.discard(root)
    ctx.discard(dst)
    return out


def describe(key: str) -> Figure:
    if key.startswith("rsyncd_latency_"):
        p = key.split("_")[2]
        goal = Goal("ratio", 1.0) if p == "p50" else None
        return Figure("rsync daemon", f"{p} close→arrival", "ms", goal)
    n = int(key.split("_")[2])
    return Figure("rsync daemon", f"burst {n} → identical", "s", Goal("ratio", 1.0))


def order(key: str) -> str:
    return ("0" if "latency" in key else "1") + key


SCENARIO = Scenario("rsyncd", run, describe, order, tools=("syncsup", "lsyncd"))
