"""Limits, keepalive and backpressure over real loopback sockets."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import struct

import pytest

import pytest_twisted
from twisted.internet import reactor
from twisted.logger import capturedLogs, eventAsJSON, formatEvent
from twisted.web import http

from officerouter.tap import RouterService
from tests.loopback import RawClient, both_deployments, sleep, wait_until

pytestmark = pytest.mark.e2e


async def _response(sock: socket.socket) -> bytes:
    """Read from a non-blocking socket until a response head arrives or it closes."""
    got = b""
    closed = False

    def answered() -> bool:
        nonlocal got, closed
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return False
        closed = data == b""
        got += data
        return closed or b"\r\n\r\n" in got

    await wait_until(answered)
    return got


def _room_updated(org: str, i: int) -> dict:
    return {
        "orgId": org,
        "routing": "broadcast",
        "type": "room_updated",
        "payload": {"roomId": f"r{i}", "name": "x" * 150},
    }


@pytest.mark.parametrize(
    "router_options",
    [
        {
            "soft_buffer_bytes": 4096,
            "hard_buffer_bytes": 32768,
            "socket_send_buffer": 4096,
        }
    ],
)
@pytest_twisted.ensureDeferred
async def test_client_that_stops_reading_is_closed_1013_and_freed(router, token):
    """A client that never reads is closed with 1013 once its queue passes the hard limit."""
    slow = RawClient(router.port.getHost().port, token("slow", "org-a"))
    try:
        await slow.handshake()
        await wait_until(lambda: router.registry.connection_count == 1)
        fast = await router.connect(token("fast", "org-a"))
        for i in range(600):
            status, _ = await router.notify(_room_updated("org-a", i))
            assert status == 200
            if router.registry.user_connection_count("org-a", "slow") == 0:
                break
        # The slow client was dropped; the fast one got every message.
        await wait_until(
            lambda: router.registry.user_connection_count("org-a", "slow") == 0
        )
        for n in range(i + 1):
            frame = await fast.next()
            assert frame["payload"]["roomId"] == f"r{n}"
        await router.barrier(fast)
        # What the slow client eventually reads ends with a 1013 close frame.
        await wait_until(
            lambda: (slow.read_available() or True) and b"\x88" in slow.buffer[-64:]
        )
        frames = slow.frames()
        assert frames[-1][0] == 0x8
        assert struct.unpack("!H", frames[-1][1][:2])[0] == 1013
        # The metrics count the drop (officerouter_slow_client_drops_total).
        drops = router.factory.metrics.registry.get_sample_value(
            "officerouter_slow_client_drops_total"
        )
        assert drops == 1
    finally:
        slow.close()


@pytest.mark.parametrize(
    "router_options",
    [
        {
            "soft_buffer_bytes": 2048,
            "hard_buffer_bytes": 1 << 20,
            "socket_send_buffer": 4096,
            "rate": 1000,
            "burst": 1000,
        }
    ],
)
@pytest_twisted.ensureDeferred
async def test_slow_client_skips_old_positions_but_gets_every_backend_message(
    router, token
):
    """A client that reads late gets all backend messages and each sender's latest position."""
    slow = RawClient(router.port.getHost().port, token("slow", "org-a"), rcvbuf=2048)
    try:
        await slow.handshake()
        movers = [await router.connect(token(f"mover-{m}", "org-a")) for m in range(6)]
        for step in range(300):
            for m, mover in enumerate(movers):
                mover.send_json(
                    {"type": "position_update", "payload": {"x": step, "y": m}}
                )
            if step % 30 == 0:
                await router.notify(_room_updated("org-a", step))
            await sleep(0)
        await router.notify(_room_updated("org-a", 999))
        await sleep(0.3)
        # Now read everything the server kept for the slow client.
        texts = []
        for _ in range(200):
            slow.read_available()
            texts += [json.loads(p) for op, p in slow.frames() if op == 1]
            if any(t.get("payload", {}).get("roomId") == "r999" for t in texts):
                break
            await sleep(0.02)
        backend = [t["payload"]["roomId"] for t in texts if t["type"] == "room_updated"]
        assert backend == [f"r{s}" for s in range(0, 300, 30)] + ["r999"]
        positions = [t for t in texts if t["type"] == "position_update"]
        assert len(positions) < 6 * 300, "nothing was superseded"
        last = {}
        for p in positions:
            last[p["from"]] = p["payload"]["x"]
        assert last == {f"mover-{m}": 299 for m in range(6)}
        assert router.registry.user_connection_count("org-a", "slow") == 1
    finally:
        slow.close()


