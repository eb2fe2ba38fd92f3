"""Prometheus metrics: the instruments, what is read at scrape time, and the listener.

:class:`Metrics` owns a :class:`~prometheus_client.CollectorRegistry` of its own
(never the process-wide default, so that every test and every factory has its
own) and the instruments the adapters count with: handshakes, frames, closes,
notifications, slow-client drops.  Figures the core already holds (connections,
rooms, history entries, presence, deliveries, recoveries) are read when
Prometheus scrapes, by :class:`RouterCollector`, and cost nothing in between.

:class:`ReactorLag` and :class:`GCPauses` are services: started and stopped with
the daemon, so a stopped daemon (or a finished test) leaves no timer and no
``gc.callbacks`` entry behind.  :func:`metrics_site` is the listener of
``--metrics``, on a port of its own and never on the public one.

With ``--workers``, the parent serves one target for the machine:
:class:`WorkersResource` reads every worker's metrics over a private Unix socket
and adds a ``worker`` label (docs/operations.md, "Metrics").

No label ever takes an org, user or connection id.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from twisted.application import service
from twisted.internet import defer, endpoints
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import client, server
from twisted.web.resource import Resource

from officerouter import codes
from officerouter.limits import LAG_INTERVAL, LagProbe

log = Logger()

#: The text format every Prometheus reads (2.x and 3.x); prometheus_client's
#: CONTENT_TYPE_LATEST names a 1.0.0 that Prometheus 2 does not know, for the
#: same text when no name needs escaping (ours never do).
CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


#: Where a close code or a refusal is not one of ours: a bounded label value.
OTHER = "other"
#: The type label of a frame that was not decoded (rate limited, binary, invalid).
UNKNOWN_TYPE = "unknown"

# Latency buckets, seconds: from a notify answered in the same reactor turn
# (tens of microseconds) to one waiting on a slow Redis.
_LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
# Lag and pause buckets: a healthy reactor is late by under a millisecond; past
# 100 ms every client notices.
_PAUSE_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)

#: Close codes kept as their own label value; anything else a client sends is
#: ``other`` (a client may choose any code from 3000 to 4999).
CLOSE_CODES = frozenset(
    {
        1000,
        1001,
        1002,
        1003,
        1005,
        1006,
        1007,
        1008,
        1009,
        1010,
        1011,
        1012,
        1013,
        1014,
        codes.CLOSE_TOKEN_EXPIRED,
        codes.CLOSE_BANNED,
    }
)


def close_label(code: int | None) -> str:
    """A close code as a bounded label value."""
    if code is None:
        return "1005"  # no status code in the close frame (RFC 6455, 7.1.5)
    return str(code) if code in CLOSE_CODES else OTHER


class Metrics:
    """The router's instruments, in a registry of their own.

    :param registry: where to register (default: a new, private one).
    :param now: a monotonic clock for latencies (seconds).
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        now: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.now = now
        r = self.registry
        self.handshakes = Counter(
            "officerouter_handshakes",
            "WebSocket opening handshakes by HTTP status (101: accepted) and reason.",
            ["status", "reason"],
            registry=r,
        )
        self._accepted = self.handshakes.labels("101", "")
        self.frames_received = Counter(
            "officerouter_frames_received",
            "Frames received from clients, by message type and outcome "
            "(relayed, answered, refused, rate_limited).",
            ["type", "outcome"],
            registry=r,
        )
        self._received: dict[tuple[str, str], Any] = {}
        self.closes = Counter(
            "officerouter_closes",
            "WebSocket connections closed, by close code and by whom "
            "(server, client; abnormal: no closing handshake).",
            ["code", "by"],
            registry=r,
        )
        self.slow_client_drops = Counter(
            "officerouter_slow_client_drops",
            "Connections closed with 1013 because their queue passed "
            "--hard-buffer-bytes.",
            registry=r,
        )
        self.notifications = Counter(
            "officerouter_notifications",
            "POST /internal/notify requests by HTTP status.",
            ["status"],
            registry=r,
        )
        self._notified: dict[int, Any] = {}
        self.notify_latency = Histogram(
            "officerouter_notify_latency_seconds",
            "From a notify request read whole to its frames queued (with Redis: "
            "to the message numbered and stored), for answered 200s.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.reactor_lag = Histogram(
            "officerouter_reactor_lag_seconds",
            f"How late a timer scheduled every {LAG_INTERVAL:g} s fires.",
            buckets=_PAUSE_BUCKETS,
            registry=r,
        )
        self.reactor_lag_last = Gauge(
            "officerouter_reactor_lag_last_seconds",
            "How late the reactor-lag timer fired last.",
            registry=r,
        )
        self.gc_pauses = Histogram(
            "officerouter_gc_pause_seconds",
            "Garbage-collection pauses by generation.",
            ["generation"],
            buckets=_PAUSE_BUCKETS,
            registry=r,
        )
        self.gc_pause_longest = Gauge(
            "officerouter_gc_pause_longest_seconds",
            "The longest garbage-collection pause since the process started.",
            ["generation"],
            registry=r,
        )
        self.redis_rtt = Histogram(
            "officerouter_redis_rtt_seconds",
            "Round trip of the liveness PING on the Redis command connection.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )

    # ------------------------------------------------------------ counting

    def handshake_accepted(self) -> None:
        """A handshake was answered 101."""
        self._accepted.inc()

    def handshake_refused(self, status: int, reason: str) -> None:
        """A handshake was refused; ``reason`` must come from a bounded set."""
        self.handshakes.labels(str(status), reason).inc()

    def frame_received(self, type_: str, outcome: str) -> None:
        """A client frame of ``type_`` (a catalog type, or ``unknown``)."""
        key = (type_, outcome)
        child = self._received.get(key)
        if child is None:
            child = self._received[key] = self.frames_received.labels(*key)
        child.inc()

    def closed(self, code: int | None, by: str) -> None:
        """A connection that was open has closed."""
        self.closes.labels(close_label(code), by).inc()

    def notified(self, status: int, started: float | None = None) -> None:
        """A notify was answered with ``status``; ``started`` for its latency."""
        child = self._notified.get(status)
        if child is None:
            child = self._notified[status] = self.notifications.labels(str(status))
        child.inc()
        if started is not None and status == 200:
            self.notify_latency.observe(self.now() - started)


class RouterCollector(Collector):
    """Figures the router already holds, read when Prometheus scrapes.

    :param registry: the :class:`~officerouter.registry.OrgRegistry`.
    :param factory: the WebSocket factory (frames sent).
    :param link: the Redis link, with ``--redis``.
    :param backplane: the Redis backplane, with ``--redis``.
    """

    def __init__(
        self,
        registry: Any,
        factory: Any,
        link: Any = None,
        backplane: Any = None,
    ) -> None:
        self._registry = registry
        self._factory = factory
        self._link = link
        self._backplane = backplane

    def collect(self) -> Iterator[Metric]:
        registry = self._registry
        yield GaugeMetricFamily(
            "officerouter_connections",
            "Open WebSocket connections on this process.",
            value=registry.connection_count,
        )
        yield GaugeMetricFamily(
            "officerouter_rooms",
            "Orgs with at least one connection on this process.",
            value=registry.room_count,
        )
        yield GaugeMetricFamily(
            "officerouter_history_rooms",
            "Orgs without a connection, kept for their history.",
            value=registry.history_room_count,
        )
        rooms = registry.rooms()
        yield GaugeMetricFamily(
            "officerouter_history_entries",
            "Messages kept for recovery, in every org's window on this process.",
            value=sum(len(room.stream) for room in rooms),
        )
        yield GaugeMetricFamily(
            "officerouter_presence_users",
            "Users online in presence, summed over the orgs this process serves.",
            value=sum(room.online_count() for room in rooms),
        )
        tally = registry.tally
        deliveries = CounterMetricFamily(
            "officerouter_deliveries",
            "Connections routed messages (notifications, relayed client messages) "
            "were written to, by message type.",
            labels=["type"],
        )
        for type_, count in sorted(tally.deliveries.items()):
            deliveries.add_metric([type_], count)
        yield deliveries
        recoveries = CounterMetricFamily(
            "officerouter_recoveries",
            "Connections asking ?since=, by whether what they missed was replayed.",
            labels=["recovered"],
        )
        for recovered, count in sorted(tally.recoveries.items()):
            recoveries.add_metric(["true" if recovered else "false"], count)
        yield recoveries
        yield CounterMetricFamily(
            "officerouter_frames_sent",
            "Messages queued to clients (one per frame, each connection counted).",
            value=self._factory.frames_sent,
        )
        if self._link is not None:
            yield from self._redis()

    def _redis(self) -> Iterable[Metric]:
        link, backplane = self._link, self._backplane
        yield GaugeMetricFamily(
            "officerouter_backplane_up",
            "1 while Redis is connected (both connections) and usable, else 0.",
            value=1 if self._registry.unavailable() is None else 0,
        )
        yield CounterMetricFamily(
            "officerouter_redis_reconnects",
            "Times the Redis link came back after being lost.",
            value=link.reconnects,
        )
        yield CounterMetricFamily(
            "officerouter_redis_gaps_filled",
            "Gaps in an org's delivery filled from the Redis stream.",
            value=backplane.gaps_filled,
        )
        yield CounterMetricFamily(
            "officerouter_redis_gap_messages",
            "Messages delivered from the Redis stream to fill gaps.",
            value=backplane.gap_messages,
        )
        yield CounterMetricFamily(
            "officerouter_redis_gaps_lost",
            "Gaps the Redis stream no longer held (connections closed with 1012).",
            value=backplane.gaps_lost,
        )


class ReactorLag(service.Service):
    """How late the reactor runs a timer due every 100 ms: the figure that tells
    an operator the process is overloaded (a busy reactor runs timers late).

    The timer is the flood guard's :class:`~officerouter.limits.LagProbe`, kept
    running while this service runs: one timer serves both.
    """

    def __init__(self, metrics: Metrics, probe: LagProbe) -> None:
        self._metrics = metrics
        self._probe = probe

    def startService(self) -> None:
        super().startService()
        self._probe.observers.append(self._observe)
        self._probe.attach()

    def _observe(self, lag: float) -> None:
        self._metrics.reactor_lag.observe(lag)
        self._metrics.reactor_lag_last.set(lag)

    def stopService(self) -> None:
        super().stopService()
        self._probe.detach()
        self._probe.observers.remove(self._observe)


class GCPauses(service.Service):
    """Times every garbage collection through ``gc.callbacks``, while running."""

    def __init__(
        self, metrics: Metrics, now: Callable[[], float] = time.perf_counter
    ) -> None:
        self._metrics = metrics
        self._now = now
        self._started: float | None = None
        self._longest: dict[int, float] = {}
        self._children = {
            generation: metrics.gc_pauses.labels(str(generation))
            for generation in range(3)
        }

    def startService(self) -> None:
        super().startService()
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def stopService(self) -> None:
        super().stopService()
        while self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = self._now()
            return
        if self._started is None:
            return
        pause = self._now() - self._started
        self._started = None
        generation = int(info.get("generation", 2))
        child = self._children.get(generation)
        if child is None:
            return
        child.observe(pause)
        if pause > self._longest.get(generation, -1.0):
            self._longest[generation] = pause
            self._metrics.gc_pause_longest.labels(str(generation)).set(pause)


class MetricsResource(Resource):
    """``GET /metrics``: the registry in Prometheus's text format."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self._registry = registry

    def render_GET(self, request: server.Request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE)
        request.setHeader(b"cache-control", b"no-store")
        return generate_latest(self._registry)


class MetricsSite(server.Site):
    """The ``--metrics`` listener's site (named apart from the public one in the
    log: "MetricsSite starting on ..."); it writes no access log."""

    def log(self, request: Any) -> None:
        pass


def metrics_site(resource: Resource) -> MetricsSite:
    """The ``--metrics`` listener's site: ``/metrics`` only."""
    root = Resource()
    root.putChild(b"metrics", resource)
    site = MetricsSite(root)
    site.displayTracebacks = False
    site.noisy = False
    return site


