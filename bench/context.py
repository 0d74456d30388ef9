"""Sizes of each mode, the per-run context and the session that runs one tool.

Every scenario function has the signature ``run(ctx, tool, run) -> figures``:
``ctx`` (:class:`Ctx`) holds the mode's sizes, the temp dir, the lazily
started sshd and trees shared between runs; ``tool`` is ``"syncsup"``,
``"syncsup-rsync"`` or ``"lsyncd"`` (:data:`bench.tools.TOOLS`); ``run`` the
run number (used in directory names, with :func:`tag`, so no run sees
another's leftovers).  A :class:`Session` starts the tool on its syncs and
asks it to stop on exit, whatever happened.

Stopping does not hold up the next run: the tool gets SIGTERM and is reaped
later (:meth:`Ctx.reap`: when the next session starts, when a directory it
works in is to be reused, and at the end of the bench, which waits for every
one and fails on any process left behind): a stopping daemon finishes its
stop while the next run starts, which keeps the bench short and costs the
next run nothing measurable. Directories a stopping tool works in are
removed once it is gone (:meth:`Ctx.discard`). A scenario that needs the
stop finished (the recovery scenario's clean stop) calls :meth:`Tool.stop`
itself.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType
from typing import Any

from bench.tools import TOOL_CLASSES, SyncSpec, Target, Tool, target_path
from bench.trees import rm_rf
from tests.helpers.rsyncd import RsyncDaemon
from tests.helpers.sshd import Sshd

SIZES: dict[str, dict[str, Any]] = {
    "smoke": {
        # every scenario at least once, small: CI runs this after the tests
        "latency_local": 8,
        "latency_ssh": 5,
        "latency_rsyncd": 5,
        "rsyncd_burst": 500,
        "bursts": [1000],
        "churn_s": 6.0,
        "steady_s": 6.0,
        "overflow_files": 9000,  # Lsyncd: ~2 events a file; the queue holds 16 384
        "startup": (2000, 100),
        "fanout": [8],
        "fanout_files": 200,
        "rename_mb": 5,
        "recovery_files": 5,
        "firststart_files": 20,
        "cascade_files": 100,
        "idle_settle_s": 0.5,
        "idle_s": 2.0,
        "syncs": [1, 20],
        "syncs_files": 5,
        "syncs_settle_s": 1.0,
        "syncs_idle_s": 2.0,
        "timeout": 120.0,
    },
    "full": {
        "latency_local": 100,
        "latency_ssh": 40,
        "latency_rsyncd": 40,
        "rsyncd_burst": 5000,
        "bursts": [20000, 100000],
        "overflow_files": 20000,
        "startup": (100000, 4000),
        "fanout": [8, 32],
        "fanout_files": 2000,
        "rename_mb": 100,
        "idle_s": 60.0,
        "syncs": [1, 20, 100],
        "syncs_files": 5,
        "syncs_settle_s": 15.0,
        "syncs_idle_s": 60.0,
        "churn_s": 180.0,
        "steady_s": 120.0,
        "recovery_files": 40,
        "firststart_files": 300,
        "cascade_files": 2000,
        "idle_settle_s": 2.0,
        "timeout": 600.0,
    },
}


def tag(tool: str) -> str:
    """One letter for a tool in directory names: s (syncsup), r (syncsup-rsync), l."""
    return {"syncsup": "s", "syncsup-rsync": "r", "lsyncd": "l"}[tool]


class Ctx:
    """What the scenarios of one bench run share."""

    def __init__(self, mode: str, base: Path) -> None:
        self.mode = mode
        self.size = SIZES[mode]
        self.base = base
        self.timeout: float = self.size["timeout"]
        self._sshd: Sshd | None = None
        self._rsyncd: RsyncDaemon | None = None
        self.shared: dict[str, Path] = {}
        self.stopping: list[Tool] = []
        self.deferred: list[Path] = []

    def sshd(self) -> Sshd:
        """The throw-away sshd on 127.0.0.1 (started on first use, for all ssh scenarios)."""
        if self._sshd is None:
            s = Sshd(self.base / "sshd")
            s.start()
            self._sshd = s
        return self._sshd

    def rsyncd(self) -> RsyncDaemon:
        """The throw-away rsync daemon on 127.0.0.1 (started on first use)."""
        if self._rsyncd is None:
            d = RsyncDaemon(self.base / "rsyncd")
            d.start()
            self._rsyncd = d
        return self._rsyncd

    def close(self) -> None:
        self.reap(block=True)
        if self._sshd is not None:
            self._sshd.close()
            self._sshd = None
        if self._rsyncd is not None:
            self._rsyncd.close()
            self._rsyncd = None

    def dir(self, *parts: str) -> Path:
        """A fresh, empty directory under the run's temp dir (a tool still
        stopping in it is waited for first)."""
        p = self.base.joinpath(*parts)
        self.reap(block=True, under=p)
        rm_rf(p)
        p.mkdir(parents=True)
        return p

    def stop_later(self, tool: Tool) -> None:
        """SIGTERM now; reaped by :meth:`reap`."""
        if tool.proc is None:  # stopped already
            return
        tool.terminate()
        self.stopping.append(tool)

    def reap(self, block: bool = False, under: Path | None = None) -> None:
        """Reap the stopping tools that have exited (``block``: all of them,
        or those working below ``under``), then remove the directories
        :meth:`discard` left for them."""
        for t in list(self.stopping):
            if under is not None and not t.work.is_relative_to(under):
                continue
            if block or t.exited():
                t.stop()
                self.stopping.remove(t)
        for p in list(self.deferred):
            if not self._busy(p):
                rm_rf(p)
                self.deferred.remove(p)

    def discard(self, path: Path) -> None:
        """Remove ``path`` now, or once no stopping tool works in it."""
        if self._busy(path):
            self.deferred.append(path)
        else:
            rm_rf(path)

    def _busy(self, path: Path) -> bool:
        return any(t.work.is_relative_to(path) for t in self.stopping)


class Session:
    """One tool running on its syncs; stopped (and reaped) on exit.

    ``Session(ctx, tool, work, src, targets)`` is one sync;
    ``Session(ctx, tool, work, syncs=[(src, targets), ...])`` several."""

    def __init__(
        self,
        ctx: Ctx,
        tool_name: str,
        work: Path,
        src: Path | None = None,
        targets: list[Target] | None = None,
        *,
        syncs: list[SyncSpec] | None = None,
    ) -> None:
        if syncs is None:
            assert src is not None and targets is not None
            syncs = [(src, targets)]
        self.tool = TOOL_CLASSES[tool_name](work)
        self.syncs = syncs
        self.dsts = [target_path(t) for _, ts in syncs for t in ts]
        self.ctx = ctx

    def __enter__(self) -> Tool:
        self.ctx.reap()
        # Dirty pages of earlier runs (hundreds of MB in burst, fan-out and
        # startup) would otherwise be written back while this one is timed,
        # and a tool would pay for what the one before it wrote.
        os.sync()
        for d in self.dsts:
            d.mkdir(parents=True, exist_ok=True)
        self.tool.start(self.syncs)
        return self.tool

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.ctx.stop_later(self.tool)
