"""The browser client (clients/js) in headless Chromium against the real daemon.

The daemon is the installed ``twistd -n officerouter`` in a subprocess; the page
(tests/e2e/pages/client.html) imports the module as it is, from a static server
on loopback, and gets real tokens from the test through ``pyToken``.  These are
plain tests, not ``pytest_twisted`` ones: Playwright's sync API blocks the
thread that pytest-twisted runs the reactor in.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from tests.browser import CLIENT_JS, chromium, static_server
from tests.daemon import (
    clean_environ,
    free_port,
    signed,
    twistd_command,
    write_env_file,
)
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ORG = "org-browser"
PAGE = Path(__file__).parent / "pages" / "client.html"

#: Shorter backoff windows than the defaults (1 s doubling to 30 s), so that a
#: restart costs the test seconds, not half a minute; the policy is the same.
FAST = {"backoffBase": 250, "backoffMax": 2000}

#: Seconds to wait for something the browser should see.
WAIT = 20.0


class Daemon:
    """The installed daemon on a fixed loopback port, started and stopped at will."""

    def __init__(
        self,
        workdir: Path,
        env_file: Path,
        values: dict[str, str],
        *options: str,
        environ: dict[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.env_file = env_file
        self.values = values
        self.options = options
        self.environ = environ or clean_environ()
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.runs = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def websocket(self) -> str:
        return f"ws://127.0.0.1:{self.port}/websocket"

    def start(self) -> None:
        """Start it and wait until /healthz answers."""
        self.runs += 1
        log = (self.workdir / f"twistd-{self.port}-{self.runs}.log").open("wb")
        self.process = subprocess.Popen(
            twistd_command(
                "--port",
                f"tcp:{self.port}:interface=127.0.0.1",
                "--env-file",
                str(self.env_file),
                *self.options,
            ),
            cwd=self.workdir,
            env=self.environ,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + 30
        while True:
            assert self.process.poll() is None, self.output()
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(self.base + "/healthz", timeout=2) as r,
            ):
                if r.status == 200:
                    return
            assert time.monotonic() < deadline, self.output()
            time.sleep(0.05)  # polling for the daemon to listen, not an assertion

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signal it and wait for it to end; returns its exit status."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(30)

    def output(self) -> str:
        return (self.workdir / f"twistd-{self.port}-{self.runs}.log").read_text(
            errors="replace"
        )

    def _request(self, path: str, body: Any = None) -> Any:
        request = urllib.request.Request(
            self.base + path,
            data=None if body is None else json.dumps(body).encode(),
            headers={
                "Content-Type": "application/json",
                "CF-Access-Client-Id": self.values["CF_ACCESS_CLIENT_ID"],
                "CF-Access-Client-Secret": self.values["CF_ACCESS_CLIENT_SECRET"],
            },
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
            return json.loads(response.read())

    def notify(self, body: dict[str, Any]) -> dict[str, Any]:
        answer: dict[str, Any] = self._request("/internal/notify", body)
        return answer

    def presence(self, org: str) -> list[dict[str, Any]]:
        users: list[dict[str, Any]] = self._request(f"/internal/presence?orgId={org}")[
            "users"
        ]
        return users


def note(name: str) -> dict[str, Any]:
    return {
        "orgId": ORG,
        "routing": "broadcast",
        "type": "room_updated",
        "payload": {"roomId": "room-1", "name": name},
    }


@contextlib.contextmanager
def daemons(*runs: Daemon) -> Iterator[None]:
    """Stop every daemon afterwards, whatever happened."""
    try:
        yield
    finally:
        for run in runs:
            if run.process is not None and run.process.poll() is None:
                run.process.kill()
                run.process.wait(10)


@pytest.fixture
def env(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """An env file made by officerouter itself (keys, service token) and its values."""
    return write_env_file(tmp_path)


@pytest.fixture
def minted() -> dict[str, Callable[[str], str]]:
    """Token makers by user name, ``(reason) -> token``, for users that need
    other tokens than the page's default (ten minutes, role member)."""
    return {}


