"""Churn: small files changed at a steady rate for a fixed time, and the
CPU each change costs.

A tree of 400 small files in 20 directories; then, for ``churn_s`` seconds
(full: 180 s; smoke: 6 s), 44 operations a second on it, from a fixed
seed so that every tool gets the same sequence: 20 % new files, 45 %
rewrites of an existing file keeping its size, 15 % renames (to a new name,
often in another directory), 20 % deletes; files of 200 B to 8 kB.  Local
target, delay 0 for all.  After the last operation the target must become
identical to the source (the exact comparison, as everywhere).

A rewrite picks a file last written at least 1.5 s (66 operations)
earlier, and waits for the next whole second if the clock says it was
written in the current one (only when the writer fell behind).  rsync's
quick check compares modification times in whole seconds by default, so
Lsyncd, which relies on it, never repairs a same-size rewrite made within
the second of the previous write; that is a real gap of Lsyncd's (rsync's
``--modify-window=-1`` would close it), but this scenario measures CPU, so
it leaves that case out for both tools.

Figures: the CPU the tool's whole process tree used from the first
operation until the target was identical, divided by the number of
operations (ms per change); how long after the last operation the target
was identical; the rate actually achieved (the writer falls behind only
when the machine is saturated).

CPU is :func:`bench.procs.tree_cpu`: ``utime + stime`` of every live
process in the tree *plus* ``cutime + cstime``, which the kernel adds to a
parent when it reaps a child (with that child's own reaped children), so
every short-lived rsync Lsyncd or syncsup ran and waited for is counted
even though it is gone when the window ends.  Goal (the agent): ≤ 0.5 x
Lsyncd.
"""

from __future__ import annotations

import os
import random
import time

from bench.context import Ctx, Session, tag
from bench.converge import ready, wait_converged
from bench.procs import tree_cpu, tree_cpu_by
from bench.report import Figure, Goal
from bench.scenarios.base import BOTH_TRANSPORTS, Scenario

RATE = 44.0
DIRS = 20
SEED_FILES = 400
SEED = 20261130
MIX = (("create", 0.20), ("rewrite", 0.45), ("rename", 0.15), ("delete", 0.20))
MIN_AGE = 66
"""Operations since a file's last write before it may be rewritten (1.5 s at 44/s)."""


class Churner:
    """The workload: a pool of files and a seeded sequence of operations on it."""

    def __init__(self, root: str, seed: int) -> None:
        self.rng = random.Random(seed)
        self.dirs = [f"{root}/d{j:02d}" for j in range(DIRS)]
        self.files: list[str] = []
        self.sizes: dict[str, int] = {}
        self.written: dict[str, int] = {}  # path -> operation that last wrote it
        self.serial = 0
        self.op = 0

    def _new_name(self) -> str:
        self.serial += 1
        return f"{self.rng.choice(self.dirs)}/c{self.serial:06d}"

    def _write(self, path: str, size: int) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, self.rng.randbytes(size))
        finally:
            os.close(fd)

    def seed(self) -> None:
        for d in self.dirs:
            os.makedirs(d, exist_ok=True)
        for _ in range(SEED_FILES):
            self.create()

    def create(self) -> None:
        path, size = self._new_name(), self.rng.randint(200, 8192)
        self._write(path, size)
        self.files.append(path)
        self.sizes[path] = size
        self.written[path] = self.op

    def step(self) -> None:
        """One operation of the mix (a create when the pool is nearly empty,
        or when no file picked is old enough to be rewritten)."""
        self.op += 1
        kind = self.rng.choices([k for k, _ in MIX], [w for _, w in MIX])[0]
        if kind == "create" or len(self.files) < 50:
            self.create()
            return
        i = self.rng.randrange(len(self.files))
        if kind == "rewrite":
            for _ in range(20):
                if self.op - self.written[self.files[i]] >= MIN_AGE:
                    break
                i = self.rng.randrange(len(self.files))
            else:
                self.create()
                return
            self.rewrite(self.files[i])
            return
        path = self.files[i]
        if kind == "rename":
            new = self._new_name()
            os.rename(path, new)
            self.files[i] = new
            self.sizes[new] = self.sizes.pop(path)
            self.written[new] = self.written.pop(path)
        else:
            os.unlink(path)
            self.files[i] = self.files[-1]
            self.files.pop()
            del self.sizes[path], self.written[path]

    def rewrite(self, path: str) -> None:
        """Same size, new content; never in the whole second of the last write."""
        before = int(os.stat(path).st_mtime)
        while time.time() < before + 1.01:  # the file clock is coarse: a margin
            time.sleep(0.01)
        self._write(path, self.sizes[path])
        self.written[path] = self.op


def run(ctx: Ctx, tool: str, run: int) -> dict[str, float]:
    root = ctx.dir(f"churn-{tag(tool)}{run}")
    src, dst = root / "src", root / "dst"
    churner = Churner(os.fspath(src / "c"), SEED + run)
    churner.seed()
    secs = float(ctx.size["churn_s"])
    n = int(secs * RATE)
    with Session(ctx, tool, root / "w", src, [dst]) as t:
        ready(t, src, [dst], ctx.timeout)
        t.expect_transport()
        time.sleep(0.5)
        by0 = tree_cpu_by(t.pid)
        cpu0 = tree_cpu(t.pid)
        t0 = time.monotonic()
        for i in range(n):
            delay = t0 + i / RATE - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            churner.step()
            if i % 200 == 0:
                t.check()
        t_last = time.monotonic()
        t_conv = wait_converged(t, src, [dst], ctx.timeout, poll=0.02)
        cpu1 = tree_cpu(t.pid)
        by1 = tree_cpu_by(t.pid)
    shown = ", ".join(f"{k} {(v - by0.get(k, 0.0)) * 1000 / n:.2f}"
                      for k, v in sorted(by1.items()) if v - by0.get(k, 0.0) > 0)
    print(f"    {t.name}: CPU ms per change by process (with what each reaped): {shown}")
    ctx.discard(root)
    return {
        "churn_cpu_ms_per_change": (cpu1 - cpu0) * 1000 / n,
        "churn_settle_s": t_conv - t_last,
        "churn_rate": n / (t_last - t0),
    }


_FIGURES = {
    "churn_cpu_ms_per_change": Figure(
        "churn (44 changes/s)", "CPU ms per change (whole tree, reaped rsyncs too)", "ms",
        Goal("ratio", 0.5)),
    "churn_settle_s": Figure("churn (44 changes/s)", "last change → identical", "s"),
    "churn_rate": Figure("churn (44 changes/s)", "changes per second achieved", "/s"),
}

SCENARIO = Scenario("churn", run, _FIGURES.__getitem__, default_runs=1, tools=BOTH_TRANSPORTS)
