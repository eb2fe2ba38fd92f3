"""A real router on loopback and real clients for it, used by the e2e tests.

The router runs in the test process with the real Site, Autobahn factory and
registry; clients are real Autobahn WebSocket clients and HTTP goes through treq
with ``persistent=False``.  :class:`ServerConnections` follows the server's TCP
connections so that teardown (and tests) can wait for them to go instead of
sleeping.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import socket
import struct
from collections.abc import Callable, Iterator
from types import EllipsisType
from typing import Any

import attrs
import pytest
from zope.interface import implementer

import treq
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.compress import (
    PerMessageDeflateOffer,
    PerMessageDeflateResponse,
    PerMessageDeflateResponseAccept,
)
from twisted.internet import endpoints, reactor, task
from twisted.internet.defer import Deferred, DeferredQueue
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory
from twisted.web.client import Agent
from twisted.web.http_headers import Headers
from twisted.web.iweb import IPolicyForHTTPS

from officerouter.auth import TokenVerifier
from officerouter.catalog import BUILTIN
from officerouter.config import Settings, parse_redis_url
from officerouter.history import HistoryBounds
from officerouter.limits import Limits, OriginPolicy
from officerouter.redis_backplane import RedisBackplane
from officerouter.redis_client import RedisLink
from officerouter.registry import OrgRegistry
from officerouter.web import make_site
from officerouter.websocket import OfficeServerFactory

SERVICE_ID = "test-client-id"
SERVICE_SECRET = "test-client-secret-0123456789"
TIMEOUT = 5.0


class ConnectionRefusedByServer(Exception):
    """The opening handshake did not succeed."""


#: Frames about who is online (docs/presence-and-recovery.md).
PRESENCE_TYPES = frozenset(
    {
        "presence",
        "user_joined",
        "user_left",
        "user_role_changed",
        "presence_state",
        "presence_diff",
    }
)


class Client(WebSocketClientProtocol):
    """A real WebSocket client that queues every frame it receives, decoded.

    Tests of routing look at content: by default presence frames go to
    ``presence`` instead of ``frames``, and each frame's stream number ``seq`` is
    taken out and kept in ``seqs``.  A client opened with ``full=True`` queues
    every frame in ``frames`` exactly as received.
    """

    welcome: dict[str, Any]
    full = False

    def __init__(self) -> None:
        super().__init__()
        self.frames: DeferredQueue[dict[str, Any]] = DeferredQueue()
        self.presence: DeferredQueue[dict[str, Any]] = DeferredQueue()
        self.seqs: list[int] = []
        self.raw: list[bytes] = []
        self.closed: Deferred[tuple[int | None, str | None]] = Deferred()
        self.close_code: int | None = None

    @property
    def user_id(self) -> str:
        """The user the server said this connection belongs to."""
        return str(self.welcome["payload"]["userId"])

    @property
    def org_id(self) -> str:
        """The org the server said this connection belongs to."""
        return str(self.welcome["payload"]["orgId"])

    @property
    def open_now(self) -> bool:
        """Whether the WebSocket is open (not closing or closed)."""
        return bool(self.state == self.STATE_OPEN)

    def onOpen(self) -> None:
        self.factory.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.raw.append(payload)
        frame = json.loads(payload)
        if not self.full:
            if frame.get("type") in PRESENCE_TYPES:
                self.presence.put(frame)
                return
            if "seq" in frame:
                self.seqs.append(frame.pop("seq"))
        self.frames.put(frame)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.close_code = code
        if not self.factory.opened.called:
            self.factory.opened.errback(ConnectionRefusedByServer(code, reason))
        if not self.closed.called:
            self.closed.callback((code, reason))

    async def next(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        """The next frame, or fail after ``timeout`` seconds."""
        d = self.frames.get()
        d.addTimeout(timeout, reactor)
        return await d

    async def next_of(self, type_: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        """The next frame of a given type, skipping others."""
        while True:
            frame = await self.next(timeout)
            if frame["type"] == type_:
                return frame

    def pending(self) -> list[dict[str, Any]]:
        """The frames received and not yet taken."""
        return list(self.frames.pending)

    def send_json(self, value: Any) -> None:
        """Send a text frame holding ``value`` as JSON."""
        self.sendMessage(json.dumps(value).encode())

    async def wait_closed(
        self, timeout: float = TIMEOUT
    ) -> tuple[int | None, str | None]:
        """Wait for the connection to close; returns (code, reason)."""
        d: Deferred[tuple[int | None, str | None]] = Deferred()
        self.closed.addBoth(lambda r: (d.callback(r), r)[1])
        d.addTimeout(timeout, reactor)
        return await d


class FullClient(Client):
    """A client that queues every frame, presence and ``seq`` included."""

    full = True


class ServerConnections:
    """The router's TCP connections as the server sees them, with change events.

    Each connection is known by its transport: it opens when twisted.web's channel
    is connected, and ends when whichever protocol holds the transport last (the
    HTTP channel, or the WebSocket protocol it was handed to) loses it.
    """

    def __init__(self) -> None:
        self.open: set[object] = set()
        self._waiters: list[Deferred[None]] = []

    def track(self, factory: Factory) -> None:
        """Watch every protocol the factory builds (patched on this instance)."""
        build = factory.buildProtocol

        def buildProtocol(addr: Any) -> Any:
            protocol = build(addr)
            if protocol is not None:
                self._watch(protocol)
            return protocol

        factory.buildProtocol = buildProtocol  # type: ignore[method-assign]

    def _watch(self, protocol: Any) -> None:
        make, lost = protocol.makeConnection, protocol.connectionLost
        held: list[object] = []

        def makeConnection(transport: object) -> None:
            held.append(transport)
            self.open.add(transport)
            self.changed()
            make(transport)

        def connectionLost(reason: Any) -> None:
            try:
                lost(reason)
            finally:
                for transport in held:
                    self.open.discard(transport)
                self.changed()

        protocol.makeConnection = makeConnection
        protocol.connectionLost = connectionLost

    def changed(self) -> None:
        """Wake everything waiting in :meth:`wait_change`."""
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    def wait_change(self) -> Deferred[None]:
        """Fire at the next connection opened or lost."""
        d: Deferred[None] = Deferred()
        self._waiters.append(d)
        return d


async def sleep(seconds: float) -> None:
    """Wait ``seconds`` on the reactor."""
    await task.deferLater(reactor, seconds, lambda: None)


async def wait_until(predicate, timeout: float = 5.0) -> None:
    """Poll ``predicate`` every 20 ms until it holds; fail after ``timeout``."""
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        await sleep(0.02)
    raise AssertionError("condition not reached in time")


class RawClient:
    """A WebSocket client on a plain socket that reads only when told to.

    Its receive buffer is small, so a server writing to it fills up quickly.
    ``extensions``, if given, is offered in ``Sec-WebSocket-Extensions``.
    """

    def __init__(
        self, port: int, token: str, rcvbuf: int = 4096, extensions: str = ""
    ) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.connect(("127.0.0.1", port))
        self.sock.setblocking(False)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                "GET /websocket HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                + (f"Sec-WebSocket-Extensions: {extensions}\r\n" if extensions else "")
                + f"Sec-WebSocket-Protocol: {token}\r\n\r\n"
            ).encode()
        )
        self.buffer = b""

    def read_available(self) -> bytes:
        chunks = []
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                break
            if not data:
                chunks.append(b"")
                break
            chunks.append(data)
        got = b"".join(chunks)
        self.buffer += got
        return got

    async def handshake(self) -> None:
        await wait_until(
            lambda: self.read_available() is not None and b"\r\n\r\n" in self.buffer
        )
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head

    def frames(self) -> list[tuple[int, bytes]]:
        """Parse whole frames out of what was read so far: (opcode, payload)."""
        out = []
        buf = self.buffer
        while len(buf) >= 2:
            opcode, n = buf[0] & 0x0F, buf[1] & 0x7F
            offset = 2
            if n == 126:
                if len(buf) < 4:
                    break
                n, offset = struct.unpack("!H", buf[2:4])[0], 4
            elif n == 127:
                if len(buf) < 10:
                    break
                n, offset = struct.unpack("!Q", buf[2:10])[0], 10
            if len(buf) < offset + n:
                break
            out.append((opcode, buf[offset : offset + n]))
            buf = buf[offset + n :]
        self.buffer = buf
        return out

    def close(self) -> None:
        self.sock.close()


@attrs.define
class HTTPResult:
    """A response read whole: status, headers, body, and the body as JSON if it is."""

    code: int
    headers: Headers
    content: bytes

    def json(self) -> Any:
        return json.loads(self.content)


@implementer(IPolicyForHTTPS)
@attrs.frozen
class _Trust:
    """HTTPS to the test router: its certificate, checked, for every netloc."""

    options: Any

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        return self.options


@attrs.define
class Router:
    """A router listening on loopback, and the clients tests opened against it."""

    registry: OrgRegistry
    port: IListeningPort
    connections: ServerConnections
    #: The service token the router expects; ``notify`` sends it by default.
    service_id: str = SERVICE_ID
    service_secret: str = SERVICE_SECRET
    clients: list[Client] = attrs.Factory(list)
    _markers: Iterator[int] = attrs.Factory(itertools.count)
    #: The WebSocket factory and the Site, for tests of the adapters themselves.
    factory: Any = None
    site: Any = None
    #: Client TLS options (``optionsForClientTLS``) when the router listens on
    #: ``ssl:``; ``None`` for TCP.
    tls: Any = None
    #: With a shared Redis: the router's link to it and its backplane.
    link: Any = None
    backplane: Any = None

    @property
    def base(self) -> str:
        scheme = "http" if self.tls is None else "https"
        return f"{scheme}://127.0.0.1:{self.port.getHost().port}"

    @property
    def ws_url(self) -> str:
        scheme = "ws" if self.tls is None else "wss"
        return f"{scheme}://127.0.0.1:{self.port.getHost().port}/websocket"

    async def connect(
        self,
        token: str | None = None,
        *,
        protocols: list[str] | None = None,
        headers: dict[str, str] | None = None,
        query: str = "",
        first: bool = True,
        full: bool = False,
        deflate: bool = False,
    ) -> Client:
        """Open a WebSocket with a token; returns the client once open.

        With ``first`` the ``connected`` frame is awaited and kept in ``welcome``.
        With ``full`` every frame is queued as received (see :class:`Client`).
        With ``deflate`` the client offers permessage-deflate.

        :raises ConnectionRefusedByServer: when the handshake fails.
        """
        if protocols is None:
            protocols = [token] if token is not None else []
        factory = WebSocketClientFactory(
            self.ws_url + query, protocols=protocols, headers=headers or {}
        )
        factory.protocol = FullClient if full else Client
        if deflate:
            factory.setProtocolOptions(
                perMessageCompressionOffers=[PerMessageDeflateOffer()],
                perMessageCompressionAccept=lambda response: (
                    PerMessageDeflateResponseAccept(response)
                    if isinstance(response, PerMessageDeflateResponse)
                    else None
                ),
            )
        factory.opened = Deferred()
        factory.opened.addTimeout(TIMEOUT, reactor)
        port = self.port.getHost().port
        endpoint = (
            endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
            if self.tls is None
            else endpoints.SSL4ClientEndpoint(reactor, "127.0.0.1", port, self.tls)
        )
        protocol = await endpoint.connect(factory)
        self.clients.append(protocol)
        client: Client = await factory.opened
        if first:
            client.welcome = await client.next()
            assert client.welcome["type"] == "connected"
        return client

    async def http(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        data: bytes | None = None,
    ) -> HTTPResult:
        """One HTTP request on its own connection, read whole."""
        extra: dict[str, Any] = {}
        if self.tls is not None:
            extra["agent"] = Agent(reactor, contextFactory=_Trust(self.tls))
        response = await treq.request(
            method,
            self.base + path,
            data=data,
            headers=headers or {},
            persistent=False,
            **extra,
        )
        content = await response.content()
        return HTTPResult(response.code, response.headers, content)

    async def notify(
        self,
        body: Any,
        *,
        client_id: str | EllipsisType | None = ...,
        secret: str | EllipsisType | None = ...,
        content_type: str | None = "application/json",
        method: str = "POST",
    ) -> tuple[int, Any]:
        """POST /internal/notify; returns (status, decoded JSON body or raw bytes).

        The service token is the router's unless ``client_id``/``secret`` say
        otherwise (``None`` leaves a header out).
        """
        result = await self.notify_result(
            body,
            client_id=client_id,
            secret=secret,
            content_type=content_type,
            method=method,
        )
        try:
            return result.code, result.json()
        except ValueError:
            return result.code, result.content

    async def notify_result(
        self,
        body: Any,
        *,
        idempotency_key: str | None = None,
        client_id: str | EllipsisType | None = ...,
        secret: str | EllipsisType | None = ...,
        content_type: str | None = "application/json",
        method: str = "POST",
    ) -> HTTPResult:
        """POST /internal/notify, with an ``Idempotency-Key`` when given; the
        whole answer (status, headers, body)."""
        if client_id is ...:
            client_id = self.service_id
        if secret is ...:
            secret = self.service_secret
        headers: dict[str, str] = {}
        if client_id is not None:
            headers["CF-Access-Client-Id"] = client_id
        if secret is not None:
            headers["CF-Access-Client-Secret"] = secret
        if content_type is not None:
            headers["Content-Type"] = content_type
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return await self.http(method, "/internal/notify", headers=headers, data=data)

    async def health(self) -> dict[str, Any]:
        """GET /healthz, which must answer 200 with JSON."""
        result = await self.http("GET", "/healthz")
        assert result.code == 200
        body: dict[str, Any] = result.json()
        return body

    async def counts(self) -> tuple[int, int]:
        """``(connections, rooms)`` as /healthz reports them."""
        body = await self.health()
        assert body["ok"] is True
        return body["connections"], body["rooms"]

    async def handshake(
        self, headers: dict[str, str], query: str = ""
    ) -> tuple[int, bytes]:
        """Send a raw WebSocket upgrade request; returns the status line's code and phrase."""
        all_headers = {
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        }
        all_headers.update(headers)
        response = await treq.get(
            self.base + "/websocket" + query, headers=all_headers, persistent=False
        )
        phrase: bytes = response.phrase
        await response.content()
        return response.code, phrase

    async def barrier(self, *clients: Client) -> None:
        """Prove that nothing else is on its way to these clients.

        A direct marker goes to each of their users; since a connection receives
        frames in the order the server handled them, the marker being the next
        frame on every connection of those users means nothing was sent to them
        in between.  Every open connection of those users must be listed or not,
        it takes the marker either way.
        """
        marker = f"barrier-{next(self._markers)}"
        expected = {"type": "room_updated", "payload": {"roomId": marker, "name": "-"}}
        users = {(c.org_id, c.user_id) for c in clients}
        tabs = [
            c
            for c in self.clients
            if c.open_now and hasattr(c, "welcome") and (c.org_id, c.user_id) in users
        ]
        for org_id, user_id in sorted(users):
            status, body = await self.notify(
                {
                    "orgId": org_id,
                    "routing": "direct",
                    "type": "room_updated",
                    "targets": [user_id],
                    "payload": expected["payload"],
                }
            )
            assert status == 200, body
        for tab in tabs:
            frame = await tab.next()
            assert frame == expected, f"{tab.user_id} got {frame} before the barrier"

    async def until(
        self, predicate: Callable[[], bool], timeout: float = TIMEOUT
    ) -> None:
        """Wait until ``predicate()`` holds, checked whenever a connection comes or goes."""
        deadline = reactor.seconds() + timeout
        while not predicate():
            left = deadline - reactor.seconds()
            assert left > 0, "timed out waiting for the server's connections"
            d = self.connections.wait_change()
            d.addTimeout(left, reactor)
            await d

    async def close(self) -> None:
        """Close every client and wait until the server has no connection left."""
        for client in self.clients:
            if client.open_now:
                client.sendClose()
        for client in self.clients:
            if not client.closed.called:
                await client.wait_closed()
        await self.until(lambda: not self.connections.open)
        await self.port.stopListening()
        # Presence grace and idle-room timers would otherwise outlive the test.
        await self.registry.stop()
        if self.link is not None:
            await self.backplane.stop()
            await self.link.stopService()

    async def presence_of(self, org_id: str) -> tuple[int, Any]:
        """GET /internal/presence?orgId=... with the service token."""
        result = await self.http(
            "GET",
            f"/internal/presence?orgId={org_id}",
            headers={
                "CF-Access-Client-Id": self.service_id,
                "CF-Access-Client-Secret": self.service_secret,
            },
        )
        return result.code, result.json()