@pytest.mark.parametrize(
    "router_options", [{"ping_interval": 0.5, "ping_timeout": 1.0}]
)
@pytest_twisted.ensureDeferred
async def test_peer_that_does_not_answer_pings_is_dropped(router, token):
    """A peer that never answers a ping is dropped and leaves its room."""
    silent = RawClient(router.port.getHost().port, token("silent", "org-a"))
    try:
        await silent.handshake()
        await wait_until(lambda: router.registry.connection_count == 1)
        await wait_until(lambda: router.registry.connection_count == 0, timeout=5)
        assert router.registry.room_count == 0
    finally:
        silent.close()


@pytest.mark.parametrize(
    "router_options", [{"ping_interval": 0.5, "ping_timeout": 1.0}]
)
@pytest_twisted.ensureDeferred
async def test_peer_that_answers_pings_stays(router, token):
    """An Autobahn client answers pings and stays connected across many intervals."""
    client = await router.connect(token("alive", "org-a"))
    await sleep(2.5)
    assert router.registry.connection_count == 1
    _status, body = await router.notify(_room_updated("org-a", 1))
    assert body["delivered"] == 1
    assert (await client.next())["type"] == "room_updated"


@pytest.mark.parametrize(
    "router_options", [{"rate": 5, "burst": 5, "flood_seconds": 1}]
)
@pytest_twisted.ensureDeferred
async def test_rate_limit_warns_once_then_closes_a_flooder_1008(router, token):
    """Frames past the burst get one rate_limited error; a flood lasting past the limit closes 1008."""
    flooder = await router.connect(token("flooder", "org-a"))
    watcher = await router.connect(token("watcher", "org-a"))
    for i in range(20):
        flooder.send_json({"type": "position_update", "payload": {"x": i, "y": 0}})
    error = await flooder.next_of("error")
    assert error["payload"]["code"] == "rate_limited"
    relayed = 0
    while True:
        try:
            frame = await watcher.next(timeout=0.3)
        except Exception:
            break
        relayed += frame["type"] == "position_update"
    assert relayed == 5
    for _ in range(40):
        if flooder.state != flooder.STATE_OPEN:
            break
        flooder.send_json({"type": "position_update", "payload": {"x": 0, "y": 0}})
        await sleep(0.05)
    code, _ = await flooder.wait_closed()
    assert code == 1008
    errors = [f for f in flooder.frames.pending if f["type"] == "error"]
    assert errors == [], "only one rate_limited error per burst"


@pytest.mark.parametrize("router_options", [{"max_connections_per_user": 2}])
@pytest_twisted.ensureDeferred
async def test_connections_per_user_cap_answers_429(router, token):
    """A user's third connection to an org is refused with 429 before the upgrade."""
    await router.connect(token("alice", "org-a"))
    await router.connect(token("alice", "org-a"))
    status, phrase = await router.handshake(
        {"Sec-WebSocket-Protocol": token("alice", "org-a")}
    )
    assert (status, phrase) == (429, b"too many connections for this user")
    # Another user, and the same user in another org, are not affected.
    await router.connect(token("bob", "org-a"))
    await router.connect(token("alice", "org-b"))


@pytest.mark.parametrize("router_options", [{"max_connections_per_org": 2}])
@pytest_twisted.ensureDeferred
async def test_connections_per_org_cap_answers_429(router, token):
    """An org at its cap refuses another connection with 429; other orgs still connect."""
    await router.connect(token("a", "org-a"))
    await router.connect(token("b", "org-a"))
    status, phrase = await router.handshake(
        {"Sec-WebSocket-Protocol": token("c", "org-a")}
    )
    assert (status, phrase) == (429, b"too many connections for this org")
    await router.connect(token("c", "org-b"))


