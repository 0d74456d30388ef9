"""Prometheus metrics, served by ``prometheus_client`` when
``[settings] metrics = "127.0.0.1:PORT"`` is set.

The numbers come from the same status document ``syncsup status`` prints
(built from the children's heartbeats), read at scrape time by a custom
collector, so there is no second copy of the state to keep in sync. Counters
that live in a child (transfers, bytes, overflows) restart from zero when
that child restarts; Prometheus' ``rate()`` handles such resets.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from syncsup.sourceroot import ROOT_STATES
from syncsup.status import BLIND_REASONS, Status
from syncsup.supervisor.policy import State

__all__ = [
    "COMPONENT_STATES", "TARGET_STATES", "TRANSPORTS", "StatusCollector", "serve",
    "state_families",
]


class StatusCollector(Collector):
    def __init__(self, status: Callable[[], Status]) -> None:
        self.status = status

    def collect(self) -> Iterator[Any]:
        doc = self.status()
        t_labels = ["sync", "target"]
        lag = GaugeMetricFamily("syncsup_target_lag_seconds",
                                "Age of the oldest change not yet on the target", labels=t_labels)
        pending = GaugeMetricFamily("syncsup_target_pending_paths",
                                    "Paths and subtrees waiting for the target", labels=t_labels)
        last_ok = GaugeMetricFamily("syncsup_target_last_success_timestamp_seconds",
                                    "Unix time of the last successful transfer", labels=t_labels)
        up_t = GaugeMetricFamily("syncsup_target_healthy",
                                 "1 unless the last transfer failed", labels=t_labels)
        transfers = CounterMetricFamily("syncsup_transfers", "Transfers by outcome",
                                        labels=[*t_labels, "outcome"])
        sent = CounterMetricFamily("syncsup_sent_bytes", "Bytes sent by rsync", labels=t_labels)
        watches = GaugeMetricFamily("syncsup_watches", "Directories watched", labels=["sync"])
        unwatched = GaugeMetricFamily("syncsup_unwatched_subtrees",
                                      "Subtrees not under inotify (every reason but mount)",
                                      labels=["sync"])
        blind = GaugeMetricFamily("syncsup_blind_subtrees",
                                  "Subtrees the watcher cannot see, by reason",
                                  labels=["sync", "reason"])
        root = GaugeMetricFamily("syncsup_source_root_state",
                                 "1 for the state of the source root (ok, missing, symlink, "
                                 "not_directory)", labels=["sync", "state"])
        overflows = CounterMetricFamily("syncsup_inotify_overflows",
                                        "inotify queue overflows", labels=["sync"])
        rescans = CounterMetricFamily("syncsup_rescans", "Subtree rescans requested",
                                      labels=["sync"])
        for s in doc.syncs:
            watches.add_metric([s.name], s.watches or 0)
            unwatched.add_metric([s.name], s.unwatched or 0)
            for reason in BLIND_REASONS:
                blind.add_metric([s.name, reason], s.blind_counts.get(reason, 0))
            if s.root is not None:
                for state in ROOT_STATES:
                    root.add_metric([s.name, state], 1 if s.root == state else 0)
            overflows.add_metric([s.name], s.overflows or 0)
            rescans.add_metric([s.name], s.rescans)
            for t in s.targets:
                labels = [s.name, t.target]
                lag.add_metric(labels, t.lag or 0.0)
                pending.add_metric(labels, t.pending)
                if t.last_sync is not None:
                    last_ok.add_metric(labels, t.last_sync)
                up_t.add_metric(labels, 0 if t.state in ("retrying", "failed") else 1)
                for outcome, n in t.transfers.items():
                    transfers.add_metric([*labels, outcome], n)
                sent.add_metric(labels, t.bytes_sent)
        c_labels = ["component", "role"]
        restarts = CounterMetricFamily("syncsup_component_restarts", "Restarts since start",
                                       labels=c_labels)
        up = GaugeMetricFamily("syncsup_component_up", "1 if the component is running",
                               labels=c_labels)
        for c in doc.components:
            restarts.add_metric([c.name, c.role], c.restarts)
            up.add_metric([c.name, c.role], 1 if c.state == "running" else 0)
        yield from (lag, pending, last_ok, up_t, transfers, sent, watches, unwatched, blind,
                    root, overflows, rescans, restarts, up)
        yield from state_families(doc)


# The state words of the status document as one-hot gauges: one series per
# possible state, 1 for the current one. Alerts need them: "healthy" cannot
# tell a target halted by max_delete (state failed, never retried alone) from
# one retrying a flaky link, nor "up" a degraded component from a stopped one.
TARGET_STATES = ("startup", "idle", "pending", "syncing", "paused", "retrying", "failed")
COMPONENT_STATES = tuple(state.value for state in State)
TRANSPORTS = ("agent", "rsync")


def state_families(doc: Status) -> Iterator[GaugeMetricFamily]:
    """``syncsup_target_state``, ``syncsup_target_transport`` and
    ``syncsup_component_state``."""
    target = GaugeMetricFamily("syncsup_target_state",
                               "1 for the target's current state (as syncsup status shows it)",
                               labels=["sync", "target", "state"])
    transport = GaugeMetricFamily("syncsup_target_transport",
                                  "1 for the way small changes reach the target now",
                                  labels=["sync", "target", "transport"])
    for s in doc.syncs:
        for t in s.targets:
            for state in TARGET_STATES:
                target.add_metric([s.name, t.target, state], 1 if t.state == state else 0)
            for way in TRANSPORTS:
                transport.add_metric([s.name, t.target, way], 1 if t.transport == way else 0)
    component = GaugeMetricFamily("syncsup_component_state",
                                  "1 for the component's current state",
                                  labels=["component", "role", "state"])
    for c in doc.components:
        for state in COMPONENT_STATES:
            component.add_metric([c.name, c.role, state], 1 if c.state == state else 0)
    yield target
    yield transport
    yield component


def serve(address: str, status: Callable[[], Status]) -> Any:
    """Serve /metrics on ``host:port`` in a background thread; returns the
    server (``shutdown()`` it at stop)."""
    from prometheus_client import start_http_server

    host, _, port = address.rpartition(":")
    registry = CollectorRegistry()
    registry.register(StatusCollector(status))
    server, _thread = start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1",
                                        registry=registry)
    return server
