"""The HTTP side: ``/internal/notify``, ``/healthz`` and the site that mounts ``/websocket``.

Resources implement only the methods they serve; twisted.web answers the others
with 405 and ``Allow``.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Callable
from typing import Any, TypeVar

import attrs

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.resource import Resource

from officerouter import codes
from officerouter.auth import service_token_matches
from officerouter.backplane import (
    BackplaneUnavailable,
    IdempotencyConflict,
    Once,
    Published,
)
from officerouter.codec import (
    ContractError,
    converter,
    dumps,
    notification_from,
    parse_json,
)
from officerouter.config import Settings
from officerouter.inflight import InFlight
from officerouter.messages import (
    MAX_BATCH,
    MAX_ID_LENGTH,
    BatchAnswer,
    ErrorAnswer,
    FieldError,
    Health,
    NotifiedElement,
    NotifyAnswer,
    PresenceAnswer,
    PresenceUser,
    RefusedElement,
)
from officerouter.metrics import Metrics
from officerouter.registry import OrgRegistry
from officerouter.websocket import (
    OfficeServerFactory,
    OfficeWebSocketResource,
    direct_writes_possible,
)

log = Logger()

_T = TypeVar("_T")

JSON_TYPES = frozenset({b"application/json"})
_IDEMPOTENCY_KEY = re.compile(rb"[\x21-\x7e]{1,255}")


class OfficeChannel(http.HTTPChannel):
    """An HTTP/1.1 connection that must send each request line in time.

    Twisted's idle timer restarts with every byte, so a client sending its
    request line a byte at a time would hold the connection for as long as it
    likes; this deadline does not restart.  Once the line is in, the request's
    own deadline (:class:`BoundedRequest`) takes over.
    """

    request_line_timeout = 30.0
    _line_deadline: IDelayedCall | None = None
    #: Send each finished answer at once (:func:`send_now`): the site allows
    #: it and this is a plain TCP connection, decided once per connection.
    answers_at_once = False

    def connectionMade(self) -> None:
        super().connectionMade()
        site = getattr(self, "site", None)  # set by Site.buildProtocol
        self.answers_at_once = getattr(
            site, "send_at_once", False
        ) and direct_writes_possible(self.transport)
        self.expect_request()

    def expect_request(self) -> None:
        """Start the clock for the next request line."""
        self.request_arrived()
        self._line_deadline = self.callLater(
            self.request_line_timeout, self._line_too_slow
        )

    def request_arrived(self) -> None:
        """A request line is in: its request keeps time from here."""
        if self._line_deadline is not None and self._line_deadline.active():
            self._line_deadline.cancel()
        self._line_deadline = None

    def requestDone(self, request: http.Request) -> None:
        super().requestDone(request)
        if self.transport is not None and self.persistent and not self.requests:
            self.expect_request()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.request_arrived()
        super().connectionLost(reason)

    def _line_too_slow(self) -> None:
        self._line_deadline = None
        if self.transport is not None:
            log.info(
                "dropped {peer}: no request line within {seconds} s",
                peer=str(self.transport.getPeer()),
                seconds=self.request_line_timeout,
            )
            self.transport.loseConnection()


class OfficeSite(server.Site):
    """The daemon's Site: it knows which requests are in flight, and logs access
    only when asked (``--access-log``).

    twisted.web's access line costs about a quarter of a notify's handling
    (profiled under load), and the backend calls notify for every event.
    """

    # HTTP/1.1 only (no HTTP/2 negotiation): WebSocket upgrades need it anyway.
    protocol = OfficeChannel  # type: ignore[assignment]

    def __init__(
        self,
        resource: Resource,
        *,
        access_log: bool = False,
        send_at_once: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(resource, **kwargs)
        #: Answers leave the moment they are finished (``--no-direct-writes``
        #: turns it off): :func:`send_now`.
        self.send_at_once = send_at_once
        #: The HTTP requests being served: each counts from its request line
        #: until its response is finished or its connection is lost (an upgraded
        #: request is handed to the WebSocket factory's own count).
        self.in_flight: InFlight[http.Request] = InFlight()
        self.access_log = access_log

    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)
        if isinstance(channel, OfficeChannel):
            channel.request_line_timeout = self.timeOut or 30.0
        return channel

    def log(self, request: http.Request) -> None:
        if self.access_log:
            super().log(request)


def send_now(transport: Any) -> None:
    """Send what a plain TCP transport holds now, not when epoll next says so.

    Twisted's ``transport.write`` only queues; the bytes go out when the reactor
    next polls and finds the socket writable, after the WebSocket frames of the
    notification being answered have been flushed to every recipient.  Answered
    at once, a backend that waits for each answer (a Go client with a few
    keep-alive connections) sends its next notification while those frames are
    being written, so the next iteration routes several notifications together
    and each recipient gets them in one ``send``.  ``doWrite`` is the transport's
    own :class:`~twisted.internet.interfaces.IWriteDescriptor` method, the one
    the reactor calls; a connection that is closing, or whose write fails, is
    left to the reactor, which calls it again and finds the error itself.  Only
    for Twisted's plain TCP transport (:attr:`OfficeChannel.answers_at_once`).
    """
    if transport.connected and transport._tempDataLen and not transport.disconnecting:
        transport.doWrite()


class BoundedRequest(server.Request):
    """A request bounded in size and in time.

    The body limit is enforced while reading: a declared ``Content-Length`` over
    it is answered with 413 before the body is read, and a chunked body is cut
    off with 413 the moment it passes the limit; nothing past the limit is
    buffered.  A request not received whole within ``request_timeout`` seconds of
    its first line (a client dribbling bytes) is answered with 408.
    """

    max_body_bytes = 65536
    request_timeout = 30.0

    def __init__(self, channel: http.HTTPChannel, *args: Any, **kwargs: Any) -> None:
        super().__init__(channel, *args, **kwargs)
        # No endpoint takes form posts.  twisted.web would parse every POST's
        # Content-Type with the email package to find out (15-20 % of the daemon's
        # time under a notify load, profiled).  Set on the instance: Twisted's
        # Request.__init__ sets it from the Site (tests/e2e/test_hardening.py
        # fails if a Twisted release stops reading it).
        self._parsePOSTFormSubmission = False
        if isinstance(channel, OfficeChannel):
            channel.request_arrived()
        self._refused = False
        self._body_received = 0
        self._deadline: IDelayedCall | None = channel.callLater(
            self.request_timeout, self._too_slow
        )
        # self.site is only set in process(); the channel knows it from the start.
        site = getattr(channel, "site", None)
        self._in_flight: InFlight[http.Request] | None = getattr(
            site, "in_flight", None
        )
        if self._in_flight is not None:
            self._in_flight.add(self)

    def setHeader(self, name: bytes | str, value: bytes | str) -> None:
        # No version on the wire: twisted.web would announce its own.
        if (name.encode() if isinstance(name, str) else name).lower() == b"server":
            value = b"officerouter"
        super().setHeader(name, value)

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self.max_body_bytes:
            self._refuse_body()
            return
        # Bounded by max_body_bytes, so memory is right even when the length is
        # unknown (chunked), where twisted.web would open a temporary file.
        self.content = io.BytesIO()

    def handleContentChunk(self, data: bytes) -> None:
        self._body_received += len(data)
        if self._body_received > self.max_body_bytes:
            self._refuse_body()
            return
        super().handleContentChunk(data)

    def process(self) -> None:
        self._stop_deadline()
        if self._refused:
            return  # answered already; the connection is closing
        super().process()

    def connectionLost(self, reason: Any) -> None:
        self._stop_deadline()
        super().connectionLost(reason)
        self._done()

    def finish(self) -> None:
        channel = self.channel
        super().finish()
        self._done()
        if getattr(channel, "answers_at_once", False):
            send_now(channel.transport)

    def _done(self) -> None:
        # Not notifyFinish(): its callback would tie the request to itself.
        if self._in_flight is not None:
            self._in_flight.discard(self)

    def _stop_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        self._refuse(
            408,
            b"Request Timeout",
            codes.ERR_REQUEST_TIMEOUT,
            f"the request was not received within {self.request_timeout:g} s",
        )

    def _refuse_body(self) -> None:
        self._refuse(
            413,
            b"Payload Too Large",
            codes.ERR_PAYLOAD_TOO_LARGE,
            f"the body is larger than {self.max_body_bytes} bytes",
        )

    def _refuse(self, status: int, phrase: bytes, code: str, message: str) -> None:
        transport = self.channel.transport
        if transport is None or self._refused:
            return
        self._refused = True
        self._stop_deadline()
        log.info(
            "refused a request from {peer}: {status} {message}",
            peer=_peer(self),
            status=status,
            message=message,
        )
        body = dumps(converter.unstructure(_error_answer(code, message)))
        # The request has not been dispatched yet, so the response is written
        # directly and the connection closed: the rest of it is never read.
        transport.write(
            b"HTTP/1.1 %d %s\r\n"
            % (status, phrase)
            + b"Content-Type: application/json\r\n"
            b"Connection: close\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        transport.loseConnection()
        self.content = io.BytesIO()  # drop what was buffered


def _json(request: server.Request, status: int, body: dict[str, Any]) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return dumps(body)


def _error_answer(
    code: str, message: str, errors: tuple[tuple[str, str], ...] = ()
) -> ErrorAnswer:
    return ErrorAnswer(
        ok=False,
        error=code,
        message=message,
        errors=[FieldError(path=p, reason=r) for p, r in errors] or None,
    )


def _error(
    request: server.Request,
    status: int,
    code: str,
    message: str,
    errors: tuple[tuple[str, str], ...] = (),
) -> bytes:
    answer = _error_answer(code, message, errors)
    return _json(request, status, converter.unstructure(answer))


def _unavailable(request: server.Request, reason: str) -> bytes:
    """503 with ``Retry-After``: nothing was numbered or stored; retry shortly."""
    request.setHeader(b"retry-after", b"1")
    return _error(
        request,
        503,
        codes.ERR_UNAVAILABLE,
        f"{reason}; nothing was numbered or delivered, retry",
    )


def _read_failed(request: server.Request, failure: Failure) -> bytes:
    if failure.check(BackplaneUnavailable):
        return _unavailable(request, failure.getErrorMessage())
    log.failure("unexpected error reading shared state", failure)
    return _error(request, 500, codes.ERR_INTERNAL, "internal error")


def _answer_when_done(
    request: server.Request,
    result: Deferred[_T],
    succeeded: Callable[[_T], bytes],
    failed: Callable[[Failure], bytes],
) -> bytes | int:
    """Answer with what ``result`` gives: at once when it has fired (one
    process, the same turn), else when it fires (shared state in Redis),
    unless the client is gone by then."""
    body: list[bytes] = []
    result.addCallbacks(
        lambda value: body.append(succeeded(value)),
        lambda failure: body.append(failed(failure)),
    )
    if body:
        return body[0]
    result.addCallback(lambda _: _finish(request, body[0]))
    return server.NOT_DONE_YET


def _finish(request: server.Request, body: bytes) -> None:
    """Write a late answer, unless the client is gone."""
    if request.finished or getattr(request, "_disconnected", False):
        return
    request.write(body)
    request.finish()


def _peer(request: http.Request) -> str:
    address = request.getClientAddress()
    host = getattr(address, "host", None)
    return f"{host}:{getattr(address, 'port', '')}" if host else str(address)


def _refuse_unless_service(
    request: server.Request, settings: Settings, endpoint: str
) -> bytes | None:
    """The 401 answer unless the request carries the backend's service token."""
    if service_token_matches(
        settings.service_client_id,
        settings.service_client_secret,
        request.getHeader(b"cf-access-client-id"),
        request.getHeader(b"cf-access-client-secret"),
    ):
        return None
    log.info(
        "refused {endpoint} from {peer}: bad service token",
        endpoint=endpoint,
        peer=_peer(request),
    )
    return _error(
        request,
        401,
        codes.ERR_UNAUTHORIZED,
        "CF-Access-Client-Id and CF-Access-Client-Secret must match the service token",
    )