@pytest.mark.parametrize("router_options", [{"max_connections": 2}])
@pytest_twisted.ensureDeferred
async def test_process_cap_answers_503(router, token):
    """A process at its connection cap refuses with 503."""
    await router.connect(token("a", "org-a"))
    await router.connect(token("b", "org-b"))
    status, phrase = await router.handshake(
        {"Sec-WebSocket-Protocol": token("c", "org-c")}
    )
    assert (status, phrase) == (503, b"server at connection capacity")


@pytest.mark.parametrize(
    "router_options", [{"allowed_origins": ["https://office.example.com"]}]
)
@pytest_twisted.ensureDeferred
async def test_origin_allow_list(router, token):
    """With an allow-list, a browser from another origin is refused 403; listed and absent origins pass."""
    status, phrase = await router.handshake(
        {"Sec-WebSocket-Protocol": token(), "Origin": "https://evil.example"}
    )
    assert (status, phrase) == (403, b"origin not allowed")
    await router.connect(token("a"), headers={"Origin": "https://office.example.com"})
    await router.connect(token("b"))


@pytest.mark.parametrize("origin", ["null", "file://", "https://app.example.com"])
@pytest_twisted.ensureDeferred
async def test_any_origin_by_default_null_included(router, token, origin):
    """Without an allow-list every origin is allowed, the opaque ``null`` of
    sandboxed iframes and ``file://`` pages included."""
    client = await router.connect(token("a"), headers={"Origin": origin})
    assert client.welcome["payload"]["userId"] == "a"


@pytest.mark.parametrize(
    ("router_options", "allowed"),
    [
        ({"allowed_origins": ["https://office.example.com"]}, False),
        ({"allowed_origins": ["https://office.example.com", "null"]}, True),
        ({"allowed_origins": ["NULL"]}, True),
    ],
)
@pytest.mark.parametrize("origin", ["null", "file://"])
@pytest_twisted.ensureDeferred
async def test_null_origin_with_an_allow_list_only_when_listed(
    router, token, allowed, origin
):
    """With an allow-list, ``Origin: null`` (and a ``file://`` page) is refused 403
    unless the list names ``null``."""
    if allowed:
        client = await router.connect(token("a"), headers={"Origin": origin})
        assert client.welcome["payload"]["userId"] == "a"
    else:
        status, phrase = await router.handshake(
            {"Sec-WebSocket-Protocol": token(), "Origin": origin}
        )
        assert (status, phrase) == (403, b"origin not allowed")


@pytest.mark.parametrize("router_options", [{"http_timeout": 0.5}])
@pytest_twisted.ensureDeferred
async def test_idle_http_connection_times_out_but_websocket_stays(router, token):
    """An idle HTTP connection is dropped after the HTTP timeout; an upgraded WebSocket is not."""
    client = await router.connect(token("alice", "org-a"))
    idle = socket.create_connection(("127.0.0.1", router.port.getHost().port))
    idle.setblocking(False)
    try:
        idle.sendall(b"POST /internal/notify HTTP/1.1\r\nHost: x\r\n")  # never finished

        def closed() -> bool:
            try:
                return idle.recv(1024) == b""
            except BlockingIOError:
                return False

        await wait_until(closed, timeout=3)
    finally:
        idle.close()
    await sleep(0.7)
    _status, body = await router.notify(_room_updated("org-a", 1))
    assert body["delivered"] == 1
    assert (await client.next())["type"] == "room_updated"


@pytest.mark.parametrize("router_options", [{"max_body_bytes": 1024}])
@pytest_twisted.ensureDeferred
async def test_oversized_body_is_refused_before_it_is_read(router):
    """A declared body over the limit gets 413 at once, without the server reading it."""
    sock = socket.create_connection(("127.0.0.1", router.port.getHost().port))
    sock.setblocking(False)
    try:
        sock.sendall(
            b"POST /internal/notify HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 10000000\r\n\r\n"
            + b"{"
            * 1000
        )
        got = await _response(sock)
        assert got.startswith(b"HTTP/1.1 413 ")
        body = json.loads(got.partition(b"\r\n\r\n")[2])
        assert body["error"] == "payload_too_large"
    finally:
        sock.close()


