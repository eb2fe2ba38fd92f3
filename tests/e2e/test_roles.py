"""Roles over real sockets: pending guests, role changes, bans."""

from __future__ import annotations

import time
from typing import Any

import pytest

import pytest_twisted

from tests.loopback import Client, ConnectionRefusedByServer, Router, both_deployments

pytestmark = pytest.mark.e2e

ORG = "org-a"
OTHER_ORG = "org-b"
POSITION = {"type": "position_update", "payload": {"x": 10.5, "y": -3}}


def broadcast(room_id: str, org_id: str = ORG) -> dict[str, Any]:
    return {
        "orgId": org_id,
        "routing": "broadcast",
        "type": "room_updated",
        "payload": {"roomId": room_id, "name": "Hall"},
    }


def user_updated(user_id: str, role: str, **routing: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "orgId": ORG,
        "routing": "broadcast",
        "type": "user_updated",
        "payload": {"userId": user_id, "role": role},
    }
    body.update(routing)
    return body


def ban(user_id: str, org_id: str = ORG) -> dict[str, Any]:
    return {
        "orgId": org_id,
        "routing": "direct",
        "type": "user_banned",
        "targets": [user_id],
        "payload": {"userId": user_id, "reason": "Blablabla"},
    }


async def assert_excluded(router: Router, guest: Client, member: Client) -> None:
    """The guest gets no broadcast, no relay, and its frames are refused, unrelayed."""
    status, body = await router.notify(broadcast("hall"))
    assert (status, body["delivered"]) == (200, 1)
    assert (await member.next())["payload"]["roomId"] == "hall"
    member.send_json(POSITION)
    guest.send_json(POSITION)
    error = await guest.next()
    assert error["type"] == "error"
    assert error["payload"]["code"] == "not_permitted"
    assert isinstance(error["payload"]["message"], str)
    await router.barrier(guest, member)
    assert guest.pending() == member.pending() == []


async def assert_included(router: Router, tabs: list[Client], member: Client) -> None:
    """Every tab of a user takes part in the org's traffic, both ways."""
    status, body = await router.notify(broadcast("hall"))
    assert (status, body["delivered"]) == (200, len(tabs) + 1)
    for client in (*tabs, member):
        assert (await client.next())["payload"]["roomId"] == "hall"
    member.send_json(POSITION)
    for tab in tabs:
        assert await tab.next() == {**POSITION, "from": member.user_id}
    sender, *other_tabs = tabs
    sender.send_json(POSITION)
    for client in (*other_tabs, member):
        assert await client.next() == {**POSITION, "from": sender.user_id}
    await router.barrier(sender, member)
    assert all(client.pending() == [] for client in (*tabs, member))


@pytest_twisted.ensureDeferred
async def test_pending_guest_gets_direct_messages_only(router: Router, token):
    """A pending guest receives what is addressed to it and no broadcast or relay."""
    guest = await router.connect(token("gail", ORG, "pending_guest"))
    member = await router.connect(token("max", ORG, "member"))

    await assert_excluded(router, guest, member)
    status, body = await router.notify(
        {
            "orgId": ORG,
            "routing": "direct",
            "type": "room_updated",
            "targets": ["gail"],
            "payload": {"roomId": "lobby", "name": "Lobby"},
        }
    )
    assert (status, body) == (
        200,
        {"ok": True, "delivered": 1, "seq": 4, "targets": {"gail": 1}},
    )
    assert await guest.next() == {
        "type": "room_updated",
        "payload": {"roomId": "lobby", "name": "Lobby"},
    }


GUEST_FRAMES: list[bytes] = [
    b'{"type":"position_update","payload":{"x":1,"y":2}}',
    b'{"type":"position_update","payload":{"x":1,"y":2,"roomId":"r"}}',
    b'{"type":"room_updated","payload":{"roomId":"r","name":"n"}}',
    b'{"type":"no_such_type","payload":{}}',
    b'{"type":"position_update","payload":{"x":"far"}}',
    b"not json",
]


@pytest_twisted.ensureDeferred
async def test_pending_guest_gets_not_permitted_for_any_frame(router: Router, token):
    """Whatever a pending guest sends, well-formed or not, gets not_permitted and goes nowhere."""
    guest = await router.connect(token("gail", ORG, "pending_guest"))
    member = await router.connect(token("max", ORG, "member"))
    for data in GUEST_FRAMES:
        guest.sendMessage(data)
    errors = [await guest.next() for _ in GUEST_FRAMES]
    await router.barrier(guest, member)
    assert guest.pending() == member.pending() == []
    assert guest.open_now
    assert all(e["type"] == "error" for e in errors), errors
    assert all(set(e["payload"]) == {"code", "message"} for e in errors), errors
    assert [e["payload"]["code"] for e in errors] == ["not_permitted"] * len(errors)


