"""The WebSocket adapter: Autobahn protocol and factory around the registry.

``onConnect`` authenticates before the upgrade, ``onOpen`` joins the room,
``onMessage`` rate-limits, decodes and hands over, ``onClose`` leaves.  The
protocol is the room's :class:`~officerouter.rooms.Connection`: it frames each
encoded message once, queues it in an :class:`~officerouter.limits.Outbox`, and
writes everything queued for a connection during one reactor iteration with a
single ``transport.write``; while the transport is full (producer paused) the
outbox holds frames, bounded.  Pongs go through the outbox too, and pings through
the rate limit: Autobahn would answer each ping past both.
"""

from __future__ import annotations

import re
import socket
import struct
from typing import Any
from urllib.parse import parse_qs, urlsplit

from zope.interface import implementer

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.compress import (
    PerMessageDeflateOffer,
    PerMessageDeflateOfferAccept,
)
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet import tcp
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IDelayedCall,
    IPushProducer,
    IReactorTime,
    ISSLTransport,
    ISystemHandle,
)
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Request

from officerouter import codes
from officerouter.auth import (
    AuthError,
    Identity,
    TokenVerifier,
    token_from_subprotocols,
)
from officerouter.codec import (
    Burst,
    ContractError,
    Encoded,
    decode_client,
    encode,
)
from officerouter.inflight import InFlight
from officerouter.limits import (
    FloodGuard,
    LagProbe,
    Limits,
    OriginPolicy,
    Outbox,
    Verdict,
)
from officerouter.messages import ClientMessage, RefreshToken, TokenRefreshed
from officerouter.metrics import UNKNOWN_TYPE, Metrics
from officerouter.registry import OrgRegistry
from officerouter.rooms import RefusedError, Session, error_frame

_FRAMING = "ws"
_JWT_LIKE = re.compile(r"[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*")
_STATE_OPEN = WebSocketProtocol.STATE_OPEN

RATE_LIMITED = ContractError(
    codes.ERR_RATE_LIMITED, [("$", "too many messages; slow down")]
)


def text_frame(data: bytes) -> bytes:
    """Frame ``data`` as one unmasked, final WebSocket text frame (server to client)."""
    n = len(data)
    if n < 126:
        return struct.pack("!BB", 0x81, n) + data
    if n < 65536:
        return struct.pack("!BBH", 0x81, 126, n) + data
    return struct.pack("!BBQ", 0x81, 127, n) + data


_OPCODE_PONG = 0xA


class ControlFrame(bytes):
    """A framed control frame in a connection's outbox.

    A compressing connection's outbox holds message payloads, each compressed
    and framed as it is written; a control frame among them is written as is.
    """


def pong_frame(payload: bytes) -> ControlFrame:
    """The unmasked pong answering a ping (whose payload is at most 125 bytes)."""
    return ControlFrame(struct.pack("!BB", 0x80 | _OPCODE_PONG, len(payload)) + payload)


def framed(message: Encoded) -> bytes:
    """The WebSocket frame of an encoded message, built once per message."""
    frame = message.framings.get(_FRAMING)
    if frame is None:
        frame = message.framings[_FRAMING] = text_frame(message.data)
    return frame


def framed_burst(burst: Burst) -> bytes:
    """The WebSocket frames of a burst's messages, joined once per burst."""
    frames = burst.framings.get(_FRAMING)
    if frames is None:
        frames = burst.framings[_FRAMING] = b"".join(
            framed(message) for message in burst.messages
        )
    return frames


def _set_send_buffer(transport: Any, size: int) -> None:
    """Cap the kernel's send buffer of a plain TCP connection (not for TLS)."""
    if ISystemHandle.providedBy(transport) and not ISSLTransport.providedBy(transport):
        handle = transport.getHandle()
        if isinstance(handle, socket.socket):
            handle.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)


def direct_writes_possible(transport: Any) -> bool:
    """Whether :meth:`OfficeServerProtocol.flush` may try the socket first.

    Only for Twisted's plain TCP server transport, whose buffer we can see empty
    (``dataBuffer``, ``_tempDataLen``) and whose ``writeSomeData`` sends on the
    socket and reports errors without raising.  A TLS connection wraps its own
    protocol around this transport and is never a ``tcp.Server`` here: its bytes
    must go through the TLS layer.  Checked per connection, so a Twisted that
    renamed these falls back to ``transport.write`` instead of breaking.
    """
    return (
        type(transport) is tcp.Server
        and isinstance(getattr(transport, "dataBuffer", None), bytes)
        and isinstance(getattr(transport, "_tempDataLen", None), int)
        and callable(getattr(transport, "writeSomeData", None))
    )


