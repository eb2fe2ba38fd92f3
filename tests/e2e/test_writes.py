"""How frames reach the socket: directly when Twisted's buffer is empty, else queued.

Plain TCP connections try ``send`` first (``OfficeServerProtocol._write``); a TLS
connection never does, and a partial send leaves the rest to Twisted, in order.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import pytest_twisted
import treq
from twisted.internet import defer, reactor, ssl
from twisted.web.client import HTTPConnectionPool

from officerouter import web
from officerouter.config import Settings
from tests.loopback import (
    RawClient,
    Router,
    both_deployments,
    sleep,
    start_router,
    wait_until,
)

pytestmark = pytest.mark.e2e

#: Broadcasts to a client that does not read: enough to fill both socket buffers.
COUNT = 300


def _broadcast(i: int, size: int = 100) -> dict[str, Any]:
    return {
        "orgId": "org-a",
        "routing": "broadcast",
        "type": "room_updated",
        "payload": {"roomId": f"r{i}", "name": "x" * size},
    }


def _count_queued_writes(router: Router) -> list[bytes]:
    """Record what the server's WebSocket connections hand to ``transport.write``."""
    queued: list[bytes] = []
    for protocol in router.factory.live:
        transport = protocol.transport
        write = transport.write

        def spy(data: bytes, write: Any = write) -> None:
            queued.append(data)
            write(data)

        transport.write = spy
    return queued


@pytest_twisted.ensureDeferred
async def test_plain_tcp_frames_go_straight_to_the_socket(router, token):
    """With an idle socket, a broadcast never waits in Twisted's buffer."""
    client = await router.connect(token("u1", "org-a"))
    queued = _count_queued_writes(router)
    (protocol,) = router.factory.live
    assert protocol._direct
    for i in range(20):
        status, _ = await router.notify(_broadcast(i))
        assert status == 200
    for i in range(20):
        assert (await client.next())["payload"]["roomId"] == f"r{i}"
    assert queued == []


@pytest.mark.parametrize("router_options", [{"direct_writes": False}])
@pytest_twisted.ensureDeferred
async def test_direct_writes_can_be_turned_off(router, token):
    """``--no-direct-writes``: every frame goes through ``transport.write``."""
    client = await router.connect(token("u1", "org-a"))
    queued = _count_queued_writes(router)
    for i in range(5):
        await router.notify(_broadcast(i))
    for i in range(5):
        assert (await client.next())["payload"]["roomId"] == f"r{i}"
    assert len(queued) == 5


