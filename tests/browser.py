"""Headless Chromium for the browser tests, and a static HTTP server for their pages.

The distribution's ``chromium`` (``/usr/bin/chromium``, installed by
``./scripts/test``) driven by Playwright's sync API; Playwright's own browser
downloads are never used.  The sync API blocks its thread, and pytest-twisted
runs the reactor in the test's thread, so browser tests are plain (not
``pytest_twisted``) tests that run the daemon as a subprocess.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, sync_playwright

#: The distribution's Chromium.
CHROMIUM = "/usr/bin/chromium"

#: Headless, sandbox-free (the tests run as root), and nothing reaching out to
#: the internet on its own.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

#: The browser client, as a page imports it.
CLIENT_JS = Path(__file__).resolve().parents[1] / "clients" / "js"


@contextlib.contextmanager
def chromium() -> Iterator[Browser]:
    """A headless Chromium, closed afterwards."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            browser.close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files without logging each request to stderr."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def static_server(directory: Path) -> Iterator[str]:
    """Serve ``directory`` (and nothing else) on a free loopback port; yields its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
