"""What a cluster does when Redis or a process fails (docs/cluster.md, failure table).

Routers in this process share a redis-server of the test's own, which the tests
stop, kill and start again; a daemon killed with SIGKILL runs as a real ``twistd``
subprocess.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

import pytest_twisted
from twisted.internet import error, reactor, task

from officerouter.config import Settings
from tests.daemon import (
    Daemon,
    clean_environ,
    free_port,
    open_client,
    post,
    signed,
    twistd_command,
    write_env_file,
)
from tests.loopback import Router, start_router
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ORG = "org-faults"


def room_updated(name: str) -> dict[str, Any]:
    return {
        "orgId": ORG,
        "routing": "broadcast",
        "type": "room_updated",
        "payload": {"roomId": "r", "name": name},
    }


async def eventually(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait (polling the reactor) until ``predicate()`` holds."""
    deadline = reactor.seconds() + timeout
    while not predicate():
        assert reactor.seconds() < deadline, "condition not reached in time"
        await task.deferLater(reactor, 0.02, lambda: None)


async def pair(settings: Settings, redis: RedisServer, **options: Any) -> list[Router]:
    return [
        await start_router(settings, redis_url=redis.url, node_id=node, **options)
        for node in ("node-a", "node-b")
    ]


@pytest_twisted.async_yield_fixture
async def routers(
    settings: Settings, redis_server: RedisServer
) -> AsyncIterator[list[Router]]:
    """Two routers sharing the test's redis-server."""
    both = await pair(settings, redis_server)
    yield both
    for router in both:
        await router.close()


@pytest_twisted.ensureDeferred
async def test_redis_outage_is_503_and_a_restart_without_data_is_a_new_epoch(
    routers, redis_server, token
):
    """While Redis is down nothing is numbered (notify, handshakes and /healthz
    answer 503) and connections stay; when it comes back empty, the stream has a
    new epoch: connections are closed with 1012 and recover with ``recovered:
    false``."""
    a, b = routers
    alice = await a.connect(token("alice", ORG))
    bob = await b.connect(token("bob", ORG))
    status, body = await b.notify(room_updated("before"))
    assert (status, body["seq"]) == (200, 1)
    for client in (alice, bob):
        assert (await client.next())["payload"]["name"] == "before"
    epoch = alice.welcome["payload"]["epoch"]

    redis_server.stop()
    await eventually(lambda: a.registry.unavailable() is not None)
    result = await a.http(
        "POST",
        "/internal/notify",
        headers={
            "CF-Access-Client-Id": a.service_id,
            "CF-Access-Client-Secret": a.service_secret,
            "Content-Type": "application/json",
        },
        data=b'{"orgId":"org-faults","routing":"broadcast","type":"room_updated",'
        b'"payload":{"roomId":"r","name":"lost?"}}',
    )
    assert result.code == 503
    assert result.headers.getRawHeaders(b"retry-after") == [b"1"]
    assert result.json()["error"] == "unavailable"
    health = await a.http("GET", "/healthz")
    assert health.code == 503
    assert health.json()["backplane"] == "down"
    status, _ = await a.handshake({"Sec-WebSocket-Protocol": token("carol", ORG)})
    assert status == 503
    assert alice.open_now
    assert bob.open_now

    redis_server.start()
    await eventually(lambda: a.registry.unavailable() is None)
    # The metrics count the link's return (officerouter_redis_reconnects_total).
    assert a.backplane.link.reconnects == 1
    for client in (alice, bob):
        await client.wait_closed()
        assert client.close_code == 1012
    back = await b.connect(token("alice", ORG), query=f"?since={epoch}.1")
    assert back.welcome["payload"]["recovered"] is False
    assert back.welcome["payload"]["epoch"] != epoch
    status, body = await a.notify(room_updated("after"))
    assert (status, body) == (200, {"ok": True, "delivered": 1, "seq": 1})
    assert (await back.next())["payload"]["name"] == "after"