async def start_router(
    settings: Settings,
    description: str = "tcp:0:interface=127.0.0.1",
    *,
    tls: Any = None,
    **options: Any,
) -> Router:
    """Build the router's parts (see :func:`build_router_parts`) and listen.

    :param description: the server endpoint, as ``--port`` takes it.
    :param tls: the clients' TLS options when ``description`` is ``ssl:``.
    """
    redis_url = options.pop("redis_url", None)
    link = backplane = None
    if redis_url is not None:
        link, backplane = build_backplane(
            redis_url,
            node_id=options.pop("node_id"),
            history=options.get("history", HistoryBounds()),
            presence_grace=options.get("presence_grace", 5.0),
            heartbeat_timeout=options.pop("heartbeat_timeout", 10.0),
        )
        options["backplane"] = backplane
        link.startService()
        backplane.start()
        await link.when_up(TIMEOUT)
    registry, factory, site = build_router_parts(settings, **options)
    connections = ServerConnections()
    connections.track(site)
    connections.track(factory)
    registry.start()
    port = await endpoints.serverFromString(reactor, description).listen(site)
    return Router(
        registry=registry,
        port=port,
        connections=connections,
        service_id=settings.service_client_id,
        service_secret=settings.service_client_secret,
        factory=factory,
        site=site,
        tls=tls,
        link=link,
        backplane=backplane,
    )