@pytest.mark.parametrize("role", ["guest", "member", "admin"])
@pytest_twisted.ensureDeferred
async def test_promotion_admits_a_pending_guest_from_then_on(
    router: Router, token, role
):
    """user_updated making a pending guest a guest or member admits all its tabs."""
    guest = await router.connect(token("gail", ORG, "pending_guest"))
    guest_tab = await router.connect(token("gail", ORG, "pending_guest"))
    member = await router.connect(token("max", ORG, "member"))
    await assert_excluded(router, guest, member)

    status, body = await router.notify(user_updated("gail", role))
    # The new role applies before routing: the promoted tabs get the broadcast too.
    assert (status, body) == (200, {"ok": True, "delivered": 3, "seq": 4})
    update = {"type": "user_updated", "payload": {"userId": "gail", "role": role}}
    for client in (guest, guest_tab, member):
        assert await client.next() == update

    await assert_included(router, [guest, guest_tab], member)
    # A tab opened later with the old token follows the role the room holds.
    late = await router.connect(token("gail", ORG, "pending_guest"))
    assert late.welcome["payload"]["role"] == role
    await router.barrier(guest, member)


@pytest_twisted.ensureDeferred
async def test_demotion_excludes_a_member_from_then_on(router: Router, token):
    """user_updated making a member a pending guest takes it out of the org's traffic."""
    alice = await router.connect(token("alice", ORG, "member"))
    max_ = await router.connect(token("max", ORG, "member"))
    await assert_included(router, [alice], max_)

    status, body = await router.notify(
        user_updated("alice", "pending_guest", routing="direct", targets=["alice"])
    )
    assert (status, body) == (
        200,
        {"ok": True, "delivered": 1, "seq": 4, "targets": {"alice": 1}},
    )
    assert await alice.next() == {
        "type": "user_updated",
        "payload": {"userId": "alice", "role": "pending_guest"},
    }
    await assert_excluded(router, alice, max_)

    # And back: promoted again by broadcast, both see the update.
    assert await router.notify(user_updated("alice", "member")) == (
        200,
        {"ok": True, "delivered": 2, "seq": 8},
    )
    for client in (alice, max_):
        assert (await client.next())["type"] == "user_updated"
    await assert_included(router, [alice], max_)


@pytest_twisted.ensureDeferred
async def test_user_updated_for_someone_else_changes_nobody(router: Router, token):
    """A role change for a user of another org, or an absent user, leaves others alone."""
    guest = await router.connect(token("gail", ORG, "pending_guest"))
    member = await router.connect(token("max", ORG, "member"))
    elsewhere = await router.connect(token("gail", OTHER_ORG, "pending_guest"))
    status, body = await router.notify(
        {
            "orgId": OTHER_ORG,
            "routing": "direct",
            "type": "user_updated",
            "targets": ["gail"],
            "payload": {"userId": "gail", "role": "member"},
        }
    )
    assert (status, body) == (
        200,
        {"ok": True, "delivered": 1, "seq": 1, "targets": {"gail": 1}},
    )
    assert (await elsewhere.next())["type"] == "user_updated"
    await assert_excluded(router, guest, member)


@pytest_twisted.ensureDeferred
async def test_ban_is_delivered_then_closes_the_users_tabs_with_4003(
    router: Router, token
):
    """user_banned reaches every tab of the target, then they close 4003; others stay."""
    eve_1 = await router.connect(token("eve", ORG))
    eve_2 = await router.connect(token("eve", ORG))
    bystander = await router.connect(token("max", ORG))
    eve_elsewhere = await router.connect(token("eve", OTHER_ORG))

    assert await router.notify(ban("eve")) == (
        200,
        {"ok": True, "delivered": 2, "seq": 1, "targets": {"eve": 2}},
    )

    banned = {
        "type": "user_banned",
        "payload": {"userId": "eve", "reason": "Blablabla"},
    }
    for tab in (eve_1, eve_2):
        assert await tab.next() == banned
        assert await tab.wait_closed() == (4003, "banned")
        assert tab.pending() == []
    await router.until(lambda: router.registry.connection_count == 2)
    assert router.registry.user_connection_count(ORG, "eve") == 0
    await router.barrier(bystander, eve_elsewhere)
    assert bystander.open_now
    assert eve_elsewhere.open_now
    assert bystander.pending() == eve_elsewhere.pending() == []