class MetricsListener(service.Service):
    """Listens for scrapes while running.

    An endpoint that cannot listen (its port in use) is logged as one error and
    the router serves on without metrics: a scrape target that fails is what
    an operator's ``up == 0`` alert is for, and clients should not lose their
    router over it.
    """

    def __init__(self, endpoint: Any, site: server.Site, description: str) -> None:
        self._endpoint = endpoint
        self._site = site
        self._description = description
        self._port: Any = None
        self._listening: defer.Deferred[Any] | None = None

    def startService(self) -> None:
        super().startService()
        self._listening = self._endpoint.listen(self._site)
        self._listening.addCallbacks(self._listened, self._failed)

    def _listened(self, port: Any) -> None:
        self._port = port
        self._listening = None

    def _failed(self, failure: Failure) -> None:
        self._listening = None
        log.error(
            "--metrics: cannot listen on {endpoint}: {why}; serving without metrics",
            endpoint=self._description,
            why=failure.getErrorMessage(),
        )

    def stopService(self) -> defer.Deferred[None] | None:
        super().stopService()
        if self._listening is not None:
            self._listening.cancel()
        port, self._port = self._port, None
        if port is not None:
            stopped: defer.Deferred[None] = defer.maybeDeferred(port.stopListening)
            return stopped
        return None