class _MethodsResource(Resource):
    """A resource answering every method it does not serve with 405 and ``Allow``.

    twisted.web itself answers methods other than GET, HEAD and POST with 501,
    and builds its 405 page with ``_UnsafeErrorPage``, deprecated since 22.10.
    """

    def render(self, request: server.Request) -> Any:
        method = (request.method or b"").decode("ascii", "replace")
        served = [m for m in ("GET", "POST") if hasattr(self, f"render_{m}")]
        if "GET" in served:
            served.insert(1, "HEAD")  # Resource.render_HEAD calls render_GET
        if method not in served:
            request.setHeader(b"allow", ", ".join(served).encode("ascii"))
            return _error(
                request,
                405,
                codes.ERR_METHOD_NOT_ALLOWED,
                f"use {' or '.join(served)}",
            )
        if method == "HEAD":
            # GET's headers without its body (twisted.web would log a warning
            # for every probe that asks with HEAD).
            self.render_GET(request)  # type: ignore[attr-defined]
            return b""
        return super().render(request)


class _Branch(Resource):
    """A path that only has children (``/internal``): itself is 404, in JSON."""

    def render(self, request: server.Request) -> bytes:
        return _error(request, 404, codes.ERR_NOT_FOUND, "no resource here")


class NotifyResource(_MethodsResource):
    """``POST /internal/notify``: the backend's authoritative events, one at a
    time or as a batch (a JSON array)."""

    isLeaf = True

    def __init__(
        self,
        registry: OrgRegistry,
        settings: Settings,
        idempotency_seconds: float = 300.0,
        metrics: Metrics | None = None,
    ) -> None:
        super().__init__()
        self._registry = registry
        self._settings = settings
        self._idempotency_seconds = idempotency_seconds
        self._metrics = metrics if metrics is not None else Metrics()

    def render_POST(self, request: server.Request) -> bytes | int:
        started = self._metrics.now()

        def counted(body: bytes) -> bytes:
            self._metrics.notified(request.code, started)
            return body

        try:
            answer = self._notify(request)
        except Exception:
            log.failure("unexpected error handling a notification")
            return counted(_error(request, 500, codes.ERR_INTERNAL, "internal error"))
        if isinstance(answer, bytes):
            return counted(answer)
        return _answer_when_done(
            request,
            answer,
            counted,
            lambda failure: counted(_read_failed(request, failure)),
        )

    def _published(
        self,
        request: server.Request,
        published: Published,
        targets: tuple[str, ...],
    ) -> bytes:
        if published.replayed:
            request.setHeader(b"idempotent-replayed", b"true")
        return _json(
            request, 200, converter.unstructure(_notify_answer(published, targets))
        )

    def _failed(self, request: server.Request, failure: Failure) -> bytes:
        conflict = failure.value
        if isinstance(conflict, IdempotencyConflict):
            return _error(request, 409, *_conflict(conflict.key))
        return _read_failed(request, failure)

    def _once(self, request: server.Request, body: bytes) -> Once | bytes | None:
        """The request's ``Idempotency-Key``, or the 400 refusing it."""
        raw = request.getHeader(b"idempotency-key")
        if raw is None or self._idempotency_seconds <= 0:
            return None
        key = raw.strip()
        if not _IDEMPOTENCY_KEY.fullmatch(key):
            return _error(
                request,
                400,
                codes.ERR_BAD_REQUEST,
                "the Idempotency-Key header is malformed",
                (
                    (
                        "Idempotency-Key",
                        "1 to 255 printable ASCII characters without spaces",
                    ),
                ),
            )
        return Once(
            key=key.decode("ascii"),
            fingerprint=hashlib.sha256(body).hexdigest(),
            seconds=self._idempotency_seconds,
        )

    def _notify(self, request: server.Request) -> bytes | Deferred[bytes]:
        refused = _refuse_unless_service(request, self._settings, "notify")
        if refused is not None:
            return refused
        content_type = (request.getHeader(b"content-type") or b"").split(b";")[0]
        if content_type.strip().lower() not in JSON_TYPES:
            return _error(
                request,
                415,
                codes.ERR_UNSUPPORTED_MEDIA_TYPE,
                "Content-Type must be application/json",
            )
        assert request.content is not None
        body = request.content.read()
        once = self._once(request, body)
        if isinstance(once, bytes):
            return once
        try:
            raw = parse_json(body)
            if type(raw) is list:
                return self._batch(request, raw, once)
            notification = notification_from(raw, self._registry.catalog)
            reason = self._registry.unavailable()
            if reason is not None:
                return _unavailable(request, reason)
            # Encoded before anything is numbered: a payload that cannot be
            # written (a plug-in's) is refused here too, with no effect.
            publishing = self._registry.publish(notification, once)
        except ContractError as e:
            _log_refusal(request, e)
            return _error(request, 400, e.code, CONTRACT_BROKEN, e.errors)
        # A direct message is answered per target (the backend falls back to
        # e-mail or push for those at 0).
        targets = notification.targets
        return publishing.addCallbacks(
            lambda published: self._published(request, published, targets),
            lambda failure: self._failed(request, failure),
        )

    def _batch(
        self, request: server.Request, raw: list[Any], once: Once | None
    ) -> bytes | Deferred[bytes]:
        """Publish each notification of a batch on its own, in order, and answer
        them all at once, each as it would be answered alone."""
        if not 1 <= len(raw) <= MAX_BATCH:
            raise ContractError(
                codes.ERR_INVALID_MESSAGE,
                [("$", f"a batch holds 1 to {MAX_BATCH} notifications")],
            )
        reason = self._registry.unavailable()
        if reason is not None:
            return _unavailable(request, reason)
        elements = [self._element(request, i, item, once) for i, item in enumerate(raw)]

        def answer(results: list[NotifiedElement | RefusedElement]) -> bytes:
            if all(isinstance(r, NotifiedElement) and r.replayed for r in results):
                request.setHeader(b"idempotent-replayed", b"true")
            ok = all(isinstance(r, NotifiedElement) for r in results)
            batch = BatchAnswer(ok=ok, results=results)
            return _json(request, 200, converter.unstructure(batch))

        return gatherResults(elements).addCallback(answer)

    def _element(
        self, request: server.Request, index: int, raw: Any, once: Once | None
    ) -> Deferred[NotifiedElement | RefusedElement]:
        """One notification of a batch, answered and never failing."""
        try:
            notification = notification_from(raw, self._registry.catalog)
            # Each element is its own request under the batch's key: a key no
            # single request can send (keys hold no space), with the element's
            # own fingerprint.
            element_once = (
                None
                if once is None
                else attrs.evolve(
                    once,
                    key=f"{once.key} {index}",
                    fingerprint=hashlib.sha256(dumps(raw)).hexdigest(),
                )
            )
            publishing = self._registry.publish(notification, element_once)
        except ContractError as e:
            _log_refusal(request, e, index)
            return succeed(_refused(400, e.code, CONTRACT_BROKEN, e.errors))
        except Exception:
            log.failure("unexpected error handling a notification of a batch")
            return succeed(_refused(500, codes.ERR_INTERNAL, "internal error"))
        targets = notification.targets

        def published(result: Published) -> NotifiedElement | RefusedElement:
            return NotifiedElement(
                status=200,
                replayed=result.replayed or None,
                **attrs.asdict(_notify_answer(result, targets), recurse=False),
            )

        def failed(failure: Failure) -> NotifiedElement | RefusedElement:
            error = failure.value
            if isinstance(error, IdempotencyConflict):
                return _refused(409, *_conflict(error.key))
            if isinstance(error, BackplaneUnavailable):
                return _refused(
                    503,
                    codes.ERR_UNAVAILABLE,
                    f"{failure.getErrorMessage()}; nothing was numbered or "
                    "delivered, retry",
                )
            log.failure("unexpected error publishing a notification", failure)
            return _refused(500, codes.ERR_INTERNAL, "internal error")

        return publishing.addCallbacks(published, failed)


