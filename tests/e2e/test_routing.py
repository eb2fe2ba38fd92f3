"""Routing backend notifications over real sockets: broadcast, direct, isolation."""

from __future__ import annotations

from typing import Any

import pytest

import pytest_twisted
from twisted.internet.defer import Deferred, gatherResults

from tests.loopback import Client, Router, both_deployments

pytestmark = pytest.mark.e2e

ORG_A = "org-a"
ORG_B = "org-b"


def room_updated(org_id: str, room_id: str, **routing: Any) -> dict[str, Any]:
    """A room_updated body, broadcast unless ``routing``/``targets`` say otherwise."""
    body: dict[str, Any] = {
        "orgId": org_id,
        "routing": "broadcast",
        "type": "room_updated",
        "payload": {"roomId": room_id, "name": f"Room {room_id}"},
    }
    body.update(routing)
    return body


def frame(room_id: str) -> dict[str, Any]:
    """What a client receives for :func:`room_updated`: no orgId, no targets."""
    return {
        "type": "room_updated",
        "payload": {"roomId": room_id, "name": f"Room {room_id}"},
    }


@pytest_twisted.ensureDeferred
async def test_broadcast_reaches_every_admitted_connection_of_the_org(
    router: Router, token
):
    """A broadcast reaches every connection of its org, every tab, and no other org."""
    owner = await router.connect(token("olga", ORG_A, "owner"))
    alice_1 = await router.connect(token("alice", ORG_A, "member"))
    alice_2 = await router.connect(token("alice", ORG_A, "member"))
    guest = await router.connect(token("gus", ORG_A, "guest"))
    outsider = await router.connect(token("alice", ORG_B, "owner"))

    status, body = await router.notify(room_updated(ORG_A, "hall"))

    assert (status, body) == (200, {"ok": True, "delivered": 4, "seq": 1})
    for client in (owner, alice_1, alice_2, guest):
        assert await client.next() == frame("hall")
    await router.barrier(owner, alice_1, guest, outsider)
    for client in (owner, alice_1, alice_2, guest, outsider):
        assert client.pending() == []


@pytest_twisted.ensureDeferred
async def test_direct_reaches_all_tabs_of_the_named_users_only(router: Router, token):
    """A direct message reaches every connection of each target and nobody else."""
    alice_1 = await router.connect(token("alice", ORG_A))
    alice_2 = await router.connect(token("alice", ORG_A))
    bob = await router.connect(token("bob", ORG_A, "admin"))
    carol = await router.connect(token("carol", ORG_A))
    bob_elsewhere = await router.connect(token("bob", ORG_B))

    status, body = await router.notify(
        room_updated(
            ORG_A, "secret", routing="direct", targets=["alice", "bob", "nobody"]
        )
    )

    assert (status, body) == (
        200,
        {
            "ok": True,
            "delivered": 3,
            "seq": 1,
            "targets": {"alice": 2, "bob": 1, "nobody": 0},
        },
    )
    for client in (alice_1, alice_2, bob):
        assert await client.next() == frame("secret")
    await router.barrier(alice_1, bob, carol, bob_elsewhere)
    for client in (alice_1, alice_2, bob, carol, bob_elsewhere):
        assert client.pending() == []


@pytest_twisted.ensureDeferred
async def test_other_message_types_are_routed_as_sent(router: Router, token):
    """space_deleted broadcast and guest_knock direct arrive as the contract says."""
    admin = await router.connect(token("ada", ORG_A, "admin"))
    member = await router.connect(token("max", ORG_A, "member"))

    status, body = await router.notify(
        {
            "orgId": ORG_A,
            "routing": "broadcast",
            "type": "space_deleted",
            "payload": {"spaceId": "space-1", "name": "Old HQ"},
        }
    )
    assert (status, body) == (200, {"ok": True, "delivered": 2, "seq": 1})
    status, body = await router.notify(
        {
            "orgId": ORG_A,
            "routing": "direct",
            "type": "guest_knock",
            "targets": ["ada"],
            "payload": {"guestId": "guest-7", "name": "Visitor"},
        }
    )
    assert (status, body) == (
        200,
        {"ok": True, "delivered": 1, "seq": 2, "targets": {"ada": 1}},
    )

    deleted = {
        "type": "space_deleted",
        "payload": {"spaceId": "space-1", "name": "Old HQ"},
    }
    assert await admin.next() == deleted
    assert await member.next() == deleted
    assert await admin.next() == {
        "type": "guest_knock",
        "payload": {"guestId": "guest-7", "name": "Visitor"},
    }
    await router.barrier(admin, member)
    assert admin.pending() == member.pending() == []