@pytest.mark.parametrize("router_options", [{"max_body_bytes": 1024}])
@pytest_twisted.ensureDeferred
async def test_chunked_body_over_the_limit_is_cut_off_with_413(router):
    """A chunked body is refused with 413 as soon as it passes the limit."""
    sock = socket.create_connection(("127.0.0.1", router.port.getHost().port))
    sock.setblocking(False)
    try:
        chunk = b"a" * 600
        sock.sendall(
            b"POST /internal/notify HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            + (b"258\r\n" + chunk + b"\r\n")
            * 2
        )
        got = await _response(sock)
        assert got.startswith(b"HTTP/1.1 413 ")
        assert got.count(b"HTTP/1.1") == 1
    finally:
        sock.close()


@pytest_twisted.ensureDeferred
async def test_permessage_deflate_is_off_by_default(router, token):
    """A client offering permessage-deflate gets plain frames unless the option is on."""
    client = await router.connect(token("alice", "org-a"), deflate=True)
    assert client._perMessageCompress is None
    await router.notify(_room_updated("org-a", 1))
    assert (await client.next())["payload"]["roomId"] == "r1"


@pytest.mark.parametrize("router_options", [{"permessage_deflate": True}])
@pytest_twisted.ensureDeferred
async def test_permessage_deflate_when_enabled(router, token):
    """With the option on, deflate clients and plain clients both get every message."""
    deflating = await router.connect(token("alice", "org-a"), deflate=True)
    plain = await router.connect(token("bob", "org-a"))
    assert deflating._perMessageCompress is not None
    assert plain._perMessageCompress is None
    for i in range(3):
        await router.notify(_room_updated("org-a", i))
    for client in (deflating, plain):
        assert [(await client.next())["payload"]["roomId"] for _ in range(3)] == [
            "r0",
            "r1",
            "r2",
        ]
    plain.send_json({"type": "position_update", "payload": {"x": 1, "y": 2}})
    assert (await deflating.next())["from"] == "bob"


