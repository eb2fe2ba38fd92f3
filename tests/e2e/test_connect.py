"""Connecting over a real socket: the two subprotocol forms, refusals, identity."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

import pytest_twisted

from tests.loopback import ConnectionRefusedByServer, Router, both_deployments

pytestmark = pytest.mark.e2e

ORG_A = "org-a"
ORG_B = "org-b"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": "alice",
        "orgId": ORG_A,
        "role": "member",
        "iat": now,
        "exp": now + 300,
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def _hs256_with_public_key(public_pem: str) -> str:
    """The classic confusion attack: HMAC keyed with the server's public key PEM."""
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64(json.dumps(_claims()).encode())
    signing_input = f"{header}.{body}".encode()
    mac = hmac.new(public_pem.encode(), signing_input, hashlib.sha256).digest()
    return f"{header}.{body}.{_b64(mac)}"


def identity_of(welcome: dict[str, Any]) -> tuple[str, str, str]:
    """The identity a ``connected`` frame states; its connectionId must be a non-empty id."""
    payload = welcome["payload"]
    assert isinstance(payload["connectionId"], str)
    assert payload["connectionId"].strip()
    return payload["userId"], payload["orgId"], payload["role"]


def _bad_tokens(
    sign: Callable[..., str], rsa_keys: tuple[str, str], other: tuple[str, str]
) -> dict[str, tuple[str, bytes]]:
    """Every token the router must refuse, with the reason it must give."""
    now = int(time.time())
    ec_key = ec.generate_private_key(ec.SECP256R1())
    return {
        "malformed": ("abc.def.ghi", b"malformed token"),
        "other key": (
            jwt.encode(_claims(), other[0], algorithm="RS256"),
            b"bad signature",
        ),
        "unknown kid": (
            jwt.encode(
                _claims(), other[0], algorithm="RS256", headers={"kid": "nobody"}
            ),
            b"unknown key id",
        ),
        "tampered": (
            sign(_claims()).rsplit(".", 1)[0] + "." + _b64(b"\0" * 256),
            b"bad signature",
        ),
        "expired": (sign(_claims(exp=now - 120)), b"token expired"),
        "no exp": (sign(_claims(exp=None)), b"claim exp missing"),
        "no sub": (sign(_claims(sub=None)), b"claim sub missing"),
        "no orgId": (sign(_claims(orgId=None)), b"claim orgId missing"),
        "unknown role": (sign(_claims(role="superuser")), b"claim role invalid"),
        "alg none": (
            jwt.encode(_claims(), None, algorithm="none"),
            b"algorithm not allowed",
        ),
        "HS256 with the public key": (
            _hs256_with_public_key(rsa_keys[1]),
            b"algorithm not allowed",
        ),
        "ES256 for an RSA key": (
            jwt.encode(_claims(), ec_key, algorithm="ES256"),
            b"algorithm does not match the key",
        ),
    }


@pytest_twisted.ensureDeferred
async def test_single_protocol_form_echoes_the_token(router: Router, token):
    """A lone offered protocol that is the JWT connects and is echoed back."""
    jwt_ = token("alice", ORG_A, "admin")
    client = await router.connect(jwt_)
    assert client.websocket_protocol_in_use == jwt_
    assert client.welcome["type"] == "connected"
    assert identity_of(client.welcome) == ("alice", ORG_A, "admin")


@pytest_twisted.ensureDeferred
async def test_bearer_form_echoes_bearer(router: Router, token):
    """``bearer, <jwt>`` connects and the server echoes ``bearer``."""
    client = await router.connect(
        protocols=["bearer", token("bob", ORG_B, "pending_guest")]
    )
    assert client.websocket_protocol_in_use == "bearer"
    assert identity_of(client.welcome) == ("bob", ORG_B, "pending_guest")


@pytest_twisted.ensureDeferred
async def test_token_among_other_protocols_is_found_and_echoed(router: Router, token):
    """A JWT offered next to an ordinary subprotocol name is the one echoed."""
    jwt_ = token("carol", ORG_A, "guest")
    client = await router.connect(protocols=["office.v1", jwt_])
    assert client.websocket_protocol_in_use == jwt_
    assert identity_of(client.welcome) == ("carol", ORG_A, "guest")


@pytest_twisted.ensureDeferred
async def test_two_tokens_are_refused(router: Router, token):
    """Offering two JWTs without ``bearer`` is ambiguous and refused with 401."""
    offered = f"{token('alice')}, {token('bob')}"
    assert await router.handshake({"Sec-WebSocket-Protocol": offered}) == (
        401,
        b"several tokens in Sec-WebSocket-Protocol",
    )


