"""Turn /metrics scrapes into ``promtool test rules`` files.

A scrape is a dict ``(name, frozenset(labels)) -> value``. A list of them
(taken in order, e.g. after each fault injected) becomes ``input_series``:
scrape *i* is minute *i* of the test, then the last value is held (or, for
a target lag that was growing, keeps growing in real time: 60 s a minute),
so ``for:`` clauses of several minutes can elapse. Expected alerts carry
the annotations of deploy/prometheus/alerts.yml rendered with their labels
(the rules template labels only, so this is exact).
"""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "alerts.yml"
Sample = tuple[str, frozenset]


def scrape(port: int) -> dict[Sample, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=15) as resp:
        text = resp.read().decode()
    out: dict[Sample, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def series_name(name: str, labels: frozenset) -> str:
    inner = ",".join(f'{k}={json.dumps(v)}' for k, v in sorted(labels))
    return f"{name}{{{inner}}}"


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def input_series(scrapes: list[dict[Sample, float]], hold: int = 40,
                 growing: set[Sample] | None = None) -> list[dict[str, str]]:
    """One entry per series seen in any scrape: the scraped values minute by
    minute ('_' where a scrape lacked it), then ``hold`` more minutes of the
    last value (``growing`` series: +60 per minute, real-time age)."""
    keys = sorted({k for s in scrapes for k in s}, key=lambda k: series_name(*k))
    out = []
    for key in keys:
        values = [_num(s[key]) if key in s else "_" for s in scrapes]
        last = next((s[key] for s in reversed(scrapes) if key in s), 0.0)
        step = "+60" if growing and key in growing else "+0"
        values.append(f"{_num(last)}{step}x{hold}")
        out.append({"series": series_name(*key), "values": " ".join(values)})
    return out


def load_rules() -> dict[str, dict[str, Any]]:
    import yaml

    doc = yaml.safe_load(RULES.read_text())
    return {r["alert"]: r for g in doc["groups"] for r in g["rules"] if "alert" in r}


def expected(alert: str, labels: dict[str, str]) -> dict[str, Any]:
    """An ``exp_alerts`` entry: the series' labels, the rule's labels and
    its annotations with ``{{ $labels.x }}`` filled in."""
    rule = load_rules()[alert]

    def render(text: str) -> str:
        return re.sub(r"\{\{\s*\$labels\.(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""),
                      text).strip()

    return {"exp_labels": {**labels, **rule.get("labels", {})},
            "exp_annotations": {k: render(v) for k, v in rule.get("annotations", {}).items()}}


def promtool_doc(series: list[dict[str, str]], checks: list[dict[str, Any]]) -> dict[str, Any]:
    """A promtool test document (JSON is YAML) for ``alerts.yml``."""
    return {"rule_files": [str(RULES)], "evaluation_interval": "1m",
            "tests": [{"interval": "1m", "input_series": series, "alert_rule_test": checks}]}