@pytest_twisted.ensureDeferred
async def test_redis_restart_with_persistence_keeps_the_stream(
    settings, tmp_path, token
):
    """Redis restarted with its append-only file keeps the epoch: connections
    stay open and the stream goes on with no gap."""
    redis = RedisServer(tmp_path, appendonly=True)
    redis.start()
    a, b = await pair(settings, redis)
    try:
        alice = await a.connect(token("alice", ORG))
        await b.notify(room_updated("one"))
        assert (await alice.next())["payload"]["name"] == "one"
        redis.stop()
        await eventually(lambda: a.registry.unavailable() is not None)
        redis.start()
        await eventually(lambda: b.registry.unavailable() is None)
        await eventually(lambda: a.registry.unavailable() is None)
        status, body = await b.notify(room_updated("two"))
        assert (status, body["seq"]) == (200, 2)
        assert (await alice.next())["payload"]["name"] == "two"
        assert alice.seqs == [1, 2]
        assert alice.open_now
    finally:
        for router in (a, b):
            await router.close()
        redis.kill()


@pytest_twisted.ensureDeferred
async def test_messages_missed_by_a_dropped_subscription_are_read_from_the_stream(
    routers, redis_server, token
):
    """A router whose subscription was cut (PUB/SUB loses what it published
    meanwhile) reads the gap from the stream: its clients get every message,
    in order, once."""
    a, b = routers
    alice = await a.connect(token("alice", ORG))
    await b.notify(room_updated("m0"))
    assert (await alice.next())["payload"]["name"] == "m0"
    clients = redis_server.cli("CLIENT", "LIST")
    subscriber = next(
        line for line in clients.splitlines() if "name=officerouter:node-a:sub" in line
    )
    address = next(f[5:] for f in subscriber.split() if f.startswith("addr="))
    redis_server.cli("CLIENT", "KILL", address)
    for i in range(1, 11):
        status, _ = await b.notify(room_updated(f"m{i}"))
        assert status == 200
    names = [(await alice.next())["payload"]["name"] for _ in range(10)]
    assert names == [f"m{i}" for i in range(1, 11)]
    assert alice.seqs == list(range(1, 12))
    assert alice.open_now
    # What the metrics show (officerouter_redis_gaps_filled_total and
    # officerouter_redis_gap_messages_total): at least the first message
    # published after the cut was read from the stream; nothing was lost.
    assert a.backplane.gaps_filled >= 1
    assert 1 <= a.backplane.gap_messages <= 10
    assert a.backplane.gaps_lost == 0


@pytest_twisted.ensureDeferred
async def test_a_long_outage_closes_connections_to_find_a_healthy_process(
    settings, redis_server, token
):
    """When Redis stays away longer than the outage bound, connections are
    closed with 1012 so that clients go to a healthy process."""
    (router,) = [
        await start_router(
            settings, redis_url=redis_server.url, node_id="lonely", outage_close=1.0
        )
    ]
    try:
        alice = await router.connect(token("alice", ORG))
        redis_server.kill()
        await alice.wait_closed()
        assert alice.close_code == 1012
    finally:
        await router.close()


