"""The admin page's HTTP answers, through treq's StubTreq (a real Site and Agent in
memory): login, sessions, CSRF, throttling, headers, escaping, and the actions."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import LogEvent
from twisted.web.resource import Resource

from officerouter import codes
from officerouter.admin import COOKIE, AdminResource
from officerouter.admin_login import AdminPassword, LoginThrottle, hash_password
from officerouter.backplane import BackplaneUnavailable
from officerouter.messages import PresenceUser
from officerouter.registry import OrgRegistry
from tests.unit.fakes import (
    FakeBackplane,
    FakeConnection,
    identity,
    make_registry,
    result_of,
)

PASSWORD = "correct horse battery staple"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


class Browser:
    """A StubTreq client that keeps the admin cookie by hand (as a browser would)."""

    def __init__(self, resource: AdminResource, scheme: str = "http") -> None:
        root = Resource()
        root.putChild(b"admin", resource)
        self.stub = StubTreq(root)
        self.base = f"{scheme}://example.test"
        self.cookie: str | None = None

    def request(
        self, method: str, path: str, data: Any = None, headers: Any = None
    ) -> tuple[int, Any, str]:
        cookies = {COOKIE: self.cookie} if self.cookie else {}
        response = result_of(
            self.stub.request(
                method,
                self.base + path,
                data=data,
                headers=headers or {},
                cookies=cookies,
                allow_redirects=False,
            )
        )
        body = result_of(response.content()).decode("utf-8")
        for header in response.headers.getRawHeaders(b"set-cookie", []):
            found = re.match(rf"{COOKIE}=([^;]*)", header.decode())
            if found:
                self.cookie = found.group(1) or None
        return response.code, response.headers, body

    def get(self, path: str) -> tuple[int, Any, str]:
        return self.request("GET", path)

    def post(
        self, path: str, fields: dict[str, str], headers: Any = None
    ) -> tuple[int, Any, str]:
        return self.request(
            "POST", path, data=fields, headers={**FORM, **(headers or {})}
        )

    def login(self, password: str = PASSWORD) -> tuple[int, Any, str]:
        return self.post("/admin/login", {"password": password})

    def csrf(self) -> str:
        _, _, body = self.get("/admin")
        found = re.search(r'name="csrf" value="([^"]+)"', body)
        assert found
        return found.group(1)


@pytest.fixture
def registry(clock: Clock) -> OrgRegistry:
    return make_registry(clock)


@pytest.fixture
def admin(registry: OrgRegistry, clock: Clock) -> AdminResource:
    return AdminResource(registry, AdminPassword.plain(PASSWORD), clock)


@pytest.fixture
def browser(admin: AdminResource) -> Browser:
    return Browser(admin)


def connect(registry: OrgRegistry, user: str, org: str = "org-a") -> FakeConnection:
    connection = FakeConnection()
    registry.connect(identity(user, org), connection)
    return connection


def test_pages_need_a_login(browser: Browser) -> None:
    """Without a session, pages redirect to the login form and the JSON is 401."""
    code, headers, _ = browser.get("/admin")
    assert code == 303
    assert headers.getRawHeaders(b"location") == [b"/admin/login"]
    code, _, _ = browser.get("/admin/org?id=org-a")
    assert code == 303
    code, _, body = browser.get("/admin/counters")
    assert code == 401
    assert json.loads(body)["error"] == codes.ERR_UNAUTHORIZED


def test_security_headers_on_every_answer(browser: Browser) -> None:
    """Every answer carries the strict CSP and the other protective headers."""
    for path in (
        "/admin",
        "/admin/login",
        "/admin/counters",
        "/admin/static/admin.js",
        "/admin/nowhere",
    ):
        _, headers, _ = browser.get(path)
        assert headers.getRawHeaders(b"content-security-policy") == [CSP.encode()]
        assert headers.getRawHeaders(b"x-content-type-options") == [b"nosniff"]
        assert headers.getRawHeaders(b"referrer-policy") == [b"no-referrer"]
        assert headers.getRawHeaders(b"cache-control") == [b"no-store"]


def test_wrong_password_is_refused(browser: Browser) -> None:
    """A wrong password: 401, no cookie, and the form again."""
    code, headers, body = browser.login("not the password")
    assert code == 401
    assert headers.getRawHeaders(b"set-cookie") is None
    assert "Wrong password" in body
    assert browser.get("/admin")[0] == 303


def test_login_sets_a_strict_cookie_over_http(browser: Browser) -> None:
    """The session cookie is HttpOnly, SameSite=Strict, scoped to /admin, and
    not Secure over plain HTTP (a browser would drop it)."""
    code, headers, _ = browser.login()
    assert code == 303
    assert headers.getRawHeaders(b"location") == [b"/admin"]
    (cookie,) = headers.getRawHeaders(b"set-cookie")
    assert b"HttpOnly" in cookie
    assert b"SameSite=strict" in cookie or b"SameSite=Strict" in cookie
    assert b"Path=/admin" in cookie
    assert b"Secure" not in cookie
    code, _, body = browser.get("/admin")
    assert code == 200
    assert "Live counters" in body


def test_cookie_is_secure_over_tls(admin: AdminResource) -> None:
    """Served over TLS, the cookie is Secure."""
    browser = Browser(admin, scheme="https")
    _, headers, _ = browser.login()
    (cookie,) = headers.getRawHeaders(b"set-cookie")
    assert b"Secure" in cookie


def test_cookie_is_secure_behind_a_tls_proxy(browser: Browser) -> None:
    """Behind a proxy that says X-Forwarded-Proto: https, the cookie is Secure."""
    _, headers, _ = browser.post(
        "/admin/login", {"password": PASSWORD}, {"X-Forwarded-Proto": "https"}
    )
    (cookie,) = headers.getRawHeaders(b"set-cookie")
    assert b"Secure" in cookie


def test_logins_are_throttled(
    registry: OrgRegistry, clock: Clock, log_events: list[LogEvent]
) -> None:
    """After five attempts a peer gets 429 with Retry-After, even with the right
    password; the log names the peer and never the password."""
    admin = AdminResource(
        registry,
        AdminPassword.plain(PASSWORD),
        clock,
        throttle=LoginThrottle(clock.seconds, per_peer=5, per_peer_seconds=60),
    )
    browser = Browser(admin)
    for _ in range(5):
        assert browser.login("wrong guess 123")[0] == 401
    code, headers, body = browser.login()
    assert code == 429
    assert headers.getRawHeaders(b"retry-after") == [b"12"]
    assert "Too many attempts" in body
    assert browser.cookie is None
    clock.advance(12)
    assert browser.login()[0] == 303
    text = repr([dict(e) for e in log_events])
    assert "wrong guess 123" not in text
    assert PASSWORD not in text
    assert "127.0.0.1" in text


def test_post_needs_a_session(browser: Browser) -> None:
    """An action without a session is 401."""
    code, _, _ = browser.post("/admin/notify", {"orgId": "org-a", "message": "hi"})
    assert code == 401


def test_post_needs_the_csrf_token(browser: Browser, registry: OrgRegistry) -> None:
    """With a session but without (or with another) CSRF token, an action is 403
    and nothing is sent."""
    connection = connect(registry, "user-1")
    browser.login()
    before = len(connection.events)
    for fields in (
        {"orgId": "org-a", "message": "hi"},
        {"orgId": "org-a", "message": "hi", "csrf": "forged"},
    ):
        assert browser.post("/admin/notify", fields)[0] == 403
    assert len(connection.events) == before


def test_post_from_another_origin_is_refused(
    browser: Browser, registry: OrgRegistry
) -> None:
    """A form posted from another site is 403 even with the right token."""
    connect(registry, "user-1")
    browser.login()
    csrf = browser.csrf()
    fields = {"orgId": "org-a", "message": "hi", "csrf": csrf}
    code, _, _ = browser.post("/admin/notify", fields, {"Origin": "https://evil.test"})
    assert code == 403
    code, _, _ = browser.post("/admin/notify", fields, {"Sec-Fetch-Site": "cross-site"})
    assert code == 403
    code, _, _ = browser.post(
        "/admin/notify", fields, {"Origin": "http://example.test"}
    )
    assert code == 303


def test_cross_origin_login_is_refused(browser: Browser) -> None:
    """A login form posted from another site is 403 (no login CSRF)."""
    code, _, _ = browser.post(
        "/admin/login", {"password": PASSWORD}, {"Origin": "https://evil.test"}
    )
    assert code == 403
    assert browser.cookie is None


def test_test_notification_to_a_user(browser: Browser, registry: OrgRegistry) -> None:
    """A test notification to one user reaches only that user's connections, and
    the page says how many."""
    alice = connect(registry, "alice")
    bob = connect(registry, "bob")
    browser.login()
    code, headers, _ = browser.post(
        "/admin/notify",
        {
            "orgId": "org-a",
            "userId": "alice",
            "message": "ping",
            "csrf": browser.csrf(),
        },
    )
    assert code == 303
    (location,) = headers.getRawHeaders(b"location")
    assert location == b"/admin/org?id=org-a&done=sent&n=1"
    assert alice.routed_types() == ["admin_test"]
    assert alice.routed()[0]["payload"] == {"message": "ping"}
    assert bob.routed() == []
    _, _, body = browser.get(location.decode())
    assert "Test notification delivered to 1 connection(s)." in body


def test_test_notification_to_the_org(browser: Browser, registry: OrgRegistry) -> None:
    """A test notification to the org reaches everyone in it and is in its history."""
    alice = connect(registry, "alice")
    bob = connect(registry, "bob")
    browser.login()
    code, _, _ = browser.post(
        "/admin/notify", {"orgId": "org-a", "message": "all", "csrf": browser.csrf()}
    )
    assert code == 303
    assert alice.routed_types() == ["admin_test"]
    assert bob.routed_types() == ["admin_test"]
    _, _, body = browser.get("/admin/org?id=org-a")
    assert "admin_test" in body


def test_bad_notification_is_a_400(browser: Browser, registry: OrgRegistry) -> None:
    """An empty message is refused with the codec's reason, nothing sent."""
    alice = connect(registry, "alice")
    browser.login()
    code, _, body = browser.post(
        "/admin/notify", {"orgId": "org-a", "message": "", "csrf": browser.csrf()}
    )
    assert code == 400
    assert "$.payload.message" in body
    assert alice.routed() == []