def _accept_deflate(offers: list[Any]) -> Any:
    """Accept the first permessage-deflate offer (``--permessage-deflate``)."""
    for offer in offers:
        if isinstance(offer, PerMessageDeflateOffer):
            return PerMessageDeflateOfferAccept(offer)
    return None


class _Flusher:
    """Write each connection's queued frames once per reactor iteration.

    A broadcast to N connections, and every other message handled in the same
    iteration, costs one ``transport.write`` per connection instead of one per
    frame; per-connection order is kept because every frame goes through the queue.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._dirty: list[OfficeServerProtocol] = []
        self._call: IDelayedCall | None = None

    def schedule(self, protocol: OfficeServerProtocol) -> None:
        self._dirty.append(protocol)
        if self._call is None:
            self._call = self._clock.callLater(0, self.flush)

    def flush(self) -> None:
        self._call = None
        dirty, self._dirty = self._dirty, []
        for protocol in dirty:
            protocol.flush()


@implementer(IPushProducer)
class _Backpressure:
    """Registered with the transport: tells the protocol when its buffer is full."""

    def __init__(self, protocol: OfficeServerProtocol) -> None:
        self._protocol = protocol

    def pauseProducing(self) -> None:
        self._protocol.paused = True

    def resumeProducing(self) -> None:
        self._protocol.paused = False
        self._protocol.flush()

    def stopProducing(self) -> None:
        self._protocol.paused = True


class OfficeServerProtocol(WebSocketServerProtocol):
    """One client connection."""

    _log = Logger()
    factory: OfficeServerFactory

    def __init__(self) -> None:
        super().__init__()
        self._identity: Identity | None = None
        self._since: str | None = None
        self._batch_positions = False
        self._presence_diff = False
        self._session: Session | None = None
        self._outbox: Outbox | None = None
        self._guard: FloodGuard | None = None
        self._scheduled = False
        self._compressing = False
        self._direct = False
        self._expiry: IDelayedCall | None = None
        # The reason of our own refusal, if we refused: the metrics label it by
        # that reason, and Autobahn's refusals (free text) as "protocol".
        self._refusal: str | None = None
        self.paused = False

    # ------------------------------------------------------------ handshake

    # Autobahn takes a Deferred here (it wraps the result with txaio.as_future),
    # though its annotation does not say so.
    def onConnect(  # type: ignore[override]
        self, request: ConnectionRequest
    ) -> str | Deferred[str]:
        # Autobahn turns an unexpected exception here into a bare 500 and a
        # warning without a traceback: log it ourselves, then deny.
        try:
            result = self._authenticate(request)
        except ConnectionDeny as e:
            self._refusal = e.reason
            raise
        except Exception:
            self._log.failure("unexpected error authenticating a connection")
            self._refusal = codes.REASON_INTERNAL
            raise ConnectionDeny(500, codes.REASON_INTERNAL) from None
        if isinstance(result, Deferred):
            result.addErrback(self._note_refusal)
        return result

    def _note_refusal(self, failure: Failure) -> Failure:
        if isinstance(failure.value, ConnectionDeny):
            self._refusal = failure.value.reason
        return failure

    def failHandshake(
        self, reason: str, code: int = 400, responseHeaders: Any = None
    ) -> None:
        # Every refused handshake passes here, ours (ConnectionDeny) and
        # Autobahn's own (bad headers): one log line each, with peer and reason.
        # Autobahn's reasons may quote a header, and so a token: those are cut.
        self.factory.metrics.handshake_refused(
            code, reason if reason == self._refusal else "protocol"
        )
        reason = _JWT_LIKE.sub("[token]", reason)
        self._log.info(
            "refused connection from {peer}: {status} {reason}",
            peer=self.peer,
            status=code,
            reason=reason,
        )
        super().failHandshake(reason, code, responseHeaders)

    def _authenticate(self, request: ConnectionRequest) -> str | Deferred[str]:
        factory = self.factory
        if factory.stopping:
            raise ConnectionDeny(503, codes.REASON_SHUTDOWN)
        if factory.registry.unavailable() is not None:
            raise ConnectionDeny(503, codes.REASON_UNAVAILABLE)
        if not factory.origins.allows(request.origin):
            raise ConnectionDeny(403, codes.REASON_ORIGIN)
        try:
            token, echo = token_from_subprotocols(request.protocols)
            identity = factory.verifier.verify(token)
            factory.registry.check_admission(identity)
        except AuthError as e:
            raise ConnectionDeny(401, e.reason) from None
        except RefusedError as e:
            raise ConnectionDeny(e.status, e.reason) from None
        params = self._query_params()
        positions = params.get("positions", [""])[0]
        if positions not in ("", "batched"):
            raise ConnectionDeny(400, codes.REASON_POSITIONS_PARAM)
        presence = params.get("presence", [""])[0]
        if presence not in ("", "diff"):
            raise ConnectionDeny(400, codes.REASON_PRESENCE_PARAM)
        refusal = factory.capacity_refusal(identity)
        if refusal is not None:
            raise ConnectionDeny(*refusal)
        since = params.get("since")
        self._since = since[0] if since else None
        self._batch_positions = positions == "batched"
        self._presence_diff = presence == "diff"
        # The org's room must be ready: with several processes its shared state
        # (bans, who is online elsewhere) is read first, and checked again.
        prepared = factory.registry.prepare(identity.org_id)
        outcome: list[Any] = []
        prepared.addBoth(outcome.append)
        if outcome:
            return self._admit(identity, echo, outcome[0])
        return prepared.addBoth(lambda result: self._admit(identity, echo, result))

    def _admit(self, identity: Identity, echo: str, prepared: Any) -> str:
        """The room is ready (or not): admit the identity or refuse it."""
        factory = self.factory
        if isinstance(prepared, Failure):
            refused = prepared.value
            if isinstance(refused, RefusedError):
                raise ConnectionDeny(refused.status, refused.reason)
            prepared.raiseException()
        try:
            factory.registry.check_admission(identity)
        except RefusedError as e:
            factory.registry.abandon(identity.org_id)
            raise ConnectionDeny(e.status, e.reason) from None
        refusal = factory.capacity_refusal(identity)
        if refusal is not None:
            factory.registry.abandon(identity.org_id)
            raise ConnectionDeny(*refusal)
        if self.state == WebSocketProtocol.STATE_CLOSED:
            # The client left while the org's shared state was being read.
            factory.registry.abandon(identity.org_id)
            raise ConnectionDeny(400, codes.REASON_GONE)
        self._identity = identity
        return echo

    def _query_params(self) -> dict[str, list[str]]:
        """The request's query parameters, blank values kept.

        Autobahn's ``request.params`` drops them (``parse_qs`` without
        ``keep_blank_values``), and ``?since=`` is a request for recovery all
        the same, answered ``recovered: false``.
        """
        query = urlsplit(self.http_request_uri).query
        return parse_qs(query, keep_blank_values=True)

    def onOpen(self) -> None:
        # Autobahn calls onOpen with no errback: a bug here must not leave a
        # half-joined connection behind.
        assert self._identity is not None
        factory = self.factory
        factory.metrics.handshake_accepted()
        limits = factory.limits
        self._outbox = Outbox(limits.soft_buffer_bytes, limits.hard_buffer_bytes)
        self._guard = FloodGuard(
            limits.rate,
            limits.burst,
            limits.flood_seconds,
            factory.clock.seconds,
            lag=factory.lag_probe.lag,
        )
        factory.lag_probe.attach()
        transport: Any = self.transport
        if limits.socket_send_buffer:
            _set_send_buffer(transport, limits.socket_send_buffer)
        # twisted.web's HTTPChannel is still registered as the producer of the
        # transport it handed over; from now on the outbox listens instead.
        if getattr(transport, "producer", None) is not None:
            transport.unregisterProducer()
        transport.registerProducer(_Backpressure(self), True)
        factory.live.add(self)
        self._compressing = self._perMessageCompress is not None
        self._direct = factory.direct_writes and direct_writes_possible(transport)
        try:
            self._session = factory.registry.connect(
                self._identity,
                self,
                since=self._since,
                batch_positions=self._batch_positions,
                presence_diff=self._presence_diff,
            )
        except RefusedError as e:
            # Only when stopping: the handshake and the join share a reactor turn.
            self.close(codes.CLOSE_GOING_AWAY, e.reason)
            return
        except Exception:
            self._log.failure("unexpected error joining a room")
            self.close(codes.CLOSE_INTERNAL_ERROR, codes.REASON_INTERNAL)
            return
        self._expire_at(self._identity.expires_at)
        self._release_handshake()

    #: What Autobahn keeps of the opening handshake.  Nothing reads it once the
    #: connection is open, and it is per connection (the raw request and the
    #: echoed subprotocol each carry the token): release it.
    _HANDSHAKE_STATE = (
        "http_request_data",
        "http_response_data",
        "http_headers",
        "http_status_line",
        "http_request_uri",
        "http_request_path",
        "http_request_params",
        "http_request_host",
        "websocket_protocols",
        "websocket_extensions",
        "websocket_origin",
        "websocket_protocol_in_use",
    )

    def _release_handshake(self) -> None:
        self._identity = None
        self._since = None
        for name in self._HANDSHAKE_STATE:
            if name in self.__dict__:
                setattr(self, name, None)

    # ------------------------------------------------------------ messages

    def dataReceived(self, data: bytes) -> None:
        # Autobahn parses every frame of this read before returning: the flood
        # guard charges them by when they could have arrived, not by when each
        # is handled (which, when the process is behind, is all at once).
        if self._guard is not None:
            self._guard.read()
        super().dataReceived(data)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        session = self._session
        if session is None:
            return
        metrics = self.factory.metrics
        if isBinary:
            metrics.frame_received(UNKNOWN_TYPE, "refused")
            self.close(codes.CLOSE_UNSUPPORTED_DATA, codes.REASON_BINARY)
            return
        if not self._allow_frame(session):
            metrics.frame_received(UNKNOWN_TYPE, "rate_limited")
            return
        registry = self.factory.registry
        type_ = UNKNOWN_TYPE
        try:
            message = self._decode(session, payload)
            type_ = message.type
            if registry.catalog[type_].local:
                self._refresh(session, message)
                metrics.frame_received(type_, "answered")
            else:
                registry.receive(session, message)
                metrics.frame_received(type_, "relayed")
        except ContractError as e:
            metrics.frame_received(type_, "refused")
            self._log.info(
                "rejected a frame from connection {connection_id}: {code}",
                connection_id=session.connection_id,
                code=e.code,
            )
            self.send(error_frame(e))
        except Exception:
            self._log.failure("unexpected error handling a client frame")
            self.close(codes.CLOSE_INTERNAL_ERROR, codes.REASON_INTERNAL)

    def _decode(self, session: Session, payload: bytes) -> ClientMessage:
        """Decode a client frame; a pending guest may only ask for a refresh.

        Anything else a pending guest sends, well-formed or not, is answered
        ``not_permitted``, as before there was a frame it may send.
        """
        catalog = self.factory.registry.catalog
        if session.admitted:
            return decode_client(payload, catalog)
        try:
            message = decode_client(payload, catalog)
        except ContractError:
            session.check_may_send()
            raise
        if not catalog[message.type].local:
            session.check_may_send()
        return message

    # ------------------------------------------------------------ token lifetime

    def _expire_at(self, expires_at: float) -> None:
        """Close the connection when its token has expired, after the grace."""
        factory = self.factory
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = None
        if not factory.token_expiry_enforced:
            return
        delay = max(
            0.0, expires_at + factory.token_expiry_grace - factory.clock.seconds()
        )
        self._expiry = factory.clock.callLater(delay, self._token_expired)

    def _token_expired(self) -> None:
        self._expiry = None
        session = self._session
        self._log.info(
            "closing connection {connection_id}: token expired",
            connection_id=session.connection_id if session else None,
        )
        self.close(codes.CLOSE_TOKEN_EXPIRED, codes.REASON_TOKEN_EXPIRED)

    def _refresh(self, session: Session, message: ClientMessage) -> None:
        """Verify a fresh token for this connection, as at the handshake.

        The same user in the same org: the connection lasts until its expiry,
        and takes its role.  Otherwise it is refused with an ``error`` frame and
        the connection keeps its old expiry.
        """
        payload = message.payload
        assert isinstance(payload, RefreshToken)
        factory = self.factory
        try:
            identity = factory.verifier.verify(payload.token)
            factory.registry.check_admission(identity)
            if (identity.user_id, identity.org_id) != (session.user_id, session.org_id):
                raise AuthError(codes.REASON_OTHER_IDENTITY)
        except (AuthError, RefusedError) as e:
            self._log.info(
                "refused a token refresh from connection {connection_id} "
                "({user_id} in {org_id}): {reason}",
                connection_id=session.connection_id,
                user_id=session.user_id,
                org_id=session.org_id,
                reason=e.reason,
            )
            self.send(
                error_frame(
                    ContractError(
                        codes.ERR_REFRESH_REFUSED, [("$.payload.token", e.reason)]
                    )
                )
            )
            return
        self._expire_at(identity.expires_at)
        self.send(
            encode(
                "token_refreshed", TokenRefreshed(expiresAt=int(identity.expires_at))
            )
        )
        factory.registry.refresh_role(session, identity.role)

    def onPing(self, payload: bytes) -> None:
        # Autobahn answers each ping at once with transport.write, past the
        # outbox: a client pinging without reading grew the transport's buffer
        # without bound, and pings escaped the rate limit.  A ping is a frame
        # like any other here: it takes a token (over the limit it gets no
        # pong), and its pong waits in the outbox under the buffer limits.
        session = self._session
        if (
            session is not None
            and self.state == _STATE_OPEN
            and self._allow_frame(session)
        ):
            self._queue(pong_frame(payload), None)

    def _allow_frame(self, session: Session) -> bool:
        """Count a frame from the client against its rate limit.

        :returns: whether to handle it (otherwise it is dropped, and the client
            warned or closed).
        """
        assert self._guard is not None
        verdict = self._guard.check()
        if verdict is Verdict.ALLOW:
            return True
        self._rate_limited(session, verdict)
        return False

    def _rate_limited(self, session: Session, verdict: Verdict) -> None:
        if verdict is Verdict.DROP_AND_WARN:
            self._log.info(
                "rate limiting connection {connection_id}",
                connection_id=session.connection_id,
            )
            self.send(error_frame(RATE_LIMITED))
        elif verdict is Verdict.CLOSE:
            self._log.info(
                "closing connection {connection_id}: flooding",
                connection_id=session.connection_id,
            )
            self.close(codes.CLOSE_POLICY_VIOLATION, codes.REASON_FLOODING)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self._outbox is not None:  # it was open
            if self.closedByMe:
                self.factory.metrics.closed(self.localCloseCode, "server")
            elif self.remoteCloseCode is not None:
                self.factory.metrics.closed(self.remoteCloseCode, "client")
            else:
                self.factory.metrics.closed(code, "abnormal")
        self._leave()
        self.factory.live.discard(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        # Autobahn resolves ``is_closed`` with the protocol itself, so a closed
        # connection and its fired Deferred refer to each other and wait for a
        # full collection, which officerouter.gctune makes rare (and never
        # reaches once they are frozen).  Nothing waits on it any more: the
        # callbacks ran when it fired.  Dropping it lets reference counting
        # free the connection as it closes.
        self.is_closed = None

    def _leave(self) -> None:
        """Leave the room and free the queue; idempotent."""
        expiry, self._expiry = self._expiry, None
        if expiry is not None and expiry.active():
            expiry.cancel()
        if self._outbox is not None:
            self._outbox.clear()
        if self._guard is not None:
            self._guard = None
            self.factory.lag_probe.detach()
        session, self._session = self._session, None
        if session is not None:
            self.factory.registry.disconnect(session)
        elif self._identity is not None:
            # Admitted, but gone before it joined: the room prepared for it
            # must not stay live with nobody in it.
            self.factory.registry.abandon(self._identity.org_id)
            self._identity = None

    # ------------------------------------------------------------ Connection

    def send(self, message: Encoded) -> None:
        """Queue a message; it is written at the end of this reactor iteration."""
        outbox = self._outbox
        if self.state != _STATE_OPEN or outbox is None:
            return
        key = (
            message.type + "\0" + message.sender
            if message.ephemeral and message.sender
            else None
        )
        self.factory.frames_sent += 1
        # With permessage-deflate each frame is compressed for this connection
        # when flushed, so the queue holds the message, not the shared frame.
        self._queue(message.data if self._compressing else framed(message), key)

    def send_burst(self, burst: Burst) -> None:
        """Queue a burst's messages, framed once for every connection."""
        if self._compressing:
            for message in burst.messages:
                self.send(message)
        elif self.state == _STATE_OPEN and self._outbox is not None:
            self.factory.frames_sent += len(burst.messages)
            self._queue(framed_burst(burst), None)

    def _queue(self, item: bytes, key: str | None) -> None:
        outbox = self._outbox
        assert outbox is not None
        if not outbox.push(item, key):
            self._overflow(outbox)
            return
        if not self._scheduled and not self.paused:
            self._scheduled = True
            self.factory.flusher.schedule(self)

    def _overflow(self, outbox: Outbox) -> None:
        self.factory.metrics.slow_client_drops.inc()
        self._log.info(
            "closing connection {connection_id}: {size} bytes waiting, client too slow",
            connection_id=self._session.connection_id if self._session else None,
            size=outbox.size,
        )
        outbox.clear()
        self.close(codes.CLOSE_TRY_AGAIN_LATER, codes.REASON_SLOW)

    def flush(self) -> None:
        """Write everything queued with one ``transport.write``."""
        self._scheduled = False
        outbox = self._outbox
        if outbox is None or not outbox or self.paused:
            return
        if self.state != _STATE_OPEN:
            outbox.clear()
            return
        if self._compressing:
            for data in outbox.take_each():
                if isinstance(data, ControlFrame):
                    self.sendData(data)
                else:
                    self.sendMessage(data)
            return
        self._write(outbox.take())

    def _write(self, data: bytes) -> None:
        """Write to the socket at once if nothing is waiting before it, else queue.

        ``transport.write`` on an idle connection costs Twisted an epoll register,
        a dispatch and an unregister before the one ``send``; when the transport's
        buffer is empty (nothing written before can be overtaken) the send is
        tried here first, and only what the kernel did not take is queued.
        Errors are left to Twisted: the data is queued and its next write
        finds the connection lost.
        """
        transport: Any = self.transport
        if (
            self._direct
            and transport.connected
            and not transport.dataBuffer
            and not transport._tempDataLen
            and not transport.disconnecting
        ):
            sent = transport.writeSomeData(data)
            if isinstance(sent, int):
                if sent == len(data):
                    return
                data = data[sent:]
        transport.write(data)

    def close(self, code: int, reason: str) -> None:
        """Send what is queued, then start the closing handshake."""
        if self.state != _STATE_OPEN:
            return
        if not self.paused:
            self.flush()
        elif self._outbox is not None:
            # The client is not reading: the close frame will not wait behind
            # a backlog it may never drain.
            self._outbox.clear()
        # sendClose() only takes 1000 and 3000-4999; the protocol codes go out here.
        self.sendCloseFrame(code, reason.encode("utf-8"), isReply=False)
        # Nothing more can be sent on a closing connection: leave the room now
        # rather than when the peer answers (or the close handshake times out).
        self._leave()


