"""``/admin``: the on-call engineer's page (an adapter, like :mod:`officerouter.web`).

Server-rendered HTML with one small script and one style sheet served from
``admin_static/``.  It reads the registry (rooms, presence, history) and acts
through the paths the backend uses: a test notification and a disconnect are
notifications published through the registry, so with several processes they
reach the user's connections on every one of them.  The login, sessions, CSRF
tokens and throttling live in :mod:`officerouter.admin_login`.
"""

from __future__ import annotations

import datetime
import html
from collections.abc import Callable
from importlib import resources
from typing import Any, Final
from urllib.parse import parse_qs, quote, urlsplit

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.resource import Resource

from officerouter import codes
from officerouter.admin_login import (
    AdminPassword,
    AdminSession,
    LoginThrottle,
    SessionStore,
    csrf_matches,
)
from officerouter.backplane import BackplaneUnavailable, Published
from officerouter.codec import ContractError, decode_notify, dumps
from officerouter.messages import MAX_ID_LENGTH, PresenceUser
from officerouter.registry import OrgRegistry
from officerouter.web import _answer_when_done as answer_when_done

log = Logger()

COOKIE: Final = "officerouter_admin"
#: The longest frame shown whole in the history table (characters).
_SHOWN: Final = 400

SECURITY_HEADERS: Final = {
    b"content-security-policy": (
        b"default-src 'none'; script-src 'self'; style-src 'self'; "
        b"connect-src 'self'; img-src 'self'; form-action 'self'; "
        b"frame-ancestors 'none'; base-uri 'none'"
    ),
    b"x-content-type-options": b"nosniff",
    b"referrer-policy": b"no-referrer",
    b"cache-control": b"no-store",
    b"x-frame-options": b"DENY",
    b"cross-origin-opener-policy": b"same-origin",
}

_STATIC_TYPES: Final = {
    "admin.css": b"text/css; charset=utf-8",
    "admin.js": b"text/javascript; charset=utf-8",
}


def _e(value: object) -> str:
    """Escape anything for HTML text and quoted attributes."""
    return html.escape(str(value), quote=True)


def _org_url(org_id: str, **extra: str | int) -> str:
    query = "&".join(f"{k}={quote(str(v), safe='')}" for k, v in extra.items())
    return f"/admin/org?id={quote(org_id, safe='')}" + (f"&{query}" if query else "")


def _peer(request: server.Request) -> str:
    address = request.getClientAddress()
    return str(getattr(address, "host", None) or address)


def _load_static() -> dict[str, bytes]:
    folder = resources.files("officerouter") / "admin_static"
    return {name: (folder / name).read_bytes() for name in _STATIC_TYPES}


class _BadForm(Exception):
    """A form that cannot be used: 400 with the reason."""