@pytest_twisted.ensureDeferred
async def test_each_connection_gets_its_own_id(router: Router, token):
    """Two tabs of one user are two connections with distinct ids."""
    first = await router.connect(token("alice"))
    second = await router.connect(token("alice"))
    ids = {c.welcome["payload"]["connectionId"] for c in (first, second)}
    assert len(ids) == 2
    assert first.pending() == second.pending() == []


@pytest_twisted.ensureDeferred
async def test_missing_token_is_refused_before_the_upgrade(router: Router):
    """An upgrade offering no subprotocol at all gets 401 and a short reason."""
    assert await router.handshake({}) == (401, b"no token in Sec-WebSocket-Protocol")
    assert await router.handshake({"Sec-WebSocket-Protocol": "bearer"}) == (
        401,
        b"no token after bearer in Sec-WebSocket-Protocol",
    )
    assert await router.handshake({"Sec-WebSocket-Protocol": "chat, json"}) == (
        401,
        b"no token in Sec-WebSocket-Protocol",
    )


@pytest.mark.parametrize("form", ["single", "bearer"])
@pytest_twisted.ensureDeferred
async def test_bad_tokens_are_refused_with_401(
    router: Router, sign, rsa_keys, other_rsa_keys, form
):
    """Every bad token gets 401 before the upgrade, in either subprotocol form."""
    cases = _bad_tokens(sign, rsa_keys, other_rsa_keys)
    got = {}
    for name, (bad, _reason) in cases.items():
        offered = bad if form == "single" else f"bearer, {bad}"
        got[name] = await router.handshake({"Sec-WebSocket-Protocol": offered})
    assert got == {name: (401, reason) for name, (_, reason) in cases.items()}
    assert router.registry.connection_count == 0
    assert router.registry.room_count == 0


@pytest_twisted.ensureDeferred
async def test_real_client_with_expired_token_never_opens(router: Router, token):
    """An Autobahn client offering an expired token is refused and never joins a room."""
    with pytest.raises(ConnectionRefusedByServer):
        await router.connect(token("alice", ttl=-120))
    assert await router.counts() == (0, 0)


@pytest_twisted.ensureDeferred
async def test_forged_headers_and_query_do_not_change_identity(router: Router, token):
    """``X-Session-Data`` and query parameters never change who a client is or its org."""
    forged = json.dumps({"userId": "mallory", "orgId": ORG_B, "role": "owner"})
    alice = await router.connect(
        token("alice", ORG_A, "member"),
        headers={"X-Session-Data": forged, "X-User-Id": "mallory"},
        query="?orgId=org-b&userId=mallory&sub=mallory&role=owner",
    )
    assert identity_of(alice.welcome) == ("alice", ORG_A, "member")
    bob = await router.connect(token("bob", ORG_B))
    carol = await router.connect(token("carol", ORG_A))

    status, body = await router.notify(
        {
            "orgId": ORG_B,
            "routing": "broadcast",
            "type": "room_updated",
            "payload": {"roomId": "b-room", "name": "B only"},
        }
    )
    assert (status, body) == (200, {"ok": True, "delivered": 1, "seq": 1})
    assert (await bob.next())["payload"]["roomId"] == "b-room"
    status, body = await router.notify(
        {
            "orgId": ORG_B,
            "routing": "direct",
            "type": "room_updated",
            "targets": ["mallory"],
            "payload": {"roomId": "b-room", "name": "for mallory"},
        }
    )
    assert (status, body) == (
        200,
        {"ok": True, "delivered": 0, "seq": 2, "targets": {"mallory": 0}},
    )

    # A relay is stamped with the token's user, not the forged one.
    alice.send_json({"type": "position_update", "payload": {"x": 1, "y": 2}})
    assert await carol.next() == {
        "type": "position_update",
        "from": "alice",
        "payload": {"x": 1, "y": 2},
    }
    await router.barrier(alice, bob, carol)
    assert alice.pending() == bob.pending() == carol.pending() == []


@pytest_twisted.ensureDeferred
async def test_forged_role_header_does_not_admit_a_pending_guest(router: Router, token):
    """A pending guest claiming a role in headers is still refused when it sends."""
    guest = await router.connect(
        token("gail", ORG_A, "pending_guest"),
        headers={"X-Session-Data": json.dumps({"role": "owner"})},
        query="?role=owner",
    )
    member = await router.connect(token("alice", ORG_A))
    assert guest.welcome["payload"]["role"] == "pending_guest"
    guest.send_json({"type": "position_update", "payload": {"x": 1, "y": 2}})
    error = await guest.next()
    assert error["type"] == "error"
    assert error["payload"]["code"] == "not_permitted"
    await router.barrier(member)
    assert member.pending() == []


deployment = both_deployments
