"""The WebSocket adapter: Autobahn protocol and factory around the registry.

``onConnect`` authenticates before the upgrade, ``onOpen`` joins the room,
``onMessage`` decodes and hands over, ``onClose`` leaves.  The protocol is the
room's :class:`~officerouter.rooms.Connection`: it frames each encoded message once
and writes everything queued for a connection during one reactor iteration with
a single ``transport.write``.
"""

from __future__ import annotations

import struct
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from officerouter import codes
from officerouter.auth import (
    AuthError,
    Identity,
    TokenVerifier,
    token_from_subprotocols,
)
from officerouter.codec import ContractError, Encoded, decode_client
from officerouter.rooms import OrgRegistry, RefusedError, Session, error_frame

_FRAMING = "ws"
_STATE_OPEN = WebSocketProtocol.STATE_OPEN


def text_frame(data: bytes) -> bytes:
    """Frame ``data`` as one unmasked, final WebSocket text frame (server to client)."""
    n = len(data)
    if n < 126:
        return struct.pack("!BB", 0x81, n) + data
    if n < 65536:
        return struct.pack("!BBH", 0x81, 126, n) + data
    return struct.pack("!BBQ", 0x81, 127, n) + data


def framed(message: Encoded) -> bytes:
    """The WebSocket frame of an encoded message, built once per message."""
    frame = message.framings.get(_FRAMING)
    if frame is None:
        frame = message.framings[_FRAMING] = text_frame(message.data)
    return frame


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


class OfficeServerProtocol(WebSocketServerProtocol):
    """One client connection."""

    _log = Logger()
    factory: OfficeServerFactory

    def __init__(self) -> None:
        super().__init__()
        self._identity: Identity | None = None
        self._since: str | None = None
        self._session: Session | None = None
        self._pending: list[bytes] = []
        self._scheduled = False

    # ------------------------------------------------------------ handshake

    def onConnect(self, request: ConnectionRequest) -> str:
        # Autobahn turns an unexpected exception here into a bare 500 and a
        # warning without a traceback: log it ourselves, then deny.
        try:
            return self._authenticate(request)
        except ConnectionDeny:
            raise
        except Exception:
            self._log.failure("unexpected error authenticating a connection")
            raise ConnectionDeny(500, codes.REASON_INTERNAL) from None

    def _authenticate(self, request: ConnectionRequest) -> str:
        peer = request.peer
        try:
            token, echo = token_from_subprotocols(request.protocols)
            identity = self.factory.verifier.verify(token)
            self.factory.registry.check_admission(identity)
        except AuthError as e:
            self._log.info(
                "refused connection from {peer}: {reason}",
                peer=peer,
                reason=e.reason,
                status=401,
            )
            raise ConnectionDeny(401, e.reason) from None
        except RefusedError as e:
            self._log.info(
                "refused connection from {peer}: {reason}",
                peer=peer,
                reason=e.reason,
                status=e.status,
            )
            raise ConnectionDeny(e.status, e.reason) from None
        self._identity = identity
        since = request.params.get("since")
        self._since = since[0] if since else None
        return echo

    def onOpen(self) -> None:
        # Autobahn calls onOpen with no errback: a bug here must not leave a
        # half-joined connection behind.
        assert self._identity is not None
        try:
            self._session = self.factory.registry.connect(
                self._identity, self, since=self._since
            )
        except RefusedError as e:
            self.close(codes.CLOSE_POLICY_VIOLATION, e.reason)
            return
        except Exception:
            self._log.failure("unexpected error joining a room")
            self.close(codes.CLOSE_INTERNAL_ERROR, codes.REASON_INTERNAL)
            return
        self._log.debug(
            "connection {connection_id} opened for user {user_id} in org {org_id}",
            connection_id=self._session.connection_id,
            user_id=self._session.user_id,
            org_id=self._session.org_id,
        )

    # ------------------------------------------------------------ messages

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        session = self._session
        if session is None:
            return
        if isBinary:
            self.close(codes.CLOSE_UNSUPPORTED_DATA, codes.REASON_BINARY)
            return
        registry = self.factory.registry
        try:
            message = decode_client(payload, registry.catalog)
            registry.receive(session, message)
        except ContractError as e:
            self._log.info(
                "rejected a frame from connection {connection_id}: {code}",
                connection_id=session.connection_id,
                code=e.code,
            )
            self.send(error_frame(e))
        except Exception:
            self._log.failure("unexpected error handling a client frame")
            self.close(codes.CLOSE_INTERNAL_ERROR, codes.REASON_INTERNAL)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self._pending.clear()
        session, self._session = self._session, None
        if session is not None:
            self.factory.registry.disconnect(session)

    # ------------------------------------------------------------ Connection

    def send(self, message: Encoded) -> None:
        """Queue a message; it is written at the end of this reactor iteration."""
        if self.state != _STATE_OPEN:
            return
        self._pending.append(framed(message))
        if not self._scheduled:
            self._scheduled = True
            self.factory.flusher.schedule(self)

    def flush(self) -> None:
        """Write everything queued with one ``transport.write``."""
        self._scheduled = False
        pending = self._pending
        if not pending:
            return
        if self.state != _STATE_OPEN:
            pending.clear()
            return
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        pending.clear()
        assert self.transport is not None
        self.transport.write(data)

    def close(self, code: int, reason: str) -> None:
        """Send what is queued, then start the closing handshake."""
        if self.state != _STATE_OPEN:
            return
        self.flush()
        # sendClose() only takes 1000 and 3000-4999; the protocol codes go out here.
        self.sendCloseFrame(code, reason.encode("utf-8"), isReply=False)


class OfficeServerFactory(WebSocketServerFactory):
    """Builds :class:`OfficeServerProtocol` with the registry and verifier it needs."""

    protocol = OfficeServerProtocol  # type: ignore[assignment]

    def __init__(
        self,
        *,
        registry: OrgRegistry,
        verifier: TokenVerifier,
        clock: IReactorTime,
        max_message_bytes: int,
        ping_interval: float,
        ping_timeout: float,
        open_handshake_timeout: float = 10.0,
        close_handshake_timeout: float = 5.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.registry = registry
        self.verifier = verifier
        self.flusher = _Flusher(clock)
        self.setProtocolOptions(
            maxFramePayloadSize=max_message_bytes,
            maxMessagePayloadSize=max_message_bytes,
            # Without this Autobahn drops the TCP connection on a protocol error
            # or an oversized message, and the client never sees 1009 or 1007.
            failByDrop=False,
            openHandshakeTimeout=open_handshake_timeout,
            closeHandshakeTimeout=close_handshake_timeout,
            autoPingInterval=ping_interval,
            autoPingTimeout=ping_timeout,
        )
