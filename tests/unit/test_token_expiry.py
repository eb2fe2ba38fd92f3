"""The adapter's token lifetime on a fake clock: the expiry timer and refresh_token."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from twisted.internet.task import Clock

from officerouter import codes
from officerouter.auth import TokenVerifier, load_verify_keys
from officerouter.codec import Encoded
from officerouter.limits import Limits
from officerouter.messages import ClientMessage, RefreshToken
from officerouter.registry import OrgRegistry
from officerouter.rooms import Session
from officerouter.websocket import OfficeServerFactory, OfficeServerProtocol

from .fakes import FakeConnection, ban, identity, make_registry

EXP = 100.0
GRACE = 10.0


class Harness:
    """One adapter protocol joined to a registry on a Clock, sends and closes recorded."""

    def __init__(
        self, clock: Clock, rsa_keys: tuple[str, str], *, enforced: bool = True
    ) -> None:
        self.clock = clock
        self.registry: OrgRegistry = make_registry(clock, ban_memory=600)
        verifier = TokenVerifier(load_verify_keys(rsa_keys[1]), clock.seconds)
        self.factory = OfficeServerFactory(
            registry=self.registry,
            verifier=verifier,
            clock=clock,
            limits=Limits(),
            token_expiry_enforced=enforced,
            token_expiry_grace=GRACE,
        )
        protocol = self.factory.buildProtocol(None)
        assert isinstance(protocol, OfficeServerProtocol)
        self.protocol = protocol
        self.sent: list[dict[str, Any]] = []
        self.closes: list[tuple[int, str]] = []
        protocol.send = self._send  # type: ignore[method-assign]
        protocol.close = self._close  # type: ignore[method-assign]
        self.connection = FakeConnection()
        self.session: Session = self.registry.connect(
            identity("alice", "org-a", "member"), self.connection
        )
        protocol._session = self.session
        protocol._expire_at(EXP)

    def _send(self, message: Encoded) -> None:
        self.sent.append(json.loads(message.data))

    def _close(self, code: int, reason: str) -> None:
        self.closes.append((code, reason))
        self.protocol._leave()

    def refresh(self, token: str) -> None:
        self.protocol._refresh(
            self.session,
            ClientMessage(type="refresh_token", payload=RefreshToken(token=token)),
        )


@pytest.fixture
def harness(clock: Clock, rsa_keys: tuple[str, str]) -> Harness:
    """Alice's connection, its token expiring at EXP, closed GRACE later."""
    return Harness(clock, rsa_keys)


@pytest.fixture
def jwt(sign: Callable[..., str]) -> Callable[..., str]:
    """A token on the fake clock's time line (issued at 0)."""

    def make(
        user: str = "alice",
        org: str = "org-a",
        role: str = "member",
        exp: float = 200,
        iat: float = 0,
    ) -> str:
        return sign({"sub": user, "orgId": org, "role": role, "iat": iat, "exp": exp})

    return make


def test_expiry_closes_after_the_grace(harness: Harness):
    """The connection closes with 4001 at exp plus the grace, not a moment before."""
    harness.clock.advance(EXP + GRACE - 0.1)
    assert harness.closes == []
    harness.clock.advance(0.1)
    assert harness.closes == [(codes.CLOSE_TOKEN_EXPIRED, codes.REASON_TOKEN_EXPIRED)]
    assert harness.protocol._expiry is None


def test_leaving_cancels_the_timer(harness: Harness):
    """A connection that leaves before its expiry leaves no timer behind."""
    call = harness.protocol._expiry
    assert call is not None
    harness.protocol._leave()
    assert not call.active()
    assert call not in harness.clock.getDelayedCalls()
    harness.clock.advance(EXP + GRACE + 1)
    assert harness.closes == []


def test_accepted_refresh_moves_the_expiry(harness: Harness, jwt):
    """A fresh token is answered token_refreshed and the close moves to its exp."""
    harness.clock.advance(50)
    harness.refresh(jwt(exp=300))
    assert harness.sent == [{"type": "token_refreshed", "payload": {"expiresAt": 300}}]
    harness.clock.advance(300 + GRACE - 50 - 0.1)
    assert harness.closes == []
    harness.clock.advance(0.1)
    assert harness.closes == [(codes.CLOSE_TOKEN_EXPIRED, codes.REASON_TOKEN_EXPIRED)]


@pytest.mark.parametrize(
    ("user", "org"), [("mallory", "org-a"), ("alice", "org-b")], ids=["user", "org"]
)
def test_refresh_for_another_identity_keeps_the_old_expiry(
    harness: Harness, jwt, user, org
):
    """Another user's or org's token is refused with refresh_refused; the old expiry stands."""
    harness.refresh(jwt(user=user, org=org, exp=300))
    assert harness.sent == [
        {
            "type": "error",
            "payload": {
                "code": codes.ERR_REFRESH_REFUSED,
                "message": f"$.payload.token: {codes.REASON_OTHER_IDENTITY}",
            },
        }
    ]
    harness.clock.advance(EXP + GRACE)
    assert harness.closes == [(codes.CLOSE_TOKEN_EXPIRED, codes.REASON_TOKEN_EXPIRED)]


def test_refresh_with_an_expired_or_banned_token_is_refused(harness: Harness, jwt):
    """A token that fails verification, or one issued before a ban, is refused."""
    harness.clock.advance(90)
    harness.refresh(jwt(exp=10))
    harness.clock.advance(1)
    harness.registry.notify(ban("alice"))
    harness.refresh(jwt(exp=300, iat=80))
    messages = [frame["payload"]["message"] for frame in harness.sent]
    assert [frame["payload"]["code"] for frame in harness.sent] == [
        codes.ERR_REFRESH_REFUSED
    ] * 2
    assert messages == [
        "$.payload.token: token expired",
        f"$.payload.token: {codes.REASON_BANNED}",
    ]


def test_refresh_applies_the_new_role(harness: Harness, jwt):
    """A refreshed token with another role gives the user that role, as user_updated would."""
    bob = FakeConnection()
    harness.registry.connect(identity("bob", "org-a", "member"), bob)
    harness.refresh(jwt(role="admin"))
    assert harness.session.role == "admin"
    harness.clock.advance(1)
    assert {
        "type": "user_role_changed",
        "payload": {"userId": "alice", "role": "admin"},
    } in bob.frames


def test_ignore_sets_no_timer(clock: Clock, rsa_keys: tuple[str, str], jwt):
    """With --token-expiry ignore no timer is set, and a refresh is still answered."""
    harness = Harness(clock, rsa_keys, enforced=False)
    assert harness.protocol._expiry is None
    harness.refresh(jwt(exp=300))
    assert harness.sent[0]["type"] == "token_refreshed"
    assert harness.protocol._expiry is None
    clock.advance(1000)
    assert harness.closes == []
