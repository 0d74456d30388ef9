"""Waiting until targets are identical to their sources, and timing it.

Every wait polls a cheap check (entry counts, or a scenario's own ``quick``
test) and, when it passes, confirms with the exact comparison of
:mod:`bench.trees` (rsync dry run).  The time returned is when the cheap
check first passed in the round the exact check then confirmed: the exact
check takes milliseconds to seconds and must not be counted against the
tool.  Each poll also checks that the tool has not crashed, so a dead daemon
fails the scenario at once instead of at the timeout.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from bench.tools import BenchFailure, NotConverged, Syncsup, Tool
from bench.trees import count_entries, diff_all, diff_pairs, write_file


def wait_converged(
    tool: Tool,
    src: Path,
    dsts: list[Path],
    timeout: float,
    quick: Callable[[], bool] | None = None,
    on_poll: Callable[[], None] | None = None,
    poll: float = 0.005,
) -> float:
    """Poll until every target of ``src`` is identical to it; the monotonic time
    at which the cheap check passed in the confirmed round."""
    expected = count_entries(src)
    deadline = time.monotonic() + timeout
    last_diff: list[str] = []
    while True:
        tool.check()
        if on_poll:
            on_poll()
        ok = quick() if quick else all(count_entries(d) == expected for d in dsts)
        if ok:
            t = time.monotonic()
            last_diff = diff_all(src, dsts)
            if not last_diff:
                return t
        if time.monotonic() > deadline:
            counts = [count_entries(d) for d in dsts[:4]]
            raise NotConverged(
                f"{tool.name} did not converge within {timeout:.0f}s (source {expected} entries, "
                f"targets {counts}...; differences: {last_diff[:5]})\n{tool.log_tail()}"
            )
        time.sleep(poll)


def wait_pairs(
    tool: Tool,
    pairs: list[tuple[Path, Path]],
    timeout: float,
    quick: Callable[[], bool] | None = None,
    poll: float = 0.005,
) -> float:
    """:func:`wait_converged` for many (source, target) pairs (one per sync):
    every pair identical; the time the cheap check passed in the confirmed round."""
    expected = [count_entries(s) for s, _ in pairs]
    deadline = time.monotonic() + timeout
    last_diff: list[str] = []
    while True:
        tool.check()
        if quick is not None:
            ok = quick()
        else:
            ok = all(count_entries(d) == n for (_, d), n in zip(pairs, expected, strict=True))
        if ok:
            t = time.monotonic()
            last_diff = diff_pairs(pairs)
            if not last_diff:
                return t
        if time.monotonic() > deadline:
            behind = sum(
                count_entries(d) != n for (_, d), n in zip(pairs, expected, strict=True)
            )
            raise NotConverged(
                f"{tool.name} did not converge within {timeout:.0f}s ({behind} of "
                f"{len(pairs)} targets short of entries; differences: {last_diff[:5]})\n"
                f"{tool.log_tail()}"
            )
        time.sleep(poll)


def ready(tool: Tool, src: Path, dsts: list[Path], timeout: float,
          on_poll: Callable[[], None] | None = None) -> None:
    """Startup sync done and an event-driven change flowed (two probes in
    turn); ``on_poll`` is called at each look, as for :func:`wait_converged`."""
    for i in (1, 2):
        write_file(os.fspath(src / f".ready{i}"), i)
        wait_converged(tool, src, dsts, timeout, on_poll=on_poll)


def tool_idle(t: Tool, log_from: int = 0) -> bool:
    """The tool has nothing left to do: syncsup's targets idle with nothing
    pending; Lsyncd logged (since ``log_from``) that its startup sync
    finished (it then only waits for events)."""
    if isinstance(t, Syncsup):
        try:
            st = t.status()
        except BenchFailure:
            return False  # not answering yet (just started, e.g. under strace)
        ts = [x for s in st.get("syncs", []) for x in s.get("targets", [])]
        return bool(ts) and all(x.get("state") == "idle" and not x.get("pending") for x in ts)
    log = t.log_text()[log_from:]
    return "Startup of" in log and "finished" in log.split("Startup of", 1)[1]


def identical_but_for(t: Tool, src: Path, dst: Path, victim: str, grace: float = 2.0) -> bool:
    """Once ``t`` is idle: True if ``dst`` is identical to ``src`` within
    ``grace`` seconds, False if only the lines naming ``victim`` (a
    scenario's same-size rewrite with its mtime put back) still differ, which
    the tool missed; any other difference fails the scenario."""
    until = time.monotonic() + grace
    while True:
        diff = diff_all(src, [dst])
        if not diff:
            return True
        if time.monotonic() > until:
            break
        time.sleep(0.2)
    if all(victim in line for line in diff):
        print(f"    {t.name}: did not converge on the rewritten file ({diff[0].strip()})")
        return False
    raise NotConverged(f"{t.name}: differences besides the rewritten file: {diff[:5]}\n"
                       f"{t.log_tail()}")