@pytest_twisted.ensureDeferred
async def test_killed_daemon_users_leave_and_its_clients_recover_elsewhere(
    tmp_path, redis_server
):
    """A daemon killed with SIGKILL: its users leave the others' presence within
    the grace period plus the heartbeat timeout, and its clients recover on
    another daemon with no gap."""
    env_file, values = write_env_file(tmp_path)
    environ = {**clean_environ(), "REDIS_URL": redis_server.url}
    daemons = []
    for node in ("victim", "survivor"):
        daemon = Daemon()
        command = twistd_command(
            "--port",
            f"tcp:{free_port()}:interface=127.0.0.1",
            "--env-file",
            str(env_file),
            "--node-id",
            node,
            "--presence-grace",
            "1",
            "--heartbeat-timeout",
            "3",
        )
        process = reactor.spawnProcess(
            daemon, command[0], command, env=environ, path=str(tmp_path)
        )
        daemons.append((daemon, process, await daemon.port))
    (_, victim, victim_port), (survivor_daemon, _, survivor_port) = daemons
    secret = (values["CF_ACCESS_CLIENT_ID"], values["CF_ACCESS_CLIENT_SECRET"])
    try:
        doomed = await open_client(victim_port, signed(values, "vic", ORG, "member"))
        watcher = await open_client(
            survivor_port, signed(values, "watcher", ORG, "member")
        )
        epoch = doomed.welcome["payload"]["epoch"]
        # vic is online for watcher from the snapshot, or from a user_joined.
        first = await watcher.presence.get()
        if first["payload"].get("users") == []:
            first = await watcher.presence.get()
        assert "vic" in str(first["payload"])
        status, body = await post(survivor_port, room_updated("one"), *secret)
        assert (status, body["seq"]) == (200, 1)
        assert (await doomed.next())["payload"]["name"] == "one"

        killed_at = reactor.seconds()
        os.kill(victim.pid, signal.SIGKILL)
        await doomed.wait_closed()
        status, body = await post(survivor_port, room_updated("two"), *secret)
        assert (status, body["seq"]) == (200, 2)
        back = await open_client(survivor_port, signed(values, "other", ORG, "member"))
        assert back.welcome["payload"]["epoch"] == epoch
        recovered = await open_client(
            survivor_port, signed(values, "vic", ORG, "member"), f"?since={epoch}.1"
        )
        assert recovered.welcome["payload"]["recovered"] is True
        assert (await recovered.next())["payload"]["name"] == "two"
        recovered.sendClose()
        await recovered.wait_closed()

        # vic is gone from the victim for good: watcher hears it leave within
        # the grace period (1 s) plus the heartbeat timeout (3 s) and a check.
        seen: list[dict[str, Any]] = []
        while True:
            d = watcher.presence.get()
            d.addTimeout(10, reactor)
            frame = await d
            seen.append(frame)
            if frame == {"type": "user_left", "payload": {"userId": "vic"}}:
                break
        assert reactor.seconds() - killed_at < 1 + 3 + 2 + 2
        for client in (watcher, back):
            client.sendClose()
            await client.wait_closed()
    finally:
        for _, process, _ in daemons:
            with contextlib.suppress(error.ProcessExitedAlready):
                process.signalProcess("TERM")
        await survivor_daemon.ended