@pytest_twisted.ensureDeferred
async def test_orgs_stay_isolated_under_concurrent_traffic(router: Router, token):
    """Concurrent broadcasts, direct messages and relays in two orgs never cross."""
    orgs: dict[str, list[Client]] = {ORG_A: [], ORG_B: []}
    for org in orgs:
        # The same user ids in both orgs: identity is (org, user), never user alone.
        for user in ("u1", "u2", "u3"):
            orgs[org].append(await router.connect(token(user, org)))
    rounds = 10

    requests = []
    for i in range(rounds):
        for org in orgs:
            broadcast = room_updated(org, f"{org}-b{i}")
            direct = room_updated(org, f"{org}-d{i}", routing="direct", targets=["u1"])
            requests.append(Deferred.fromCoroutine(router.notify(broadcast)))
            requests.append(Deferred.fromCoroutine(router.notify(direct)))
    for i in range(rounds):
        for org, clients in orgs.items():
            clients[1].send_json(
                {"type": "position_update", "payload": {"x": i, "y": 0, "roomId": org}}
            )
    results = await gatherResults(requests)
    assert all(status == 200 for status, _ in results)
    assert sorted(body["delivered"] for _, body in results) == sorted(
        [3, 1] * rounds * len(orgs)
    )

    for org, (u1, u2, u3) in orgs.items():
        broadcasts = {f"{org}-b{i}" for i in range(rounds)}
        directs = {f"{org}-d{i}" for i in range(rounds)}
        positions = {("u2", i): {"x": i, "y": 0, "roomId": org} for i in range(rounds)}
        expected = {
            u1: (broadcasts | directs, positions),
            u2: (broadcasts, {}),
            u3: (broadcasts, positions),
        }
        for client, (rooms, moves) in expected.items():
            got_rooms: set[str] = set()
            got_moves: dict[tuple[str, int], Any] = {}
            for _ in range(len(rooms) + len(moves)):
                received = await client.next()
                if received["type"] == "room_updated":
                    got_rooms.add(received["payload"]["roomId"])
                else:
                    assert received["type"] == "position_update"
                    got_moves[(received["from"], received["payload"]["x"])] = received[
                        "payload"
                    ]
            assert (got_rooms, got_moves) == (rooms, moves)
    everyone = orgs[ORG_A] + orgs[ORG_B]
    await router.barrier(*everyone)
    assert all(client.pending() == [] for client in everyone)


@pytest_twisted.ensureDeferred
async def test_notify_to_an_org_without_connections_leaves_no_room(
    router: Router, token, deployment
):
    """An org with no connections: 200, delivered 0, and /healthz shows no room."""
    await router.connect(token("alice", ORG_A))
    for body in (
        room_updated("org-empty", "r1"),
        room_updated("org-empty", "r1", routing="direct", targets=["ghost"]),
        {
            "orgId": "org-empty",
            "routing": "broadcast",
            "type": "user_updated",
            "payload": {"userId": "ghost", "role": "member"},
        },
        {
            "orgId": "org-empty",
            "routing": "direct",
            "type": "user_banned",
            "targets": ["ghost"],
            "payload": {"userId": "ghost", "reason": "spam"},
        },
    ):
        status, answer = await router.notify(body)
        assert (status, answer["delivered"]) == (200, 0)
        # With Redis every notification is numbered and kept (docs/cluster.md).
        assert ("seq" in answer) == (deployment == "redis")
    health = await router.health()
    assert (health["connections"], health["rooms"]) == (1, 1)
    # Nothing is kept for an org that never had a connection either.
    assert health.get("historyOnlyRooms", 0) == 0


@pytest_twisted.ensureDeferred
async def test_healthz_counts_connections_and_rooms(router: Router, token):
    """/healthz counts live connections and rooms, and rooms go when their last tab closes."""
    assert await router.counts() == (0, 0)
    a1 = await router.connect(token("alice", ORG_A))
    a2 = await router.connect(token("alice", ORG_A))
    b1 = await router.connect(token("bob", ORG_B, "pending_guest"))
    assert await router.counts() == (3, 2)

    b1.sendClose()
    await b1.wait_closed()
    await router.until(lambda: router.registry.connection_count == 2)
    assert await router.counts() == (2, 1)

    a1.sendClose()
    await a1.wait_closed()
    await router.until(lambda: router.registry.connection_count == 1)
    assert await router.counts() == (1, 1)

    a2.sendClose()
    await a2.wait_closed()
    await router.until(lambda: router.registry.connection_count == 0)
    assert await router.counts() == (0, 0)
    assert await router.notify(room_updated(ORG_A, "r1")) == (
        200,
        {"ok": True, "delivered": 0, "seq": 1},
    )


deployment = both_deployments