def test_disconnect_closes_the_users_connections(
    browser: Browser, registry: OrgRegistry
) -> None:
    """Disconnect closes every connection of the user with 4004, nobody else's."""
    first = connect(registry, "alice")
    second = connect(registry, "alice")
    bob = connect(registry, "bob")
    browser.login()
    code, headers, _ = browser.post(
        "/admin/disconnect",
        {"orgId": "org-a", "userId": "alice", "csrf": browser.csrf()},
    )
    assert code == 303
    assert headers.getRawHeaders(b"location") == [
        b"/admin/org?id=org-a&done=disconnected&n=2"
    ]
    expected = [(codes.CLOSE_DISCONNECTED, codes.REASON_DISCONNECTED)]
    assert first.closes == expected
    assert second.closes == expected
    assert bob.closes == []


def test_org_page_lists_users_and_escapes_ids(
    browser: Browser, registry: OrgRegistry
) -> None:
    """The org page lists who is online with role and connections, and a hostile
    user id is shown as text, never as markup."""
    hostile = '<script>alert("x")</script>'
    connect(registry, hostile, org="<b>org</b>")
    connect(registry, "alice", org="<b>org</b>")
    browser.login()
    code, _, body = browser.get("/admin/org?id=%3Cb%3Eorg%3C/b%3E")
    assert code == 200
    assert "<script>alert" not in body
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in body
    assert "<b>org</b>" not in body
    assert "alice" in body
    _, _, overview = browser.get("/admin")
    assert "<b>org</b>" not in overview
    assert "&lt;b&gt;org&lt;/b&gt;" in overview
    assert "/admin/org?id=%3Cb%3Eorg%3C%2Fb%3E" in overview


