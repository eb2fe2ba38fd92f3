"""Presence diffs (``?presence=diff``) over real sockets, in one process and
with the Redis backplane: an opted-in client's folded view is what
GET /internal/presence says."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

import pytest_twisted

from officerouter.config import Settings
from tests.loopback import (
    Client,
    Router,
    both_deployments,
    sleep,
    start_router,
    wait_until,
)
from tests.redis_server import RedisServer

pytestmark = pytest.mark.e2e

ORG = "org-a"


@pytest.fixture
def router_options() -> dict[str, Any]:
    """A short grace period, so that leaves come within the test."""
    return {"presence_grace": 0.2}


class View:
    """A client's view of who is online, folded from the frames it received
    as docs/protocol.md says (``presence_state`` resets it, each
    ``presence_diff`` removes its leaves, then sets its joins)."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.users: dict[str, str] | None = None
        self.types: list[str] = []

    def fold(self) -> dict[str, str] | None:
        queue = self.client.presence
        while queue.pending:
            frame = queue.pending.pop(0)
            self.types.append(frame["type"])
            payload = frame["payload"]
            if frame["type"] == "presence_state":
                self.users = {
                    user: role
                    for role, users in payload.get("users", {}).items()
                    for user in users
                }
            elif frame["type"] == "presence_diff":
                assert self.users is not None, "a diff before the state"
                for user in payload.get("leaves", []):
                    del self.users[user]
                for role, users in payload.get("joins", {}).items():
                    for user in users:
                        self.users[user] = role
        return self.users


async def settles(
    view: View, router: Router, users: set[str] | None = None
) -> dict[str, str]:
    """Wait until the router's presence lists ``users`` (if given) and the
    folded view equals it; return it."""
    online: dict[str, str] = {}
    for _ in range(250):
        status, body = await router.presence_of(ORG)
        assert status == 200
        online = {u["userId"]: u["role"] for u in body["users"]}
        if (users is None or set(online) == users) and view.fold() == online:
            return online
        await sleep(0.02)
    raise AssertionError(f"view {view.fold()} never became {online}")


def user_updated(user_id: str, role: str) -> dict[str, Any]:
    return {
        "orgId": ORG,
        "routing": "broadcast",
        "type": "user_updated",
        "payload": {"userId": user_id, "role": role},
    }


@pytest_twisted.ensureDeferred
async def test_folded_view_follows_joins_roles_and_leaves(router: Router, token):
    """Through a storm of joins, a role change and leaves, the opted-in client's
    view settles on exactly the users and roles the backend is told of."""
    alice = await router.connect(token("alice", ORG, "admin"))
    watcher = await router.connect(token("watcher", ORG), query="?presence=diff")
    view = View(watcher)
    assert await settles(view, router) == {"alice": "admin", "watcher": "member"}
    others = [
        await router.connect(
            token(f"u{i}", ORG), query="?presence=diff" if i % 2 else ""
        )
        for i in range(20)
    ]
    online = await settles(view, router)
    assert len(online) == 22
    for i, other in enumerate(others):
        if i % 2:
            assert await settles(View(other), router) == online
    status, _ = await router.notify(user_updated("u3", "guest"))
    assert status == 200
    assert (await settles(view, router))["u3"] == "guest"
    for other in others[:10]:
        other.sendClose()
        await other.wait_closed()
    alice.sendClose()
    await alice.wait_closed()
    await settles(view, router, {"watcher", *(f"u{i}" for i in range(10, 20))})
    assert set(view.types) == {"presence_state", "presence_diff"}
    assert view.types[0] == "presence_state"


@pytest_twisted.ensureDeferred
async def test_plain_clients_still_get_presence_events(router: Router, token):
    """Beside opted-in clients, a client that did not opt in gets its
    ``presence`` snapshot and ``user_joined`` frames as before."""
    plain = await router.connect(token("plain", ORG))
    await router.connect(token("differ", ORG), query="?presence=diff")
    snapshot = await plain.presence.get()
    assert snapshot == {"type": "presence", "payload": {"users": []}}
    joined = await plain.presence.get()
    assert joined["type"] == "user_joined"
    assert joined["payload"]["userId"] == "differ"


@pytest.mark.parametrize("query", ["?presence=DIFF", "?presence=full"])
@pytest_twisted.ensureDeferred
async def test_bad_presence_values_are_refused_at_the_handshake(
    router: Router, token, query: str
):
    """Any ?presence= value but diff (or empty) is a 400 naming the parameter."""
    status = await router.handshake(
        {"Sec-WebSocket-Protocol": token("alice")}, query=query
    )
    assert status == (400, b"presence must be diff, or absent")
    assert router.registry.connection_count == 0


deployment = both_deployments


@pytest_twisted.async_yield_fixture
async def two_routers(
    settings: Settings, redis_server: RedisServer
) -> AsyncIterator[list[Router]]:
    """Two routers sharing one redis-server."""
    routers = [
        await start_router(
            settings, redis_url=redis_server.url, node_id=node, presence_grace=0.2
        )
        for node in ("node-a", "node-b")
    ]
    yield routers
    for router in routers:
        await router.close()


@pytest_twisted.ensureDeferred
async def test_users_of_another_router_flow_into_diffs(two_routers, token):
    """Joins, role changes and leaves on another router reach an opted-in
    client through the backplane, as the diffs of its own router."""
    a, b = two_routers
    watcher = await b.connect(token("watcher", ORG), query="?presence=diff")
    view = View(watcher)
    await settles(view, b)
    elsewhere = [await a.connect(token(f"u{i}", ORG)) for i in range(5)]
    assert len(await settles(view, b)) == 6
    status, _ = await a.notify(user_updated("u1", "admin"))
    assert status == 200
    # The change reaches router b through Redis: until then its presence and
    # the view agree on the old role, so wait for them to agree on the new one.
    await wait_until(lambda: view.fold().get("u1") == "admin")
    assert (await settles(view, b))["u1"] == "admin"
    for client in elsewhere[:3]:
        client.sendClose()
        await client.wait_closed()
    await settles(view, b, {"u3", "u4", "watcher"})
