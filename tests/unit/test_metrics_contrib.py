"""contrib/'s Grafana dashboard and Prometheus rules use only metrics that exist."""

from __future__ import annotations

import json
import re
import types
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from twisted.internet.task import Clock

from officerouter.metrics import (
    GCPauses,
    Metrics,
    RouterCollector,
    _Families,
    machine_families,
)
from officerouter.workers import Worker

from .fakes import make_registry
from .test_metrics import factory_for

CONTRIB = Path(__file__).parents[2] / "contrib"
DASHBOARD = CONTRIB / "grafana-officerouter.json"
RULES = CONTRIB / "prometheus-officerouter-rules.yml"
NAME = re.compile(r"\b(?:officerouter|process|python)_[a-z_]+\b")


def exposed_names() -> set[str]:
    """Every sample name a worker behind Redis exposes, and its parent adds."""
    clock = Clock()
    metrics = Metrics()
    registry = make_registry(clock)
    redis = types.SimpleNamespace(
        link=types.SimpleNamespace(reconnects=0),
        gaps_filled=0,
        gap_messages=0,
        gaps_lost=0,
    )
    metrics.registry.register(
        RouterCollector(
            registry,
            factory_for(registry, clock, metrics),
            link=redis.link,
            backplane=redis,
        )
    )
    # Labelled series exist once something was counted in them.
    metrics.handshake_refused(401, "token expired")
    metrics.frame_received("position_update", "relayed")
    metrics.closed(1000, "client")
    metrics.notified(200, 0.0)
    metrics.gc_pause_longest.labels("0").set(0.001)
    GCPauses(metrics)
    registry.tally.delivered("room_updated", 1)
    text = generate_latest(metrics.registry).decode()
    parent = CollectorRegistry(auto_describe=False)
    parent.register(_Families(machine_families([Worker("w-1", ())], [text])))
    names = set()
    for family in text_string_to_metric_families(generate_latest(parent).decode()):
        names.update(sample.name for sample in family.samples)
    # The standard collectors the daemon adds (tap.metrics_service).
    names |= {"process_cpu_seconds_total", "process_resident_memory_bytes"}
    return names


def test_dashboard_queries_exist():
    """Every panel queries metrics the router exposes, through the datasource
    variable, filtered by instance."""
    dashboard = json.loads(DASHBOARD.read_text())
    names = exposed_names()
    exprs = [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", ())
    ]
    assert len(exprs) > 20
    for expr in exprs:
        used = set(NAME.findall(expr))
        assert used, expr
        assert used <= names, expr
        assert 'instance=~"$instance"' in expr, expr
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_alert_rules_cover_what_operators_need():
    """The rules parse, name existing metrics, and alert on overload, notify 5xx,
    Redis down and slow-client drops."""
    rules = yaml.safe_load(RULES.read_text())
    names = exposed_names()
    alerts = {}
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}
            alerts[rule["alert"]] = rule["expr"]
            assert rule["annotations"]["summary"]
    for expr in alerts.values():
        assert set(NAME.findall(expr)) <= names, expr
    assert "officerouter_reactor_lag_seconds_bucket" in alerts["OfficerouterOverloaded"]
    assert 'status=~"5.."' in alerts["OfficerouterNotify5xx"]
    assert "officerouter_backplane_up" in alerts["OfficerouterRedisDown"]
    assert (
        "officerouter_slow_client_drops_total" in alerts["OfficerouterSlowClientDrops"]
    )
