"""Medians, ratios, goals and the two tables (terminal and Markdown).

Each scenario module says what its figures are (:class:`Figure`: scenario
label, figure label, unit, goal).  A goal is either a ratio against Lsyncd
(``Goal("ratio", 0.7)``: syncsup ≤ 0.7 x Lsyncd) or a bound on syncsup alone
(``Goal("max", 40)``: syncsup ≤ 40 in the figure's unit); Lsyncd's figure is
then printed beside it for comparison, with no verdict of its own.  Goals
only print PASS or MISS: speed never fails a run.

Columns: syncsup as configured by default (small changes through the
agent), syncsup with ``agent_max_size = 0`` (rsync for everything; only the
scenarios that run it fill this column), Lsyncd, and the two ratios
agent / Lsyncd and rsync / Lsyncd.  Goals judge the first: syncsup as
shipped.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from bench.tools import TOOLS


@dataclass(frozen=True)
class Goal:
    """``kind`` is ``"ratio"`` (syncsup / Lsyncd ≤ value) or ``"max"`` (syncsup ≤ value)."""

    kind: str
    value: float

    def text(self, unit: str) -> str:
        if self.kind == "ratio":
            return f"≤ {self.value:g}"
        return f"syncsup ≤ {self.value:g}" + (f" {unit}" if unit else "")

    def verdict(self, syncsup: float | None, lsyncd: float | None) -> str | None:
        if syncsup is None:
            return None
        if self.kind == "ratio":
            if lsyncd is None:
                return None
            return "PASS" if syncsup <= self.value * lsyncd else "MISS"
        return "PASS" if syncsup <= self.value else "MISS"


class Figure(NamedTuple):
    """How a metric is shown: the row's scenario and figure labels, unit and goal."""

    scenario: str
    figure: str
    unit: str
    goal: Goal | None = None


Raw = dict[tuple[str, str], dict[str, list[float]]]
"""(scenario name, metric) -> tool -> one value per run."""


def fmt(v: float | None, unit: str = "") -> str:
    """Three significant digits or so; integers-as-counts (no unit) as they are."""
    if v is None:
        return "—"
    if unit == "":
        return f"{v:g}"
    if math.isinf(v):
        return "∞"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def _ratio(s: float | None, lq: float | None) -> float | None:
    if s is None or lq is None:
        return None
    if lq > 0:
        return s / lq
    return 1.0 if s == 0 else math.inf


def summarize(
    raw: Raw,
    describe: Callable[[str, str], Figure],
    sort_key: Callable[[str, str], tuple[int, str]],
) -> list[dict[str, Any]]:
    """One row per metric: medians of both tools, ratio, goal and verdict."""
    rows = []
    for scn, key in sorted(raw, key=lambda k: sort_key(*k)):
        vals = raw[(scn, key)]
        fig = describe(scn, key)
        med = {t: (statistics.median(vals[t]) if vals.get(t) else None) for t in TOOLS}
        s, r, lq = med["syncsup"], med["syncsup-rsync"], med["lsyncd"]
        goal = fig.goal
        rows.append(
            {
                "metric": key,
                "scenario": fig.scenario,
                "figure": fig.figure,
                "unit": fig.unit,
                "syncsup": s,
                "syncsup_rsync": r,
                "lsyncd": lq,
                "ratio": _ratio(s, lq),
                "ratio_rsync": _ratio(r, lq),
                "goal": goal.text(fig.unit) if goal else None,
                "verdict": goal.verdict(s, lq) if goal else None,
                "runs": {t: vals.get(t, []) for t in TOOLS},
            }
        )
    return rows


def _cells(r: dict[str, Any]) -> tuple[str, str, str, str, str]:
    """syncsup (agent), syncsup (rsync), Lsyncd, agent / Lsyncd, rsync / Lsyncd."""
    u = f" {r['unit']}" if r["unit"] else ""

    def val(v: float | None) -> str:
        return fmt(v, r["unit"]) + (u if v is not None else "")

    def ratio(v: float | None) -> str:
        return fmt(v, "x") if v is not None else "—"

    return (val(r["syncsup"]), val(r.get("syncsup_rsync")), val(r["lsyncd"]),
            ratio(r["ratio"]), ratio(r.get("ratio_rsync")))


HEADER = ("scenario", "figure", "syncsup agent", "syncsup rsync", "Lsyncd",
          "agent / Lsyncd", "rsync / Lsyncd", "goal", "verdict")


def table_text(rows: list[dict[str, Any]]) -> str:
    """The table printed at the end of a run, columns padded."""
    data = [HEADER]
    for r in rows:
        data.append((r["scenario"], r["figure"], *_cells(r), r["goal"] or "",
                     r["verdict"] or ""))
    w = [max(len(row[i]) for row in data) for i in range(len(HEADER))]
    return "\n".join("  ".join(c.ljust(w[i]) for i, c in enumerate(row)).rstrip() for row in data)


def table_md(rows: list[dict[str, Any]]) -> str:
    """The same table in Markdown (MISS in bold), as pasted into docs/benchmarks.md."""
    out = ["| " + " | ".join(HEADER) + " |", "|---|---|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        verdict = f"**{r['verdict']}**" if r["verdict"] == "MISS" else (r["verdict"] or "")
        out.append("| " + " | ".join((r["scenario"], r["figure"], *_cells(r),
                                      r["goal"] or "", verdict)) + " |")
    return "\n".join(out)


def write_results(directory: Path, names: list[str], doc: dict[str, Any], md: str) -> list[Path]:
    """Write ``NAME.json`` and ``NAME.md`` for each name; the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for name in names:
        j, m = directory / f"{name}.json", directory / f"{name}.md"
        j.write_text(json.dumps(doc, indent=1) + "\n")
        m.write_text(md)
        out += [j, m]
    return out
