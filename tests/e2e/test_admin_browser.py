"""The admin page in a real browser: headless system Chromium driven by Playwright,
against the installed ``twistd -n officerouter --admin`` in a subprocess.

The connected client is a second browser page holding a real WebSocket with a
real token, so the whole test is synchronous (no reactor).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.browser import UI_TIMEOUT_MS, SyncDaemon, chromium
from tests.daemon import clean_environ, signed, write_env_file

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PASSWORD = "browser test password 1"
ORG = "org-browser"
#: A user id that would run a script if the page did not escape it.
HOSTILE = 'eve<script>window.pwned=1</script><img src=x onerror="window.pwned=2">'

OPEN_SOCKET = """([url, token]) => new Promise((resolve, reject) => {
  window.received = [];
  window.closedWith = null;
  const socket = new WebSocket(url, [token]);
  socket.onmessage = (event) => {
    const frame = JSON.parse(event.data);
    window.received.push(frame);
    if (frame.type === "connected") resolve(frame.payload);
  };
  socket.onclose = (event) => {
    window.closedWith = {code: event.code, reason: event.reason};
    reject(new Error("closed " + event.code));
  };
})"""


@pytest.fixture
def daemon(tmp_path: Path) -> Any:
    """The installed router with the admin page on, and its env file's values."""
    env_file, values = write_env_file(tmp_path)
    with env_file.open("a", encoding="utf-8") as f:
        f.write(f"ADMIN_PASSWORD={PASSWORD}\n")
    router = SyncDaemon(tmp_path, "--env-file", str(env_file), "--admin")
    router.start(clean_environ())
    try:
        yield router, values
    finally:
        router.stop()


def login_status(page: Any, base: str, password: str) -> int:
    """Submit the login form with ``password``; the POST's HTTP status."""
    with page.expect_response(
        lambda r: r.url == f"{base}/admin/login" and r.request.method == "POST"
    ) as answer:
        page.fill("input[name=password]", password)
        page.click("button[type=submit]")
    status: int = answer.value.status
    page.wait_for_load_state()
    return status


def test_admin_page_in_a_browser(daemon: Any) -> None:
    """Log in, see a client connect and appear, send it a test notification it
    receives, disconnect it, log out; wrong passwords are refused, then throttled."""
    from playwright.sync_api import expect

    router, values = daemon
    base = router.base
    token = signed(values, HOSTILE, ORG, "member")
    problems: list[str] = []
    with chromium() as browser:
        context = browser.new_context()  # type: ignore[attr-defined]
        admin = context.new_page()
        admin.set_default_timeout(UI_TIMEOUT_MS)
        admin.on(
            "console",
            lambda m: (
                problems.append(m.text) if "Content Security Policy" in m.text else None
            ),
        )
        admin.on("dialog", lambda d: problems.append(f"dialog: {d.message}"))

        # Log in.
        admin.goto(f"{base}/admin")
        assert admin.url == f"{base}/admin/login"
        assert login_status(admin, base, PASSWORD) == 303
        assert admin.url == f"{base}/admin"
        connections = admin.locator('[data-counter="connections"]')
        expect(connections).to_have_text("0")

        # A client connects: the live counter follows without a reload.
        client = browser.new_page()  # type: ignore[attr-defined]
        client.set_default_timeout(UI_TIMEOUT_MS)
        welcome = client.evaluate(
            OPEN_SOCKET, [f"ws://127.0.0.1:{router.port}/websocket", token]
        )
        assert welcome["userId"] == HOSTILE
        expect(connections).to_have_text("1")

        # It appears in its org, with its role and connections, as text.
        admin.reload()
        admin.click(f"#orgs a:text-is('{ORG}')")
        row = admin.locator("tr.user")
        expect(row).to_have_count(1)
        expect(row.locator(".user-id")).to_have_text(HOSTILE)
        expect(row.locator("td").nth(1)).to_have_text("member")
        expect(row.locator("td").nth(2)).to_have_text("1")
        assert admin.evaluate("window.pwned") is None

        # A test notification reaches it.
        row.locator("input[name=message]").fill("hello from the browser test")
        row.locator("button:text-is('Send test')").click()
        expect(admin.locator(".flash")).to_have_text(
            "Test notification delivered to 1 connection(s)."
        )
        client.wait_for_function(
            """() => window.received.some((f) => f.type === "admin_test"
                && f.payload.message === "hello from the browser test")"""
        )
        expect(admin.locator("#history")).to_contain_text("admin_test")

        # Disconnect closes it with 4004, and the counter goes back to 0.
        admin.locator("tr.user button:text-is('Disconnect')").click()
        expect(admin.locator(".flash")).to_have_text(
            "Disconnect delivered to 1 connection(s)."
        )
        client.wait_for_function("() => window.closedWith !== null")
        assert client.evaluate("window.closedWith.code") == 4004
        expect(admin.locator('[data-counter="connections"]')).to_have_text("0")

        # Log out: the page asks for the password again.
        admin.click("button:text-is('Log out')")
        admin.wait_for_url(f"{base}/admin/login")
        admin.goto(f"{base}/admin")
        assert admin.url == f"{base}/admin/login"

        # Wrong passwords are refused, then throttled (even the right one).
        for _ in range(5):
            assert login_status(admin, base, "not the password") == 401
            expect(admin.locator(".error")).to_have_text("Wrong password.")
        assert login_status(admin, base, PASSWORD) == 429
        expect(admin.locator(".error")).to_contain_text("Too many attempts")
        assert admin.url == f"{base}/admin/login"
        context.close()
    assert problems == []
    log = router.output()
    assert PASSWORD not in log
    assert "not the password" not in log
    assert "wrong password from 127.0.0.1" in log
