"""Recovery over real sockets: exact replay under load, and SQLite across a daemon restart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import pytest_twisted
import treq
from autobahn.twisted.websocket import WebSocketClientFactory
from twisted.internet import defer, endpoints, reactor, task

from tests.daemon import free_port, twistd_command
from tests.loopback import (
    SERVICE_ID,
    SERVICE_SECRET,
    FullClient,
    Router,
    both_deployments,
)

ORG = "org-recovery"

pytestmark = pytest.mark.e2e


def numbered(client: FullClient) -> list[tuple[int, str]]:
    """``(seq, roomId)`` of every numbered frame a client received, in order."""
    frames = [json.loads(raw) for raw in client.raw]
    return [(f["seq"], f["payload"]["roomId"]) for f in frames if "seq" in f]


def since_of(client: FullClient) -> str:
    """The ``since`` value for everything a client has seen."""
    seqs = [seq for seq, _ in numbered(client)]
    welcome = client.welcome["payload"]
    return f"{welcome['epoch']}.{max([welcome['seq'], *seqs])}"


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``predicate`` every 10 ms until it holds."""
    deadline = reactor.seconds() + timeout
    while not predicate():
        assert reactor.seconds() < deadline, "timed out"
        await task.deferLater(reactor, 0.01, lambda: None)


def note(name: str, to: list[str] | None = None, org: str = ORG) -> dict[str, Any]:
    """A room_updated notification named by its roomId: broadcast, or direct ``to``."""
    body: dict[str, Any] = {
        "orgId": org,
        "routing": "direct" if to else "broadcast",
        "type": "room_updated",
        "payload": {"roomId": name, "name": "-"},
    }
    if to:
        body["targets"] = to
    return body


@pytest_twisted.ensureDeferred
async def test_exact_replay_after_a_disconnect_under_concurrent_notifications(
    router: Router, token
):
    """A client dropping mid-stream and reconnecting with since gets every message it may see, once, in order."""
    observer = await router.connect(token("olga", ORG), full=True)
    first = await router.connect(token("alice", ORG), full=True)
    sent: dict[str, str] = {}

    async def pump(lane: int, count: int) -> None:
        for i in range(count):
            name = f"m{lane}-{i}"
            kind = ("all", "all", "alice", "olga")[i % 4]
            sent[name] = kind
            body = note(name, None if kind == "all" else [kind])
            status, answer = await router.notify(body)
            assert status == 200, answer

    pumps = defer.gatherResults(
        [defer.ensureDeferred(pump(lane, 40)) for lane in range(4)]
    )
    await until(lambda: len(numbered(first)) >= 10)
    first.sendClose()
    await first.wait_closed()
    seen_by_observer = len(numbered(observer))
    await until(lambda: len(numbered(observer)) >= seen_by_observer + 5)
    second = await router.connect(
        token("alice", ORG), query=f"?since={since_of(first)}", full=True
    )
    await pumps
    status, _ = await router.notify(note("end"))
    assert status == 200
    await until(lambda: "end" in {n for _, n in numbered(second)})
    await until(lambda: "end" in {n for _, n in numbered(observer)})

    welcome = second.welcome["payload"]
    assert welcome["recovered"] is True
    assert welcome["epoch"] == first.welcome["payload"]["epoch"]
    alice = numbered(first) + numbered(second)
    seqs = [seq for seq, _ in alice]
    assert seqs == sorted(set(seqs)), "a gap in order, or a duplicate"
    expected = {n for n, kind in sent.items() if kind in ("all", "alice")} | {"end"}
    assert [n for _, n in alice if n != "end"] != []
    assert {n for _, n in alice} == expected
    assert len(alice) == len(expected)
    replayed = [seq for seq, n in numbered(second) if seq <= welcome["seq"]]
    live = [n for seq, n in numbered(second) if seq > welcome["seq"] and n != "end"]
    assert replayed, "nothing arrived while alice was away"
    assert live, "the notifications were over before alice came back"
    # Broadcasts carry the same numbers, in the same order, for everyone.
    observer_seq = {n: seq for seq, n in numbered(observer)}
    assert all(observer_seq[n] == seq for seq, n in alice if sent.get(n) != "alice")
    assert not {n for _, n in numbered(observer)} & {
        n for n, kind in sent.items() if kind == "alice"
    }


