"""deploy/grafana/syncsup.json and deploy/prometheus/alerts.yml against the
metrics the daemon really exports (StatusCollector on a status document),
and the one-hot state gauges the alerts need."""

from __future__ import annotations

import json
import re
from pathlib import Path

from syncsup.status import ComponentStatus, Status, SyncStatus, TargetStatus
from syncsup.supervisor.metrics import (
    COMPONENT_STATES,
    TARGET_STATES,
    TRANSPORTS,
    StatusCollector,
    state_families,
)

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "syncsup.json"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"


def status_doc() -> Status:
    return Status(
        config="/etc/syncsup.toml", started=1.0e9,
        components=[
            ComponentStatus(name="supervisor", role="supervisor", pid=1, state="running"),
            ComponentStatus(name="watcher", role="watcher", pid=2, state="degraded",
                            restarts=12),
        ],
        syncs=[SyncStatus(
            name="www", source="/srv/www", mode="rsync", rescans=4, watches=3, unwatched=1,
            overflows=2,
            targets=[
                TargetStatus(target="/m/a", state="idle", last_sync=1.0e9,
                             transfers={"ok": 3, "retry": 1}, bytes_sent=10,
                             transport="agent"),
                TargetStatus(target="h:/b", state="failed", pending=5, lag=60.0,
                             transfers={"halt": 1}),
            ])],
    )


def exported() -> set[str]:
    names = set()
    for fam in StatusCollector(status_doc).collect():
        names.add(fam.name + ("_total" if fam.type == "counter" else ""))
    return names


def used(text: str) -> set[str]:
    return set(re.findall(r"\bsyncsup_[a-z_]+\b", text))


def test_dashboard_is_grafana_json_with_variables():
    d = json.loads(DASHBOARD.read_text())
    assert d["__inputs"][0]["pluginId"] == "prometheus"
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert "label_values(" in variables["sync"]["definition"]
    assert "$sync" in variables["target"]["definition"]
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    exprs = [t["expr"] for p in d["panels"] for t in p.get("targets", [])]
    assert exprs and all(t["datasource"]["uid"] == "${datasource}"
                         for p in d["panels"] for t in p.get("targets", []))
    assert any("$target" in e for e in exprs) and any("$sync" in e for e in exprs)


def test_dashboard_and_alerts_use_only_exported_metrics():
    have = exported()
    for path in (DASHBOARD, ALERTS):
        names = used(path.read_text())
        assert names, path
        assert names <= have, f"{path.name} uses unknown metrics {sorted(names - have)}"
    panels = " ".join(t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"]
                      for t in p.get("targets", []))
    for needed in ("syncsup_target_lag_seconds", "syncsup_target_pending_paths",
                   "syncsup_sent_bytes_total", "syncsup_transfers_total",
                   "syncsup_target_healthy", "syncsup_component_restarts_total",
                   "syncsup_component_up", "syncsup_component_state",
                   "syncsup_inotify_overflows_total", "syncsup_rescans_total",
                   "syncsup_watches", "syncsup_unwatched_subtrees"):
        assert needed in panels, needed


def test_state_gauges_are_one_hot():
    fams = {f.name: f for f in state_families(status_doc())}
    target = fams["syncsup_target_state"].samples
    assert len(target) == 2 * len(TARGET_STATES)
    on = {(s.labels["target"], s.labels["state"]) for s in target if s.value == 1}
    assert on == {("/m/a", "idle"), ("h:/b", "failed")}
    comp = fams["syncsup_component_state"].samples
    assert len(comp) == 2 * len(COMPONENT_STATES)
    on = {(s.labels["component"], s.labels["state"]) for s in comp if s.value == 1}
    assert on == {("supervisor", "running"), ("watcher", "degraded")}
    way = fams["syncsup_target_transport"].samples
    assert len(way) == 2 * len(TRANSPORTS)
    on = {(s.labels["target"], s.labels["transport"]) for s in way if s.value == 1}
    assert on == {("/m/a", "agent"), ("h:/b", "rsync")}