CONTRACT_BROKEN = "the message breaks the contract"


def _notify_answer(published: Published, targets: tuple[str, ...]) -> NotifyAnswer:
    return NotifyAnswer(
        ok=True,
        delivered=published.delivered,
        seq=published.seq,
        targets=dict(zip(targets, published.per_target, strict=True))
        if targets
        else None,
    )


def _conflict(key: str) -> tuple[str, str, tuple[tuple[str, str], ...]]:
    return (
        codes.ERR_IDEMPOTENCY_CONFLICT,
        f"Idempotency-Key {key!r} was used for another request",
        (("Idempotency-Key", "used with another body within its window"),),
    )


def _refused(
    status: int, code: str, message: str, errors: tuple[tuple[str, str], ...] = ()
) -> RefusedElement:
    return RefusedElement(
        status=status,
        **attrs.asdict(_error_answer(code, message, errors), recurse=False),
    )


def _log_refusal(
    request: server.Request, error: ContractError, index: int | None = None
) -> None:
    log.info(
        "rejected a notification from {peer}{element}: {code} {errors}",
        peer=_peer(request),
        element="" if index is None else f" (batch element {index})",
        code=error.code,
        errors=error.message,
    )


class PresenceResource(_MethodsResource):
    """``GET /internal/presence?orgId=...``: who is online in an org, for the backend."""

    isLeaf = True

    def __init__(self, registry: OrgRegistry, settings: Settings) -> None:
        super().__init__()
        self._registry = registry
        self._settings = settings

    def render_GET(self, request: server.Request) -> bytes | int:
        try:
            answer = self._presence(request)
        except Exception:
            log.failure("unexpected error answering a presence query")
            return _error(request, 500, codes.ERR_INTERNAL, "internal error")
        if isinstance(answer, bytes):
            return answer
        org_id, users = answer
        return _answer_when_done(
            request,
            users,
            lambda found: _json(
                request,
                200,
                converter.unstructure(
                    PresenceAnswer(ok=True, orgId=org_id, users=found)
                ),
            ),
            lambda failure: _read_failed(request, failure),
        )

    def _presence(
        self, request: server.Request
    ) -> bytes | tuple[str, Deferred[list[PresenceUser]]]:
        refused = _refuse_unless_service(request, self._settings, "presence")
        if refused is not None:
            return refused
        values = (request.args or {}).get(b"orgId") or [b""]
        try:
            # Strict UTF-8 refuses encoded surrogates too: what passes is Unicode.
            org_id = values[0].decode("utf-8")
        except UnicodeDecodeError:
            return _error(
                request,
                400,
                codes.ERR_BAD_REQUEST,
                "the orgId query parameter is not valid UTF-8",
                (("orgId", "not valid UTF-8"),),
            )
        if not org_id.strip() or len(org_id) > MAX_ID_LENGTH:
            return _error(
                request,
                400,
                codes.ERR_BAD_REQUEST,
                "the orgId query parameter is required",
                (
                    (
                        "orgId",
                        f"required: a non-empty id of at most {MAX_ID_LENGTH} characters",
                    ),
                ),
            )
        return org_id, self._registry.presence_of(org_id)


