"""Overflow: the process that reads inotify is frozen (SIGSTOP) while files
are created until the kernel's queue (``max_queued_events``) overflows and
50 existing files are appended to, then it is thawed (SIGCONT): the time
until the target is identical again, and whether the tool noticed (logged
an overflow) and whether the frozen process was restarted.

The freeze is capped at ~4.5 s: the cap dates from when syncsup's supervisor
killed a component silent for 8 s; it is kept so that figures stay
comparable across runs, and it is far below today's heartbeat timeout.
"""

from __future__ import annotations

import os
import signal
import time

from bench.context import Ctx, Session, tag
from bench.converge import ready, wait_converged
from bench.procs import start_time
from bench.report import Figure, Goal
from bench.scenarios.base import Scenario
from bench.trees import make_tree, write_file


def run(ctx: Ctx, tool: str, run: int) -> dict[str, float]:
    n = ctx.size["overflow_files"]
    root = ctx.dir(f"ovf-{tag(tool)}{run}")
    src, dst = root / "src", root / "dst"
    make_tree(src / "o", 50, 10, prefix="seed")
    with Session(ctx, tool, root / "w", src, [dst]) as t:
        ready(t, src, [dst], ctx.timeout)
        victim = t.freeze_pid()
        vstart = start_time(victim)
        log_before = len(t.log_text())
        dirs = [os.fspath(src / "o" / f"d{j:04d}") for j in range(10)]
        os.kill(victim, signal.SIGSTOP)
        t_stop = time.monotonic()
        written = 0
        try:
            for i in range(n):
                write_file(f"{dirs[i % 10]}/v{i:06d}", i)
                written += 1
                if i % 500 == 0 and time.monotonic() - t_stop > 4.5:
                    break
            # and change the seeds (appended to: a new size, so rsync's quick check
            # sees them; a same-size rewrite in the same second would never be repaired
            # by Lsyncd's plain rescan, which is not what this scenario measures)
            for j in range(50):
                with open(f"{dirs[j % 10]}/seed{j:06d}", "ab") as f:
                    f.write(b"X")
            time.sleep(max(0.0, 0.5 - (time.monotonic() - t_stop)))
        finally:
            frozen = time.monotonic() - t_stop
            os.kill(victim, signal.SIGCONT)
        t_cont = time.monotonic()
        t_conv = wait_converged(t, src, [dst], ctx.timeout, poll=0.02)
        log = t.log_text()[log_before:]
        restarted = start_time(victim) != vstart
        overflowed = "overflow" in log.lower()
    ctx.discard(root)
    return {
        "overflow_s": t_conv - t_cont,
        "overflow_frozen_s": frozen,
        "overflow_files": float(written),
        "overflow_seen": 1.0 if overflowed else 0.0,
        "overflow_restarted": 1.0 if restarted else 0.0,
    }


_FIGURES = {
    "overflow_s": Figure("inotify overflow", "SIGCONT → identical", "s", Goal("max", 10.0)),
    "overflow_frozen_s": Figure("inotify overflow", "watcher frozen for", "s"),
    "overflow_files": Figure("inotify overflow", "files created while frozen", ""),
    "overflow_seen": Figure("inotify overflow", "overflow reported in log (1 = yes)", ""),
    "overflow_restarted": Figure("inotify overflow", "frozen process restarted (1 = yes)", ""),
}

SCENARIO = Scenario("overflow", run, _FIGURES.__getitem__)