@pytest.fixture
def page(
    tmp_path: Path,
    env: tuple[Path, dict[str, str]],
    minted: dict[str, Callable[[str], str]],
) -> Iterator[Page]:
    """The test page in headless Chromium; ``pyToken(name, reason)`` signs a token
    for the user called ``name``: a default one, or from ``minted``."""
    _, values = env

    def token(name: str, reason: str) -> str:
        if name in minted:
            return minted[name](reason)
        return signed(values, name, ORG, "member", 600)

    site = tmp_path / "site"
    (site / "clients").mkdir(parents=True)
    (site / "clients" / "js").symlink_to(CLIENT_JS)
    (site / "index.html").symlink_to(PAGE)
    with static_server(site) as base, chromium() as browser:
        context = browser.new_context()
        page = context.new_page()
        page.expose_function("pyToken", token)
        page.goto(base + "/index.html")
        page.wait_for_function("window.harnessReady === true")
        yield page
        page.evaluate("Object.values(window.clients).forEach((c) => c.close())")
        context.close()


def start(page: Page, name: str, **options: Any) -> None:
    page.evaluate(
        "([name, options]) => window.startClient(name, options)", [name, options]
    )


def wait(page: Page, expression: str, arg: Any = None) -> Any:
    """Wait until ``expression`` (of ``logs`` and ``arg``) is truthy in the page;
    on a timeout, fail with what the page's clients recorded."""
    try:
        return page.wait_for_function(
            f"(arg) => {{ const logs = window.logs; return ({expression}); }}",
            arg=arg,
            timeout=WAIT * 1000,
        ).json_value()
    except PlaywrightTimeoutError:
        logs = page.evaluate("window.logs")
        raise AssertionError(f"never true: {expression}\n{json.dumps(logs)}") from None


def log(page: Page, name: str) -> dict[str, Any]:
    logs: dict[str, Any] = page.evaluate("(name) => window.logs[name]", name)
    return logs


def names(entry: dict[str, Any]) -> list[str]:
    return [
        m["payload"]["name"] for m in entry["messages"] if m["type"] == "room_updated"
    ]


def seqs(entry: dict[str, Any]) -> list[int]:
    return [m["seq"] for m in entry["messages"] if "seq" in m]


def opens(entry: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in entry["states"] if s["state"] == "open"]


@pytest.mark.parametrize("deployment", ["one-process", "redis"])
def test_connects_receives_and_keeps_the_servers_presence(
    tmp_path: Path, env, page: Page, deployment: str, request: pytest.FixtureRequest
):
    """The client connects, emits backend messages in order, and its presence map
    is what GET /internal/presence says (without its own user), positions included."""
    environ = clean_environ()
    if deployment == "redis":
        redis: RedisServer = request.getfixturevalue("redis_server")
        environ["REDIS_URL"] = redis.url
    daemon = Daemon(tmp_path, *env, environ=environ)
    with daemons(daemon):
        daemon.start()
        start(page, "alice", url=daemon.websocket)
        start(page, "bob", url=daemon.websocket)
        wait(page, "logs.alice.presence?.bob && logs.bob.presence?.alice")
        page.evaluate("window.clients.bob.sendPosition({x: 3, y: 4, roomId: 'hall'})")
        # Positions update the map without a presence event: read the map.
        wait(page, "window.clients.alice.presence.get('bob').position?.x === 3")
        for name in ("one", "two", "three"):
            daemon.notify(note(name))
        wait(page, "logs.alice.messages.length === 3 && logs.bob.messages.length === 3")

        alice = log(page, "alice")
        mapped = page.evaluate("Object.fromEntries(window.clients.alice.presence)")
        server = {u["userId"]: u for u in daemon.presence(ORG)}
        assert set(server) == {"alice", "bob"}
        assert mapped == {"bob": server["bob"]}
        assert server["bob"]["position"] == {"x": 3, "y": 4, "roomId": "hall"}
        assert names(alice) == ["one", "two", "three"]
        assert seqs(alice) == sorted(set(seqs(alice)))
        assert alice["positions"][-1]["userId"] == "bob"
        assert [s["state"] for s in alice["states"]] == ["connecting", "open"]
        assert alice["errors"] == []
        assert alice["resyncs"] == 0