def build_backplane(
    url: str,
    *,
    node_id: str,
    history: HistoryBounds,
    presence_grace: float,
    heartbeat_timeout: float,
) -> tuple[RedisLink, RedisBackplane]:
    """A Redis backplane and its link as makeService builds them (not started)."""
    backplane = RedisBackplane(
        parse_redis_url(url),
        node_id=node_id,
        prefix="officerouter",
        bounds=history,
        clock=reactor,
        heartbeat_timeout=heartbeat_timeout,
        presence_grace=presence_grace,
    )
    return backplane.link, backplane


def build_router_parts(
    settings: Settings, **options: Any
) -> tuple[OrgRegistry, OfficeServerFactory, Any]:
    """Registry, WebSocket factory and Site as makeService builds them.

    :param options: ``auto_knock``, ``ban_memory``, ``ping_interval``,
        ``ping_timeout``, ``allowed_origins`` (a list), ``direct_writes``,
        ``token_expiry`` (``enforce`` or ``ignore``), ``token_expiry_grace``,
        ``http_timeout``, and any field of :class:`~officerouter.limits.Limits`.
    """
    registry = OrgRegistry(
        BUILTIN,
        clock=reactor,
        auto_knock=options.pop("auto_knock", False),
        ban_memory=options.pop("ban_memory", 3600.0),
        presence_grace=options.pop("presence_grace", 5.0),
        position_tick=options.pop("position_tick", 0.05),
        history=options.pop("history", HistoryBounds()),
        backplane=options.pop("backplane", None),
        outage_close=options.pop("outage_close", 30.0),
    )
    verifier = TokenVerifier(settings.verify_keys, reactor.seconds)
    limit_names = {field.name for field in attrs.fields(Limits)}
    limits = Limits(**{k: options.pop(k) for k in list(options) if k in limit_names})
    factory = OfficeServerFactory(
        registry=registry,
        verifier=verifier,
        clock=reactor,
        limits=limits,
        origins=OriginPolicy(options.pop("allowed_origins", ())),
        ping_interval=options.pop("ping_interval", 0),
        ping_timeout=options.pop("ping_timeout", 10),
        permessage_deflate=options.pop("permessage_deflate", False),
        direct_writes=options.pop("direct_writes", True),
        token_expiry_enforced=options.pop("token_expiry", "enforce") == "enforce",
        token_expiry_grace=options.pop("token_expiry_grace", 10.0),
    )
    site = make_site(
        registry,
        settings,
        factory,
        max_body_bytes=limits.max_body_bytes,
        http_timeout=options.pop("http_timeout", 30.0),
        access_log=options.pop("access_log", False),
    )
    assert not options, f"unknown options {options}"
    return registry, factory, site


#: Put in a module as ``deployment = both_deployments``: its tests that use the
#: ``router`` fixture run against one process and against the Redis backplane.
both_deployments = pytest.fixture(params=["one-process", "redis"])(
    lambda request: request.param
)