# ---------------------------------------------------------------- --workers


def worker_socket(directory: Path, worker: str) -> Path:
    """Where a worker serves its metrics for the parent to read."""
    return directory / f"{worker}.sock"


def worker_endpoint(path: Path) -> str:
    """The ``--metrics`` endpoint string a worker is given (a Unix socket)."""
    escaped = str(path).replace("\\", "\\\\").replace(":", "\\:")
    return f"unix:{escaped}:mode=600:lockfile=1"


class _UnixSocket:
    """An Agent endpoint factory: every URI goes to one Unix socket."""

    def __init__(self, reactor: Any, path: Path, timeout: float) -> None:
        self._reactor = reactor
        self._path = path
        self._timeout = timeout

    def endpointForURI(self, uri: Any) -> Any:
        return endpoints.UNIXClientEndpoint(
            self._reactor, str(self._path), self._timeout
        )


def merge_worker_metrics(
    texts: Sequence[tuple[str, str]],
) -> list[Metric]:
    """The metric families of every worker's exposition, each sample labelled
    with its ``worker``; families of the same name are merged into one."""
    families: dict[str, Metric] = {}
    for worker, text in texts:
        for family in text_string_to_metric_families(text):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
            for sample in family.samples:
                merged.samples.append(
                    sample._replace(labels={"worker": worker, **sample.labels})
                )
    return list(families.values())


