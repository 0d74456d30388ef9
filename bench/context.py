"""Sizes of each mode, the per-run context and the session that runs one tool.

Every scenario function has the signature ``run(ctx, tool, run) -> figures``:
``ctx`` (:class:`Ctx`) holds the mode's sizes, the temp dir, the lazily
started sshd and trees shared between runs; ``tool`` is ``"syncsup"``,
``"syncsup-rsync"`` or ``"lsyncd"`` (:data:`bench.tools.TOOLS`); ``run`` the
run number (used in directory names, with :func:`tag`, so no run sees
another's leftovers).  A :class:`Session` starts the tool on its syncs and
stops and reaps it on exit, whatever happened.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Any

from bench.tools import TOOL_CLASSES, SyncSpec, Target, Tool, target_path
from bench.trees import rm_rf
from tests.helpers.sshd import Sshd

SIZES: dict[str, dict[str, Any]] = {
    "smoke": {
        "latency_local": 10,
        "latency_ssh": 6,
        "bursts": [2000],
        "overflow_files": 9000,
        "startup": (5000, 200),
        "fanout": [8, 32],
        "fanout_files": 300,
        "rename_mb": 10,
        "idle_s": 4.0,
        "syncs": [1, 20],
        "syncs_files": 5,
        "syncs_settle_s": 11.0,
        "syncs_idle_s": 10.0,
        "churn_s": 15.0,
        "recovery_files": 10,
        "timeout": 120.0,
    },
    "full": {
        "latency_local": 100,
        "latency_ssh": 40,
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
        "recovery_files": 40,
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
        self.shared: dict[str, Path] = {}

    def sshd(self) -> Sshd:
        """The throw-away sshd on 127.0.0.1 (started on first use, for all ssh scenarios)."""
        if self._sshd is None:
            s = Sshd(self.base / "sshd")
            s.start()
            self._sshd = s
        return self._sshd

    def close(self) -> None:
        if self._sshd is not None:
            self._sshd.close()
            self._sshd = None

    def dir(self, *parts: str) -> Path:
        """A fresh, empty directory under the run's temp dir."""
        p = self.base.joinpath(*parts)
        rm_rf(p)
        p.mkdir(parents=True)
        return p


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
        self.tool.stop()
