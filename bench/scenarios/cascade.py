"""Cascade: 32 ssh targets fed directly by one source, against the same 32
targets fed through 4 relays (docs/operations.md, "Cascades").

All on this machine, over the throw-away sshd on 127.0.0.1: **direct** is
one syncsup with 32 ssh targets; **relays** is one syncsup with 4 ssh
targets marked ``relay = true``, each of which runs its own syncsup (its
own config, state dir and process tree) with the received tree as its
source and 8 local targets. After the startup sync, a burst of
``cascade_files`` small files is written into the source.

Figures: the bytes the source's syncsup sent during the burst (what leaves
the source host: the sum of ``bytes_sent`` over its targets in status;
content for the agent, rsync's "Total bytes sent" otherwise), and the time
from the last write until all 32 leaf targets are identical to the source.
syncsup only: Lsyncd's cascade is the same topology built by hand.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from bench.context import Ctx, Session, tag
from bench.converge import wait_converged
from bench.report import Figure, Goal
from bench.scenarios.base import Scenario
from bench.tools import Remote, Syncsup, Target
from bench.trees import make_tree, write_file

LEAVES, RELAYS = 32, 4


def _sent(t: Syncsup) -> int:
    return sum(int(x.get("bytes_sent") or 0) for s in t.status().get("syncs", [])
               for x in s.get("targets", []))


def _burst(ctx: Ctx, t: Syncsup, src: Path, leaves: list[Path]) -> tuple[float, int]:
    """(last write → every leaf identical, bytes the source sent meanwhile)."""
    before = _sent(t)
    dirs = [os.fspath(src / "f" / f"d{j:04d}") for j in range(10)]
    for i in range(ctx.size["cascade_files"]):
        write_file(f"{dirs[i % 10]}/n{i:06d}", i)
    t_last = time.monotonic()
    t_conv = wait_converged(t, src, leaves, ctx.timeout, poll=0.05)
    time.sleep(1.0)  # the last DONEs reach status
    return t_conv - t_last, _sent(t) - before


def direct(ctx: Ctx, run: int) -> tuple[float, int]:
    root = ctx.dir(f"casc-direct-{run}")
    src = root / "src"
    make_tree(src / "f", 100, 10, prefix="seed")
    leaves = [root / f"t{j:02d}" for j in range(LEAVES)]
    targets: list[Target] = [Remote(ctx.sshd(), p) for p in leaves]
    with Session(ctx, "syncsup", root / "w", src, targets) as t:
        assert isinstance(t, Syncsup)
        wait_converged(t, src, leaves, ctx.timeout, poll=0.05)
        out = _burst(ctx, t, src, leaves)
    ctx.discard(root)
    return out


def relayed(ctx: Ctx, run: int) -> tuple[float, int]:
    root = ctx.dir(f"casc-relay-{run}")
    src = root / "src"
    make_tree(src / "f", 100, 10, prefix="seed")
    per = LEAVES // RELAYS
    relays = [root / f"r{i}" for i in range(RELAYS)]
    leaves = [root / f"r{i}t{j}" for i in range(RELAYS) for j in range(per)]
    for p in [*relays, *leaves]:
        p.mkdir(parents=True, exist_ok=True)
    onward: list[Syncsup] = []
    try:
        for i, r in enumerate(relays):
            tool = Syncsup(root / f"w-relay{i}")
            tool.start([(r, list(leaves[i * per:(i + 1) * per]))])
            onward.append(tool)
        targets: list[Target] = [Remote(ctx.sshd(), p) for p in relays]
        with Session(ctx, "syncsup", root / "w", src, targets) as t:
            assert isinstance(t, Syncsup)
            wait_converged(t, src, leaves, ctx.timeout, poll=0.05)
            out = _burst(ctx, t, src, leaves)
    finally:
        for tool in onward:
            ctx.stop_later(tool)
    ctx.discard(root)
    return out


def run(ctx: Ctx, tool: str, run: int) -> dict[str, float]:
    d_s, d_b = direct(ctx, run)
    r_s, r_b = relayed(ctx, run)
    print(f"    cascade {tag(tool)}{run}: direct {d_s:.2f}s {d_b / 1e6:.2f} MB sent; "
          f"4 relays {r_s:.2f}s {r_b / 1e6:.2f} MB sent")
    return {"cascade_direct_s": d_s, "cascade_relay_s": r_s,
            "cascade_direct_mb": d_b / 1e6, "cascade_relay_mb": r_b / 1e6,
            "cascade_mb_ratio": r_b / d_b if d_b else 0.0}


_FIG = {
    "cascade_direct_s": ("32 ssh targets, direct", "last write → all 32 identical", "s", None),
    "cascade_relay_s": ("32 targets through 4 relays", "last write → all 32 identical", "s",
                        None),
    "cascade_direct_mb": ("32 ssh targets, direct", "bytes the source sent in the burst", "MB",
                          None),
    "cascade_relay_mb": ("32 targets through 4 relays", "bytes the source sent in the burst",
                         "MB", None),
    "cascade_mb_ratio": ("cascade", "source's bytes sent, relays / direct", "x",
                         Goal("max", 0.25)),
}


def describe(key: str) -> Figure:
    scenario, figure, unit, goal = _FIG[key]
    return Figure(scenario, figure, unit, goal)


SCENARIO = Scenario("cascade", run, describe, default_runs=1, tools=("syncsup",))