@pytest_twisted.ensureDeferred
async def test_reconnect_from_another_epoch_is_not_recovered(router: Router, token):
    """A since from another epoch is answered with recovered false, then the live stream."""
    await router.connect(token("olga", ORG), full=True)
    await router.notify(note("before"))
    client = await router.connect(
        token("alice", ORG), query="?since=0123456789abcdef.1", full=True
    )
    assert client.welcome["payload"]["recovered"] is False
    assert (await client.next())["type"] == "presence"
    await router.notify(note("after"))
    frame = await client.next()
    assert (frame["payload"]["roomId"], frame["seq"]) == ("after", 2)


@pytest.mark.parametrize(
    "query",
    [
        "?since=",
        "?since",
        "?since=&positions=batched",
        "?positions=&since=",
        "?since=x",
    ],
)
@pytest_twisted.ensureDeferred
async def test_empty_or_malformed_since_is_not_recovered(router: Router, token, query):
    """A ``since`` parameter that is present but empty or malformed still counts as
    asked: ``recovered: false``, then the live stream."""
    await router.connect(token("olga", ORG), full=True)
    await router.notify(note("before"))
    client = await router.connect(token("alice", ORG), query=query, full=True)
    assert client.welcome["payload"]["recovered"] is False
    assert (await client.next())["type"] == "presence"
    await router.notify(note("after"))
    frame = await client.next()
    assert (frame["payload"]["roomId"], frame["seq"]) == ("after", 2)


@pytest_twisted.ensureDeferred
async def test_query_without_since_does_not_ask(router: Router, token):
    """Without ``since`` (or with another parameter only) ``connected`` has no
    ``recovered``."""
    for query in ("", "?", "?positions=", "?sincere=1"):
        client = await router.connect(token("alice", ORG), query=query, full=True)
        assert "recovered" not in client.welcome["payload"]


@pytest_twisted.ensureDeferred
async def test_presence_endpoint_lists_online_users(router: Router, token):
    """GET /internal/presence answers the backend with roles, tab counts and last positions."""
    alice = await router.connect(token("alice", ORG, "admin"))
    await router.connect(token("alice", ORG, "admin"))
    await router.connect(token("gus", ORG, "pending_guest"))
    bob = await router.connect(token("bob", ORG))
    bob.send_json({"type": "position_update", "payload": {"x": 1.5, "y": -2}})
    await alice.next_of("position_update")
    result = await router.http(
        "GET",
        f"/internal/presence?orgId={ORG}",
        headers={
            "CF-Access-Client-Id": SERVICE_ID,
            "CF-Access-Client-Secret": SERVICE_SECRET,
        },
    )
    assert result.code == 200
    assert result.headers.getRawHeaders("content-type") == ["application/json"]
    assert result.json() == {
        "ok": True,
        "orgId": ORG,
        "users": [
            {"userId": "alice", "role": "admin", "connections": 2, "position": None},
            {
                "userId": "bob",
                "role": "member",
                "connections": 1,
                "position": {"x": 1.5, "y": -2},
            },
        ],
    }


