"""Latency: one small file written and closed, then polled on the target
every ~1 ms until it is there with its full content; the next file 20 ms
after the previous one arrived.  Local target and ssh target (the throw-away
sshd), p50 and p95.  What a user editing files feels.

syncsup runs twice, with its agent (the default) and with rsync for
everything (``agent_max_size = 0``); before measuring, the bench checks in
``syncsup status --json`` that every target uses the transport meant
(``agent`` / ``rsync``) and, over ssh, that the remote agent process runs:
otherwise the scenario fails.  Goals (the agent): p50 ≤ 0.3 x Lsyncd
locally, ≤ 0.05 x Lsyncd over ssh."""

from __future__ import annotations

import math
import os
import statistics
import time
from pathlib import Path

from bench.context import Ctx, Session, tag
from bench.converge import ready, wait_converged
from bench.report import Figure, Goal
from bench.scenarios.base import BOTH_TRANSPORTS, Scenario
from bench.tools import NotConverged, Remote, Target, Tool


def pctl(xs: list[float], q: float) -> float:
    """The ``q`` quantile by the nearest-rank method."""
    s = sorted(xs)
    return s[max(0, math.ceil(q * len(s)) - 1)]


def run(ctx: Ctx, tool: str, run: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for where in ("local", "ssh"):
        root = ctx.dir(f"lat-{where}-{tag(tool)}{run}")
        src, dst = root / "src", root / "dst"
        (src / "lat").mkdir(parents=True)
        target: Target = Remote(ctx.sshd(), dst) if where == "ssh" else dst
        n = ctx.size[f"latency_{where}"]
        with Session(ctx, tool, root / "w", src, [target]) as t:
            ready(t, src, [dst], ctx.timeout)
            t.expect_transport([dst] if where == "ssh" else None)
            lat = []
            for i in range(n):
                data = b"%d " % i + os.urandom(48).hex().encode() + b"\n"
                rel = f"lat/f{i:05d}"
                with open(src / rel, "wb") as f:
                    f.write(data)
                t0 = time.perf_counter()
                _await_content(t, dst, rel, data, t0, ctx.timeout, where)
                lat.append(time.perf_counter() - t0)
                time.sleep(0.02)
            wait_converged(t, src, [dst], ctx.timeout)
        out[f"latency_{where}_p50_ms"] = statistics.median(lat) * 1000
        out[f"latency_{where}_p95_ms"] = pctl(lat, 0.95) * 1000
        ctx.discard(root)
    return out


def _await_content(t: Tool, dst: Path, rel: str, data: bytes, t0: float, timeout: float,
                   where: str) -> None:
    """Spin (1 ms sleeps) until ``dst/rel`` holds ``data``; crash check every 200 spins."""
    path = os.fspath(dst / rel)
    spins = 0
    while True:
        try:
            with open(path, "rb") as f:
                if f.read() == data:
                    return
        except FileNotFoundError:
            pass
        spins += 1
        if spins % 200 == 0:
            t.check()
            if time.perf_counter() - t0 > timeout:
                raise NotConverged(f"{t.name}: {rel} never arrived ({where})")
        time.sleep(0.001)


GOALS = {"local": 0.3, "ssh": 0.05}
"""p50 of the agent / p50 of Lsyncd."""


def describe(key: str) -> Figure:
    k = key.split("_")
    where, p = k[1], k[2]
    goal = Goal("ratio", GOALS[where]) if p == "p50" else None
    return Figure(f"latency ({where})", f"{p} close→arrival", "ms", goal)


def order(key: str) -> str:
    return ("0" if key.startswith("latency_local") else "1") + key


SCENARIO = Scenario("latency", run, describe, order, tools=BOTH_TRANSPORTS)
