"""First start on a populated target: how much of the trees a tool reads
when it starts, with no state of its own, on a target that already holds a
copy (a user moving from Lsyncd, or whose state was lost).

A tree of ``firststart_files`` files of 1 MB (full: 300, 300 MB; smoke: 20)
plus a small file of 64 KiB is made before the bench's first scenario
(:func:`prepare`), copied to a local target with ``rsync -a`` at least 3 s
later, and then the small file is rewritten on the source keeping its size,
with its old modification time put back (rsync's quick check cannot see it;
only the ctime moved). The tool then starts, with no state, under strace.

Figures: the bytes that every process of the tool's tree read from files
below the source and the target (:mod:`bench.iotrace`), in % of the tree,
until the target is identical again and the tool idle; and whether it
converged, the rewritten file included (1 = yes). Lsyncd's startup sync is
``rsync -a`` with the quick check, so it does not repair the rewritten file:
that is recorded as 0, not as a failure. syncsup proves the copies current
from both sides' ctimes and compares the content of the rest only
(docs/operations.md, "First start on a populated target").
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from bench import iotrace
from bench.context import Ctx, Session, tag
from bench.converge import identical_but_for, tool_idle
from bench.report import Figure, Goal
from bench.scenarios.base import Scenario
from bench.tools import NotConverged, Tool

SIZE = 1_000_000
SMALL = 65536
_made: dict[tuple[int, str], float] = {}
"""(run, tool) -> wall time at which its source tree was complete."""


def _root(ctx: Ctx, run: int, tool: str) -> Path:
    return ctx.base / f"first-{tag(tool)}{run}"


def prepare(ctx: Ctx, runs: int) -> None:
    for run in range(runs):
        for tool in ("syncsup", "lsyncd"):
            _prepare(ctx, run, tool)


def _prepare(ctx: Ctx, run: int, tool: str) -> None:
    if (run, tool) in _made:
        return
    src = ctx.dir(_root(ctx, run, tool).name, "src")
    for i in range(ctx.size["firststart_files"]):
        d = src / f"d{i // 50:02d}"
        d.mkdir(exist_ok=True)
        (d / f"big{i:03d}").write_bytes(os.urandom(SIZE))
    (src / "small").write_bytes(os.urandom(SMALL))
    _made[(run, tool)] = time.time()


def _rewrite(path: Path) -> None:
    st = path.stat()
    with open(path, "r+b") as fh:
        fh.seek(SMALL // 2)
        fh.write(os.urandom(4096))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _settle(t: Tool, src: Path, dst: Path, timeout: float) -> bool:
    """Wait for an idle tool; True if the target is identical, False if only
    the rewritten file differs (after 2 s more); anything else fails."""
    deadline = time.monotonic() + timeout
    while not tool_idle(t):
        t.check()
        if time.monotonic() > deadline:
            raise NotConverged(f"{t.name}: its startup sync never ended\n{t.log_tail()}")
        time.sleep(0.1)
    return identical_but_for(t, src, dst, "small")


def run(ctx: Ctx, tool: str, run: int) -> dict[str, float]:
    _prepare(ctx, run, tool)
    root = _root(ctx, run, tool)
    src, dst = root / "src", root / "dst"
    time.sleep(max(0.0, _made[(run, tool)] + 3.0 - time.time()))
    subprocess.run(["rsync", "-a", "--delete", f"{src}/", f"{dst}/"], check=True)
    _rewrite(src / "small")
    logs = root / "io"
    sess = Session(ctx, tool, root / "w", src, [dst])
    sess.tool.wrap = iotrace.wrap_argv(logs)
    with sess as t:
        converged = _settle(t, src, dst, ctx.timeout)
        t.stop()  # strace has written its logs once the tool is gone
    by = iotrace.bytes_read_by(logs, [src, dst])
    print(f"    {t.name} first start: read {iotrace.describe(by)}")
    tree = ctx.size["firststart_files"] * SIZE + SMALL
    ctx.discard(root)
    return {"firststart_read_pct": 100.0 * sum(by.values()) / tree,
            "firststart_converged": 1.0 if converged else 0.0}


def describe(key: str) -> Figure:
    if key == "firststart_read_pct":
        return Figure("first start on a copied target",
                      "bytes read from source + target, % of the tree", "%", Goal("max", 5.0))
    return Figure("first start on a copied target",
                  "converged, rewritten file included (1 = yes)", "")


SCENARIO = Scenario("firststart", run, describe, default_runs=1, prepare=prepare)
