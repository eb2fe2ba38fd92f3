"""Input that is not valid Unicode, or breaks an assumption, is refused at the boundary.

Over real sockets: such input gets a 4xx, a 401 or an error frame, changes no
state, and leaves the connection and its org working.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

import pytest_twisted
from twisted.logger import LogLevel, capturedLogs

from tests.loopback import SERVICE_ID, SERVICE_SECRET, Router, both_deployments, sleep

pytestmark = pytest.mark.e2e

AUTH = {"CF-Access-Client-Id": SERVICE_ID, "CF-Access-Client-Secret": SERVICE_SECRET}
SURROGATE_POSITION = (
    rb'{"type":"position_update","payload":{"x":1,"y":1,"roomId":"\ud800"}}'
)
HUGE_INT = b"1" * 5000


def _room_updated(name: str) -> dict[str, Any]:
    return {
        "orgId": "org-a",
        "routing": "broadcast",
        "type": "room_updated",
        "payload": {"roomId": "r1", "name": name},
    }


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _failures(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events logged as bugs: critical, or carrying a traceback."""
    return [
        e
        for e in events
        if e.get("log_level") is LogLevel.critical or "log_failure" in e
    ]


@pytest_twisted.ensureDeferred
async def test_surrogate_position_is_refused_and_the_org_stays_open(
    router: Router, token
):
    """A lone surrogate in a position gets an error frame; newcomers and presence still work."""
    alice = await router.connect(token("alice", "org-a"))
    with capturedLogs() as events:
        alice.sendMessage(SURROGATE_POSITION)
        error = await alice.next()
    assert error["type"] == "error"
    assert error["payload"]["code"] == "invalid_json"
    assert "$.payload.roomId: not valid Unicode" in error["payload"]["message"]
    assert _failures(events) == []
    bob = await router.connect(token("bob", "org-a"))
    snapshot = await bob.presence.get()
    assert [u["userId"] for u in snapshot["payload"]["users"]] == ["alice"]
    await router.barrier(alice, bob)
    assert alice.open_now
    assert bob.open_now
    presence = await router.http("GET", "/internal/presence?orgId=org-a", headers=AUTH)
    assert presence.code == 200
    users = presence.json()["users"]
    assert [(u["userId"], u["position"]) for u in users] == [
        ("alice", None),
        ("bob", None),
    ]
    assert (await router.counts()) == (2, 1)


@pytest_twisted.ensureDeferred
async def test_surrogate_notification_is_400_naming_the_field_and_burns_no_number(
    router: Router, token
):
    """A lone surrogate in a notification is a 400 naming its path; the next one takes the next seq."""
    alice = await router.connect(token("alice", "org-a"))
    status, _ = await router.notify(_room_updated("first"))
    assert status == 200
    assert (await alice.next())["payload"]["name"] == "first"
    bad = json.dumps(_room_updated("x")).encode().replace(b'"x"', rb'"\ud800"')
    status, body = await router.notify(bad)
    assert status == 400
    assert body["error"] == "invalid_json"
    assert body["errors"] == [
        {"path": "$.payload.name", "reason": "not valid Unicode (lone surrogate)"}
    ]
    status, _ = await router.notify(_room_updated("second"))
    assert status == 200
    assert (await alice.next())["payload"]["name"] == "second"
    assert alice.seqs[1] == alice.seqs[0] + 1


@pytest_twisted.ensureDeferred
async def test_huge_integer_is_invalid_json_and_the_connection_stays(
    router: Router, token
):
    """An integer of 5000 digits gets an invalid_json error frame or 400, never 1011 or 500."""
    alice = await router.connect(token("alice", "org-a"))
    bob = await router.connect(token("bob", "org-a"))
    alice.sendMessage(
        b'{"type":"position_update","payload":{"x":' + HUGE_INT + b',"y":0}}'
    )
    error = await alice.next()
    assert error["payload"]["code"] == "invalid_json"
    alice.send_json({"type": "position_update", "payload": {"x": 1, "y": 2}})
    assert (await bob.next())["payload"] == {"x": 1, "y": 2}
    body = json.dumps(_room_updated("x")).encode().replace(b'"x"', HUGE_INT)
    status, answer = await router.notify(body)
    assert (status, answer["error"]) == (400, "invalid_json")
    assert alice.open_now
    assert bob.open_now


@pytest_twisted.ensureDeferred
async def test_malformed_token_headers_get_401_and_no_traceback(
    router: Router, token, sign
):
    """JOSE headers of the wrong shape and claims that are not Unicode get a 401 reason, logged as info."""
    cases = {
        b'{"alg":["RS256"]}': b"algorithm not allowed",
        b'{"alg":{}}': b"algorithm not allowed",
        b"[" * 3000: b"malformed token",
        b'{"alg":"RS256","kid":7}': b"malformed token",
        rb'{"alg":"RS256","kid":"\ud800"}': b"malformed token",
    }
    got = {}
    with capturedLogs() as events:
        for header, _ in cases.items():
            forged = f"{_b64(header)}.{_b64(b'{}')}.c2ln"
            got[header] = await router.handshake({"Sec-WebSocket-Protocol": forged})
        not_unicode = sign(
            {"sub": "\ud800", "orgId": "org-a", "role": "member", "exp": 2**31}
        )
        surrogate_sub = await router.handshake({"Sec-WebSocket-Protocol": not_unicode})
    assert got == {header: (401, reason) for header, reason in cases.items()}
    assert surrogate_sub == (401, b"claim sub invalid")
    assert _failures(events) == []
    assert router.registry.connection_count == 0


@pytest_twisted.ensureDeferred
async def test_query_values_that_are_not_utf8_are_refused_cleanly(
    router: Router, token
):
    """Percent-escapes that are not UTF-8 in since, positions or orgId get a clean answer."""
    presence = await router.http(
        "GET", "/internal/presence?orgId=%ED%A0%80", headers=AUTH
    )
    assert presence.code == 400
    assert presence.json()["errors"] == [{"path": "orgId", "reason": "not valid UTF-8"}]
    status = await router.handshake(
        {"Sec-WebSocket-Protocol": token("alice")}, query="?positions=%ED%A0%80"
    )
    assert status == (400, b"positions must be batched, or absent")
    alice = await router.connect(token("alice"), query="?since=%ED%A0%80.1")
    assert alice.welcome["payload"]["recovered"] is False
    await sleep(0)
    assert alice.open_now


deployment = both_deployments
