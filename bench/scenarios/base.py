"""What a scenario module provides (see :mod:`bench.scenarios`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bench.context import Ctx
from bench.report import Figure


def _by_key(key: str) -> str:
    return key


@dataclass(frozen=True)
class Scenario:
    """``run(ctx, tool, run)`` returns ``{metric: value}`` for one tool and run;
    ``describe(metric)`` says how to show it; ``order(metric)`` sorts the rows
    within the scenario.  ``default_runs`` caps the number of runs when the
    command line does not set ``--runs`` (long scenarios run once).
    ``tools`` are the tools it runs (:data:`bench.tools.TOOLS`): syncsup as
    shipped and Lsyncd, and where the two transports differ most also
    ``syncsup-rsync`` (``agent_max_size = 0``).  ``prepare(ctx, runs)``, if
    set, runs before the first scenario of the bench (files that must be
    old by the time the scenario runs)."""

    name: str
    run: Callable[[Ctx, str, int], dict[str, float]]
    describe: Callable[[str], Figure]
    order: Callable[[str], str] = _by_key
    default_runs: int | None = None
    tools: tuple[str, ...] = ("syncsup", "lsyncd")
    prepare: Callable[[Ctx, int], None] | None = None


BOTH_TRANSPORTS: tuple[str, ...] = ("syncsup", "syncsup-rsync", "lsyncd")
"""The tools of the scenarios that compare syncsup's two transports."""
