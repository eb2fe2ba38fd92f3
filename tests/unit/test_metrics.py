"""The metrics: what the core tallies, what a scrape reads, the lag and GC timers,
the notify counters, and the merge of the workers' metrics."""

from __future__ import annotations

import gc
import json
from typing import Any

import attrs
import pytest
from prometheus_client import generate_latest

import pytest_twisted
from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.task import Clock
from twisted.logger import LogLevel

from officerouter import codes
from officerouter.auth import TokenVerifier
from officerouter.config import Settings
from officerouter.limits import LagProbe, Limits
from officerouter.messages import ClientMessage, PositionUpdate
from officerouter.metrics import (
    GCPauses,
    Metrics,
    MetricsListener,
    MetricsResource,
    ReactorLag,
    RouterCollector,
    close_label,
    merge_worker_metrics,
    metrics_site,
)
from officerouter.web import make_site
from officerouter.websocket import OfficeServerFactory

from .fakes import FakeConnection, identity, make_registry
from .test_rooms import broadcast, direct

SERVICE = {
    "CF-Access-Client-Id": "svc-id",
    "CF-Access-Client-Secret": "svc-secret",
    "Content-Type": "application/json",
}


def value(metrics: Metrics, name: str, **labels: str) -> float:
    """One sample's value from a scrape of the metrics' registry (0 if absent)."""
    found = metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def factory_for(registry: Any, clock: Clock, metrics: Metrics) -> OfficeServerFactory:
    return OfficeServerFactory(
        registry=registry,
        verifier=TokenVerifier((), clock.seconds),
        clock=clock,
        limits=Limits(),
        metrics=metrics,
    )


@pytest.fixture
def metrics() -> Metrics:
    """Instruments in a registry of their own, on a clock the test moves."""
    return Metrics(now=lambda: 0.0)


def test_registry_is_private():
    """Two Metrics never share a registry (tests and factories stay apart)."""
    a, b = Metrics(), Metrics()
    a.handshake_accepted()
    assert value(a, "officerouter_handshakes_total", status="101", reason="") == 1
    assert value(b, "officerouter_handshakes_total", status="101", reason="") == 0


def test_scrape_reads_what_the_core_holds(clock: Clock, metrics: Metrics):
    """Connections, rooms, history, presence, deliveries and recoveries are read
    from the registry at scrape time."""
    registry = make_registry(clock)
    factory = factory_for(registry, clock, metrics)
    metrics.registry.register(RouterCollector(registry, factory))
    alice, bob = FakeConnection(), FakeConnection()
    registry.connect(identity("alice", "org-a"), alice)
    registry.connect(identity("bob", "org-a"), bob)
    registry.connect(identity("carol", "org-b"), FakeConnection())
    registry.notify(broadcast())
    registry.notify(direct("bob"))
    assert value(metrics, "officerouter_connections") == 3
    assert value(metrics, "officerouter_rooms") == 2
    assert value(metrics, "officerouter_presence_users") == 3
    assert value(metrics, "officerouter_history_entries") == 2
    # The broadcast reached alice and bob; the direct message bob.
    assert value(metrics, "officerouter_deliveries_total", type="room_updated") == 3
    epoch = alice.frames[0]["payload"]["epoch"]
    registry.connect(identity("dave", "org-a"), FakeConnection(), since=f"{epoch}.1")
    registry.connect(identity("erin", "org-a"), FakeConnection(), since="nonsense")
    assert value(metrics, "officerouter_recoveries_total", recovered="true") == 1
    assert value(metrics, "officerouter_recoveries_total", recovered="false") == 1


def test_relayed_client_messages_count_as_deliveries(clock: Clock, metrics: Metrics):
    """An ephemeral relay counts the connections it was written to, by type."""
    registry = make_registry(clock)
    metrics.registry.register(
        RouterCollector(registry, factory_for(registry, clock, metrics))
    )
    alice = registry.connect(identity("alice", "org-a"), FakeConnection())
    for user in ("bob", "carol"):
        registry.connect(identity(user, "org-a"), FakeConnection())
    registry.receive(
        alice,
        ClientMessage(type="position_update", payload=PositionUpdate(x=1, y=2)),
    )
    assert value(metrics, "officerouter_deliveries_total", type="position_update") == 2


