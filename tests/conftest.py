"""Shared fixtures: real keys and tokens, a real router on loopback, real clients.

The router runs in this process on ``tcp:0:interface=127.0.0.1`` with the real
Site, Autobahn factory and registry; clients are real Autobahn WebSocket clients
and HTTP goes through treq with ``persistent=False``.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import attrs
import jwt
import pytest

import pytest_twisted
import treq
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import endpoints, reactor, task
from twisted.internet.defer import Deferred, DeferredQueue
from twisted.internet.interfaces import IListeningPort

from officerouter.auth import TokenVerifier, generate_key_pair, load_verify_keys
from officerouter.catalog import BUILTIN
from officerouter.config import Settings
from officerouter.rooms import OrgRegistry
from officerouter.web import make_site
from officerouter.websocket import OfficeServerFactory

SERVICE_ID = "test-client-id"
SERVICE_SECRET = "test-client-secret-0123456789"


@pytest.fixture(scope="session")
def rsa_keys() -> tuple[str, str]:
    """A real RSA key pair (private PEM, public PEM), made once per session."""
    return generate_key_pair("rsa")


@pytest.fixture
def settings(rsa_keys: tuple[str, str]) -> Settings:
    """Settings that verify tokens signed by ``rsa_keys``."""
    private_pem, public_pem = rsa_keys
    return Settings(
        verify_keys=tuple(load_verify_keys(public_pem)),
        service_client_id=SERVICE_ID,
        service_client_secret=SERVICE_SECRET,
        private_key_pem=private_pem,
    )


@pytest.fixture
def sign(rsa_keys: tuple[str, str]) -> Callable[..., str]:
    """Sign arbitrary claims (and headers) with the test private key, RS256."""
    private_pem = rsa_keys[0]

    def sign(claims: dict[str, Any], **kwargs: Any) -> str:
        kwargs.setdefault("algorithm", "RS256")
        return jwt.encode(claims, private_pem, **kwargs)

    return sign


@pytest.fixture
def token(sign: Callable[..., str]) -> Callable[..., str]:
    """Make a valid client token: ``token(user, org, role, ttl=300, **extra)``."""

    def token(
        user: str = "user-1",
        org: str = "org-a",
        role: str = "member",
        ttl: int = 300,
        **extra: Any,
    ) -> str:
        now = int(time.time())
        claims = {"sub": user, "orgId": org, "role": role, "iat": now, "exp": now + ttl}
        claims.update(extra)
        return sign(claims)

    return token


class Client(WebSocketClientProtocol):
    """A real WebSocket client that queues every frame it receives, decoded."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: DeferredQueue[dict[str, Any]] = DeferredQueue()
        self.raw: list[bytes] = []
        self.closed: Deferred[tuple[int | None, str | None]] = Deferred()
        self.close_code: int | None = None

    def onOpen(self) -> None:
        self.factory.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.raw.append(payload)
        self.frames.put(json.loads(payload))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.close_code = code
        if not self.factory.opened.called:
            self.factory.opened.errback(ConnectionRefusedByServer(code, reason))
        if not self.closed.called:
            self.closed.callback((code, reason))

    async def next(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next frame, or fail after ``timeout`` seconds."""
        d = self.frames.get()
        d.addTimeout(timeout, reactor)
        return await d

    async def next_of(self, type_: str, timeout: float = 5.0) -> dict[str, Any]:
        """The next frame of a given type, skipping others."""
        while True:
            frame = await self.next(timeout)
            if frame["type"] == type_:
                return frame

    async def nothing_more(self, wait: float = 0.3) -> None:
        """Assert no frame arrives within ``wait`` seconds."""
        await task.deferLater(reactor, wait, lambda: None)
        assert not self.frames.pending, f"unexpected frames: {self.frames.pending}"

    def send_json(self, value: Any) -> None:
        """Send a text frame holding ``value`` as JSON."""
        self.sendMessage(json.dumps(value).encode())

    async def wait_closed(self, timeout: float = 5.0) -> tuple[int | None, str | None]:
        """Wait for the connection to close; returns (code, reason)."""
        d: Deferred[tuple[int | None, str | None]] = Deferred()
        self.closed.addBoth(lambda r: (d.callback(r), r)[1])
        d.addTimeout(timeout, reactor)
        return await d


class ConnectionRefusedByServer(Exception):
    """The opening handshake did not succeed."""


@attrs.define
class Router:
    """A router listening on loopback, and the clients tests opened against it."""

    registry: OrgRegistry
    port: IListeningPort
    clients: list[Client] = attrs.Factory(list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port.getHost().port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port.getHost().port}/websocket"

    async def connect(
        self,
        token: str | None = None,
        *,
        protocols: list[str] | None = None,
        headers: dict[str, str] | None = None,
        query: str = "",
        first: bool = True,
    ) -> Client:
        """Open a WebSocket with a token; returns the client once open.

        With ``first`` the ``connected`` frame is awaited and kept in ``welcome``.
        """
        if protocols is None:
            protocols = [token] if token is not None else []
        factory = WebSocketClientFactory(
            self.ws_url + query, protocols=protocols, headers=headers or {}
        )
        factory.protocol = Client
        factory.opened = Deferred()
        factory.opened.addTimeout(5, reactor)
        endpoint = endpoints.TCP4ClientEndpoint(
            reactor, "127.0.0.1", self.port.getHost().port
        )
        protocol = await endpoint.connect(factory)
        self.clients.append(protocol)
        client: Client = await factory.opened
        if first:
            client.welcome = await client.next()
            assert client.welcome["type"] == "connected"
        return client

    async def notify(
        self,
        body: Any,
        *,
        client_id: str | None = SERVICE_ID,
        secret: str | None = SERVICE_SECRET,
        content_type: str | None = "application/json",
        method: str = "POST",
    ) -> tuple[int, Any]:
        """POST /internal/notify; returns (status, decoded JSON body or raw bytes)."""
        headers: dict[str, str] = {}
        if client_id is not None:
            headers["CF-Access-Client-Id"] = client_id
        if secret is not None:
            headers["CF-Access-Client-Secret"] = secret
        if content_type is not None:
            headers["Content-Type"] = content_type
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        response = await treq.request(
            method,
            self.base + "/internal/notify",
            data=data,
            headers=headers,
            persistent=False,
        )
        content = await response.content()
        try:
            return response.code, json.loads(content)
        except ValueError:
            return response.code, content

    async def handshake(self, headers: dict[str, str]) -> tuple[int, bytes]:
        """Send a raw WebSocket upgrade request; returns the status line's code and phrase."""
        all_headers = {
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        }
        all_headers.update(headers)
        response = await treq.get(
            self.base + "/websocket", headers=all_headers, persistent=False
        )
        phrase: bytes = response.phrase
        await response.content()
        return response.code, phrase

    async def close(self) -> None:
        """Close every client and wait until the server has no connection left."""
        for client in self.clients:
            if client.state == client.STATE_OPEN:
                client.sendClose()
        for client in self.clients:
            if not client.closed.called:
                await client.wait_closed()
        for _ in range(100):
            if not self.registry.connection_count:
                break
            await task.deferLater(reactor, 0.05, lambda: None)
        await self.port.stopListening()


def build_router_parts(
    settings: Settings, **options: Any
) -> tuple[OrgRegistry, OfficeServerFactory, Any]:
    """Registry, WebSocket factory and Site as makeService builds them."""
    registry = OrgRegistry(
        BUILTIN,
        now=reactor.seconds,
        auto_knock=options.pop("auto_knock", False),
    )
    verifier = TokenVerifier(settings.verify_keys, reactor.seconds)
    factory = OfficeServerFactory(
        registry=registry,
        verifier=verifier,
        clock=reactor,
        max_message_bytes=options.pop("max_message_bytes", 65536),
        ping_interval=options.pop("ping_interval", 0),
        ping_timeout=options.pop("ping_timeout", 10),
    )
    site = make_site(
        registry,
        settings,
        factory,
        max_body_bytes=options.pop("max_body_bytes", 65536),
    )
    assert not options, f"unknown options {options}"
    return registry, factory, site


@pytest.fixture
def router_options() -> dict[str, Any]:
    """Override in a test module to start the router with other options."""
    return {}


@pytest_twisted.async_yield_fixture
async def router(
    settings: Settings, router_options: dict[str, Any]
) -> AsyncIterator[Router]:
    """A real router on an ephemeral loopback port."""
    registry, _factory, site = build_router_parts(settings, **router_options)
    endpoint = endpoints.serverFromString(reactor, "tcp:0:interface=127.0.0.1")
    port = await endpoint.listen(site)
    r = Router(registry=registry, port=port)
    try:
        yield r
    finally:
        await r.close()