def test_no_inline_script_or_style(browser: Browser, registry: OrgRegistry) -> None:
    """Pages load script and style only from files (the CSP allows nothing inline)."""
    connect(registry, "alice")
    browser.login()
    for path in ("/admin", "/admin/org?id=org-a", "/admin/login"):
        _, _, body = browser.get(path)
        assert re.findall(r"<script(?![^>]*\bsrc=)", body) == []
        assert "<style" not in body
        assert " style=" not in body
        assert re.findall(r"<[^>]*\son[a-z]+=", body) == []


def test_secret_never_rendered(registry: OrgRegistry, clock: Clock) -> None:
    """Neither the password nor its hash appears on any page."""
    hashed = hash_password(PASSWORD, log2_n=10)
    admin = AdminResource(registry, AdminPassword.parse_hash(hashed), clock)
    browser = Browser(admin)
    connect(registry, "alice")
    browser.login()
    salt, digest = hashed.split("$")[4:]
    for path in ("/admin", "/admin/org?id=org-a", "/admin/counters"):
        _, _, body = browser.get(path)
        assert PASSWORD not in body
        assert salt not in body
        assert digest not in body


def test_counters(browser: Browser, registry: OrgRegistry) -> None:
    """The counters JSON follows connections and rooms."""
    browser.login()
    before = json.loads(browser.get("/admin/counters")[2])
    assert before["connections"] == 0
    connect(registry, "alice")
    connect(registry, "bob", org="org-b")
    after = json.loads(browser.get("/admin/counters")[2])
    assert after["connections"] == 2
    assert after["rooms"] == 2
    assert after["usersOnline"] == 2
    assert after["backplane"] == "local"