@pytest_twisted.ensureDeferred
async def test_presence_endpoint_refusals(router: Router):
    """The presence endpoint wants GET, the service token and an orgId, and creates no room."""
    auth = {
        "CF-Access-Client-Id": SERVICE_ID,
        "CF-Access-Client-Secret": SERVICE_SECRET,
    }
    bad = {"CF-Access-Client-Id": SERVICE_ID, "CF-Access-Client-Secret": "nope"}
    unauthorized = await router.http(
        "GET", f"/internal/presence?orgId={ORG}", headers=bad
    )
    assert unauthorized.code == 401
    assert unauthorized.json()["error"] == "unauthorized"
    missing = await router.http("GET", "/internal/presence", headers=auth)
    assert missing.code == 400
    assert missing.json()["errors"][0]["path"] == "orgId"
    empty = await router.http("GET", "/internal/presence?orgId=", headers=auth)
    assert empty.code == 400
    nobody = await router.http("GET", "/internal/presence?orgId=org-none", headers=auth)
    assert nobody.json() == {"ok": True, "orgId": "org-none", "users": []}
    assert router.registry.room("org-none") is None
    post = await router.http("POST", f"/internal/presence?orgId={ORG}", headers=auth)
    assert post.code == 405
    assert post.headers.getRawHeaders("allow") == ["GET, HEAD"]


async def counts_of(router: Router) -> dict[str, object]:
    """/healthz without what only a cluster adds (``node``, ``backplane``)."""
    health = await router.health()
    health.pop("node", None)
    health.pop("backplane", None)
    return health


@pytest_twisted.ensureDeferred
async def test_healthz_counts_history_only_rooms(router: Router, token):
    """/healthz tells rooms with connections from rooms kept only for their history."""
    client = await router.connect(token("alice", ORG))
    await router.connect(token("bob", "org-other"))
    assert await counts_of(router) == {
        "ok": True,
        "connections": 2,
        "rooms": 2,
        "historyOnlyRooms": 0,
    }
    client.sendClose()
    await client.wait_closed()
    await router.until(lambda: router.registry.connection_count == 1)
    assert await counts_of(router) == {
        "ok": True,
        "connections": 1,
        "rooms": 1,
        "historyOnlyRooms": 1,
    }


# ---------------------------------------------------------------- a real daemon


class Daemon:
    """``twistd -n officerouter`` as installed, in a subprocess."""

    def __init__(self, workdir: Path, env_file: Path, history: str) -> None:
        self.workdir = workdir
        self.env_file = env_file
        self.history = history
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.runs = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Start it and wait until /healthz answers."""
        self.runs += 1
        log = (self.workdir / f"twistd-{self.runs}.log").open("wb")
        environ = {k: v for k, v in os.environ.items() if not k.startswith("CF_")}
        self.process = subprocess.Popen(
            twistd_command(
                "--port",
                f"tcp:{self.port}:interface=127.0.0.1",
                "--env-file",
                str(self.env_file),
                "--history",
                self.history,
            ),
            # twistd puts the cwd on sys.path: run away from the checkout so the
            # installed package is what is tested.
            cwd=self.workdir,
            env=environ,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = reactor.seconds() + 30
        while True:
            assert self.process.poll() is None, self.output()
            try:
                response = await treq.get(self.base + "/healthz", persistent=False)
                await response.content()
                if response.code == 200:
                    return
            except Exception:  # not listening yet
                pass
            assert reactor.seconds() < deadline, self.output()
            await task.deferLater(reactor, 0.1, lambda: None)

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signal it and wait for it to exit; returns the exit status."""
        assert self.process is not None
        self.process.send_signal(sig)
        await until(
            lambda: self.process is not None and self.process.poll() is not None, 30
        )
        return self.process.returncode

    def output(self) -> str:
        """Everything the daemon logged in its latest run."""
        return (self.workdir / f"twistd-{self.runs}.log").read_text(errors="replace")

    async def health(self) -> dict[str, Any]:
        response = await treq.get(self.base + "/healthz", persistent=False)
        body: dict[str, Any] = json.loads(await response.content())
        return body

    async def notify(self, body: dict[str, Any]) -> dict[str, Any]:
        response = await treq.post(
            self.base + "/internal/notify",
            data=json.dumps(body).encode(),
            headers={
                "Content-Type": "application/json",
                "CF-Access-Client-Id": SERVICE_ID,
                "CF-Access-Client-Secret": SERVICE_SECRET,
            },
            persistent=False,
        )
        answer: dict[str, Any] = json.loads(await response.content())
        assert response.code == 200, answer
        return answer

    async def connect(self, jwt: str, since: str | None = None) -> FullClient:
        """Open a WebSocket; returns it once ``connected`` arrived."""
        url = f"ws://127.0.0.1:{self.port}/websocket"
        if since is not None:
            url += f"?since={since}"
        factory = WebSocketClientFactory(url, protocols=[jwt])
        factory.protocol = FullClient
        factory.opened = defer.Deferred()
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", self.port)
        await endpoint.connect(factory)
        client: FullClient = await factory.opened
        client.welcome = await client.next(10)
        assert client.welcome["type"] == "connected"
        return client


