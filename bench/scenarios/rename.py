"""Rename over ssh: a directory of 1 MB random files is renamed in the
source; the time until the target matches, the share of the target's inodes
kept (renamed on the target rather than sent again) and the loopback
traffic meanwhile (``/proc/net/dev``, machine-wide, so other loopback users
add noise)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from bench.context import Ctx, Session, tag
from bench.converge import ready, wait_converged
from bench.procs import lo_rx_bytes
from bench.report import Figure
from bench.scenarios.base import Scenario
from bench.tools import Remote
from bench.trees import count_entries


def shared_tree(ctx: Ctx) -> Path:
    if "rename" not in ctx.shared:
        src = ctx.dir("rename-src")
        big = src / "big"
        for j in range(4):
            (big / f"s{j}").mkdir(parents=True)
        for i in range(ctx.size["rename_mb"]):
            with open(big / f"s{i % 4}" / f"blob{i:04d}", "wb") as f:
                f.write(os.urandom(1 << 20))
        (src / "other.txt").write_text("unrelated\n")
        ctx.shared["rename"] = src
    return ctx.shared["rename"]


def _inodes(root: Path) -> dict[str, int]:
    return {
        os.path.relpath(os.path.join(dp, f), root): os.lstat(os.path.join(dp, f)).st_ino
        for dp, _, fs in os.walk(root)
        for f in fs
    }


def run(ctx: Ctx, tool: str, run: int) -> dict[str, float]:
    src = shared_tree(ctx)
    if (src / "big2").exists():
        os.rename(src / "big2", src / "big")
    root = ctx.dir(f"ren-{tag(tool)}{run}")
    dst = root / "dst"
    try:
        with Session(ctx, tool, root / "w", src, [Remote(ctx.sshd(), dst)]) as t:
            ready(t, src, [dst], ctx.timeout)
            inodes = _inodes(dst / "big")
            time.sleep(0.3)
            lo0 = lo_rx_bytes()
            t0 = time.monotonic()
            os.rename(src / "big", src / "big2")
            n = count_entries(src)

            def quick() -> bool:
                return (
                    not os.path.lexists(dst / "big")
                    and os.path.isdir(dst / "big2")
                    and count_entries(dst) == n
                )

            t_conv = wait_converged(t, src, [dst], ctx.timeout, quick=quick, poll=0.002)
            time.sleep(0.3)  # let the transfers that follow the rename finish
            lo1 = lo_rx_bytes()
            kept = sum(
                1
                for rel, ino in inodes.items()
                if os.path.exists(dst / "big2" / rel) and os.lstat(dst / "big2" / rel).st_ino == ino
            )
    finally:
        if (src / "big2").exists():
            os.rename(src / "big2", src / "big")
    ctx.discard(root)
    return {
        "rename_s": t_conv - t0,
        "rename_lo_mb": (lo1 - lo0) / 1e6,
        "rename_inodes_kept_pct": 100.0 * kept / max(1, len(inodes)),
    }


_FIGURES = {
    "rename_s": Figure("rename (ssh)", "rename → target identical", "s"),
    "rename_lo_mb": Figure("rename (ssh)", "loopback traffic (resent)", "MB"),
    "rename_inodes_kept_pct": Figure("rename (ssh)", "target inodes kept", "%"),
}

SCENARIO = Scenario("rename", run, _FIGURES.__getitem__)