@pytest.mark.parametrize("deployment", ["one-process", "redis"])
def test_presence_diffs_fold_into_the_servers_presence(
    tmp_path: Path, env, page: Page, deployment: str, request: pytest.FixtureRequest
):
    """With ``presence: "diff"`` the client folds presence_state and presence_diff
    frames into the map that GET /internal/presence describes (users, roles and
    positions, without its own user), after joins, a position and a leave."""
    environ = clean_environ()
    if deployment == "redis":
        redis: RedisServer = request.getfixturevalue("redis_server")
        environ["REDIS_URL"] = redis.url
    daemon = Daemon(tmp_path, *env, "--presence-grace", "0.5", environ=environ)
    with daemons(daemon):
        daemon.start()
        start(page, "alice", url=daemon.websocket, presence="diff")
        start(page, "bob", url=daemon.websocket)
        start(page, "carol", url=daemon.websocket, presence="diff")
        wait(page, "logs.alice.presence?.bob && logs.alice.presence?.carol")
        page.evaluate("window.clients.bob.sendPosition({x: 3, y: 4, roomId: 'hall'})")
        wait(page, "window.clients.alice.presence.get('bob').position?.x === 3")
        # Dave's position is sent as soon as he is connected: it may reach alice
        # before the diff that lists him, and is kept all the same.
        start(page, "dave", url=daemon.websocket)
        page.evaluate("window.clients.dave.sendPosition({x: 7, y: 8})")
        wait(page, "window.clients.alice.presence.get('dave')?.position?.x === 7")
        page.evaluate("window.clients.carol.close()")
        wait(page, "logs.alice.leaves.includes('carol')")

        alice = log(page, "alice")
        mapped = page.evaluate("Object.fromEntries(window.clients.alice.presence)")
        server = {u["userId"]: u for u in daemon.presence(ORG)}
        assert set(server) == {"alice", "bob", "dave"}
        assert mapped == {
            name: {**server[name], "connections": None} for name in ("bob", "dave")
        }
        assert server["dave"]["position"] == {"x": 7, "y": 8}
        assert sorted(alice["joins"]) == ["bob", "carol", "dave"]
        assert alice["leaves"] == ["carol"]
        assert alice["presence"] == mapped
        # The diff contract, not the events one.
        assert "presence_state" in alice["frameTypes"]
        assert "presence_diff" in alice["frameTypes"]
        assert not {"presence", "user_joined", "user_left"} & set(alice["frameTypes"])
        assert alice["errors"] == []


def test_restart_with_sqlite_history_misses_nothing_and_repeats_nothing(
    tmp_path: Path, env, page: Page
):
    """SIGTERM, then the daemon again on the same port with SQLite history: the
    client comes back by itself and emits every message once, in order."""
    daemon = Daemon(tmp_path, *env, "--history", f"sqlite:{tmp_path / 'history.db'}")
    with daemons(daemon):
        daemon.start()
        start(page, "alice", url=daemon.websocket, **FAST)
        start(page, "bob", url=daemon.websocket, **FAST)
        wait(page, "logs.alice.presence?.bob")
        daemon.notify(note("before"))
        wait(page, "logs.alice.messages.length === 1")

        assert daemon.stop() == 0, daemon.output()
        wait(page, "logs.alice.states.some((s) => s.code === 1001)")
        daemon.start()
        # Sent before the clients are back: recovered from the history.
        daemon.notify(note("while away"))
        wait(
            page,
            "['alice', 'bob'].every((n) => logs[n].states.filter((s) => s.state === 'open').length === 2)",
        )
        daemon.notify(note("after"))
        wait(page, "logs.alice.messages.length >= 3 && logs.bob.messages.length >= 3")

        for name in ("alice", "bob"):
            entry = log(page, name)
            assert names(entry) == ["before", "while away", "after"]
            assert seqs(entry) == [1, 2, 3]
            assert [s["recovered"] for s in opens(entry)] == [None, True]
            assert entry["resyncs"] == 0
            assert entry["maxOpenSockets"] == 1
            # Bob stayed online for alice: no leave, no second join.
            assert entry["leaves"] == []
        assert log(page, "alice")["joins"] == ["bob"]


def test_restart_without_history_emits_resync_once(tmp_path: Path, env, page: Page):
    """After a restart with the memory history the stream is new: the client emits
    resync once, then the new stream's messages."""
    daemon = Daemon(tmp_path, *env)
    with daemons(daemon):
        daemon.start()
        start(page, "alice", url=daemon.websocket, **FAST)
        wait(page, "logs.alice.states.some((s) => s.state === 'open')")
        daemon.notify(note("old stream"))
        wait(page, "logs.alice.messages.length === 1")
        assert daemon.stop() == 0, daemon.output()
        daemon.start()
        wait(page, "logs.alice.resyncs === 1")
        daemon.notify(note("new stream"))
        wait(page, "logs.alice.messages.length === 2")
        alice = log(page, "alice")
        assert names(alice) == ["old stream", "new stream"]
        assert [s["recovered"] for s in opens(alice)] == [None, False]
        assert alice["resyncs"] == 1