def _masked(opcode: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + body


@pytest_twisted.ensureDeferred
async def test_client_ping_is_answered_with_pong(router, token):
    """A ping from the client is answered with a pong carrying the same payload."""
    raw = RawClient(router.port.getHost().port, token("pinger", "org-a"))
    try:
        await raw.handshake()
        raw.sock.sendall(_masked(0x9, b"are-you-there"))
        found: list[tuple[int, bytes]] = []

        def ponged() -> bool:
            raw.read_available()
            found.extend(raw.frames())
            return any(op == 0xA for op, _ in found)

        await wait_until(ponged)
        assert (0xA, b"are-you-there") in found
    finally:
        raw.close()


# One process only: there a notification is queued to every connection before
# its answer, so the ping sent after the answer must be answered after it.  (With
# Redis delivery follows the answer by a moment: docs/cluster.md.)
@pytest.mark.parametrize("deployment", ["one-process"])
@pytest.mark.parametrize("router_options", [{}, {"permessage_deflate": True}])
@pytest_twisted.ensureDeferred
async def test_client_ping_is_answered_with_pong_among_messages(router, token):
    """A ping is answered with a pong in order with the messages, compressed or not."""
    raw = RawClient(
        router.port.getHost().port,
        token("pinger", "org-a"),
        extensions="permessage-deflate",
    )
    try:
        await raw.handshake()
        await wait_until(lambda: router.registry.connection_count == 1)
        await router.notify(_room_updated("org-a", 1))
        raw.sock.sendall(_masked(0x9, b"are-you-there"))
        found: list[tuple[int, bytes]] = []

        def ponged() -> bool:
            raw.read_available()
            found.extend(raw.frames())
            return any(op == 0xA for op, _ in found)

        await wait_until(ponged)
        assert [op for op, _ in found] == [0x1, 0x1, 0x1, 0xA]
        assert found[-1] == (0xA, b"are-you-there")
    finally:
        raw.close()


def _server_side(router) -> tuple[int, int]:
    """The open connection's bytes waiting on the server: (transport, outbox)."""
    sizes = (0, 0)
    for protocol in router.factory.live:
        transport = protocol.transport
        waiting = len(transport.dataBuffer) + transport._tempDataLen
        outbox = protocol._outbox.size if protocol._outbox is not None else 0
        sizes = (max(sizes[0], waiting), max(sizes[1], outbox))
    return sizes


async def _flood(router, raw: RawClient, frame: bytes, seconds: float) -> int:
    """Send ``frame`` without reading until the server drops the user or time is up.

    :returns: the most bytes seen waiting on the server side for the connection.
    """
    batch = frame * 64
    most = 0
    deadline = reactor.seconds() + seconds
    while router.registry.connection_count and reactor.seconds() < deadline:
        with contextlib.suppress(BlockingIOError):
            raw.sock.send(batch)
        await sleep(0.001)
        most = max(most, sum(_server_side(router)))
    return most


@pytest.mark.parametrize(
    "router_options", [{"rate": 5, "burst": 5, "flood_seconds": 1}]
)
@pytest_twisted.ensureDeferred
async def test_ping_flood_is_closed_1008(router, token):
    """Pings count against the rate limit: a flood of them from a client that
    never reads gets few pongs and is closed with 1008."""
    raw = RawClient(router.port.getHost().port, token("pinger", "org-a"))
    try:
        await raw.handshake()
        await wait_until(lambda: router.registry.connection_count == 1)
        most = await _flood(router, raw, _masked(0x9, b"p" * 125), 4)
        assert router.registry.connection_count == 0, "flooder kept"
        assert most < 64 * 1024
        await wait_until(
            lambda: (raw.read_available() or True) and b"\x88" in raw.buffer[-64:]
        )
        frames = raw.frames()
        # The burst, then a few a second, until the flood lasted a second.
        assert 5 <= len([op for op, _ in frames if op == 0xA]) <= 15
        assert frames[-1][0] == 0x8
        assert struct.unpack("!H", frames[-1][1][:2])[0] == 1008
    finally:
        raw.close()


@pytest.mark.parametrize(
    "router_options",
    [
        {
            "rate": 1e9,
            "burst": 10**9,
            "soft_buffer_bytes": 4096,
            "hard_buffer_bytes": 32768,
            "socket_send_buffer": 4096,
        },
        {
            "rate": 1e9,
            "burst": 10**9,
            "soft_buffer_bytes": 4096,
            "hard_buffer_bytes": 32768,
            "socket_send_buffer": 4096,
            "permessage_deflate": True,
        },
    ],
)
@pytest_twisted.ensureDeferred
async def test_pongs_count_against_the_outgoing_buffer(router, token):
    """Pongs to a client that pings and never reads are bounded by the outgoing
    buffer like any frame: past the hard limit the connection is closed."""
    raw = RawClient(
        router.port.getHost().port,
        token("pinger", "org-a"),
        extensions="permessage-deflate",
    )
    try:
        await raw.handshake()
        await wait_until(lambda: router.registry.connection_count == 1)
        most = await _flood(router, raw, _masked(0x9, b"p" * 125), 4)
        assert router.registry.connection_count == 0, "pinger kept"
        # Twisted's own buffer (64 KiB before it pauses us) plus the outbox.
        assert most < 256 * 1024
    finally:
        raw.close()


@pytest_twisted.ensureDeferred
async def test_oversized_handshake_headers_are_refused(router, token):
    """A handshake whose headers pass twisted.web's 16 KiB limit is refused, not parsed."""
    sock = socket.create_connection(("127.0.0.1", router.port.getHost().port))
    sock.setblocking(False)
    try:
        padding = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 500) for i in range(40))
        sock.sendall(b"GET /websocket HTTP/1.1\r\nHost: x\r\n" + padding + b"\r\n")
        got = await _response(sock)
        assert got.startswith(b"HTTP/1.1 400")
        assert router.registry.connection_count == 0
    finally:
        sock.close()


@pytest_twisted.ensureDeferred
async def test_positions_batched_over_the_wire(router, token):
    """A client connecting with ?positions=batched gets positions frames; a bad value is 400."""
    status, phrase = await router.handshake(
        {"Sec-WebSocket-Protocol": token("w", "org-a")}, query="?positions=sometimes"
    )
    assert (status, phrase) == (400, b"positions must be batched, or absent")
    watcher = await router.connect(
        token("watcher", "org-a"), query="?positions=batched"
    )
    mover = await router.connect(token("mover", "org-a"))
    for i in range(5):
        mover.send_json({"type": "position_update", "payload": {"x": i, "y": 0}})
    frame = await watcher.next_of("positions")
    assert frame["payload"]["positions"][-1]["userId"] == "mover"