class AdminResource(Resource):
    """Everything under ``/admin``, dispatched on the path.

    :param registry: what the page shows and acts on.
    :param password: how the password is checked.
    :param clock: the time, for sessions and throttling.
    :param counters: extra live counters (name -> value) from the site.
    :param check: runs the password check; the daemon runs it in a thread, as
        an scrypt takes a tenth of a second (default: at once, for tests).
    """

    isLeaf = True

    def __init__(
        self,
        registry: OrgRegistry,
        password: AdminPassword,
        clock: IReactorTime,
        *,
        sessions: SessionStore | None = None,
        throttle: LoginThrottle | None = None,
        counters: Callable[[], dict[str, int]] = dict,
        check: Callable[[str], Deferred[bool]] | None = None,
    ) -> None:
        super().__init__()
        self._registry = registry
        self._check = check or (lambda given: succeed(password.matches(given)))
        self._clock = clock
        self.sessions = sessions or SessionStore(clock.seconds)
        self.throttle = throttle or LoginThrottle(clock.seconds)
        self._counters = counters
        self._static = _load_static()

    # ------------------------------------------------------------ dispatch

    def render(self, request: server.Request) -> bytes | int:
        for name, value in SECURITY_HEADERS.items():
            request.setHeader(name, value)
        path = [p.decode("utf-8", "replace") for p in request.postpath or []]
        method = (request.method or b"").decode("ascii", "replace")
        try:
            return self._dispatch(request, path, method)
        except _BadForm as e:
            return self._page(request, 400, "Bad request", f"<p>{_e(e)}</p>")
        except Exception:
            log.failure("unexpected error on the admin page")
            return self._page(request, 500, "Internal error", "<p>Internal error.</p>")

    def _dispatch(
        self, request: server.Request, path: list[str], method: str
    ) -> bytes | int:
        route = "/".join(path)
        if len(path) == 2 and path[0] == "static":
            if method not in ("GET", "HEAD"):
                return self._not_allowed(request, "GET, HEAD")
            return self._static_file(request, path[1])
        gets: dict[str, Callable[[server.Request], bytes | int]] = {
            "": self._overview,
            "login": self._login_form,
            "org": self._org,
            "counters": self._counters_json,
        }
        posts: dict[str, Callable[[server.Request], bytes | int]] = {
            "login": self._login,
            "logout": self._logout,
            "notify": self._notify,
            "disconnect": self._disconnect,
        }
        if route not in gets and route not in posts:
            return self._page(request, 404, "Not found", "<p>No such page.</p>")
        if method in ("GET", "HEAD") and route in gets:
            body = gets[route](request)
            return b"" if method == "HEAD" and isinstance(body, bytes) else body
        if method == "POST" and route in posts:
            return posts[route](request)
        allowed = "GET, HEAD" if route in gets else "POST"
        return self._not_allowed(request, allowed)

    def _not_allowed(self, request: server.Request, allowed: str) -> bytes:
        request.setHeader(b"allow", allowed.encode("ascii"))
        return self._page(request, 405, "Method not allowed", f"<p>Use {allowed}.</p>")

    # ------------------------------------------------------------ sessions

    def _cookie(self, request: server.Request) -> str | None:
        raw = request.getCookie(COOKIE.encode("ascii"))
        return raw.decode("ascii", "replace") if raw else None

    def _session(self, request: server.Request) -> AdminSession | None:
        return self.sessions.get(self._cookie(request))

    def _secure(self, request: server.Request) -> bool:
        forwarded = request.getHeader(b"x-forwarded-proto") or b""
        return bool(request.isSecure()) or forwarded.strip().lower() == b"https"

    def _set_cookie(self, request: server.Request, value: str, max_age: int) -> None:
        request.addCookie(
            COOKIE.encode("ascii"),
            value.encode("ascii"),
            path=b"/admin",
            max_age=str(max_age).encode("ascii"),
            httpOnly=True,
            secure=self._secure(request),
            sameSite=b"strict",
        )

    def _same_origin(self, request: server.Request) -> bool:
        """Whether a POST comes from this page, as far as the browser says.

        ``Sec-Fetch-Site`` (set by the browser, never by a page) decides when
        present.  Otherwise ``Origin`` must name this host (as the client asked
        for it: ``Host``, or ``X-Forwarded-Host`` behind a proxy that rewrites
        ``Host``; a cross-site form cannot set either); ``Origin: null`` is
        refused.  A request with neither header is not a browser's: the CSRF
        token is what protects it.
        """
        site = request.getHeader(b"sec-fetch-site")
        if site is not None:
            return site in (b"same-origin", b"none")
        origin = request.getHeader(b"origin")
        if origin is None:
            return True
        try:
            parts = urlsplit(origin.decode("latin-1"))
        except ValueError:
            return False
        hosts = {
            (request.getHeader(name) or b"").decode("latin-1").split(",")[0].strip()
            for name in (b"host", b"x-forwarded-host")
        }
        return parts.scheme in ("http", "https") and parts.netloc.lower() in {
            h.lower() for h in hosts if h
        }

    def _form(self, request: server.Request) -> dict[str, str]:
        content_type = (request.getHeader(b"content-type") or b"").split(b";")[0]
        if content_type.strip().lower() != b"application/x-www-form-urlencoded":
            raise _BadForm("the form must be application/x-www-form-urlencoded")
        assert request.content is not None
        # A plain twisted.web Site may have read it already to parse a form.
        request.content.seek(0)
        try:
            text = request.content.read().decode("utf-8")
            fields = parse_qs(text, keep_blank_values=True, errors="strict")
        except (UnicodeDecodeError, ValueError):
            raise _BadForm("the form is not valid UTF-8") from None
        return {name: values[0] for name, values in fields.items()}

    def _guard(
        self, request: server.Request
    ) -> tuple[AdminSession, dict[str, str]] | bytes:
        """The session and form of a POST action, or the 401/403 refusing it."""
        if not self._same_origin(request):
            log.warn(
                "admin: refused a cross-origin POST from {peer}", peer=_peer(request)
            )
            return self._page(
                request, 403, "Forbidden", "<p>This form came from another site.</p>"
            )
        session = self._session(request)
        if session is None:
            return self._page(
                request,
                401,
                "Logged out",
                '<p>Your session ended. <a href="/admin/login">Log in</a>.</p>',
            )
        form = self._form(request)
        if not csrf_matches(session, form.get("csrf")):
            log.warn(
                "admin: refused a POST without its CSRF token from {peer}",
                peer=_peer(request),
            )
            return self._page(
                request,
                403,
                "Forbidden",
                "<p>The form's token is missing or stale; "
                'reload <a href="/admin">the page</a>.</p>',
            )
        return session, form

    # ------------------------------------------------------------ login

    def _login_form(self, request: server.Request, error: str = "") -> bytes:
        if self._session(request) is not None:
            return self._redirect(request, "/admin")
        message = f'<p class="error" role="alert">{_e(error)}</p>' if error else ""
        return self._page(
            request,
            request.code if error else 200,
            "Log in",
            f"""{message}
<form method="post" action="/admin/login" class="login">
<label>Password <input type="password" name="password" autocomplete="current-password" required autofocus></label>
<button type="submit">Log in</button>
</form>""",
        )

    def _login(self, request: server.Request) -> bytes | int:
        peer = _peer(request)
        if not self._same_origin(request):
            log.warn("admin: refused a cross-origin login from {peer}", peer=peer)
            return self._page(
                request, 403, "Forbidden", "<p>This form came from another site.</p>"
            )
        wait = self.throttle.attempt(peer)
        if wait > 0:
            seconds = max(1, int(wait + 0.999))
            log.warn(
                "admin: login from {peer} throttled for {seconds} s",
                peer=peer,
                seconds=seconds,
            )
            request.setHeader(b"retry-after", str(seconds).encode("ascii"))
            request.setResponseCode(429)
            return self._login_form(
                request, f"Too many attempts; try again in {seconds} s."
            )
        password = self._form(request).get("password", "")
        return self._when_done(
            request,
            self._check(password),
            lambda matches: self._logged_in(request, peer, matches),
        )

    def _logged_in(self, request: server.Request, peer: str, matches: bool) -> bytes:
        if not matches:
            log.warn("admin: wrong password from {peer}", peer=peer)
            request.setResponseCode(401)
            return self._login_form(request, "Wrong password.")
        self.throttle.succeeded(peer)
        token, _ = self.sessions.create()
        self._set_cookie(request, token, int(self.sessions.lifetime))
        log.info("admin: logged in from {peer}", peer=peer)
        return self._redirect(request, "/admin")

    def _logout(self, request: server.Request) -> bytes:
        guarded = self._guard(request)
        if isinstance(guarded, bytes):
            return guarded
        self.sessions.end(self._cookie(request))
        self._set_cookie(request, "", 0)
        log.info("admin: logged out from {peer}", peer=_peer(request))
        return self._redirect(request, "/admin/login")

    # ------------------------------------------------------------ pages

    def _overview(self, request: server.Request) -> bytes:
        session = self._session(request)
        if session is None:
            return self._redirect(request, "/admin/login")
        rows = []
        for room in sorted(self._registry.rooms(), key=lambda r: (-len(r), r.org_id)):
            state = "live" if len(room) else "history only"
            rows.append(
                f'<tr><td><a href="{_e(_org_url(room.org_id))}">{_e(room.org_id)}</a>'
                f"</td><td>{len(room)}</td><td>{len(room.presence())}</td>"
                f"<td>{room.stream.seq}</td><td>{len(room.stream)}</td>"
                f"<td>{state}</td></tr>"
            )
        table = (
            "<table><thead><tr><th>org</th><th>connections here</th>"
            "<th>users online</th><th>seq</th><th>history</th><th>state</th></tr>"
            f'</thead><tbody id="orgs">{"".join(rows)}</tbody></table>'
            if rows
            else "<p>No org has a room on this process.</p>"
        )
        body = f"""{self._counters_block()}
<section><h2>Orgs on this process</h2>{table}
<form method="get" action="/admin/org" class="inline">
<label>Look up an org <input name="id" required maxlength="{MAX_ID_LENGTH}"></label>
<button type="submit">Show</button></form></section>"""
        return self._page(request, 200, "Overview", body, session)

    def _org(self, request: server.Request) -> bytes | int:
        session = self._session(request)
        if session is None:
            return self._redirect(request, "/admin/login")
        org_id = self._arg(request, b"id")
        if org_id is None:
            raise _BadForm(f"id must be an org id of 1 to {MAX_ID_LENGTH} characters")
        return self._when_done(
            request,
            self._registry.presence_of(org_id),
            lambda users: self._org_page(request, session, org_id, users),
        )

    def _org_page(
        self,
        request: server.Request,
        session: AdminSession,
        org_id: str,
        users: list[PresenceUser],
    ) -> bytes:
        csrf = _e(session.csrf)
        flash = self._flash(request)
        rows = []
        for user in users:
            position = user.position
            where = (
                f"{position.x:g}, {position.y:g}"
                + (f" in {_e(position.roomId)}" if position.roomId else "")
                if position is not None
                else "–"
            )
            hidden = (
                f'<input type="hidden" name="csrf" value="{csrf}">'
                f'<input type="hidden" name="orgId" value="{_e(org_id)}">'
                f'<input type="hidden" name="userId" value="{_e(user.userId)}">'
            )
            rows.append(
                f'<tr class="user"><td class="user-id">{_e(user.userId)}</td>'
                f"<td>{_e(user.role)}</td><td>{user.connections}</td><td>{where}</td>"
                f'<td><form method="post" action="/admin/notify" class="inline">'
                f'{hidden}<input name="message" value="test from the admin page" '
                f'maxlength="1000" aria-label="message"><button type="submit">'
                f"Send test</button></form>"
                f'<form method="post" action="/admin/disconnect" class="inline">'
                f'{hidden}<button type="submit" class="danger">Disconnect</button>'
                "</form></td></tr>"
            )
        users_table = (
            '<table id="users"><thead><tr><th>user</th><th>role</th>'
            "<th>connections</th><th>position</th><th>actions</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>"
            if rows
            else '<p id="users">Nobody is online in this org.</p>'
        )
        body = f"""{flash}{self._counters_block()}
<section><h2>Online in {_e(org_id)}</h2>
<p><a href="{_e(_org_url(org_id))}">Refresh</a></p>{users_table}
<form method="post" action="/admin/notify" class="inline">
<input type="hidden" name="csrf" value="{csrf}">
<input type="hidden" name="orgId" value="{_e(org_id)}">
<label>Test notification to the whole org
<input name="message" value="test from the admin page" maxlength="1000"></label>
<button type="submit">Send to org</button></form></section>
<section><h2>Recent history</h2>{self._history(org_id)}</section>"""
        return self._page(request, 200, f"Org {org_id}", body, session)

    def _history(self, org_id: str) -> str:
        room = self._registry.room(org_id)
        if room is None:
            return "<p>This process keeps no history for this org.</p>"
        rows = []
        for entry in reversed(room.stream.entries()[-100:]):
            at = datetime.datetime.fromtimestamp(entry.at, datetime.UTC)
            frame = entry.message.data.decode("utf-8", "replace")
            if len(frame) > _SHOWN:
                frame = frame[:_SHOWN] + "…"
            targets = ", ".join(entry.targets) if entry.targets is not None else "all"
            rows.append(
                f"<tr><td>{entry.seq}</td><td>{_e(at.strftime('%H:%M:%S'))}</td>"
                f"<td>{_e(entry.message.type)}</td><td>{_e(targets)}</td>"
                f"<td><code>{_e(frame)}</code></td></tr>"
            )
        if not rows:
            return "<p>No messages in the window.</p>"
        return (
            '<table id="history"><thead><tr><th>seq</th><th>UTC</th><th>type</th>'
            "<th>to</th><th>frame</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>"
        )

    def _flash(self, request: server.Request) -> str:
        done = self._arg(request, b"done")
        count = self._arg(request, b"n")
        if (
            done not in ("sent", "disconnected")
            or count is None
            or not (count.isascii() and count.isdigit())
        ):
            return ""
        what = (
            "Test notification delivered to"
            if done == "sent"
            else "Disconnect delivered to"
        )
        return f'<p class="flash" role="status">{what} {int(count)} connection(s).</p>'

    # ------------------------------------------------------------ actions

    def _notify(self, request: server.Request) -> bytes | int:
        guarded = self._guard(request)
        if isinstance(guarded, bytes):
            return guarded
        _, form = guarded
        org_id = form.get("orgId", "")
        user_id = form.get("userId")
        body: dict[str, Any] = {
            "orgId": org_id,
            "routing": "direct" if user_id is not None else "broadcast",
            "type": "admin_test",
            "payload": {"message": form.get("message", "")},
        }
        if user_id is not None:
            body["targets"] = [user_id]
        log.info(
            "admin: test notification to org {org_id} user {user_id} from {peer}",
            org_id=org_id,
            user_id=user_id,
            peer=_peer(request),
        )
        return self._publish(request, body, "sent")

    def _disconnect(self, request: server.Request) -> bytes | int:
        guarded = self._guard(request)
        if isinstance(guarded, bytes):
            return guarded
        _, form = guarded
        org_id = form.get("orgId", "")
        user_id = form.get("userId", "")
        log.info(
            "admin: disconnect user {user_id} of org {org_id} from {peer}",
            org_id=org_id,
            user_id=user_id,
            peer=_peer(request),
        )
        body = {
            "orgId": org_id,
            "routing": "direct",
            "type": "user_disconnected",
            "targets": [user_id],
            "payload": {"userId": user_id, "reason": codes.REASON_DISCONNECTED},
        }
        return self._publish(request, body, "disconnected")

    def _publish(
        self, request: server.Request, body: dict[str, Any], done: str
    ) -> bytes | int:
        """Publish through the backend's own path: the codec, then the registry."""
        try:
            notification = decode_notify(dumps(body), self._registry.catalog)
        except ContractError as e:
            reasons = "".join(f"<li>{_e(p)}: {_e(r)}</li>" for p, r in e.errors)
            return self._page(
                request, 400, "Bad request", f"<p>Not sent:</p><ul>{reasons}</ul>"
            )
        reason = self._registry.unavailable()
        if reason is not None:
            return self._unavailable(request, reason)
        org_id = notification.org_id
        return self._when_done(
            request,
            self._registry.publish(notification),
            lambda published: self._redirect(
                request, _org_url(org_id, done=done, n=_delivered(published))
            ),
        )

    # ------------------------------------------------------------ counters

    def counters(self) -> dict[str, int | str]:
        """The live counters the page shows and polls."""
        registry = self._registry
        rooms = registry.rooms()
        reason = registry.unavailable()
        values: dict[str, int | str] = {
            "connections": registry.connection_count,
            "rooms": registry.room_count,
            "historyOnlyRooms": registry.history_room_count,
            "usersOnline": sum(len(room.presence()) for room in rooms),
            "historyEntries": sum(len(room.stream) for room in rooms),
            "adminSessions": len(self.sessions),
        }
        values.update(self._counters())
        values["node"] = registry.node_id
        values["backplane"] = (
            "local"
            if not registry.backplane.shared
            else ("up" if reason is None else "down")
        )
        return values

    def _counters_block(self) -> str:
        items = "".join(
            f'<div><dt>{_e(name)}</dt><dd data-counter="{_e(name)}">{_e(value)}</dd>'
            "</div>"
            for name, value in self.counters().items()
        )
        return (
            f'<section><h2>Live counters</h2><dl id="counters">{items}</dl></section>'
        )

    def _counters_json(self, request: server.Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        if self._session(request) is None:
            request.setResponseCode(401)
            return dumps(
                {"ok": False, "error": codes.ERR_UNAUTHORIZED, "message": "log in"}
            )
        return dumps({"ok": True, **self.counters()})

    # ------------------------------------------------------------ helpers

    def _arg(self, request: server.Request, name: bytes) -> str | None:
        values = (request.args or {}).get(name)
        if not values:
            return None
        try:
            value = values[0].decode("utf-8")
        except UnicodeDecodeError:
            return None
        if not value.strip() or len(value) > MAX_ID_LENGTH:
            return None
        return str(value)

    def _static_file(self, request: server.Request, name: str) -> bytes:
        body = self._static.get(name)
        if body is None:
            return self._page(request, 404, "Not found", "<p>No such file.</p>")
        request.setHeader(b"content-type", _STATIC_TYPES[name])
        return body

    def _redirect(self, request: server.Request, location: str) -> bytes:
        request.setResponseCode(303)
        request.setHeader(b"location", location.encode("ascii"))
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b""

    def _unavailable(self, request: server.Request, reason: str) -> bytes:
        request.setHeader(b"retry-after", b"1")
        return self._page(
            request, 503, "Unavailable", f"<p>Nothing was sent: {_e(reason)}.</p>"
        )

    def _when_done(
        self,
        request: server.Request,
        result: Deferred[Any],
        succeeded: Callable[[Any], bytes],
    ) -> bytes | int:
        """Answer at once when ``result`` has fired, else when it fires."""

        def failed(failure: Failure) -> bytes:
            if failure.check(BackplaneUnavailable):
                return self._unavailable(request, failure.getErrorMessage())
            log.failure("admin: unexpected error", failure)
            return self._page(request, 500, "Internal error", "<p>Internal error.</p>")

        return answer_when_done(request, result, succeeded, failed)

    def _page(
        self,
        request: server.Request,
        status: int,
        title: str,
        body: str,
        session: AdminSession | None = None,
    ) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        nav = ""
        if session is not None:
            nav = (
                '<nav><a href="/admin">Overview</a>'
                '<form method="post" action="/admin/logout" class="inline">'
                f'<input type="hidden" name="csrf" value="{_e(session.csrf)}">'
                '<button type="submit">Log out</button></form></nav>'
            )
        return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)} – officerouter admin</title>
<link rel="stylesheet" href="/admin/static/admin.css">
<script src="/admin/static/admin.js" defer></script>
</head><body><header><h1>officerouter admin</h1>
<span class="node">node {_e(self._registry.node_id)}</span>{nav}</header>
<main><h2 class="title">{_e(title)}</h2>
{body}</main></body></html>
""".encode()


def _delivered(published: Published) -> int:
    return published.delivered