@pytest_twisted.ensureDeferred
async def test_token_issued_before_a_ban_is_refused(router: Router, token):
    """After a ban, the user's tokens issued before it are refused 403; newer ones pass."""
    old_token = token("eve", ORG)
    eve = await router.connect(old_token)
    assert await router.notify(ban("eve")) == (
        200,
        {"ok": True, "delivered": 1, "seq": 1, "targets": {"eve": 1}},
    )
    await eve.wait_closed()

    assert await router.handshake({"Sec-WebSocket-Protocol": old_token}) == (
        403,
        b"banned",
    )
    with pytest.raises(ConnectionRefusedByServer):
        await router.connect(protocols=["bearer", old_token])
    # The ban is per org; and a token issued after it is the backend's decision.
    other = await router.connect(token("eve", OTHER_ORG))
    assert other.welcome["payload"]["orgId"] == OTHER_ORG
    fresh = await router.connect(token("eve", ORG, iat=time.time()))
    assert fresh.welcome["payload"]["userId"] == "eve"


@pytest_twisted.ensureDeferred
async def test_ban_without_connections_still_refuses_old_tokens(
    router: Router, token, deployment
):
    """A ban for a user not connected: delivered 0, no room left, old tokens refused."""
    old_token = token("eve", ORG)
    status, body = await router.notify(ban("eve"))
    assert (status, body["delivered"]) == (200, 0)
    # With Redis every notification is numbered and kept (docs/cluster.md).
    assert ("seq" in body) == (deployment == "redis")
    assert await router.counts() == (0, 0)
    assert await router.handshake({"Sec-WebSocket-Protocol": old_token}) == (
        403,
        b"banned",
    )


def since_of(client: Client) -> str:
    """The ``since`` value for everything a client has seen."""
    welcome = client.welcome["payload"]
    return f"{welcome['epoch']}.{max([welcome['seq'], *client.seqs])}"


async def leave(router: Router, client: Client) -> None:
    """Close a client and wait until the server has let its user go."""
    client.sendClose()
    await client.wait_closed()
    await router.until(
        lambda: router.registry.user_connection_count(ORG, client.user_id) == 0
    )


@pytest_twisted.ensureDeferred
async def test_demotion_while_away_holds_for_the_old_token(router: Router, token):
    """A member demoted within the grace period who reconnects with the old member
    token and ``?since=`` is a pending guest: only direct messages are replayed."""
    member_token = token("alice", ORG, "member")
    alice = await router.connect(member_token)
    max_ = await router.connect(token("max", ORG, "member"))
    since = since_of(alice)
    await leave(router, alice)
    assert await router.notify(user_updated("alice", "pending_guest")) == (
        200,
        {"ok": True, "delivered": 1, "seq": 1},
    )
    assert await router.notify(broadcast("after")) == (
        200,
        {"ok": True, "delivered": 1, "seq": 2},
    )
    direct = {**broadcast("for-alice"), "routing": "direct", "targets": ["alice"]}
    assert await router.notify(direct) == (
        200,
        {"ok": True, "delivered": 0, "seq": 3, "targets": {"alice": 0}},
    )

    back = await router.connect(member_token, query=f"?since={since}")
    assert back.welcome["payload"]["role"] == "pending_guest"
    assert back.welcome["payload"]["recovered"] is True
    assert (await back.next())["payload"]["roomId"] == "for-alice"
    assert [(await max_.next())["type"] for _ in range(2)] == [
        "user_updated",
        "room_updated",
    ]
    await assert_excluded(router, back, max_)
    assert list(back.presence.pending) == []
    # Max saw Alice leave at once, and never come back.
    assert [f["type"] for f in max_.presence.pending][-1] == "user_left"


@pytest_twisted.ensureDeferred
async def test_promotion_while_away_holds_for_the_old_token(router: Router, token):
    """A pending guest let in while disconnected who reconnects with the old token
    and ``?since=`` is admitted: the broadcasts since are replayed."""
    guest_token = token("gail", ORG, "pending_guest")
    gail = await router.connect(guest_token)
    max_ = await router.connect(token("max", ORG, "member"))
    since = since_of(gail)
    await leave(router, gail)
    assert await router.notify(user_updated("gail", "guest")) == (
        200,
        {"ok": True, "delivered": 1, "seq": 1},
    )
    assert await router.notify(broadcast("after")) == (
        200,
        {"ok": True, "delivered": 1, "seq": 2},
    )

    back = await router.connect(guest_token, query=f"?since={since}")
    assert back.welcome["payload"]["role"] == "guest"
    assert back.welcome["payload"]["recovered"] is True
    assert (await back.next())["type"] == "user_updated"
    assert (await back.next())["payload"]["roomId"] == "after"
    for _ in range(2):
        await max_.next()
    await assert_included(router, [back], max_)


deployment = both_deployments
