"""Syncs: 1, 20 and 100 syncs in one daemon, side by side with Lsyncd.

syncsup runs a fixed set of processes (the supervisor and one watcher,
collator and syncer) whatever the number of ``[[sync]]`` blocks, so its
footprint should barely grow with the number of syncs; Lsyncd is one
process with one inotify descriptor for all its ``sync {}`` blocks.  For
each N (full: 1, 20, 100; smoke: 1, 20), N sources of a few files each and N
local targets, one config (syncsup: N ``[[sync]]`` blocks; Lsyncd: N
``sync { default.rsync }`` blocks; delay 0 for both):

1. **start → all mirrored**: from just before the daemon is started until
   every target is identical to its source (the initial sync of all N);
2. **one change per sync**: a new file written in each of the N sources at
   once; from the last write until every target has its file (confirmed
   byte for byte).  A warm-up round first makes sure events flow;
3. **at rest**: after ``syncs_settle_s`` (15 s full, 1 s smoke) with
   nothing happening, the number of processes in the tree and the sums of
   RSS and PSS over it (``smaps_rollup``).  The wait matters: syncsup's
   children give freed heap back at their first heartbeat after a busy
   stretch (every 10 s), and the figure wanted is the resting one (the
   smoke's 1 s is too short for that: its memory figures are a check only);
4. **idle CPU** over ``syncs_idle_s`` (60 s full, 2 s smoke) right after,
   in CPU seconds per minute, from every thread's nanosecond run time
   (``/proc/PID/task/TID/schedstat``), not clock ticks.

Goals (syncsup only; Lsyncd's figures are printed beside for comparison):
1 sync PSS ≤ 40 MB; 20 syncs PSS ≤ 60 MB and RSS ≤ 160 MB; 100 syncs PSS ≤
1.3 x the 20-sync PSS; idle CPU ≤ 0.03 CPU s/min with 1 and 100 syncs;
start → all mirrored with 20 syncs ≤ the 1-sync time + 2 s (the difference
is its own row: the extra work of 20 syncs should be only their transfers).

Each N takes ~settle + idle + a few seconds per tool (~80 s full), so the
scenario runs once unless ``--runs`` says otherwise.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from bench.context import Ctx, Session, tag
from bench.converge import wait_pairs
from bench.procs import cpu_sample, cpu_seconds_between, tree_memory
from bench.report import Figure, Goal
from bench.scenarios.base import Scenario
from bench.tools import Target, Tool
from bench.trees import make_tree

Pairs = list[tuple[Path, Path]]


def _change_round(t: Tool, pairs: Pairs, tag: str, timeout: float) -> float:
    """Write ``tag`` in every source at once; seconds from the last write until
    every target has it with its content (then confirmed for whole trees)."""
    data = f"{tag}\n".encode() * 8
    for src, _ in pairs:
        with open(src / tag, "wb") as f:
            f.write(data)
    t_last = time.monotonic()
    paths = [os.fspath(dst / tag) for _, dst in pairs]
    waiting = list(paths)

    def arrived() -> bool:
        while waiting:
            try:
                with open(waiting[-1], "rb") as f:
                    if f.read() != data:
                        return False
            except FileNotFoundError:
                return False
            waiting.pop()
        return True

    t_conv = wait_pairs(t, pairs, timeout, quick=arrived, poll=0.002)
    return t_conv - t_last


def measure(ctx: Ctx, tool: str, run: int, n: int) -> dict[str, float]:
    """All figures for ``n`` syncs and one tool."""
    root = ctx.dir(f"syncs{n}-{tag(tool)}{run}")
    pairs: Pairs = [(root / "src" / f"s{i:03d}", root / "dst" / f"s{i:03d}") for i in range(n)]
    for i, (src, _) in enumerate(pairs):
        make_tree(src, ctx.size["syncs_files"], 1, prefix=f"s{i:03d}-")
    syncs: list[tuple[Path, list[Target]]] = [(s, [d]) for s, d in pairs]
    with Session(ctx, tool, root / "w", syncs=syncs) as t:
        t_mirrored = wait_pairs(t, pairs, ctx.timeout, poll=0.01)
        start_s = t_mirrored - t.started_at
        _change_round(t, pairs, ".warm-up", ctx.timeout)
        time.sleep(0.2)
        change_s = _change_round(t, pairs, ".change", ctx.timeout)
        time.sleep(ctx.size["syncs_settle_s"])
        t.check()
        mem = tree_memory(t.pid)
        secs = ctx.size["syncs_idle_s"]
        c0 = cpu_sample(t.pid)
        time.sleep(secs)
        t.check()
        cpu = cpu_seconds_between(c0, cpu_sample(t.pid))
    ctx.discard(root)
    return {
        "processes": float(mem.processes),
        "rss_mb": mem.rss_kb / 1024,
        "pss_mb": mem.pss_kb / 1024,
        "idle_cpu_s_per_min": cpu * 60.0 / secs,
        "start_s": start_s,
        "change_s": change_s,
    }


def run(ctx: Ctx, tool: str, run: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for n in ctx.size["syncs"]:
        for k, v in measure(ctx, tool, run, n).items():
            out[f"syncs_{n}_{k}"] = v
    if "syncs_1_start_s" in out and "syncs_20_start_s" in out:
        out["syncs_start_20_minus_1_s"] = out["syncs_20_start_s"] - out["syncs_1_start_s"]
    if "syncs_20_pss_mb" in out and "syncs_100_pss_mb" in out:
        out["syncs_pss_100_per_20"] = out["syncs_100_pss_mb"] / out["syncs_20_pss_mb"]
    return out


_ROWS = ("processes", "rss_mb", "pss_mb", "idle_cpu_s_per_min", "start_s", "change_s")
_GOALS: dict[tuple[int, str], Goal] = {
    (1, "pss_mb"): Goal("max", 40),
    (20, "pss_mb"): Goal("max", 60),
    (20, "rss_mb"): Goal("max", 160),
    (1, "idle_cpu_s_per_min"): Goal("max", 0.03),
    (100, "idle_cpu_s_per_min"): Goal("max", 0.03),
}


def _split(key: str) -> tuple[int, str]:
    """``syncs_20_pss_mb`` -> (20, "pss_mb")."""
    _, n, rest = key.split("_", 2)
    return int(n), rest


def describe(key: str) -> Figure:
    if key == "syncs_start_20_minus_1_s":
        return Figure(
            "20 syncs vs 1", "start → all mirrored, 20 syncs minus 1 sync", "s", Goal("max", 2)
        )
    if key == "syncs_pss_100_per_20":
        return Figure("100 syncs vs 20", "PSS sum at rest, 100 syncs / 20 syncs", "x",
                      Goal("max", 1.3))
    n, what = _split(key)
    scenario = f"{n} sync" + ("" if n == 1 else "s")
    label, unit = {
        "processes": ("processes at rest", ""),
        "rss_mb": ("RSS sum at rest", "MB"),
        "pss_mb": ("PSS sum at rest", "MB"),
        "idle_cpu_s_per_min": ("idle CPU s per minute (schedstat)", "s"),
        "start_s": ("start → all targets mirrored", "s"),
        "change_s": ("a new file in every source → all arrived", "s"),
    }[what]
    return Figure(scenario, label, unit, _GOALS.get((n, what)))


def order(key: str) -> str:
    """By number of syncs, the figures in :data:`_ROWS` order; comparisons last."""
    if not key[len("syncs_")].isdigit():
        return "9" + key
    n, what = _split(key)
    return f"0{n:04d}{_ROWS.index(what)}"


SCENARIO = Scenario("syncs", run, describe, order, default_runs=1)
