"""Several routers, one office: three routers in this process share a real Redis.

Each router is a whole daemon but for its process (real Site, factory, registry,
its own Redis connections and node id); clients and the backend talk to them over
loopback.  What a router killed without a word or a Redis restart does is in
``test_cluster_faults.py``.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.defer import Deferred, gatherResults

from officerouter.config import Settings
from tests.loopback import Router, start_router
from tests.redis_server import RedisServer

pytestmark = pytest.mark.e2e

ORG = "org-cluster"
OTHER = "org-elsewhere"


def room_updated(name: str, org: str = ORG, targets: list[str] | None = None) -> Any:
    body: dict[str, Any] = {
        "orgId": org,
        "routing": "broadcast" if targets is None else "direct",
        "type": "room_updated",
        "payload": {"roomId": "r", "name": name},
    }
    if targets is not None:
        body["targets"] = targets
    return body


async def eventually(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait (polling the reactor) until ``predicate()`` holds."""
    deadline = reactor.seconds() + timeout
    while not predicate():
        assert reactor.seconds() < deadline, "condition not reached in time"
        await task.deferLater(reactor, 0.02, lambda: None)


async def presence_frame(client: Any) -> dict[str, Any]:
    """The client's next presence frame (5 s at most)."""
    d = client.presence.get()
    d.addTimeout(5, reactor)
    frame: dict[str, Any] = await d
    return frame


async def online_on(router: Router, *users: str) -> None:
    """Wait until a router's /internal/presence lists these users."""
    deadline = reactor.seconds() + 5
    while True:
        _, body = await router.presence_of(ORG)
        if set(users) <= {u["userId"] for u in body["users"]}:
            return
        assert reactor.seconds() < deadline, body
        await task.deferLater(reactor, 0.02, lambda: None)


@pytest_twisted.async_yield_fixture
async def cluster(
    settings: Settings, redis_server: RedisServer
) -> AsyncIterator[list[Router]]:
    """Three routers (nodes a, b and c) sharing one redis-server."""
    routers = []
    for node in ("node-a", "node-b", "node-c"):
        routers.append(
            await start_router(
                settings,
                redis_url=redis_server.url,
                node_id=node,
                presence_grace=0.5,
            )
        )
    yield routers
    for router in routers:
        await router.close()


@pytest_twisted.ensureDeferred
async def test_notify_on_one_router_reaches_every_router(cluster, token):
    """A broadcast posted to one router reaches the org's clients on all three,
    once each, and the answer counts them all with the message's seq."""
    a, b, c = cluster
    alice = await a.connect(token("alice", ORG))
    bob = await b.connect(token("bob", ORG))
    carol = await c.connect(token("carol", ORG))
    stranger = await c.connect(token("sam", OTHER))
    await eventually(lambda: a.registry.user_connection_count(ORG, "carol") == 1)
    status, body = await b.notify(room_updated("hall"))
    assert (status, body) == (200, {"ok": True, "delivered": 3, "seq": 1})
    for client in (alice, bob, carol):
        assert (await client.next())["payload"]["name"] == "hall"
        assert client.seqs == [1]
    await c.barrier(stranger)
    assert stranger.pending() == []


@pytest_twisted.ensureDeferred
async def test_direct_reaches_the_named_users_on_any_router(cluster, token):
    """A direct message reaches every tab of its targets whichever router holds
    them, and nobody else."""
    a, b, c = cluster
    alice_a = await a.connect(token("alice", ORG))
    alice_c = await c.connect(token("alice", ORG))
    bob = await b.connect(token("bob", ORG))
    await eventually(lambda: b.registry.user_connection_count(ORG, "alice") == 2)
    status, body = await a.notify(room_updated("for-alice", targets=["alice"]))
    assert (status, body) == (
        200,
        {"ok": True, "delivered": 2, "seq": 1, "targets": {"alice": 2}},
    )
    for tab in (alice_a, alice_c):
        assert (await tab.next())["payload"]["name"] == "for-alice"
    await b.barrier(bob)
    assert bob.pending() == []


@pytest_twisted.ensureDeferred
async def test_one_order_under_concurrent_notifies(cluster, token):
    """Notifies posted at once to all three routers reach every client in one
    order: seq 1..N, no gap, no duplicate, whichever router numbered them."""
    clients = [
        await router.connect(token(f"user-{i}", ORG))
        for i, router in enumerate(cluster)
    ]
    answers = await gatherResults(
        [
            Deferred.fromCoroutine(cluster[i % 3].notify(room_updated(f"m{i}")))
            for i in range(60)
        ]
    )
    assert sorted(body["seq"] for _, body in answers) == list(range(1, 61))
    for client in clients:
        for _ in range(60):
            await client.next()
        assert client.seqs == list(range(1, 61))


