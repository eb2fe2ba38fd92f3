"""The HTTP side: ``/internal/notify``, ``/healthz`` and the site that mounts ``/websocket``.

Resources implement only the methods they serve; twisted.web answers the others
with 405 and ``Allow``.
"""

from __future__ import annotations

import io
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from twisted.logger import Logger
from twisted.web import server
from twisted.web.resource import Resource

from officerouter import codes
from officerouter.auth import service_token_matches
from officerouter.codec import ContractError, decode_notify, dumps
from officerouter.config import Settings
from officerouter.rooms import OrgRegistry
from officerouter.websocket import OfficeServerFactory

log = Logger()

JSON_TYPES = frozenset({b"application/json"})


class BoundedRequest(server.Request):
    """A request that stops buffering its body past ``max_body_bytes``.

    The excess is discarded as it arrives, so a large body costs no memory; the
    resource then answers 413.
    """

    max_body_bytes = 65536
    body_too_large = False

    def gotLength(self, length: int | None) -> None:
        self._body_received = 0
        if length is not None and length > self.max_body_bytes:
            self.body_too_large = True
            self.content = io.BytesIO()
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self.body_too_large:
            return
        self._body_received += len(data)
        if self._body_received > self.max_body_bytes:
            self.body_too_large = True
            self.content = io.BytesIO()
            return
        super().handleContentChunk(data)


def _json(request: server.Request, status: int, body: dict[str, Any]) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return dumps(body)


def _error(
    request: server.Request,
    status: int,
    code: str,
    message: str,
    errors: tuple[tuple[str, str], ...] = (),
) -> bytes:
    body: dict[str, Any] = {"ok": False, "error": code, "message": message}
    if errors:
        body["errors"] = [{"path": path, "reason": reason} for path, reason in errors]
    return _json(request, status, body)


def _peer(request: server.Request) -> str:
    address = request.getClientAddress()
    host = getattr(address, "host", None)
    return f"{host}:{getattr(address, 'port', '')}" if host else str(address)


class NotifyResource(Resource):
    """``POST /internal/notify``: the backend's authoritative events."""

    isLeaf = True

    def __init__(self, registry: OrgRegistry, settings: Settings) -> None:
        super().__init__()
        self._registry = registry
        self._settings = settings

    def render_POST(self, request: server.Request) -> bytes:
        try:
            return self._notify(request)
        except Exception:
            log.failure("unexpected error handling a notification")
            return _error(request, 500, "internal_error", "internal error")

    def _notify(self, request: server.Request) -> bytes:
        settings = self._settings
        if not service_token_matches(
            settings.service_client_id,
            settings.service_client_secret,
            request.getHeader(b"cf-access-client-id"),
            request.getHeader(b"cf-access-client-secret"),
        ):
            log.info(
                "refused notify from {peer}: bad service token", peer=_peer(request)
            )
            return _error(
                request,
                401,
                codes.ERR_UNAUTHORIZED,
                "CF-Access-Client-Id and CF-Access-Client-Secret must match the service token",
            )
        content_type = (request.getHeader(b"content-type") or b"").split(b";")[0]
        if content_type.strip().lower() not in JSON_TYPES:
            return _error(
                request,
                415,
                codes.ERR_UNSUPPORTED_MEDIA_TYPE,
                "Content-Type must be application/json",
            )
        if getattr(request, "body_too_large", False):
            limit = getattr(request, "max_body_bytes", 0)
            return _error(
                request,
                413,
                codes.ERR_PAYLOAD_TOO_LARGE,
                f"the body is larger than {limit} bytes",
            )
        assert request.content is not None
        body = request.content.read()
        try:
            notification = decode_notify(body, self._registry.catalog)
        except ContractError as e:
            log.info(
                "rejected a notification from {peer}: {code} {errors}",
                peer=_peer(request),
                code=e.code,
                errors=e.message,
            )
            return _error(
                request, 400, e.code, "the message breaks the contract", e.errors
            )
        delivered = self._registry.notify(notification)
        return _json(request, 200, {"ok": True, "delivered": delivered})


class HealthResource(Resource):
    """``GET /healthz``: liveness plus connection and room counts."""

    isLeaf = True

    def __init__(self, registry: OrgRegistry) -> None:
        super().__init__()
        self._registry = registry

    def render_GET(self, request: server.Request) -> bytes:
        return _json(
            request,
            200,
            {
                "ok": True,
                "connections": self._registry.connection_count,
                "rooms": self._registry.room_count,
            },
        )


def make_site(
    registry: OrgRegistry,
    settings: Settings,
    factory: OfficeServerFactory,
    *,
    max_body_bytes: int,
) -> server.Site:
    """Build the one :class:`~twisted.web.server.Site` the daemon listens with."""
    root = Resource()
    root.putChild(b"websocket", WebSocketResource(factory))
    internal = Resource()
    internal.putChild(b"notify", NotifyResource(registry, settings))
    root.putChild(b"internal", internal)
    root.putChild(b"healthz", HealthResource(registry))

    class _Request(BoundedRequest):
        pass

    _Request.max_body_bytes = max_body_bytes
    site = server.Site(root, requestFactory=_Request)
    site.displayTracebacks = False
    site.noisy = False
    return site