@pytest.mark.parametrize("router_options", [{"max_connections_per_user": 3}])
@pytest_twisted.ensureDeferred
async def test_simultaneous_handshakes_cannot_pass_the_user_cap(router, token):
    """Of 8 handshakes sent at once for one user, exactly the cap of 3 open."""
    port = router.port.getHost().port
    raws = [RawClient(port, token("greedy", "org-a")) for _ in range(8)]
    try:
        answers: dict[int, bytes] = {}

        def all_answered() -> bool:
            for i, raw in enumerate(raws):
                if i not in answers:
                    try:
                        raw.read_available()
                    except ConnectionError:
                        answers[i] = b"reset"
                    if b"\r\n" in raw.buffer:
                        answers[i] = raw.buffer.split(b"\r\n", 1)[0]
            return len(answers) == len(raws)

        await wait_until(all_answered)
        statuses = sorted(line.split(b" ")[1] for line in answers.values())
        assert statuses == [b"101"] * 3 + [b"429"] * 5
        await wait_until(
            lambda: router.registry.user_connection_count("org-a", "greedy") == 3
        )
    finally:
        for raw in raws:
            raw.close()
    # Once they are gone, the user may connect again: nothing stays reserved.
    await wait_until(lambda: router.registry.connection_count == 0)
    await router.connect(token("greedy", "org-a"))


@pytest_twisted.ensureDeferred
async def test_a_token_quoted_in_a_refusal_is_not_logged(router, token):
    """Offering the same token twice is refused 400, and the log does not carry it."""
    jwt = token("alice", "org-a")
    with capturedLogs() as events:
        status, phrase = await router.handshake(
            {"Sec-WebSocket-Protocol": f"{jwt}, {jwt}"}
        )
    assert status == 400
    assert jwt.encode() not in phrase
    text = "\n".join(formatEvent(e) + eventAsJSON(e) for e in events)
    assert "refused connection" in text
    for part in jwt.split("."):
        assert part not in text


@pytest_twisted.ensureDeferred
async def test_stopping_router_refuses_new_handshakes_with_503(router, token):
    """Once the daemon stops, an upgrade (even on an open HTTP connection) gets 503."""
    client = await router.connect(token("alice", "org-a"))
    router.factory.stopping = True
    router.registry.close_all(1001, "server shutting down")
    code, _ = await client.wait_closed()
    assert code == 1001
    status, phrase = await router.handshake({"Sec-WebSocket-Protocol": token("bob")})
    assert (status, phrase) == (503, b"server shutting down")


@pytest.mark.parametrize(
    "router_options",
    [
        {
            "permessage_deflate": True,
            "soft_buffer_bytes": 4096,
            "hard_buffer_bytes": 32768,
            "socket_send_buffer": 4096,
        }
    ],
)
@pytest_twisted.ensureDeferred
async def test_compressed_client_that_stops_reading_is_still_bounded(router, token):
    """With permessage-deflate negotiated, a client that never reads still gets 1013."""
    port = router.port.getHost().port
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    sock.sendall(
        (
            "GET /websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
            "Sec-WebSocket-Extensions: permessage-deflate\r\n"
            f"Sec-WebSocket-Protocol: {token('slow', 'org-a')}\r\n\r\n"
        ).encode()
    )
    try:
        await wait_until(lambda: router.registry.connection_count == 1)
        # Random names defeat compression, so the queue fills like uncompressed.
        for i in range(3000):
            body = _room_updated("org-a", i)
            body["payload"]["name"] = base64.b64encode(os.urandom(100)).decode()
            await router.notify(body)
            if router.registry.connection_count == 0:
                break
        assert router.registry.connection_count == 0, "slow compressed client kept"
    finally:
        sock.close()


@pytest.mark.parametrize("router_options", [{"http_timeout": 1.0}])
@pytest_twisted.ensureDeferred
async def test_request_dribbled_byte_by_byte_gets_408(router):
    """Headers arriving a byte at a time are answered 408 once the request's time is up."""
    sock = socket.create_connection(("127.0.0.1", router.port.getHost().port))
    sock.setblocking(False)
    sock.sendall(b"POST /internal/notify HTTP/1.1\r\n")
    headers = b"Host: x\r\nX-Slow: " + b"a" * 200
    got = b""
    try:
        for byte in headers:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            await sleep(0.05)
            with contextlib.suppress(BlockingIOError):
                got += sock.recv(4096)
            if got:
                break
        assert got.startswith(b"HTTP/1.1 408 "), got
        assert json.loads(got.partition(b"\r\n\r\n")[2])["error"] == "request_timeout"
    finally:
        sock.close()