def test_logout_ends_the_session(browser: Browser) -> None:
    """After logout the old cookie no longer opens the page."""
    browser.login()
    cookie = browser.cookie
    code, headers, _ = browser.post("/admin/logout", {"csrf": browser.csrf()})
    assert code == 303
    assert headers.getRawHeaders(b"location") == [b"/admin/login"]
    assert browser.cookie is None
    browser.cookie = cookie
    assert browser.get("/admin")[0] == 303


def test_session_expires_when_idle(browser: Browser, clock: Clock) -> None:
    """A session left idle for half an hour is gone."""
    browser.login()
    clock.advance(1799)
    assert browser.get("/admin")[0] == 200
    clock.advance(1800)
    assert browser.get("/admin")[0] == 303


def test_methods(browser: Browser) -> None:
    """Actions are POST only and pages GET only: 405 with Allow otherwise."""
    code, headers, _ = browser.get("/admin/notify")
    assert code == 405
    assert headers.getRawHeaders(b"allow") == [b"POST"]
    code, headers, _ = browser.request("DELETE", "/admin")
    assert code == 405
    assert headers.getRawHeaders(b"allow") == [b"GET, HEAD"]


def test_static_files(browser: Browser) -> None:
    """The script and the style sheet are served with their types; others are 404."""
    code, headers, body = browser.get("/admin/static/admin.js")
    assert code == 200
    assert headers.getRawHeaders(b"content-type") == [b"text/javascript; charset=utf-8"]
    assert "/admin/counters" in body
    code, headers, _ = browser.get("/admin/static/admin.css")
    assert headers.getRawHeaders(b"content-type") == [b"text/css; charset=utf-8"]
    assert browser.get("/admin/static/..%2Fadmin.py")[0] == 404


def test_form_must_be_urlencoded(browser: Browser) -> None:
    """A login that is not a form is 400."""
    code, _, _ = browser.request(
        "POST", "/admin/login", data=b"{}", headers={"Content-Type": "application/json"}
    )
    assert code == 400


def test_actions_answer_503_while_the_backplane_is_down(clock: Clock) -> None:
    """With the shared backplane away, an action is 503 with Retry-After and
    nothing is published; a failed publish is 503 too."""
    backplane = FakeBackplane(clock)
    registry = make_registry(clock, backplane=backplane)
    browser = Browser(AdminResource(registry, AdminPassword.plain(PASSWORD), clock))
    browser.login()
    csrf = browser.csrf()
    backplane.set_up(False)
    code, headers, body = browser.post(
        "/admin/notify", {"orgId": "org-a", "message": "hi", "csrf": csrf}
    )
    assert code == 503
    assert headers.getRawHeaders(b"retry-after") == [b"1"]
    assert "Nothing was sent" in body
    assert backplane.published == []
    backplane.set_up(True)
    backplane.refuse = BackplaneUnavailable("Redis went away")
    code, _, body = browser.post(
        "/admin/notify", {"orgId": "org-a", "message": "hi", "csrf": csrf}
    )
    assert code == 503
    assert "Redis went away" in body


