"""Real-browser tests: headless Chromium from the distribution, driven by Playwright.

Playwright's own browser downloads are never used (no ``playwright install``):
:func:`chromium` launches the system's ``/usr/bin/chromium`` (Debian's
``chromium`` package; ``scripts/test`` installs it when missing).  Playwright's
sync API blocks its thread, so browser tests are plain synchronous tests and
the router runs as a real ``twistd`` in a subprocess (:class:`SyncDaemon`),
never on the test's reactor.
"""

from __future__ import annotations

import functools
import http.server
import os
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.daemon import free_port, twistd_command

#: The distribution's Chromium (Debian and Ubuntu: the ``chromium`` package).
CHROMIUM = os.environ.get("OFFICEROUTER_CHROMIUM", "/usr/bin/chromium")

#: Headless, no sandbox (containers run as root), and nothing that talks to the
#: network on its own: tests reach 127.0.0.1 only.
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)

#: The browser client, as a page imports it (tests/e2e/test_browser_client.py).
CLIENT_JS = Path(__file__).resolve().parents[1] / "clients" / "js"

#: Seconds a page may take to show what a test waits for.
UI_TIMEOUT_MS = 15_000


@contextmanager
def chromium() -> Iterator[object]:
    """A headless system Chromium under Playwright, closed afterwards.

    Yields a ``playwright.sync_api.Browser``.
    """
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"{CHROMIUM} is missing: apt-get install chromium (scripts/test does)"
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=list(CHROMIUM_ARGS), headless=True
        )
        try:
            yield browser
        finally:
            browser.close()


class SyncDaemon:
    """``twistd -n officerouter`` as installed, in a subprocess, for synchronous
    tests: started and stopped without a reactor.

    :param workdir: its working directory (away from the checkout, so that the
        installed package is what runs) and where its log goes.
    :param options: the daemon's options besides ``--port``.
    """

    def __init__(self, workdir: Path, *options: str) -> None:
        self.workdir = workdir
        self.options = options
        self.port = free_port()
        self.log = workdir / "twistd.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, environ: dict[str, str]) -> None:
        """Start it and wait until ``/healthz`` answers 200."""
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                twistd_command(
                    "--port", f"tcp:{self.port}:interface=127.0.0.1", *self.options
                ),
                cwd=self.workdir,
                env=environ,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while True:
            assert self.process.poll() is None, self.output()
            try:
                with urllib.request.urlopen(self.base + "/healthz", timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:  # not listening yet
                pass
            assert time.monotonic() < deadline, self.output()
            time.sleep(0.1)

    def stop(self) -> int:
        """SIGTERM, then wait for it to exit; returns its status."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def output(self) -> str:
        """Everything it logged."""
        return self.log.read_text(errors="replace")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files without logging each request to stderr."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def static_server(directory: Path) -> Iterator[str]:
    """Serve ``directory`` (and nothing else) on a free loopback port, from a
    thread; yields its base URL.  A page served from it imports ES modules as
    a real site would (``file://`` pages cannot)."""
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
