"""What the router logs about refusals: the reason, never the token or the secret."""

from __future__ import annotations

import time
from collections.abc import Iterator

import jwt
import pytest
from zope.interface import provider

import pytest_twisted
from twisted.logger import (
    ILogObserver,
    LogEvent,
    eventAsJSON,
    formatEvent,
    globalLogPublisher,
)

from tests.loopback import SERVICE_ID, SERVICE_SECRET, ConnectionRefusedByServer, Router

pytestmark = pytest.mark.e2e

ORG = "org-a"
WRONG_SECRET = "wrong-secret-4f1c2b9a77d0"


@pytest.fixture
def log_events() -> Iterator[list[LogEvent]]:
    """Every twisted.logger event published while the test runs."""
    events: list[LogEvent] = []

    @provider(ILogObserver)
    def observe(event: LogEvent) -> None:
        events.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(observe)


def rendered(events: list[LogEvent]) -> list[str]:
    """Each event as text and as JSON, the two ways the daemon writes logs."""
    return [formatEvent(e) for e in events] + [eventAsJSON(e) for e in events]


def secrets_of(jwt_: str) -> list[str]:
    """The whole token and its claims and signature parts, each a telltale."""
    _header, claims, signature = jwt_.split(".")
    return [jwt_, claims, signature]


@pytest_twisted.ensureDeferred
async def test_refusals_are_logged_without_tokens_or_secrets(
    router: Router, token, other_rsa_keys, log_events
):
    """Refused connections and notifications log why, never the token or the secret."""
    now = int(time.time())
    expired = token("alice", ORG, ttl=-120)
    forged = jwt.encode(
        {"sub": "alice", "orgId": ORG, "role": "owner", "exp": now + 300},
        other_rsa_keys[0],
        algorithm="RS256",
    )
    valid = token("alice", ORG)
    banned_before = token("eve", ORG)

    assert await router.handshake({"Sec-WebSocket-Protocol": expired}) == (
        401,
        b"token expired",
    )
    assert await router.handshake({"Sec-WebSocket-Protocol": f"bearer, {forged}"}) == (
        401,
        b"bad signature",
    )
    with pytest.raises(ConnectionRefusedByServer):
        await router.connect(expired)
    alice = await router.connect(valid)
    eve = await router.connect(banned_before)
    ban = {
        "orgId": ORG,
        "routing": "direct",
        "type": "user_banned",
        "targets": ["eve"],
        "payload": {"userId": "eve", "reason": "spam"},
    }
    assert (await router.notify(ban))[0] == 200
    await eve.wait_closed()
    assert await router.handshake({"Sec-WebSocket-Protocol": banned_before}) == (
        403,
        b"banned",
    )
    body = {
        "orgId": ORG,
        "routing": "broadcast",
        "type": "room_updated",
        "payload": {"roomId": "r1", "name": "n"},
    }
    assert (await router.notify(body, secret=WRONG_SECRET))[0] == 401
    assert (await router.notify(body, client_id="x", secret=SERVICE_SECRET))[0] == 401
    assert (await router.notify(b"{oops"))[0] == 400
    alice.sendMessage(b"{oops")
    assert (await alice.next())["type"] == "error"

    texts = rendered(log_events)
    assert texts
    needles = {
        "service secret": SERVICE_SECRET,
        "presented secret": WRONG_SECRET,
        **{f"expired token {i}": s for i, s in enumerate(secrets_of(expired))},
        **{f"forged token {i}": s for i, s in enumerate(secrets_of(forged))},
        **{f"valid token {i}": s for i, s in enumerate(secrets_of(valid))},
        **{f"banned token {i}": s for i, s in enumerate(secrets_of(banned_before))},
    }
    leaks = {name for name, needle in needles.items() for t in texts if needle in t}
    assert not leaks
    # The reasons are there, so an operator can tell why.
    text = "\n".join(formatEvent(e) for e in log_events)
    for reason in ("token expired", "bad signature", "banned", "bad service token"):
        assert reason in text, f"no log says {reason!r}"
    assert SERVICE_ID not in text