def test_frames_sent_is_read_from_the_factory(clock: Clock, metrics: Metrics):
    """frames_sent is a plain integer on the factory, exposed as a counter."""
    registry = make_registry(clock)
    factory = factory_for(registry, clock, metrics)
    metrics.registry.register(RouterCollector(registry, factory))
    factory.frames_sent += 5
    assert value(metrics, "officerouter_frames_sent_total") == 5


def test_counters_take_no_ids(metrics: Metrics):
    """No label of any instrument can carry an org, user or connection id."""
    allowed = {"status", "reason", "type", "outcome", "code", "by", "generation"}
    for collector in list(metrics.registry._collector_to_names):
        for family in collector.describe():
            for sample in family.samples:
                assert set(sample.labels) <= allowed, family.name
    for name in ("frames_received", "handshakes", "closes", "notifications"):
        instrument = getattr(metrics, name)
        assert set(instrument._labelnames) <= allowed


def test_close_codes_are_bounded():
    """A client's own close code (3000-4999) is 'other'; ours keep their number."""
    assert close_label(codes.CLOSE_BANNED) == "4003"
    assert close_label(codes.CLOSE_TRY_AGAIN_LATER) == "1013"
    assert close_label(4321) == "other"
    assert close_label(None) == "1005"


def test_reactor_lag_measures_how_late_the_timer_fires(clock: Clock):
    """Fired on time: 0 lag; fired 0.25 s late: 0.25; stopping cancels the timer
    (the flood guard's probe, which runs it, has no other user here)."""
    metrics = Metrics()
    probe = LagProbe(clock)
    lag = ReactorLag(metrics, probe)
    lag.startService()
    clock.advance(0.1)
    assert value(metrics, "officerouter_reactor_lag_seconds_count") == 1
    assert value(metrics, "officerouter_reactor_lag_last_seconds") == 0
    clock.advance(0.35)
    assert value(metrics, "officerouter_reactor_lag_last_seconds") == pytest.approx(
        0.25
    )
    assert value(metrics, "officerouter_reactor_lag_seconds_bucket", le="0.25") == 2
    assert value(metrics, "officerouter_reactor_lag_seconds_bucket", le="0.1") == 1
    lag.stopService()
    assert clock.getDelayedCalls() == []
    assert probe.observers == []


def test_gc_pauses_are_timed_while_running():
    """A collection is observed by generation; stopping removes the callback."""
    metrics = Metrics()
    pauses = GCPauses(metrics)
    before = list(gc.callbacks)
    pauses.startService()
    try:
        gc.collect()
        assert (
            value(metrics, "officerouter_gc_pause_seconds_count", generation="2") >= 1
        )
        assert (
            value(metrics, "officerouter_gc_pause_longest_seconds", generation="2") > 0
        )
    finally:
        pauses.stopService()
    assert gc.callbacks == before


def test_gc_pauses_start_twice_installs_once():
    """Starting again (twistd never does, a test might) adds no second callback."""
    pauses = GCPauses(Metrics())
    pauses.startService()
    pauses.running = False
    pauses.startService()
    try:
        assert sum(1 for c in gc.callbacks if c == pauses._callback) == 1
    finally:
        pauses.stopService()
    assert pauses._callback not in gc.callbacks


def _notify_site(clock: Clock, metrics: Metrics, settings: Settings) -> StubTreq:
    registry = make_registry(clock)
    registry.connect(identity("alice", "org-a"), FakeConnection())
    factory = factory_for(registry, clock, metrics)
    site = make_site(registry, settings, factory, max_body_bytes=4096)
    return StubTreq(site.resource)


@pytest.fixture
def service_settings(settings: Settings) -> Settings:
    return attrs.evolve(
        settings, service_client_id="svc-id", service_client_secret="svc-secret"
    )


