"""The scenarios, in the order they run and appear in the tables.

Each module defines ``SCENARIO``: a :class:`bench.scenarios.base.Scenario`
with the function that runs it for one tool, the description of each figure
it returns (labels, unit, goal) and the order of its rows.  Adding a
scenario is adding a module here and its name to :data:`REGISTRY`.
"""

from __future__ import annotations

from bench.report import Figure
from bench.scenarios import (
    burst,
    cascade,
    churn,
    fanout,
    firststart,
    idle,
    latency,
    overflow,
    recovery,
    rename,
    rsyncd,
    startup,
    steady,
    syncs,
)
from bench.scenarios.base import Scenario

REGISTRY: dict[str, Scenario] = {
    m.SCENARIO.name: m.SCENARIO
    for m in (latency, burst, churn, overflow, startup, fanout, rename, recovery, firststart,
              cascade, idle, syncs, rsyncd)
}
# Steady churn at a realistic delay after the others; its short variant is
# for iterating on the code, run only when asked for (``--only steady-quick``).
REGISTRY.update({s.name: s for s in (steady.SCENARIO, steady.QUICK)})
NAMES: tuple[str, ...] = tuple(REGISTRY)
DEFAULT: tuple[str, ...] = tuple(n for n in NAMES if n != steady.QUICK.name)
"""What a run without ``--only`` runs (and what makes a run complete)."""


def describe(scenario: str, key: str) -> Figure:
    """How the metric ``key`` of ``scenario`` is shown."""
    return REGISTRY[scenario].describe(key)


def sort_key(scenario: str, key: str) -> tuple[int, str]:
    """Rows grouped by scenario (registry order), then in the scenario's own order."""
    return (NAMES.index(scenario), REGISTRY[scenario].order(key))
