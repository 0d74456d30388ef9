"""Recovery cost: how much of the trees a tool reads to catch up with
changes it did not see.

A tree of ``recovery_files`` files of 1 MB (full: 40; smoke: 5) plus a
small one, mirrored to a local target.  Then, with no events for the tool
to see:

* **restart** (syncsup and Lsyncd): the tool is stopped cleanly (SIGTERM);
  one big file is rewritten in the middle keeping its size, and its old
  modification time is put back (``os.utime`` with the original
  nanoseconds: rsync's quick check cannot see it, only the ctime moved); a
  new small file is written, the small file appended to and one big file
  deleted; the tool is started again under strace;
* **watcher killed** (syncsup only): syncsup's watcher is SIGKILLed (its
  supervisor restarts it) and the same changes are made at once, while the
  watcher is down; strace is attached to the running tree first.

Figures: the bytes that every process of the tool's tree read from files
below the source and the target (:mod:`bench.iotrace`), in % of the tree's
size, until the target is identical again and the tool idle; and whether it
converged, the rewritten file included (1 = yes).  Lsyncd's startup sync is
``rsync -a`` with rsync's quick check (size and mtime), so it does not
repair the rewritten file: that is recorded as 0, not as a failure.  Any
other difference left is a failure, as in every scenario.

syncsup's recovery compares by content the files whose ctime is not older
than its last seen-point minus 5 s (docs/operations.md, "After lost
events"), so the trees are made before the bench's first scenario
(:func:`prepare`) and each measurement waits, if need be, until they are
more than 5 s older than that seen-point; otherwise every file would count
as possibly changed.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from bench import iotrace
from bench.context import Ctx, Session, tag
from bench.converge import identical_but_for, tool_idle, wait_converged
from bench.procs import tree_pids
from bench.report import Figure
from bench.scenarios.base import Scenario
from bench.tools import BenchFailure, NotConverged, Syncsup, Tool

SIZE = 1_000_000
VARIANTS = {"syncsup": ("restart", "kill"), "lsyncd": ("restart",)}
_made: dict[tuple[int, str, str], float] = {}
"""(run, tool, variant) -> wall time at which its source tree was complete."""


def _root(ctx: Ctx, run: int, tool: str, variant: str) -> Path:
    return ctx.base / f"rec-{variant}-{tag(tool)}{run}"


def prepare(ctx: Ctx, runs: int) -> None:
    """Every source tree of every run, made before the bench's first
    scenario, so that they are old enough when this one starts."""
    for run in range(runs):
        _prepare(ctx, run)


def _prepare(ctx: Ctx, run: int) -> None:
    """Every source tree of this run (once)."""
    if any(k[0] == run for k in _made):
        return
    for tool, variants in VARIANTS.items():
        for variant in variants:
            src = ctx.dir(_root(ctx, run, tool, variant).name, "src")
            for i in range(ctx.size["recovery_files"]):
                (src / f"big{i:02d}").write_bytes(os.urandom(SIZE))
            (src / "sub").mkdir()
            (src / "sub" / "small").write_bytes(b"small\n")
            _made[(run, tool, variant)] = time.time()


def _change(src: Path, n: int) -> str:
    """The changes the tool does not see; returns the rewritten file's name."""
    victim = src / f"big{n // 2:02d}"
    st = victim.stat()
    with open(victim, "r+b") as fh:
        fh.seek(SIZE // 2)
        fh.write(os.urandom(4096))
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    (src / "sub" / "new while away").write_bytes(b"new\n")
    with open(src / "sub" / "small", "ab") as f:
        f.write(b"appended\n")
    (src / f"big{n - 1:02d}").unlink()
    return victim.name


def _arrived(src: Path, dst: Path, n: int) -> bool:
    """The ordinary changes are on the target (the cheap check)."""
    try:
        return ((dst / "sub" / "new while away").exists()
                and not (dst / f"big{n - 1:02d}").exists()
                and (dst / "sub" / "small").read_bytes() == (src / "sub" / "small").read_bytes())
    except OSError:
        return False


def _settle(t: Tool, src: Path, dst: Path, n: int, victim: str, timeout: float,
            log_from: int = 0) -> bool:
    """Wait for the ordinary changes and an idle tool; then True if the
    target is identical, False if only the rewritten file differs (after 2 s
    more); any other difference fails the scenario."""
    deadline = time.monotonic() + timeout
    while not (_arrived(src, dst, n) and tool_idle(t, log_from)):
        t.check()
        if time.monotonic() > deadline:
            raise NotConverged(f"{t.name}: the changes made while away never arrived\n"
                               f"{t.log_tail()}")
        time.sleep(0.1)
    return identical_but_for(t, src, dst, victim)


def _wait_old(t: Tool, made: float, timeout: float) -> None:
    """Until the tree is more than 5 s older than syncsup's seen-point (a
    clean stop commits one at the stop; for a kill, wait for one in status)."""
    if not isinstance(t, Syncsup):
        return
    deadline = time.monotonic() + timeout
    while True:
        t.check()
        seen = t.status()["syncs"][0].get("seen") or 0
        if seen > made + 5.5:
            return
        if time.monotonic() > deadline:
            raise BenchFailure(f"{t.name}: no seen-point after the tree was made "
                               f"(last {seen})\n{t.log_tail()}")
        time.sleep(0.5)


def restart(ctx: Ctx, tool: str, run: int) -> tuple[float, bool]:
    root = _root(ctx, run, tool, "restart")
    src, dst = root / "src", root / "dst"
    n = ctx.size["recovery_files"]
    made = _made[(run, tool, "restart")]
    sess = Session(ctx, tool, root / "w", src, [dst])
    with sess as t:
        wait_converged(t, src, [dst], ctx.timeout, poll=0.05)
        time.sleep(max(0.0, made + 6.0 - time.time()))
        rc = t.stop()
        if isinstance(t, Syncsup) and rc != 0:
            raise BenchFailure(f"{t.name}: exited {rc} on SIGTERM\n{t.log_tail()}")
    victim = _change(src, n)
    logs = root / "io"
    sess.tool.wrap = iotrace.wrap_argv(logs)
    log_from = len(sess.tool.log_text())
    with sess as t:
        converged = _settle(t, src, dst, n, victim, ctx.timeout, log_from)
        t.stop()  # strace has written its logs once the tool is gone
    return _read_pct(t, "restart", logs, [src, dst], n), converged


def _read_pct(t: Tool, variant: str, logs: Path, roots: list[Path], n: int,
              python_pids: frozenset[int] = frozenset()) -> float:
    """Bytes read below ``roots``, in % of the tree; who read them is printed."""
    by = iotrace.bytes_read_by(logs, roots, python_pids)
    print(f"    {t.name} {variant}: read {iotrace.describe(by)}")
    return 100.0 * sum(by.values()) / (n * SIZE)


def kill(ctx: Ctx, tool: str, run: int) -> tuple[float, bool]:
    root = _root(ctx, run, tool, "kill")
    src, dst = root / "src", root / "dst"
    n = ctx.size["recovery_files"]
    with Session(ctx, tool, root / "w", src, [dst]) as t:
        assert isinstance(t, Syncsup)
        wait_converged(t, src, [dst], ctx.timeout, poll=0.05)
        _wait_old(t, _made[(run, tool, "kill")], ctx.timeout)
        logs = root / "io"
        pids = tree_pids(t.pid)
        tracer = iotrace.attach(pids, logs)
        try:
            os.kill(t.component_pid("watcher"), signal.SIGKILL)
            victim = _change(src, n)
            converged = _settle(t, src, dst, n, victim, ctx.timeout)
        finally:
            iotrace.detach(tracer)
    return _read_pct(t, "kill", logs, [src, dst], n, frozenset(pids)), converged


def run(ctx: Ctx, tool: str, run: int) -> dict[str, float]:
    _prepare(ctx, run)
    out: dict[str, float] = {}
    for variant in VARIANTS[tool]:
        pct, ok = (restart if variant == "restart" else kill)(ctx, tool, run)
        out[f"recovery_{variant}_read_pct"] = pct
        out[f"recovery_{variant}_converged"] = 1.0 if ok else 0.0
        ctx.discard(_root(ctx, run, tool, variant))
    return out


_LABEL = {"restart": "recovery (clean stop, start)",
          "kill": "recovery (watcher SIGKILLed)"}


def describe(key: str) -> Figure:
    variant = key.split("_")[1]
    if key.endswith("_read_pct"):
        return Figure(_LABEL[variant], "bytes read from source + target, % of the tree", "%")
    return Figure(_LABEL[variant], "converged, rewritten file included (1 = yes)", "")


def order(key: str) -> str:
    return ("0" if "_restart_" in key else "1") + ("0" if key.endswith("pct") else "1")


SCENARIO = Scenario("recovery", run, describe, order, prepare=prepare)
