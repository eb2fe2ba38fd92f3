"""The admin page with several routers sharing a real Redis: what it shows is
the cluster's presence, and its disconnect reaches every router."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

import pytest_twisted
import treq
from twisted.internet import reactor, task

from officerouter import codes
from officerouter.admin import COOKIE, AdminResource
from officerouter.admin_login import AdminPassword
from officerouter.config import Settings
from tests.loopback import Router, start_router
from tests.redis_server import RedisServer

pytestmark = pytest.mark.e2e

ORG = "org-admin-cluster"
PASSWORD = "cluster admin password"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest_twisted.async_yield_fixture
async def cluster(
    settings: Settings, redis_server: RedisServer
) -> AsyncIterator[list[Router]]:
    """Two routers sharing one redis-server, each with the admin page."""
    routers = []
    for node in ("node-a", "node-b"):
        router = await start_router(settings, redis_url=redis_server.url, node_id=node)
        router.site.resource.putChild(
            b"admin",
            AdminResource(router.registry, AdminPassword.plain(PASSWORD), reactor),
        )
        routers.append(router)
    yield routers
    for router in routers:
        await router.close()


class AdminClient:
    """A logged-in admin on one router."""

    def __init__(self, router: Router) -> None:
        self.base = router.base
        self.cookie = ""

    async def request(
        self, method: str, path: str, fields: dict[str, str] | None = None
    ) -> tuple[int, Any, str]:
        response = await treq.request(
            method,
            self.base + path,
            data=fields,
            headers=FORM if fields is not None else {},
            cookies={COOKIE: self.cookie} if self.cookie else {},
            allow_redirects=False,
            persistent=False,
        )
        body = (await response.content()).decode()
        return response.code, response.headers, body

    async def login(self) -> None:
        code, headers, _ = await self.request(
            "POST", "/admin/login", {"password": PASSWORD}
        )
        assert code == 303
        (cookie,) = headers.getRawHeaders(b"set-cookie")
        found = re.match(rf"{COOKIE}=([^;]+)", cookie.decode())
        assert found
        self.cookie = found.group(1)

    async def csrf(self) -> str:
        _, _, body = await self.request("GET", "/admin")
        found = re.search(r'name="csrf" value="([^"]+)"', body)
        assert found
        return found.group(1)


@pytest_twisted.ensureDeferred
async def test_org_page_shows_users_of_every_router(cluster, token):
    """A user connected to another router only is listed, with its connections."""
    a, b = cluster
    await b.connect(token("bob", ORG))
    await b.connect(token("bob", ORG))
    admin = AdminClient(a)
    await admin.login()
    row = r'<td class="user-id">bob</td><td>member</td><td>2</td>'
    deadline = reactor.seconds() + 5
    while True:
        # Presence reaches Redis at the end of node b's reactor iteration.
        code, _, body = await admin.request("GET", f"/admin/org?id={ORG}")
        assert code == 200
        if re.search(row, body):
            break
        assert reactor.seconds() < deadline, body
        await task.deferLater(reactor, 0.05, lambda: None)


@pytest_twisted.ensureDeferred
async def test_disconnect_reaches_every_router(cluster, token):
    """A disconnect sent from one router closes the user's connections on both
    (4004), and leaves the others connected."""
    a, b = cluster
    alice_a = await a.connect(token("alice", ORG))
    alice_b = await b.connect(token("alice", ORG))
    bob = await b.connect(token("bob", ORG))
    admin = AdminClient(a)
    await admin.login()
    code, _, _ = await admin.request(
        "POST",
        "/admin/disconnect",
        {"orgId": ORG, "userId": "alice", "csrf": await admin.csrf()},
    )
    assert code == 303
    for tab in (alice_a, alice_b):
        assert await tab.wait_closed() == (
            codes.CLOSE_DISCONNECTED,
            codes.REASON_DISCONNECTED,
        )
    await b.barrier(bob)
    assert bob.open_now


@pytest_twisted.ensureDeferred
async def test_test_notification_reaches_every_router(cluster, token):
    """A test notification to the org from one router reaches its clients on both."""
    a, b = cluster
    alice = await a.connect(token("alice", ORG))
    bob = await b.connect(token("bob", ORG))
    admin = AdminClient(b)
    await admin.login()
    code, _, _ = await admin.request(
        "POST",
        "/admin/notify",
        {"orgId": ORG, "message": "to all", "csrf": await admin.csrf()},
    )
    assert code == 303
    for client in (alice, bob):
        frame = await client.next_of("admin_test")
        assert frame["payload"] == {"message": "to all"}