def _watch_answers(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """For each finished HTTP response: the bytes Twisted's buffer held before
    :func:`officerouter.web.send_now`, and after (0: sent in the same turn)."""
    seen: list[tuple[int, int]] = []
    real = web.send_now

    def spy(transport: Any) -> None:
        before = transport._tempDataLen + len(transport.dataBuffer)
        real(transport)
        seen.append((before, transport._tempDataLen + len(transport.dataBuffer)))

    monkeypatch.setattr(web, "send_now", spy)
    return seen


@pytest_twisted.ensureDeferred
async def test_an_answer_is_sent_when_it_is_finished(router, monkeypatch):
    """A notify's answer leaves in the turn that finished it, not after the
    reactor polls again (when its frames have been written to every recipient)."""
    seen = _watch_answers(monkeypatch)
    # A backend keeps its connections alive (a closing one is left to Twisted).
    pool = HTTPConnectionPool(reactor, persistent=True)
    try:
        for i in range(3):
            response = await treq.post(
                router.base + "/internal/notify",
                json=_broadcast(i),
                headers={
                    "CF-Access-Client-Id": router.service_id,
                    "CF-Access-Client-Secret": router.service_secret,
                },
                pool=pool,
            )
            assert response.code == 200
            await response.content()
    finally:
        await pool.closeCachedConnections()
    assert len(seen) == 3
    assert all(before > 0 and after == 0 for before, after in seen), seen


@pytest.mark.parametrize("router_options", [{"direct_writes": False}])
@pytest_twisted.ensureDeferred
async def test_no_direct_writes_leaves_answers_to_the_reactor(router, monkeypatch):
    """``--no-direct-writes`` covers answers too: Twisted writes them."""
    seen = _watch_answers(monkeypatch)
    status, _ = await router.notify(_broadcast(0))
    assert status == 200
    assert seen == []


@pytest.mark.parametrize(
    "router_options",
    [
        {
            "socket_send_buffer": 4096,
            "soft_buffer_bytes": 1 << 20,
            "hard_buffer_bytes": 4 << 20,
        }
    ],
)
@pytest_twisted.ensureDeferred
async def test_partial_sends_keep_every_frame_in_order(router, token):
    """What the kernel does not take is queued behind, and nothing overtakes it."""
    slow = RawClient(router.port.getHost().port, token("slow", "org-a"), rcvbuf=4096)
    try:
        await slow.handshake()
        await wait_until(lambda: router.registry.connection_count == 1)
        queued = _count_queued_writes(router)
        for i in range(COUNT):
            status, _ = await router.notify(_broadcast(i, size=200))
            assert status == 200
        # The socket filled up: Twisted holds the rest.
        assert queued
        names: list[str] = []
        for _ in range(500):
            slow.read_available()
            names += [
                json.loads(payload)["payload"].get("roomId", "")
                for opcode, payload in slow.frames()
                if opcode == 1
            ]
            if len(names) >= COUNT + 2:
                break
            await sleep(0.01)
        backend = [n for n in names if n.startswith("r")]
        assert backend == [f"r{i}" for i in range(COUNT)]
    finally:
        slow.close()


def _self_signed(tmp_path: Any) -> tuple[str, bytes]:
    """A certificate and key for 127.0.0.1 in one PEM file: (path, certificate PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.IPv4Address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    path = tmp_path / "server.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        + cert_pem
    )
    return str(path), cert_pem


@pytest_twisted.async_yield_fixture
async def tls_router(settings: Settings, tmp_path: Any) -> AsyncIterator[Router]:
    """The router behind an ``ssl:`` endpoint, as ``--port ssl:...`` runs it."""
    pem, cert_pem = _self_signed(tmp_path)
    r = await start_router(
        settings,
        f"ssl:0:interface=127.0.0.1:privateKey={pem}:certKey={pem}",
        tls=ssl.optionsForClientTLS(
            "127.0.0.1", trustRoot=ssl.Certificate.loadPEM(cert_pem)
        ),
    )
    try:
        yield r
    finally:
        await r.close()


# Twisted's ssl: endpoint and trustRoot still hand pyOpenSSL X509 and PKey objects to
# pyOpenSSL, which now warns; the suite turns warnings into errors.
@pytest.mark.filterwarnings(
    "ignore:Passing pyOpenSSL (X509|PKey) objects is deprecated"
)
@pytest_twisted.ensureDeferred
async def test_tls_connections_never_bypass_the_tls_layer(tls_router, token):
    """Over ``ssl:`` every frame goes through TLS: the direct path stays off."""
    a = await tls_router.connect(token("u1", "org-a"))
    b = await tls_router.connect(token("u2", "org-a"))
    assert tls_router.factory.live
    assert not any(p._direct for p in tls_router.factory.live)
    for i in range(10):
        status, body = await tls_router.notify(_broadcast(i, size=150))
        assert status == 200, body
    for client in (a, b):
        for i in range(10):
            assert (await client.next())["payload"]["roomId"] == f"r{i}"
    a.send_json({"type": "position_update", "payload": {"x": 1, "y": 2}})
    moved = await b.next_of("position_update")
    assert moved["from"] == "u1"


def _view(frames: list[dict[str, Any]]) -> set[str]:
    """Who a client believes is online, from its presence frames in order."""
    seen: set[str] = set()
    for frame in frames:
        if frame["type"] == "presence":
            seen = {user["userId"] for user in frame["payload"]["users"]}
        elif frame["type"] == "user_joined":
            assert frame["payload"]["userId"] not in seen, "announced twice"
            seen.add(frame["payload"]["userId"])
        elif frame["type"] == "user_left":
            seen.remove(frame["payload"]["userId"])
    return seen


@pytest.mark.parametrize("deflate", [False, True])
@pytest.mark.parametrize("router_options", [{"permessage_deflate": True}])
@pytest_twisted.ensureDeferred
async def test_a_connection_storm_adds_up_for_every_client(router, token, deflate):
    """Clients connecting at once (presence events sent as bursts): each one's
    snapshot plus the events after it is everyone else, once."""
    users = [f"u{n}" for n in range(30)]
    # Five are there first; the other 25 arrive at once (their joins share
    # reactor iterations, so the first five get each iteration's as one burst).
    clients = [
        await router.connect(token(u, "org-a"), full=True, deflate=deflate)
        for u in users[:5]
    ]
    clients += await defer.gatherResults(
        [
            defer.ensureDeferred(
                router.connect(token(u, "org-a"), full=True, deflate=deflate)
            )
            for u in users[5:]
        ]
    )
    # A broadcast after the storm: once a client has it, it has everything before.
    status, _ = await router.notify(_broadcast(999))
    assert status == 200
    for client in clients:
        frames = []
        while (frame := await client.next())["type"] != "room_updated":
            frames.append(frame)
        assert _view(frames) == set(users) - {client.user_id}


deployment = both_deployments