def test_the_network_going_and_coming_back_opens_no_second_connection(
    tmp_path: Path, env, page: Page
):
    """Offline then online again (Chromium's network emulation): the client keeps
    its one connection and gets what was sent meanwhile, once."""
    daemon = Daemon(tmp_path, *env)
    with daemons(daemon):
        daemon.start()
        start(page, "alice", url=daemon.websocket, **FAST)
        wait(page, "logs.alice.states.some((s) => s.state === 'open')")
        page.context.set_offline(True)
        page.wait_for_function("window.network.includes('offline')")
        daemon.notify(note("while offline"))
        page.context.set_offline(False)
        page.wait_for_function("window.network.includes('online')")
        wait(page, "logs.alice.messages.length === 1")
        daemon.notify(note("back"))
        wait(page, "logs.alice.messages.length === 2")
        alice = log(page, "alice")
        assert names(alice) == ["while offline", "back"]
        assert [s["state"] for s in alice["states"]] == ["connecting", "open"]
        assert alice["sockets"] == 1


def test_a_ban_closes_the_client_for_good(tmp_path: Path, env, page: Page):
    """After user_banned the client is closed with 4003 and never asks for a token again."""
    daemon = Daemon(tmp_path, *env)
    with daemons(daemon):
        daemon.start()
        start(page, "mallory", url=daemon.websocket, **FAST)
        wait(page, "logs.mallory.states.some((s) => s.state === 'open')")
        daemon.notify(
            {
                "orgId": ORG,
                "routing": "direct",
                "type": "user_banned",
                "targets": ["mallory"],
                "payload": {"userId": "mallory", "reason": "spam"},
            }
        )
        wait(page, "logs.mallory.states.at(-1).state === 'closed'")
        # Another user connecting, and a message reaching them: the daemon
        # serves, and the banned client stays away.
        start(page, "watcher", url=daemon.websocket, **FAST)
        wait(page, "logs.watcher.presence !== null")
        daemon.notify(note("later"))
        wait(page, "logs.watcher.messages.length === 1")
        mallory = log(page, "mallory")
        closed = mallory["states"][-1]
        assert (closed["state"], closed["code"]) == ("closed", 4003)
        assert [m["type"] for m in mallory["messages"]] == ["user_banned"]
        assert [c["reason"] for c in mallory["calls"]] == ["connect"]
        assert mallory["sockets"] == 1
        assert page.evaluate("window.clients.mallory.state") == "closed"
        assert "mallory" not in {u["userId"] for u in daemon.presence(ORG)}


def test_a_flood_of_positions_is_coalesced_under_the_rate_limit(
    tmp_path: Path, env, page: Page
):
    """200 sendPosition calls in one second reach another client no faster than the
    server's rate allows, the last one last, and the sender is never rate limited."""
    daemon = Daemon(tmp_path, *env)
    with daemons(daemon):
        daemon.start()
        start(page, "alice", url=daemon.websocket)
        start(page, "bob", url=daemon.websocket)
        wait(page, "logs.alice.presence?.bob && logs.bob.presence?.alice")
        began = page.evaluate("performance.now()")
        page.evaluate("window.movePositions('alice', 200, 5)")
        wait(page, "logs.bob.positions.at(-1)?.x === 199")

        received = [p for p in log(page, "bob")["positions"] if p["userId"] == "alice"]
        seconds = (received[-1]["at"] - began) / 1000
        # The server allows --rate 20 a second after a burst of 40; the client
        # sends at most 10 a second, the first at once.
        assert len(received) <= 20 * seconds + 40
        assert len(received) <= 10 * seconds + 2
        xs = [p["x"] for p in received]
        assert xs == sorted(xs)
        assert xs[-1] == 199
        assert received[-1] == {**received[-1], "x": 199, "y": -199, "roomId": "hall"}
        assert log(page, "alice")["errors"] == []
        assert page.evaluate("window.clients.bob.presence.get('alice').position") == {
            "x": 199,
            "y": -199,
            "roomId": "hall",
        }


