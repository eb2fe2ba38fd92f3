"""Token lifetimes over real sockets: refresh_token, the 4001 close, recovery after it."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

import pytest_twisted
from twisted.internet import reactor
from twisted.logger import formatEvent

from tests.loopback import Client, FullClient, Router, both_deployments, sleep

pytestmark = pytest.mark.e2e

deployment = both_deployments

ORG = "org-a"
OTHER_ORG = "org-b"
POSITION = {"type": "position_update", "payload": {"x": 1, "y": 2}}
SHORT = {"token_expiry_grace": 0.5}


def refresh(jwt_: str) -> dict[str, Any]:
    return {"type": "refresh_token", "payload": {"token": jwt_}}


def note(name: str) -> dict[str, Any]:
    return {
        "orgId": ORG,
        "routing": "broadcast",
        "type": "room_updated",
        "payload": {"roomId": name, "name": "-"},
    }


async def assert_relays(sender: Client, receiver: Client) -> None:
    """A position from ``sender`` reaches ``receiver``: the connection works."""
    sender.send_json(POSITION)
    assert await receiver.next_of("position_update") == {
        **POSITION,
        "from": sender.user_id,
    }


@pytest_twisted.ensureDeferred
async def test_refresh_is_answered_with_the_new_expiry(router: Router, token):
    """A fresh token for the same user and org is answered token_refreshed with its exp."""
    alice = await router.connect(token("alice", ORG))
    exp = int(time.time()) + 600
    alice.send_json(refresh(token("alice", ORG, exp=exp)))
    assert await alice.next() == {
        "type": "token_refreshed",
        "payload": {"expiresAt": exp},
    }


@pytest.mark.parametrize(
    ("user", "org"), [("mallory", ORG), ("alice", OTHER_ORG)], ids=["user", "org"]
)
@pytest_twisted.ensureDeferred
async def test_refresh_for_another_identity_is_refused_and_logged(
    router: Router, token, log_events, user, org
):
    """Another user's or org's token is refused with an error frame, logged without
    the token, and the connection keeps working."""
    alice = await router.connect(token("alice", ORG))
    bob = await router.connect(token("bob", ORG))
    other = token(user, org)
    alice.send_json(refresh(other))
    error = await alice.next()
    assert error["type"] == "error"
    assert error["payload"]["code"] == "refresh_refused"
    assert "another user or org" in error["payload"]["message"]
    await assert_relays(alice, bob)
    lines = [formatEvent(e) for e in log_events]
    refused = [line for line in lines if "refused a token refresh" in line]
    assert len(refused) == 1
    assert "alice" in refused[0]
    assert not any(other.split(".")[2] in line for line in lines)


@pytest_twisted.ensureDeferred
async def test_invalid_refresh_token_is_refused(router: Router, token):
    """An expired or malformed token in refresh_token is refused, the connection kept."""
    alice = await router.connect(token("alice", ORG))
    bob = await router.connect(token("bob", ORG))
    for bad in (token("alice", ORG, ttl=-60), "not-a-token"):
        alice.send_json(refresh(bad))
        error = await alice.next()
        assert error["payload"]["code"] == "refresh_refused", error
    alice.send_json(refresh(""))
    error = await alice.next()
    assert error["payload"]["code"] == "invalid_message"
    await assert_relays(alice, bob)


@pytest.mark.parametrize("router_options", [SHORT])
@pytest_twisted.ensureDeferred
async def test_expired_token_closes_the_connection_after_the_grace(
    router: Router, token
):
    """A connection whose token expires unrefreshed is closed with 4001 after the grace."""
    exp = int(time.time()) + 2
    alice = await router.connect(token("alice", ORG, exp=exp))
    code, reason = await alice.wait_closed(timeout=6)
    assert (code, reason) == (4001, "token expired; reconnect with a fresh token")
    assert time.time() >= exp + 0.5 - 0.05


@pytest.mark.parametrize("router_options", [SHORT])
@pytest_twisted.ensureDeferred
async def test_refreshed_connection_outlives_the_old_expiry(router: Router, token):
    """A connection refreshed before exp stays open past the old exp and grace."""
    exp = int(time.time()) + 2
    alice = await router.connect(token("alice", ORG, exp=exp))
    bob = await router.connect(token("bob", ORG))
    alice.send_json(refresh(token("alice", ORG, ttl=300)))
    assert (await alice.next())["type"] == "token_refreshed"
    await sleep(max(0.0, exp + 1.0 - time.time()))
    assert alice.open_now
    await assert_relays(alice, bob)


@pytest.mark.parametrize("router_options", [{**SHORT, "token_expiry": "ignore"}])
@pytest_twisted.ensureDeferred
async def test_ignore_keeps_the_connection_past_exp(router: Router, token):
    """With --token-expiry ignore a connection outlives its token, as before."""
    exp = int(time.time()) + 1
    alice = await router.connect(token("alice", ORG, exp=exp))
    bob = await router.connect(token("bob", ORG))
    await sleep(max(0.0, exp + 1.0 - time.time()))
    assert alice.open_now
    await assert_relays(alice, bob)


def numbered(client: FullClient) -> list[tuple[int, str]]:
    """``(seq, roomId)`` of every numbered frame a client received, in order."""
    frames = [json.loads(raw) for raw in client.raw]
    return [(f["seq"], f["payload"]["roomId"]) for f in frames if "seq" in f]


@pytest.mark.parametrize("router_options", [SHORT])
@pytest_twisted.ensureDeferred
async def test_reconnect_after_expiry_recovers_with_no_gap(router: Router, token):
    """After the 4001 close a reconnect with since and a fresh token gets what it missed."""
    exp = int(time.time()) + 2
    first = await router.connect(token("alice", ORG, exp=exp), full=True)
    status, _ = await router.notify(note("before"))
    assert status == 200
    code, _ = await first.wait_closed(timeout=6)
    assert code == 4001
    status, _ = await router.notify(note("while-away"))
    assert status == 200
    seqs = [seq for seq, _ in numbered(first)]
    since = f"{first.welcome['payload']['epoch']}.{max([first.welcome['payload']['seq'], *seqs])}"
    second = await router.connect(
        token("alice", ORG), query=f"?since={since}", full=True
    )
    assert second.welcome["payload"]["recovered"] is True
    status, _ = await router.notify(note("after"))
    assert status == 200
    deadline = reactor.seconds() + 5
    while "after" not in {n for _, n in numbered(second)}:
        assert reactor.seconds() < deadline, "timed out"
        await sleep(0.01)
    both = numbered(first) + numbered(second)
    assert [n for _, n in both] == ["before", "while-away", "after"]
    seqs = [seq for seq, _ in both]
    assert seqs == list(range(seqs[0], seqs[0] + 3))


@pytest_twisted.ensureDeferred
async def test_refresh_with_another_role_applies_it(router: Router, token):
    """A refreshed token with another role changes the user's role, as user_updated would."""
    alice = await router.connect(token("alice", ORG, role="member"))
    bob = await router.connect(token("bob", ORG))
    alice.send_json(refresh(token("alice", ORG, role="admin")))
    assert (await alice.next())["type"] == "token_refreshed"
    while True:
        d = bob.presence.get()
        d.addTimeout(5, reactor)
        event = await d
        if event["type"] == "user_role_changed":
            break
    assert event["payload"] == {"userId": "alice", "role": "admin"}


@pytest_twisted.ensureDeferred
async def test_pending_guest_may_refresh(router: Router, token):
    """A pending guest may refresh its token, though it may send nothing to the org."""
    guest = await router.connect(token("gus", ORG, role="pending_guest"))
    guest.send_json(refresh(token("gus", ORG, role="pending_guest", ttl=600)))
    assert (await guest.next())["type"] == "token_refreshed"
    guest.send_json(POSITION)
    assert (await guest.next())["payload"]["code"] == "not_permitted"
    guest.send_json({"type": "refresh_token", "payload": {}})
    assert (await guest.next())["payload"]["code"] == "not_permitted"