@pytest_twisted.ensureDeferred
async def test_http_answers_carry_no_version_and_head_has_no_body(router):
    """Responses name the server without a version; HEAD /healthz is GET without body."""
    result = await router.http("HEAD", "/healthz")
    assert result.code == 200
    assert result.content == b""
    assert result.headers.getRawHeaders(b"server") == [b"officerouter"]
    missing = await router.http("GET", "/internal")
    assert missing.code == 404
    assert missing.json()["error"] == "not_found"


@pytest.mark.parametrize(
    ("router_options", "logged"), [({}, False), ({"access_log": True}, True)]
)
@pytest_twisted.ensureDeferred
async def test_access_log_only_when_asked(router, router_options, logged):
    """twisted.web's per-request access line is written only with --access-log."""
    with capturedLogs() as events:
        status, _ = await router.notify(_room_updated("org-a", 1))
    assert status == 200
    access = [e for e in events if "/internal/notify" in formatEvent(e)]
    assert bool(access) is logged


@pytest_twisted.ensureDeferred
async def test_stop_waits_for_a_notify_still_arriving(router, token):
    """A stop waits for a notify whose body is still arriving, which then gets its answer."""
    client = await router.connect(token("alice", "org-a"))
    body = json.dumps(_room_updated("org-a", 7)).encode()
    sock = socket.create_connection(("127.0.0.1", router.port.getHost().port))
    sock.setblocking(False)
    try:
        sock.sendall(
            b"POST /internal/notify HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\n"
            + f"CF-Access-Client-Id: {router.service_id}\r\n".encode()
            + f"CF-Access-Client-Secret: {router.service_secret}\r\n".encode()
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body[:10]
        )
        await wait_until(lambda: len(router.site.in_flight) == 1)
        service = RouterService(
            router.registry, router.factory, router.site.in_flight, reactor, 5.0
        )
        stopped = service.stopService()
        code, _ = await client.wait_closed()
        assert code == 1001
        await sleep(0.2)
        assert not stopped.called, "the stop did not wait for the request"
        sock.sendall(body[10:])
        got = await _response(sock)
        assert got.startswith(b"HTTP/1.1 200 ")
        await wait_until(lambda: stopped.called)
    finally:
        sock.close()


@pytest.mark.parametrize("router_options", [{"http_timeout": 1.0}])
@pytest_twisted.ensureDeferred
async def test_request_line_dribbled_byte_by_byte_is_dropped(router):
    """A request line arriving a byte at a time is dropped once its time is up."""
    sock = socket.create_connection(("127.0.0.1", router.port.getHost().port))
    sock.setblocking(False)
    line = b"GET /healthz?" + b"a" * 200 + b" HTTP/1.1\r\n"
    started = reactor.seconds()
    closed = False
    try:
        for byte in line:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            await sleep(0.05)
            try:
                closed = sock.recv(4096) == b""
            except BlockingIOError:
                pass
            except OSError:
                closed = True
            if closed:
                break
        assert closed, "the connection outlived the request-line deadline"
        assert reactor.seconds() - started < 3
    finally:
        sock.close()


@pytest_twisted.ensureDeferred
async def test_form_posts_are_not_parsed_but_refused_415(router, monkeypatch):
    """A multipart body is answered 415 by the notify endpoint, not parsed by
    twisted.web, which never even parses a POST's Content-Type."""
    parsed: list[bytes] = []
    monkeypatch.setattr(http, "_parseContentType", parsed.append)
    status, body = await router.notify(
        b"--x\r\nContent-Disposition: form-data; name=a\r\n\r\nb\r\n--broken",
        content_type="multipart/form-data; boundary=x",
    )
    assert status == 415
    assert body["error"] == "unsupported_media_type"
    status, _ = await router.notify(_room_updated("org-a", 1))
    assert status == 200
    assert parsed == []


deployment = both_deployments