def test_killed_process_the_client_continues_on_the_other_with_no_gap(
    tmp_path: Path, env, page: Page, redis_server: RedisServer
):
    """Two daemons sharing Redis: the client's daemon is killed (SIGKILL) and the
    client, given both URLs, recovers on the other with nothing missed or repeated."""
    environ = {**clean_environ(), "REDIS_URL": redis_server.url}
    first = Daemon(tmp_path, *env, "--node-id", "first", environ=environ)
    second = Daemon(tmp_path, *env, "--node-id", "second", environ=environ)
    with daemons(first, second):
        first.start()
        second.start()
        start(page, "alice", url=[first.websocket, second.websocket], **FAST)
        start(page, "bob", url=second.websocket, **FAST)
        wait(page, "logs.alice.presence?.bob")
        second.notify(note("one"))
        wait(page, "logs.alice.messages.length === 1")

        os.kill(first.process.pid, signal.SIGKILL)  # type: ignore[union-attr]
        first.process.wait(10)  # type: ignore[union-attr]
        second.notify(note("two"))
        wait(page, "logs.alice.states.filter((s) => s.state === 'open').length === 2")
        second.notify(note("three"))
        wait(page, "logs.alice.messages.length >= 3 && logs.bob.messages.length >= 3")

        alice = log(page, "alice")
        assert names(alice) == ["one", "two", "three"]
        assert seqs(alice) == [1, 2, 3]
        assert [s["recovered"] for s in opens(alice)] == [None, True]
        assert alice["resyncs"] == 0
        assert alice["maxOpenSockets"] == 1
        assert alice["states"][2]["state"] == "reconnecting"
        assert alice["states"][2]["code"] == 1006
        assert names(log(page, "bob")) == ["one", "two", "three"]


def test_the_token_is_refreshed_before_it_expires(
    tmp_path: Path, env, page: Page, minted
):
    """With four-second tokens, the client refreshes each one over the open
    connection, which outlives them all without a 4001."""
    minted["alice"] = lambda reason: signed(env[1], "alice", ORG, "member", 4)
    daemon = Daemon(tmp_path, *env, "--token-expiry-grace", "1")
    with daemons(daemon):
        daemon.start()
        start(page, "alice", url=daemon.websocket)
        # The first token is gone (4 s, plus 1 s of grace) by the second refresh.
        wait(page, "logs.alice.tokens.length === 2")
        daemon.notify(note("still here"))
        wait(page, "logs.alice.messages.length === 1")
        alice = log(page, "alice")
        assert [s["state"] for s in alice["states"]] == ["connecting", "open"]
        assert alice["sockets"] == 1
        assert [t["reason"] for t in alice["calls"]] == [
            "connect",
            "refresh",
            "refresh",
        ]
        assert alice["errors"] == []


def test_a_refused_refresh_is_reported_and_a_fresh_token_reconnects(
    tmp_path: Path, env, page: Page, minted
):
    """A refresh the server refuses is reported; the 4001 at the old expiry is
    followed at once by a connection with a fresh token that misses nothing."""
    # Minted when asked: a short one to connect, then another user's to
    # refresh with, then good ones.
    plan = iter([("alice", 3), ("mallory", 600)])

    def alice(reason: str) -> str:
        user, ttl = next(plan, ("alice", 600))
        return signed(env[1], user, ORG, "member", ttl)

    minted["alice"] = alice
    daemon = Daemon(tmp_path, *env, "--token-expiry-grace", "1")
    with daemons(daemon):
        daemon.start()
        start(page, "alice", url=daemon.websocket)
        wait(page, "logs.alice.states.some((s) => s.state === 'open')")
        daemon.notify(note("one"))
        wait(page, "logs.alice.errors.length === 1")
        wait(page, "logs.alice.states.filter((s) => s.state === 'open').length === 2")
        daemon.notify(note("two"))
        wait(page, "logs.alice.messages.length === 2")
        alice = log(page, "alice")
        assert alice["errors"][0]["code"] == "refresh_refused"
        assert "another user or org" in alice["errors"][0]["message"]
        reconnecting = [s for s in alice["states"] if s["state"] == "reconnecting"]
        assert [(s["code"], s["delay"]) for s in reconnecting] == [(4001, 0)]
        assert [s["recovered"] for s in opens(alice)] == [None, True]
        assert names(alice) == ["one", "two"]
        assert [t["reason"] for t in alice["calls"]] == [
            "connect",
            "refresh",
            "connect",
        ]