@pytest_twisted.ensureDeferred
async def test_recovery_on_another_router(cluster, token):
    """A client that drops from one router and reconnects to another with
    ``since`` gets exactly what it missed, recovered."""
    a, b, _ = cluster
    alice = await a.connect(token("alice", ORG))
    await a.notify(room_updated("seen"))
    assert (await alice.next())["payload"]["name"] == "seen"
    epoch = alice.welcome["payload"]["epoch"]
    alice.sendClose()
    await alice.wait_closed()
    for name in ("missed-1", "missed-2"):
        await a.notify(room_updated(name))
    await a.notify(room_updated("not-hers", targets=["bob"]))
    back = await b.connect(token("alice", ORG), query=f"?since={epoch}.1")
    assert back.welcome["payload"]["recovered"] is True
    assert back.welcome["payload"]["epoch"] == epoch
    assert back.welcome["payload"]["seq"] == 4
    assert [(await back.next())["payload"]["name"] for _ in range(2)] == [
        "missed-1",
        "missed-2",
    ]
    assert back.seqs == [2, 3]
    await b.barrier(back)
    assert back.pending() == []


@pytest_twisted.ensureDeferred
async def test_presence_covers_every_router(cluster, token):
    """The snapshot, joins and leaves and GET /internal/presence show the users
    of every router; the backend may ask any of them."""
    a, b, c = cluster
    alice = await a.connect(token("alice", ORG))
    assert (await presence_frame(alice))["payload"] == {"users": []}
    await online_on(b, "alice")
    bob = await b.connect(token("bob", ORG))
    snapshot = await presence_frame(bob)
    assert snapshot["type"] == "presence"
    assert [u["userId"] for u in snapshot["payload"]["users"]] == ["alice"]
    joined = await presence_frame(alice)
    assert joined["type"] == "user_joined"
    assert joined["payload"]["userId"] == "bob"
    for router in (a, b, c):
        status, body = await router.presence_of(ORG)
        assert status == 200
        assert sorted((u["userId"], u["connections"]) for u in body["users"]) == [
            ("alice", 1),
            ("bob", 1),
        ]
    bob.sendClose()
    await bob.wait_closed()
    left = await presence_frame(alice)
    assert left == {"type": "user_left", "payload": {"userId": "bob"}}


@pytest_twisted.ensureDeferred
async def test_moving_to_another_router_within_grace_does_not_flap(cluster, token):
    """A user whose connection moves to another router within the grace period
    is neither left nor joined for the others."""
    a, b, c = cluster
    watcher = await c.connect(token("watcher", ORG))
    mover = await a.connect(token("mover", ORG))
    assert (await presence_frame(watcher))["type"] == "presence"
    assert (await presence_frame(watcher))["payload"]["userId"] == "mover"
    mover.sendClose()
    await mover.wait_closed()
    moved = await b.connect(token("mover", ORG))
    assert moved.welcome["type"] == "connected"
    # Longer than the grace period (0.5 s): a leave would have come by now.
    await task.deferLater(reactor, 1.0, lambda: None)
    assert list(watcher.presence.pending) == []
    status, body = await c.presence_of(ORG)
    assert status == 200
    assert [u["userId"] for u in body["users"]] == ["watcher", "mover"]


@pytest_twisted.ensureDeferred
async def test_positions_cross_routers_batched_per_tick(cluster, token):
    """A position sent to one router reaches the org's clients on the others,
    stamped with its sender, and shows in their presence."""
    a, b, _ = cluster
    alice = await a.connect(token("alice", ORG))
    bob = await b.connect(token("bob", ORG), query="?positions=batched")
    carol = await b.connect(token("carol", ORG))
    alice.send_json({"type": "position_update", "payload": {"x": 3, "y": 4}})
    relayed = await carol.next_of("position_update")
    assert relayed == {
        "type": "position_update",
        "from": "alice",
        "payload": {"x": 3, "y": 4},
    }
    batch = await bob.next_of("positions")
    assert batch["payload"]["positions"] == [{"userId": "alice", "x": 3, "y": 4}]
    status, body = await b.presence_of(ORG)
    assert status == 200
    position = {u["userId"]: u["position"] for u in body["users"]}["alice"]
    assert position == {"x": 3, "y": 4}