@pytest_twisted.ensureDeferred
async def test_notifications_by_status_with_latency(
    clock: Clock, metrics: Metrics, service_settings: Settings
):
    """Every notify answer is counted by status; a 200 observes its latency."""
    treq = _notify_site(clock, metrics, service_settings)
    body = json.dumps(
        {
            "orgId": "org-a",
            "routing": "broadcast",
            "type": "room_updated",
            "payload": {"roomId": "r1", "name": "Hall"},
        }
    ).encode()
    url = "http://router/internal/notify"
    ok = await treq.post(url, data=body, headers=SERVICE)
    assert ok.code == 200
    bad = await treq.post(url, data=b"{}", headers=SERVICE)
    assert bad.code == 400
    unauthorized = await treq.post(
        url, data=body, headers={"Content-Type": "application/json"}
    )
    assert unauthorized.code == 401
    assert value(metrics, "officerouter_notifications_total", status="200") == 1
    assert value(metrics, "officerouter_notifications_total", status="400") == 1
    assert value(metrics, "officerouter_notifications_total", status="401") == 1
    assert value(metrics, "officerouter_notify_latency_seconds_count") == 1


@pytest_twisted.ensureDeferred
async def test_metrics_resource_serves_the_text_format(metrics: Metrics):
    """GET /metrics answers the exposition with Prometheus's content type."""
    metrics.handshake_accepted()
    treq = StubTreq(MetricsResource(metrics.registry))
    response = await treq.get("http://metrics/")
    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-type")[0].startswith(
        b"text/plain; version=0.0.4"
    )
    text = (await response.content()).decode()
    assert 'officerouter_handshakes_total{reason="",status="101"} 1.0' in text


def test_workers_metrics_merge_with_a_worker_label():
    """Families of the same name from two workers become one, labelled by worker."""
    a, b = Metrics(), Metrics()
    a.handshake_accepted()
    b.handshake_accepted()
    b.handshake_accepted()
    b.frame_received("position_update", "relayed")
    families = merge_worker_metrics(
        [
            ("w-1", generate_latest(a.registry).decode()),
            ("w-2", generate_latest(b.registry).decode()),
        ]
    )
    handshakes = [f for f in families if f.name == "officerouter_handshakes"]
    assert len(handshakes) == 1
    totals = {
        s.labels["worker"]: s.value
        for s in handshakes[0].samples
        if s.name == "officerouter_handshakes_total"
    }
    assert totals == {"w-1": 1.0, "w-2": 2.0}


class _Port:
    stopped = False

    def stopListening(self) -> None:
        self.stopped = True


class _Endpoint:
    """A server endpoint that listens, or fails to, at once."""

    def __init__(self, result: Any) -> None:
        self.result = result

    def listen(self, factory: Any) -> Any:
        if isinstance(self.result, Exception):
            return defer.fail(self.result)
        return defer.succeed(self.result)


def test_metrics_listener_stops_listening_with_the_service(metrics: Metrics):
    """The listener listens on start and stops listening on stop."""
    port = _Port()
    listener = MetricsListener(
        _Endpoint(port), metrics_site(MetricsResource(metrics.registry)), "tcp:9108"
    )
    listener.startService()
    assert not port.stopped
    listener.stopService()
    assert port.stopped


def test_metrics_listener_that_cannot_listen_logs_one_error(
    metrics: Metrics, log_events: list[dict[str, Any]]
):
    """A port in use is one error naming --metrics; the router serves on."""
    listener = MetricsListener(
        _Endpoint(CannotListenError("127.0.0.1", 9108, OSError("in use"))),
        metrics_site(MetricsResource(metrics.registry)),
        "tcp:9108",
    )
    listener.startService()
    errors = [e for e in log_events if e.get("log_level") == LogLevel.error]
    assert len(errors) == 1
    assert errors[0]["endpoint"] == "tcp:9108"
    assert "--metrics" in errors[0]["log_format"]
    assert listener.stopService() is None