class OfficeServerFactory(WebSocketServerFactory):
    """Builds :class:`OfficeServerProtocol` with the registry and verifier it needs."""

    protocol = OfficeServerProtocol  # type: ignore[assignment]

    def __init__(
        self,
        *,
        registry: OrgRegistry,
        verifier: TokenVerifier,
        clock: IReactorTime,
        limits: Limits,
        origins: OriginPolicy | None = None,
        permessage_deflate: bool = False,
        direct_writes: bool = True,
        ping_interval: float = 25.0,
        ping_timeout: float = 10.0,
        open_handshake_timeout: float = 10.0,
        close_handshake_timeout: float = 5.0,
        token_expiry_enforced: bool = True,
        token_expiry_grace: float = 10.0,
        metrics: Metrics | None = None,
        **kwargs: Any,
    ) -> None:
        # No version in the Server header, and no HTML status page on a plain GET.
        kwargs.setdefault("server", "officerouter")
        super().__init__(**kwargs)
        self.registry = registry
        self.verifier = verifier
        self.clock = clock
        self.limits = limits
        self.origins = origins or OriginPolicy(())
        self.flusher = _Flusher(clock)
        #: The instruments the connections count with (docs/operations.md).
        self.metrics = metrics if metrics is not None else Metrics()
        #: Messages queued to clients, each connection counted (read at scrape
        #: time: an int is the cheapest counter on the busiest path).
        self.frames_sent = 0
        #: How late the reactor has been: how far back the flood guard may
        #: charge the frames of a late read (runs while a connection is open).
        self.lag_probe = LagProbe(clock)
        #: Close each connection when its token expires (``--token-expiry``),
        #: this many seconds after ``exp`` (``--token-expiry-grace``).
        self.token_expiry_enforced = token_expiry_enforced
        self.token_expiry_grace = token_expiry_grace
        #: Try the socket before Twisted's buffer (plain TCP only; see
        #: :func:`direct_writes_possible`).
        self.direct_writes = direct_writes
        #: Every open or closing connection, until its TCP connection is gone.
        self.live: InFlight[OfficeServerProtocol] = InFlight()
        #: Set when the daemon stops: new handshakes are refused with 503.
        self.stopping = False
        # One call: each setProtocolOptions() call sets allowNullOrigin again,
        # to False unless it is passed.
        self.setProtocolOptions(
            maxFramePayloadSize=limits.max_message_bytes,
            maxMessagePayloadSize=limits.max_message_bytes,
            # Without this Autobahn drops the TCP connection on a protocol error
            # or an oversized message, and the client never sees 1009 or 1007.
            failByDrop=False,
            webStatus=False,
            openHandshakeTimeout=open_handshake_timeout,
            closeHandshakeTimeout=close_handshake_timeout,
            autoPingInterval=ping_interval,
            autoPingTimeout=ping_timeout,
            # Origins are OriginPolicy's to judge (onConnect, 403).  Autobahn
            # allows every origin but `null` (and file://, which it reads as
            # null), which it refused with a 400 before onConnect.
            allowedOrigins=["*"],
            allowNullOrigin=True,
            perMessageCompressionAccept=_accept_deflate if permessage_deflate else None,
        )
        # Autobahn copies every protocol option (about forty) from the factory
        # into each connection's __dict__ unless the protocol class already has
        # it.  A subclass of our own per factory carries them once instead.
        self.protocol = type(  # type: ignore[assignment]
            OfficeServerProtocol.__name__,
            (OfficeServerProtocol,),
            {
                # A function stored on a class would be bound to each instance.
                **{
                    name: staticmethod(value) if callable(value) else value
                    for name in OfficeServerProtocol.CONFIG_ATTRS
                    for value in (getattr(self, name),)
                },
                # With every option on the class there is nothing to copy; an
                # empty list also spares each connection Autobahn's eager
                # pformat() of all options for a debug line (6 % of a
                # connection storm's CPU).
                "CONFIG_ATTRS": (),
            },
        )

    def capacity_refusal(self, identity: Identity) -> tuple[int, str] | None:
        """The (status, reason) refusing a new connection past a cap, or ``None``.

        A handshake accepted in ``onConnect`` opens (and is counted) in the same
        reactor turn, so simultaneous handshakes cannot slip past a cap.
        """
        limits = self.limits
        registry = self.registry
        org, user = identity.org_id, identity.user_id
        if registry.connection_count >= limits.max_connections:
            return 503, codes.REASON_SERVER_FULL
        if registry.org_connection_count(org) >= limits.max_connections_per_org:
            return 429, codes.REASON_ORG_FULL
        if registry.user_connection_count(org, user) >= limits.max_connections_per_user:
            return 429, codes.REASON_USER_FULL
        return None


class OfficeWebSocketResource(WebSocketResource):
    """Mounts the factory in the Site, and detaches the request from HTTP timeouts."""

    def render(self, request: Request) -> int | bytes:
        # The HTTPChannel keeps its idle timer after Autobahn takes the transport
        # over; left running it would fire on a transport that is no longer its own.
        request.channel.setTimeout(None)
        result: int | bytes = super().render(request)
        # The request never finishes once upgraded: stop counting it as an HTTP
        # request in flight (the factory follows the WebSocket from here).
        in_flight = getattr(request.site, "in_flight", None)
        if in_flight is not None:
            in_flight.discard(request)
        # The HTTP channel and this request now only refer to each other: let
        # reference counting free them (about 5 KB a connection) rather than
        # leaving them for the cyclic garbage collector.
        request.channel.requests.clear()
        return result