class HealthResource(_MethodsResource):
    """``GET /healthz``: liveness plus connection and room counts."""

    isLeaf = True

    def __init__(self, registry: OrgRegistry) -> None:
        super().__init__()
        self._registry = registry

    def render_GET(self, request: server.Request) -> bytes:
        registry = self._registry
        reason = registry.unavailable()
        shared = registry.backplane.shared
        health = Health(
            ok=reason is None,
            connections=registry.connection_count,
            rooms=registry.room_count,
            historyOnlyRooms=registry.history_room_count,
            node=registry.node_id if shared else None,
            backplane=("up" if reason is None else "down") if shared else None,
            error=None if reason is None else codes.ERR_UNAVAILABLE,
            message=reason,
        )
        if reason is not None:
            request.setHeader(b"retry-after", b"1")
        return _json(
            request, 200 if reason is None else 503, converter.unstructure(health)
        )


def make_site(
    registry: OrgRegistry,
    settings: Settings,
    factory: OfficeServerFactory,
    *,
    max_body_bytes: int,
    http_timeout: float = 30.0,
    access_log: bool = False,
    idempotency_seconds: float = 300.0,
    metrics: Metrics | None = None,
    admin: Resource | None = None,
) -> OfficeSite:
    """Build the one :class:`~twisted.web.server.Site` the daemon listens with.

    :param http_timeout: seconds an HTTP connection may stay idle, and seconds a
        request may take to arrive whole (408 after); WebSocket connections
        leave both timers when they upgrade and are kept alive by pings instead.
    :param admin: the admin page, mounted at ``/admin`` (``None``: no page).
    """
    root = Resource()
    root.putChild(b"websocket", OfficeWebSocketResource(factory))
    internal = _Branch()
    internal.putChild(
        b"notify",
        NotifyResource(
            registry,
            settings,
            idempotency_seconds,
            metrics if metrics is not None else factory.metrics,
        ),
    )
    internal.putChild(b"presence", PresenceResource(registry, settings))
    root.putChild(b"internal", internal)
    root.putChild(b"healthz", HealthResource(registry))
    if admin is not None:
        root.putChild(b"admin", admin)

    class _Request(BoundedRequest):
        pass

    _Request.max_body_bytes = max_body_bytes
    _Request.request_timeout = http_timeout
    site = OfficeSite(
        root,
        requestFactory=_Request,
        timeout=http_timeout,
        access_log=access_log,
        send_at_once=factory.direct_writes,
    )
    site.displayTracebacks = False
    site.noisy = False
    return site