async def run_daemon(tmp_path: Any, *options: str) -> tuple[int, str]:
    """Run the installed daemon to its end: exit status and everything it wrote."""
    env_file, _ = write_env_file(tmp_path)
    daemon = Daemon()
    command = twistd_command(
        "--port", "tcp:0:interface=127.0.0.1", "--env-file", str(env_file), *options
    )
    reactor.spawnProcess(
        daemon, command[0], command, env=clean_environ(), path=str(tmp_path)
    )
    daemon.port.addErrback(lambda _: None)
    ended = await daemon.ended
    return ended.exitCode, daemon.text


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis://:s3cret-pw@127.0.0.1:6379/x", "the database must be a number"),
        ("http://:s3cret-pw@127.0.0.1:6379/0", "not a Redis URL"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_redis_url_is_one_line_without_the_password(tmp_path, url, says):
    """An unusable ``--redis`` URL ends the daemon at once with one line naming
    the problem, never repeating the password."""
    code, text = await run_daemon(tmp_path, "--redis", url)
    assert code == 1
    assert says in text
    assert "s3cret-pw" not in text
    assert "Traceback" not in text


@pytest_twisted.ensureDeferred
async def test_unreachable_or_refusing_redis_ends_start_up(tmp_path, redis_server):
    """Redis unreachable for ``--redis-wait`` seconds, or refusing the password,
    ends start-up with status 1 and one line, before anything is served."""
    code, text = await run_daemon(
        tmp_path, "--redis", f"redis://127.0.0.1:{free_port()}/0", "--redis-wait", "1"
    )
    assert code == 1
    assert "officerouter: --redis: cannot use" in text
    assert "Site starting" not in text
    protected = RedisServer(tmp_path, password="right-pw")
    protected.start()
    try:
        code, text = await run_daemon(
            tmp_path,
            "--redis",
            f"redis://:wrong-pw@127.0.0.1:{protected.port}/0",
            "--redis-wait",
            "5",
        )
    finally:
        protected.kill()
    assert code == 1
    assert "officerouter: --redis: cannot use" in text
    assert "wrong-pw" not in text
    assert "Site starting" not in text


@pytest_twisted.ensureDeferred
async def test_redis_behind_what_was_delivered_starts_a_new_epoch(
    routers, redis_server, token
):
    """Redis back with fewer numbers than were delivered (it lost its last
    writes) would give numbers twice: the stream ends, clients are closed with
    1012 and recover in a new epoch, and the next message is numbered there."""
    a, b = routers
    alice = await a.connect(token("alice", ORG))
    for name in ("one", "two", "three"):
        await b.notify(room_updated(name))
    for _ in range(3):
        await alice.next()
    epoch = alice.welcome["payload"]["epoch"]
    # What an AOF restart that lost its last second looks like, then the
    # reconnection that follows a restart.
    redis_server.cli("HSET", "officerouter:{org-faults}:meta", "seq", "1")
    redis_server.cli("CLIENT", "KILL", "TYPE", "pubsub")
    redis_server.cli("CLIENT", "KILL", "TYPE", "normal")
    await alice.wait_closed()
    assert alice.close_code == 1012
    back = await a.connect(token("alice", ORG), query=f"?since={epoch}.3")
    assert back.welcome["payload"]["recovered"] is False
    new_epoch = back.welcome["payload"]["epoch"]
    assert new_epoch != epoch
    status, body = await b.notify(room_updated("four"))
    assert (status, body["seq"]) == (200, 1)
    assert (await back.next())["payload"]["name"] == "four"


@pytest_twisted.ensureDeferred
async def test_graceful_stop_keeps_returning_users_online(
    settings, redis_server, token
):
    """A router stopped gracefully (1001): its users who reconnect elsewhere
    within the grace period do not flap; the others leave once it is over."""
    a, b = await pair(settings, redis_server, presence_grace=1.0)
    try:
        watcher = await b.connect(token("watcher", ORG))
        mover = await a.connect(token("mover", ORG))
        quitter = await a.connect(token("quitter", ORG))
        online: set[str] = set()

        async def follow(until: Callable[[], bool], seconds: float) -> list[str]:
            events = []
            deadline = reactor.seconds() + seconds
            while not until() and reactor.seconds() < deadline:
                d = watcher.presence.get()
                d.addTimeout(max(0.01, deadline - reactor.seconds()), reactor)
                try:
                    frame = await d
                except Exception:
                    break
                if frame["type"] == "presence":
                    online.update(u["userId"] for u in frame["payload"]["users"])
                elif frame["type"] == "user_joined":
                    online.add(frame["payload"]["userId"])
                    events.append("joined " + frame["payload"]["userId"])
                elif frame["type"] == "user_left":
                    online.discard(frame["payload"]["userId"])
                    events.append("left " + frame["payload"]["userId"])
            return events

        await follow(lambda: {"mover", "quitter"} <= online, 5)
        # What SIGTERM does (RouterService, then the backplane service).
        a.registry.close_all(1001, "server shutting down")
        for client in (mover, quitter):
            await client.wait_closed()
            assert client.close_code == 1001
        await task.deferLater(reactor, 0.1, lambda: None)
        await a.registry.stop()
        await a.backplane.stop()
        await a.link.stopService()
        await a.port.stopListening()
        back = await b.connect(token("mover", ORG))
        assert back.welcome["type"] == "connected"
        events = await follow(lambda: "quitter" not in online, 6)
        assert events == ["left quitter"]
        assert "mover" in online
    finally:
        await b.close()