@pytest.fixture
def daemon(tmp_path: Path, rsa_keys: tuple[str, str]):
    """A daemon (not started) with an env file and an SQLite history file."""
    public_pem = rsa_keys[1].strip().replace("\n", "\\n")
    env_file = tmp_path / "router.vars"
    env_file.write_text(
        f'CONN_JWT_PUBLIC_KEY="{public_pem}"\n'
        f'CF_ACCESS_CLIENT_ID="{SERVICE_ID}"\n'
        f'CF_ACCESS_CLIENT_SECRET="{SERVICE_SECRET}"\n'
    )
    run = Daemon(tmp_path, env_file, f"sqlite:{tmp_path / 'history.sqlite'}")
    yield run
    if run.process is not None and run.process.poll() is None:
        run.process.kill()
        run.process.wait()


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_sqlite_history_survives_a_restart_of_the_daemon(daemon: Daemon, token):
    """Clients reconnecting after a clean restart recover without a gap; after a crash they are told to refetch."""
    await daemon.start()
    alice = await daemon.connect(token("alice", ORG))
    bob = await daemon.connect(token("bob", ORG))
    await daemon.notify(note("m1"))
    await until(lambda: len(numbered(alice)) == 1)
    alice.sendClose()
    await alice.wait_closed()
    await daemon.notify(note("m2"))
    await daemon.notify(note("for-alice", ["alice"]))
    await until(lambda: len(numbered(bob)) == 2)
    assert await daemon.stop() == 0, daemon.output()
    assert bob.close_code == 1001

    await daemon.start()
    assert await daemon.health() == {
        "ok": True,
        "connections": 0,
        "rooms": 0,
        "historyOnlyRooms": 1,
    }
    assert await daemon.notify(note("m3")) == {"ok": True, "delivered": 0, "seq": 4}
    alice_back = await daemon.connect(token("alice", ORG), since=since_of(alice))
    bob_back = await daemon.connect(token("bob", ORG), since=since_of(bob))
    await daemon.notify(note("m4"))
    await until(lambda: "m4" in {n for _, n in numbered(alice_back)})
    await until(lambda: "m4" in {n for _, n in numbered(bob_back)})
    epoch = alice.welcome["payload"]["epoch"]
    assert alice_back.welcome["payload"]["epoch"] == epoch
    assert alice_back.welcome["payload"]["recovered"] is True
    assert numbered(alice_back) == [(2, "m2"), (3, "for-alice"), (4, "m3"), (5, "m4")]
    assert bob_back.welcome["payload"]["recovered"] is True
    assert numbered(bob_back) == [(4, "m3"), (5, "m4")]

    # A crash: the last batch may be lost, so nobody is promised a full replay.
    assert await daemon.stop(signal.SIGKILL) == -signal.SIGKILL
    await daemon.start()
    assert "not closed cleanly" in daemon.output()
    after_crash = await daemon.connect(token("alice", ORG), since=since_of(alice_back))
    assert after_crash.welcome["payload"]["recovered"] is False
    assert after_crash.welcome["payload"]["epoch"] != epoch
    assert await daemon.stop() == 0, daemon.output()


deployment = both_deployments