def machine_families(
    workers: Sequence[Any], texts: Sequence[str | None]
) -> list[Metric]:
    """What the parent of ``--workers`` answers: every worker's metrics (``texts``,
    ``None`` for a worker that did not answer) and its own about them."""
    families = merge_worker_metrics(
        [(w.name, text) for w, text in zip(workers, texts, strict=True) if text]
    )
    up = GaugeMetricFamily(
        "officerouter_worker_up",
        "1 when the worker answered the parent's read of its metrics.",
        labels=["worker"],
    )
    restarts = CounterMetricFamily(
        "officerouter_worker_restarts",
        "Times the parent restarted the worker after it ended.",
        labels=["worker"],
    )
    for worker, text in zip(workers, texts, strict=True):
        up.add_metric([worker.name], 1 if text else 0)
        restarts.add_metric([worker.name], worker.restarts)
    return [*families, up, restarts]


class _Families(Collector):
    """A collector yielding metric families made elsewhere."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


class WorkersResource(Resource):
    """``GET /metrics`` in the parent of ``--workers``: the whole machine.

    Each worker's own metrics are read from its Unix socket and labelled
    ``worker``; ``officerouter_worker_up`` says which answered, and
    ``officerouter_worker_restarts_total`` how often each was restarted.

    :param workers: the supervisor's workers (``name``, ``restarts``).
    :param directory: where the workers' sockets are.
    """

    isLeaf = True

    def __init__(
        self,
        reactor: Any,
        workers: Sequence[Any],
        directory: Path,
        timeout: float = 5.0,
    ) -> None:
        super().__init__()
        self._workers = workers
        self._directory = directory
        self._reactor = reactor
        self._timeout = timeout

    def render_GET(self, request: server.Request) -> int:
        names = [worker.name for worker in self._workers]
        reads = [self._read(name) for name in names]
        done = defer.gatherResults(reads)
        done.addCallback(lambda texts: self._answer(request, names, texts))
        done.addErrback(self._failed, request)
        return server.NOT_DONE_YET

    def _read(self, name: str) -> defer.Deferred[str | None]:
        path = worker_socket(self._directory, name)
        agent = client.Agent.usingEndpointFactory(
            self._reactor, _UnixSocket(self._reactor, path, self._timeout)
        )
        d: defer.Deferred[Any] = agent.request(b"GET", b"http://localhost/metrics")
        d.addCallback(client.readBody)
        d.addTimeout(self._timeout, self._reactor)

        def text(body: bytes) -> str:
            return body.decode("utf-8")

        def unread(failure: Failure) -> None:
            # A worker restarting, or not listening yet: reported as down.
            log.debug(
                "could not read the metrics of worker {worker}: {why}",
                worker=name,
                why=failure.getErrorMessage(),
            )

        read: defer.Deferred[str | None] = d.addCallbacks(text, unread)
        return read

    def _answer(
        self, request: server.Request, names: list[str], texts: list[str | None]
    ) -> None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Families(machine_families(self._workers, texts)))
        body = generate_latest(registry)
        if request.finished or getattr(request, "_disconnected", False):
            return
        request.setHeader(b"content-type", CONTENT_TYPE)
        request.setHeader(b"cache-control", b"no-store")
        request.write(body)
        request.finish()

    def _failed(self, failure: Failure, request: server.Request) -> None:
        log.failure("unexpected error merging the workers' metrics", failure)
        if request.finished or getattr(request, "_disconnected", False):
            return
        request.setResponseCode(500)
        request.finish()
