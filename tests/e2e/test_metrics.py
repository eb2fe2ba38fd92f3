"""``--metrics``: the installed daemon serves Prometheus metrics on a listener of
its own, alone and as the parent of ``--workers``."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import pytest_twisted
import treq
from twisted.internet import error, reactor

from tests.daemon import (
    STARTUP_TIMEOUT,
    Daemon,
    free_port,
    handshake,
    open_client,
    post,
    signed,
    spawn_twistd,
    write_env_file,
)
from tests.loopback import Client, sleep, wait_until
from tests.redis_server import RedisServer

pytestmark = pytest.mark.e2e

ORG = "org-m"
BODY = {
    "orgId": ORG,
    "routing": "broadcast",
    "type": "room_updated",
    "payload": {"roomId": "room-1", "name": "Main Hall"},
}
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def listening(daemon: Daemon, site: str) -> int | None:
    """The TCP port ``site`` ("OfficeSite", "MetricsSite") listens on, once logged."""
    found = re.search(rf"\b{site} starting on (\d+)", daemon.text)
    return int(found.group(1)) if found else None


async def scrape(port: int, path: str = "/metrics") -> tuple[int, bytes, Samples]:
    """GET the metrics: status, content type and every sample."""
    response = await treq.get(f"http://127.0.0.1:{port}{path}", persistent=False)
    body = await response.content()
    samples: Samples = {}
    if response.code == 200:
        for family in text_string_to_metric_families(body.decode()):
            for s in family.samples:
                samples[(s.name, frozenset(s.labels.items()))] = s.value
    kind = (response.headers.getRawHeaders(b"content-type") or [b""])[0]
    return response.code, kind, samples


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name`` over every sample carrying ``labels`` (any others too)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def labels_of(samples: Samples) -> Iterator[str]:
    for _name, labels in samples:
        for key, _value in labels:
            yield key


@pytest_twisted.ensureDeferred
async def test_metrics_listener_counts_what_happened(tmp_path: Path):
    """A client, a refused handshake, frames, notifications and a close each move
    their metric on the --metrics listener; the public port has no /metrics."""
    env_file, values = write_env_file(tmp_path)
    daemon = Daemon()
    process = spawn_twistd(
        daemon,
        tmp_path,
        "--env-file",
        str(env_file),
        "--port",
        "tcp:0:interface=127.0.0.1",
        "--metrics",
        "tcp:0:interface=127.0.0.1",
    )
    client: Client | None = None
    try:
        await daemon.port.addTimeout(STARTUP_TIMEOUT, reactor)
        await wait_until(
            lambda: (
                listening(daemon, "OfficeSite") and listening(daemon, "MetricsSite")
            ),
            STARTUP_TIMEOUT,
        )
        port = listening(daemon, "OfficeSite")
        metrics_port = listening(daemon, "MetricsSite")
        assert port
        assert metrics_port
        assert port != metrics_port

        code, kind, before = await scrape(metrics_port)
        assert code == 200
        assert kind == b"text/plain; version=0.0.4; charset=utf-8"
        assert total(before, "officerouter_connections") == 0

        client = await open_client(port, signed(values, "user-1", ORG, "member"))
        expired = signed(values, "user-2", ORG, "member", ttl=-120)
        assert await handshake(port, expired) == 401
        client.send_json({"type": "no_such_type", "payload": {}})
        assert (await client.next())["type"] == "error"
        client.send_json({"type": "position_update", "payload": {"x": 1, "y": 2}})
        secret = values["CF_ACCESS_CLIENT_SECRET"]
        client_id = values["CF_ACCESS_CLIENT_ID"]
        assert (await post(port, BODY, client_id, secret))[0] == 200
        assert (await client.next_of("room_updated"))["payload"] == BODY["payload"]
        assert (await post(port, BODY, client_id, "wrong"))[0] == 401

        _, _, after = await scrape(metrics_port)
        assert total(after, "officerouter_connections") == 1
        assert total(after, "officerouter_rooms") == 1
        assert total(after, "officerouter_presence_users") == 1
        assert total(after, "officerouter_history_entries") == 1
        assert (
            total(after, "officerouter_handshakes_total", status="101", reason="") == 1
        )
        assert (
            total(
                after,
                "officerouter_handshakes_total",
                status="401",
                reason="token expired",
            )
            == 1
        )
        assert (
            total(
                after,
                "officerouter_frames_received_total",
                type="unknown",
                outcome="refused",
            )
            == 1
        )
        assert (
            total(
                after,
                "officerouter_frames_received_total",
                type="position_update",
                outcome="relayed",
            )
            == 1
        )
        assert total(after, "officerouter_notifications_total", status="200") == 1
        assert total(after, "officerouter_notifications_total", status="401") == 1
        assert total(after, "officerouter_notify_latency_seconds_count") == 1
        assert total(after, "officerouter_deliveries_total", type="room_updated") == 1
        # connected, presence, error, room_updated.
        assert total(after, "officerouter_frames_sent_total") >= 4
        assert ("officerouter_reactor_lag_seconds_count", frozenset()) in after
        assert set(labels_of(after)) <= {
            "status",
            "reason",
            "type",
            "outcome",
            "code",
            "by",
            "generation",
            "le",
            "recovered",
        }

        client.sendClose(1000)
        await client.wait_closed()

        async def closed_counted() -> bool:
            _, _, now = await scrape(metrics_port)
            return (
                total(now, "officerouter_closes_total", code="1000", by="client") == 1
            )

        for _ in range(100):
            if await closed_counted():
                break
        else:
            raise AssertionError("the close was not counted")

        # Never on the public port.
        public, _, _ = await scrape(port)
        assert public == 404

        process.signalProcess("TERM")
        ended = await daemon.ended.addTimeout(15, reactor)
        assert isinstance(ended, error.ProcessDone), daemon.text
    finally:
        if client is not None and client.open_now:
            client.dropConnection(abort=True)
        if not daemon.ended.called:
            process.signalProcess("KILL")
            await daemon.ended
    assert "Traceback" not in daemon.text


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_workers_parent_shows_the_whole_machine(
    tmp_path: Path, redis_server: RedisServer
):
    """With --workers, the parent's --metrics shows every worker's metrics labelled
    by worker, with the backplane's; the workers' sockets are gone after the stop."""
    env_file, values = write_env_file(tmp_path)
    port = free_port()
    daemon = Daemon()
    process = spawn_twistd(
        daemon,
        tmp_path,
        "--workers",
        "2",
        "--port",
        f"tcp:{port}:interface=127.0.0.1",
        "--env-file",
        str(env_file),
        "--node-id",
        "box",
        "--metrics",
        "tcp:0:interface=127.0.0.1",
        environ={"REDIS_URL": redis_server.url},
    )
    client: Client | None = None
    try:
        await wait_until(
            lambda: (
                daemon.text.count("OfficeSite starting on") == 2
                and listening(daemon, "MetricsSite")
            ),
            STARTUP_TIMEOUT,
        )
        metrics_port = listening(daemon, "MetricsSite")
        assert metrics_port

        samples: Samples = {}
        for _ in range(200):
            _, _, samples = await scrape(metrics_port)
            if total(samples, "officerouter_worker_up") == 2:
                break
        else:
            raise AssertionError(f"workers not read:\n{daemon.text}")
        workers = {"box-1", "box-2"}
        assert {
            dict(labels)["worker"]
            for name, labels in samples
            if name == "officerouter_backplane_up"
        } == workers
        assert total(samples, "officerouter_backplane_up") == 2
        # Each worker pings Redis every 2 s and times the round trip.
        for _ in range(100):
            _, _, samples = await scrape(metrics_port)
            rtts = [
                v
                for (n, ls), v in samples.items()
                if n == "officerouter_redis_rtt_seconds_count"
            ]
            if len(rtts) == 2 and min(rtts) >= 1:
                break
            await sleep(0.1)
        else:
            raise AssertionError("no Redis round trip was measured")

        client = await open_client(port, signed(values, "user-1", ORG, "member"))
        status, _ = await post(
            port,
            BODY,
            values["CF_ACCESS_CLIENT_ID"],
            values["CF_ACCESS_CLIENT_SECRET"],
        )
        assert status == 200
        await client.next_of("room_updated")

        _, _, samples = await scrape(metrics_port)
        assert total(samples, "officerouter_connections") == 1
        assert total(samples, "officerouter_handshakes_total", status="101") == 1
        assert total(samples, "officerouter_notifications_total", status="200") == 1
        assert total(samples, "officerouter_deliveries_total", type="room_updated") == 1
        for (name, labels), _value in samples.items():
            if name.startswith("officerouter_") and not name.startswith(
                "officerouter_worker_"
            ):
                assert dict(labels).get("worker") in workers, name
        assert total(samples, "officerouter_worker_restarts_total") == 0

        # Each worker serves its own on a private Unix socket, in one directory.
        sockets = {
            Path(path)
            for path in re.findall(
                r"MetricsSite starting on '([^']+\.sock)'", daemon.text
            )
        }
        assert {path.name for path in sockets} == {"box-1.sock", "box-2.sock"}
        (directory,) = {path.parent for path in sockets}
        assert directory.stat().st_mode & 0o077 == 0

        process.signalProcess("TERM")
        await client.wait_closed(timeout=15)
        ended = await daemon.ended.addTimeout(30, reactor)
        assert isinstance(ended, error.ProcessDone), daemon.text
        assert not directory.exists()
    finally:
        if client is not None and client.open_now:
            client.dropConnection(abort=True)
        if not daemon.ended.called:
            process.signalProcess("KILL")
            await daemon.ended
    assert "Traceback" not in daemon.text