def test_org_page_of_an_org_elsewhere(clock: Clock) -> None:
    """An org without a room here shows the cluster's presence, and says that
    this process keeps no history for it."""
    backplane = FakeBackplane(clock)
    backplane.remote_users["org-far"] = [
        PresenceUser(userId="zed", role="admin", connections=3, position=None)
    ]
    registry = make_registry(clock, backplane=backplane)
    browser = Browser(AdminResource(registry, AdminPassword.plain(PASSWORD), clock))
    browser.login()
    code, _, body = browser.get("/admin/org?id=org-far")
    assert code == 200
    assert '<td class="user-id">zed</td><td>admin</td><td>3</td>' in body
    assert "keeps no history for this org" in body
    counters = json.loads(browser.get("/admin/counters")[2])
    assert counters["backplane"] == "up"


@pytest.mark.parametrize(
    "query", ["", "?id=", "?id=%20", "?id=%FF", "?id=" + "x" * 129]
)
def test_org_page_needs_an_org_id(browser: Browser, query: str) -> None:
    """A missing, blank, non-UTF-8 or too long org id is 400."""
    browser.login()
    code, _, body = browser.get("/admin/org" + query)
    assert code == 400
    assert "id must be an org id" in body


def test_long_frames_are_cut_in_the_history(
    browser: Browser, registry: OrgRegistry
) -> None:
    """A long frame is shown cut at 400 characters."""
    connect(registry, "alice")
    browser.login()
    browser.post(
        "/admin/notify",
        {"orgId": "org-a", "message": "y" * 1000, "csrf": browser.csrf()},
    )
    _, _, body = browser.get("/admin/org?id=org-a")
    assert "…</code>" in body
    assert "y" * 1000 not in body


def test_form_must_be_utf8(browser: Browser) -> None:
    """A form that is not UTF-8 is 400."""
    code, _, body = browser.request(
        "POST", "/admin/login", data=b"password=%FF", headers=FORM
    )
    assert code == 400
    assert "UTF-8" in body


def test_head_and_static_methods(browser: Browser) -> None:
    """HEAD answers a page's headers without a body; static files are GET only."""
    code, headers, body = browser.request("HEAD", "/admin/login")
    assert code == 200
    assert body == ""
    assert headers.getRawHeaders(b"content-security-policy") == [CSP.encode()]
    code, headers, _ = browser.request("POST", "/admin/static/admin.js")
    assert code == 405
    assert headers.getRawHeaders(b"allow") == [b"GET, HEAD"]


def test_login_waits_for_the_password_check(
    registry: OrgRegistry, clock: Clock
) -> None:
    """The password check may answer later (the daemon runs it in a thread): the
    login is answered when it does."""
    pending: list[tuple[str, Deferred[bool]]] = []

    def check(given: str) -> Deferred[bool]:
        d: Deferred[bool] = Deferred()
        pending.append((given, d))
        return d

    admin = AdminResource(registry, AdminPassword.plain(PASSWORD), clock, check=check)
    browser = Browser(admin)
    answer = browser.stub.request(
        "POST",
        browser.base + "/admin/login",
        data={"password": PASSWORD},
        headers=FORM,
        allow_redirects=False,
    )
    got: list[Any] = []
    answer.addBoth(got.append)
    assert got == []
    ((given, d),) = pending
    assert given == PASSWORD
    d.callback(True)
    browser.stub.flush()
    (response,) = got
    assert response.code == 303
    assert response.headers.getRawHeaders(b"set-cookie")


@pytest.mark.parametrize("query", ["&done=sent&n=%C2%B2", "&done=other&n=1", "&n=1"])
def test_flash_takes_only_its_own_values(browser: Browser, query: str) -> None:
    """The result line shows only a known action and a plain count (no text
    from the URL)."""
    browser.login()
    code, _, body = browser.get("/admin/org?id=org-a" + query)
    assert code == 200
    assert 'class="flash"' not in body