@pytest_twisted.ensureDeferred
async def test_ban_closes_everywhere_and_is_remembered(
    cluster, token, settings, redis_server
):
    """A ban closes the user's connections on every router with 4003, and a
    token issued before it is refused by every router, one started afterwards
    too."""
    a, b, c = cluster
    old = token("eve", ORG, iat=int(time.time()) - 10)
    eve_a = await a.connect(old)
    eve_c = await c.connect(old)
    await eventually(lambda: a.registry.user_connection_count(ORG, "eve") == 2)
    status, body = await b.notify(
        {
            "orgId": ORG,
            "routing": "direct",
            "type": "user_banned",
            "targets": ["eve"],
            "payload": {"userId": "eve", "reason": "no"},
        }
    )
    assert (status, body["delivered"]) == (200, 2)
    for tab in (eve_a, eve_c):
        await tab.wait_closed()
        assert tab.close_code == 4003
    late = await start_router(settings, redis_url=redis_server.url, node_id="node-d")
    try:
        for router in (a, b, c, late):
            status, _ = await router.handshake({"Sec-WebSocket-Protocol": old})
            assert status == 403
    finally:
        await late.close()


@pytest_twisted.ensureDeferred
async def test_role_change_applies_on_every_router(cluster, token):
    """``user_updated`` demotes the user's connections on every router before
    routing: the broadcast after it reaches none of them."""
    a, b, c = cluster
    member_a = await a.connect(token("mia", ORG))
    member_b = await b.connect(token("mia", ORG))
    other = await c.connect(token("olga", ORG))
    await eventually(lambda: c.registry.user_connection_count(ORG, "mia") == 2)
    status, _ = await c.notify(
        {
            "orgId": ORG,
            "routing": "broadcast",
            "type": "user_updated",
            "payload": {"userId": "mia", "role": "pending_guest"},
        }
    )
    assert status == 200
    for client in (member_a, member_b, other):
        assert (await client.next())["type"] == "user_updated"
    await a.notify(room_updated("after"))
    assert (await other.next())["payload"]["name"] == "after"
    # A direct message to mia comes next on both tabs: the broadcast did not.
    await a.notify(room_updated("marker", targets=["mia"]))
    for tab in (member_a, member_b):
        assert (await tab.next())["payload"]["name"] == "marker"
        assert tab.pending() == []


@pytest_twisted.ensureDeferred
async def test_per_user_cap_holds_across_routers(settings, redis_server, token):
    """The per-user connection cap counts the user's connections on every router."""
    routers = [
        await start_router(
            settings,
            redis_url=redis_server.url,
            node_id=f"cap-{i}",
            max_connections_per_user=2,
        )
        for i in range(2)
    ]
    try:
        first, second = routers
        await first.connect(token("una", ORG))
        await second.connect(token("una", ORG))
        await eventually(lambda: first.registry.user_connection_count(ORG, "una") == 2)
        status, _ = await first.handshake({"Sec-WebSocket-Protocol": token("una", ORG)})
        assert status == 429
    finally:
        for router in routers:
            await router.close()


@pytest_twisted.ensureDeferred
async def test_healthz_names_the_node(cluster):
    """/healthz says which node answered and that the backplane is up."""
    body = await cluster[1].health()
    assert body["node"] == "node-b"
    assert body["backplane"] == "up"


@pytest_twisted.ensureDeferred
async def test_a_retry_to_another_router_is_answered_once(cluster, token):
    """An Idempotency-Key is shared by every router: a retry posted to another
    one gets the first answer and delivers nothing again."""
    a, b, _ = cluster
    alice = await a.connect(token("alice", ORG))
    headers = {
        "CF-Access-Client-Id": a.service_id,
        "CF-Access-Client-Secret": a.service_secret,
        "Content-Type": "application/json",
        "Idempotency-Key": "knock-42",
    }
    data = json.dumps(room_updated("once")).encode()
    first = await a.http("POST", "/internal/notify", headers=headers, data=data)
    retry = await b.http("POST", "/internal/notify", headers=headers, data=data)
    assert first.code == retry.code == 200
    assert retry.json() == first.json()
    assert retry.headers.getRawHeaders(b"idempotent-replayed") == [b"true"]
    assert (await alice.next())["payload"]["name"] == "once"
    await a.notify(room_updated("marker", targets=["alice"]))
    assert (await alice.next())["payload"]["name"] == "marker"
    assert alice.seqs == [1, 2]
