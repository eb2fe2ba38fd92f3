#!/usr/bin/env python3
"""Churn the installed daemon for a bounded time; check it ends empty and lean.

    python bench/soak.py [--duration 60] [--clients 2000] [--orgs 20]
                         [--concurrency 300] [--notify-rate 50] [--settle 3]
                         [--rss-margin-mib M] [--seed N] [--summary FILE]

Starts the installed ``twistd -n officerouter`` (``--ping-interval 0``) on a free
loopback port, in a scratch directory so that the checkout's plugin cannot shadow
the installed one, with an env file from :func:`officerouter.auth.dev_vars`.  Then,
for ``--duration`` seconds, ``--concurrency`` workers each open one WebSocket at a
time as the next idle user of ``--clients`` (spread over ``--orgs`` orgs; user
``i`` is in org ``i mod orgs``), offering an RS256 JWT as the single
Sec-WebSocket-Protocol; send 0 to 6 ``position_update`` frames 0.1 to 0.6 s apart
(at most 10/s, under the default rate limit of 20/s); linger up to 1 s; and leave,
half of them with a closing handshake and half by aborting the TCP connection.
Meanwhile a backend loop POSTs ``/internal/notify`` (broadcasts and directs to the
same orgs) at ``--notify-rate`` per second, with at most 16 requests in flight, and
``/healthz`` and the daemon's VmRSS are sampled every 0.2 s.

Afterwards it waits until ``/healthz`` reports no connection, lets the daemon settle,
and checks: no connection and no live room left (rooms kept only for their history
are reported, not counted: they expire after ``--history-seconds``); RSS after at
most ``--rss-margin-mib`` above RSS before (by default 8 MiB, plus 0.1 MiB per
connection of ``--concurrency``, plus 6 KiB per notification the daemon may keep
in its history; see :func:`default_rss_margin_mib`); no unexpected close code,
error frame or other error; no traceback, error or critical line in the daemon's
log; exit status 0 on SIGTERM.  It prints a JSON summary and a Markdown table row
on stdout and exits 1 if a check failed.  Only 127.0.0.1 is contacted; every loop
is bounded in count and time.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import json
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import jwt

import treq
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, endpoints, task
from twisted.internet.defer import Deferred
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    globalLogPublisher,
    textFileLogObserver,
)
from twisted.web.client import HTTPConnectionPool

from officerouter.auth import (
    algorithm_for,
    dev_vars,
    load_private_key,
    sign_token,
    thumbprint,
)
from officerouter.config import load_settings

HOST = "127.0.0.1"
ORG_PREFIX = "soak-org-"
USER_PREFIX = "soak-u"
TOKEN_TTL = 3600
#: A session sends this many position updates (inclusive range) ...
FRAMES = (0, 6)
#: ... this many seconds apart: at most 10 frames/s, half the default rate limit.
FRAME_GAP = (0.1, 0.6)
#: ... then waits this long before leaving.
LINGER = (0.0, 1.0)
#: Timeouts for one step of a session (connect, open, close) and one HTTP request.
STEP_TIMEOUT = 10.0
HTTP_TIMEOUT = 10.0
MAX_NOTIFIES_IN_FLIGHT = 16
POLL_INTERVAL = 0.2
START_TIMEOUT = 30.0
DRAIN_TIMEOUT = 15.0
STOP_TIMEOUT = 15.0
#: Environment variables the daemon would prefer to its env file.
CONFIG_PREFIXES = ("CONN_JWT_", "CF_ACCESS_", "JWT_PRIVATE_KEY", "PYTHONPATH")
#: Daemon log lines that mean a bug (twistd's text format: ``[namespace#level]``).
BAD_LOG_MARKS = ("Traceback", "#critical]", "#error]", "Unhandled")
MAX_SAMPLES = 20
#: prctl(2) option: the signal a process gets when its parent dies (Linux).
PR_SET_PDEATHSIG = 1
#: The daemon's default ``--history-size``: messages it keeps per org.
HISTORY_SIZE = 1000
#: RSS one kept message costs the daemon: measured 4.8 KiB (its JSON, an
#: ``Entry`` and an ``Encoded``, and the pymalloc pools they keep alive).
HISTORY_KIB_PER_MESSAGE = 6

MARKDOWN_HEADER = (
    "| date | duration s | clients | orgs | concurrency | sessions | peak connections "
    "| positions sent | frames received | notifies | RSS before MiB | RSS peak MiB "
    "| RSS after MiB | result |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


@dataclass(frozen=True)
class Config:
    """What to run: sizes, rates and the pass margins."""

    duration: float = 60.0
    clients: int = 2000
    orgs: int = 20
    concurrency: int = 300
    notify_rate: float = 50.0
    settle: float = 3.0
    #: ``None``: :func:`default_rss_margin_mib`.
    rss_margin_mib: float | None = None
    abort_fraction: float = 0.5
    seed: int = 0
    daemon_log: Path | None = None
    #: Run the daemon through bench/gcpauses.py with automatic collection off,
    #: and after the settle time name every object only a cyclic collection
    #: would free (``gc_audit`` in the summary; check ``no_connection_cycles``).
    gc_audit: bool = False


@dataclass
class Latency:
    """Count, mean and maximum of a duration, in milliseconds."""

    count: int = 0
    total: float = 0.0
    max: float = 0.0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.total += seconds * 1000
        self.max = max(self.max, seconds * 1000)

    def describe(self) -> dict[str, float]:
        mean = self.total / self.count if self.count else 0.0
        return {"count": self.count, "mean": round(mean, 1), "max": round(self.max, 1)}


@dataclass
class Stats:
    """Counters the clients, the backend loop and the poller update."""

    sessions: int = 0
    opened: int = 0
    clean_closes: int = 0
    aborts: int = 0
    open_now: int = 0
    peak_open: int = 0
    positions_sent: int = 0
    frames_received: int = 0
    received_by_type: collections.Counter[str] = field(
        default_factory=collections.Counter
    )
    notifies_sent: int = 0
    notifies_ok: int = 0
    notifies_skipped: int = 0
    notify_deliveries: int = 0
    handshake_ms: Latency = field(default_factory=Latency)
    notify_ms: Latency = field(default_factory=Latency)
    peak_connections: int = 0
    peak_rooms: int = 0
    rss_peak_kib: int = 0
    rss_at_peak_connections_kib: int = 0
    unexpected_closes: collections.Counter[str] = field(
        default_factory=collections.Counter
    )
    error_frames: collections.Counter[str] = field(default_factory=collections.Counter)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    samples: list[str] = field(default_factory=list)
    timeline: list[dict[str, Any]] = field(default_factory=list)

    def error(self, kind: str, detail: str = "") -> None:
        """Count an error of a kind; keep the first few with their detail."""
        self.errors[kind] += 1
        if len(self.samples) < MAX_SAMPLES:
            self.samples.append(f"{kind}: {detail}" if detail else kind)


def progress(message: str) -> None:
    """A progress line on stderr."""
    print(time.strftime("%H:%M:%S"), "soak:", message, file=sys.stderr, flush=True)


def default_rss_margin_mib(concurrency: int, notifications: int, orgs: int) -> float:
    """How far RSS after may exceed RSS before, unless ``--rss-margin-mib`` says.

    CPython does not give back the memory its peak needed: pymalloc keeps an
    arena while one object in it lives, and glibc keeps freed heap untrimmed.
    So RSS after settles near a high-water mark set by the most connections
    open at once (about 70 KiB each), plus the modules and caches the first
    connection loads (about 4 MiB): 8 MiB plus 0.1 MiB per connection.  The
    daemon also keeps, by design, up to :data:`HISTORY_SIZE` messages per org
    for ``--history-seconds`` (300 s by default, longer than a soak), and each
    costs about 5 KiB of RSS: :data:`HISTORY_KIB_PER_MESSAGE` per notification
    sent, at most as many as the orgs' windows hold.  docs/soak.md has the
    measurements.  A leak grows with the number of sessions instead, which in
    a run is ten or more times the concurrency: on top of all that, a few KiB
    per session overshoots the margin.
    """
    kept = min(notifications, HISTORY_SIZE * orgs)
    return 8.0 + 0.1 * concurrency + kept * HISTORY_KIB_PER_MESSAGE / 1024


# --------------------------------------------------------------------- daemon


def free_port() -> int:
    """A currently free loopback port."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def memory_kib(pid: int) -> dict[str, int]:
    """The process's VmRSS and VmHWM (peak RSS) from /proc, in KiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0])
    return values


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """User plus system CPU time this process has used."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def load_average() -> float:
    """The machine's one-minute load average."""
    return float(Path("/proc/loadavg").read_text().split()[0])


def daemon_env() -> dict[str, str]:
    """This environment without anything that would override the env file."""
    return {k: v for k, v in os.environ.items() if not k.startswith(CONFIG_PREFIXES)}


def bad_log_lines(path: Path) -> list[str]:
    """The daemon log lines that report a bug."""
    text = path.read_text(encoding="utf-8", errors="replace")
    return [line for line in text.splitlines() if any(m in line for m in BAD_LOG_MARKS)]


async def sleep(reactor: Any, seconds: float) -> None:
    """Wait ``seconds`` on the reactor."""
    await task.deferLater(reactor, seconds, lambda: None)


def die_with_parent() -> None:
    """In the daemon before exec: get SIGTERM when the harness dies, even by SIGKILL."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


async def stop_daemon(reactor: Any, proc: subprocess.Popen[bytes]) -> int | None:
    """SIGTERM the daemon, SIGKILL it after :data:`STOP_TIMEOUT`; its exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while proc.poll() is None and time.monotonic() < deadline:
            await sleep(reactor, 0.05)
    if proc.poll() is None:
        proc.kill()
        proc.wait(5)
    return proc.returncode


# --------------------------------------------------------------------- tokens


def sign_all(private_pem: str, users: list[tuple[str, str]], now: float) -> list[str]:
    """One token per ``(user, org)``, exactly as :func:`sign_token` makes them.

    ``sign_token`` loads and checks the private key on every call (tens of
    milliseconds for RSA, minutes for thousands of users), so the key is loaded
    once here; the first token is also made by ``sign_token`` itself and must
    come out byte for byte the same (RS256 signatures are deterministic).
    """
    key = load_private_key(private_pem)
    public = key.public_key()
    headers = {"kid": thumbprint(public)}
    algorithm = algorithm_for(public)
    tokens = [
        jwt.encode(
            {
                "sub": user,
                "orgId": org,
                "role": "member",
                "iat": int(now),
                "exp": int(now) + TOKEN_TTL,
            },
            key,
            algorithm=algorithm,
            headers=headers,
        )
        for user, org in users
    ]
    user, org = users[0]
    reference = sign_token(
        private_pem, user_id=user, org_id=org, role="member", ttl=TOKEN_TTL, now=now
    )
    if tokens[0] != reference:
        raise RuntimeError("tokens differ from officerouter.auth.sign_token's")
    return tokens


# --------------------------------------------------------------------- clients


class SessionEnded(Exception):
    """The connection closed before the session chose to leave."""


class ClientSession:
    """One connection's life, as seen by the harness."""

    def __init__(self, user: str, org: str, stats: Stats) -> None:
        self.user = user
        self.org = org
        self.stats = stats
        self.protocol: SoakClient | None = None
        self.ending: str | None = None
        self.opened: Deferred[SoakClient] = Deferred()
        self.closed: Deferred[None] = Deferred()
        self._org_mark = b'"roomId":"' + org.encode() + b'"'

    def on_open(self, protocol: SoakClient) -> None:
        stats = self.stats
        stats.opened += 1
        stats.open_now += 1
        stats.peak_open = max(stats.peak_open, stats.open_now)
        self.protocol = protocol
        if not self.opened.called:
            self.opened.callback(protocol)

    def on_message(self, payload: bytes) -> None:
        stats = self.stats
        stats.frames_received += 1
        # Positions are most of the traffic: classify them without decoding.
        if payload.startswith(b'{"type":"position_update"'):
            stats.received_by_type["position_update"] += 1
            if self._org_mark not in payload:
                stats.error(
                    "foreign_org_frame", payload[:200].decode("utf-8", "replace")
                )
            return
        try:
            frame = json.loads(payload)
            kind = frame["type"]
            body = frame.get("payload") or {}
        except (ValueError, KeyError, TypeError, AttributeError):
            stats.error("bad_frame", payload[:200].decode("utf-8", "replace"))
            return
        stats.received_by_type[kind] += 1
        if kind == "error":
            stats.error_frames[str(body.get("code"))] += 1
            stats.error("error_frame", json.dumps(body))
        elif kind == "connected":
            if (body.get("userId"), body.get("orgId")) != (self.user, self.org):
                stats.error("wrong_identity", json.dumps(body))
        elif kind in ("room_updated", "space_deleted") and body.get("roomId") != (
            self.org
        ):
            stats.error("foreign_org_frame", json.dumps(frame))

    def on_close(self, was_clean: bool, code: int | None, reason: str | None) -> None:
        stats = self.stats
        if self.protocol is None:
            stats.error("handshake_failed", f"{code} {reason}")
        else:
            stats.open_now -= 1
            if self.ending is None:
                stats.unexpected_closes[str(code)] += 1
                stats.error("unexpected_close", f"{self.user}: {code} {reason}")
            elif self.ending == "clean":
                if was_clean and code == 1000:
                    stats.clean_closes += 1
                else:
                    stats.error("unclean_close", f"{self.user}: {code} {reason}")
            else:
                stats.aborts += 1
        if not self.opened.called:
            self.opened.errback(SessionEnded(code, reason))
        if not self.closed.called:
            self.closed.callback(None)


class SoakClient(WebSocketClientProtocol):
    """A WebSocket client that only hands its events to its :class:`ClientSession`."""

    session: ClientSession

    def onOpen(self) -> None:
        self.session.on_open(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.session.on_message(payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.session.on_close(wasClean, code, reason)


class SessionFactory(WebSocketClientFactory):
    """Builds the one :class:`SoakClient` of a session, offering its token."""

    protocol = SoakClient

    def __init__(self, url: str, token: str, session: ClientSession) -> None:
        super().__init__(url, protocols=[token])
        self.session = session
        # Cheap clients: the frames are ASCII JSON the harness checks itself.
        self.setProtocolOptions(
            utf8validateIncoming=False,
            openHandshakeTimeout=STEP_TIMEOUT,
            closeHandshakeTimeout=STEP_TIMEOUT,
            # Autobahn gives the server 1 s after its close frame to drop TCP.
            # A timer runs before the reactor reads the socket, so when this
            # process is starved of CPU for a second (a loaded 2-core CI box)
            # the FIN already waiting is never seen and the close counts as
            # unclean; a server that really keeps the connection is still caught.
            serverConnectionDropTimeout=STEP_TIMEOUT,
        )

    def buildProtocol(self, addr: Any) -> SoakClient:
        protocol: SoakClient = super().buildProtocol(addr)
        protocol.session = self.session
        return protocol


async def within(reactor: Any, d: Deferred[Any], seconds: float) -> Any:
    """``await d``, failing with ``defer.TimeoutError`` after ``seconds``."""
    d.addTimeout(seconds, reactor)
    return await d


@dataclass
class Run:
    """Everything one soak run shares: config, daemon address, tokens, counters."""

    reactor: Any
    config: Config
    port: int
    tokens: list[str]
    rng: random.Random
    stats: Stats = field(default_factory=Stats)
    service_headers: dict[str, str] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"

    def user(self, i: int) -> tuple[str, str]:
        """User ``i`` and its org."""
        return f"{USER_PREFIX}{i}", f"{ORG_PREFIX}{i % self.config.orgs}"

    # ---------------------------------------------------------------- clients

    async def session(self, i: int, end: float) -> None:
        """Connect as user ``i``, send a few positions, leave cleanly or abruptly.

        The session leaves by ``end`` at the latest, so traffic stops on time.
        """
        reactor, rng, stats = self.reactor, self.rng, self.stats
        user, org = self.user(i)
        session = ClientSession(user, org, stats)
        factory = SessionFactory(
            f"ws://{HOST}:{self.port}/websocket", self.tokens[i], session
        )
        endpoint = endpoints.TCP4ClientEndpoint(
            reactor, HOST, self.port, timeout=STEP_TIMEOUT
        )
        stats.sessions += 1
        started = reactor.seconds()
        try:
            client: SoakClient = await endpoint.connect(factory)
        except Exception as e:
            stats.error("connect_failed", repr(e))
            return
        try:
            await within(reactor, session.opened, STEP_TIMEOUT)
            stats.handshake_ms.add(reactor.seconds() - started)
        except SessionEnded:
            return  # counted by on_close
        except defer.TimeoutError:
            stats.error("open_timeout", user)
            session.ending = "abort"
            client.transport.abortConnection()  # type: ignore[union-attr]
            return

        def until_end(seconds: float) -> float:
            return max(0.0, min(seconds, end - reactor.seconds()))

        for _ in range(rng.randint(*FRAMES)):
            if session.closed.called or reactor.seconds() >= end:
                break
            x, y = rng.uniform(0, 1000), rng.uniform(0, 1000)
            client.sendMessage(
                b'{"type":"position_update","payload":{"x":%.1f,"y":%.1f,'
                b'"roomId":"%s"}}' % (x, y, org.encode())
            )
            stats.positions_sent += 1
            await sleep(reactor, until_end(rng.uniform(*FRAME_GAP)))
        await sleep(reactor, until_end(rng.uniform(*LINGER)))
        if session.closed.called:
            return
        if rng.random() < self.config.abort_fraction:
            session.ending = "abort"
            assert client.transport is not None
            client.transport.abortConnection()  # type: ignore[attr-defined]
        else:
            session.ending = "clean"
            client.sendClose(1000)
        try:
            await within(reactor, session.closed, STEP_TIMEOUT)
        except defer.TimeoutError:
            stats.error("close_timeout", user)

    async def worker(
        self, index: int, idle: collections.deque[int], end: float
    ) -> None:
        """Run sessions one after another until ``end``, each as the next idle user."""
        ramp = min(3.0, self.config.duration / 5)
        await sleep(self.reactor, ramp * index / self.config.concurrency)
        while self.reactor.seconds() < end and idle:
            i = idle.popleft()
            try:
                await self.session(i, end)
            finally:
                idle.append(i)

    # ---------------------------------------------------------------- backend

    async def notify(self, pool: HTTPConnectionPool) -> None:
        """POST one broadcast or direct notification to a random org."""
        rng, stats, orgs = self.rng, self.stats, self.config.orgs
        org_index = rng.randrange(orgs)
        org = f"{ORG_PREFIX}{org_index}"
        body: dict[str, Any] = {
            "orgId": org,
            "type": "room_updated",
            "payload": {"roomId": org, "name": f"soak {stats.notifies_sent}"},
        }
        if rng.random() < 0.7:
            body["routing"] = "broadcast"
        else:
            members = range(org_index, self.config.clients, orgs)
            picks = rng.sample(members, min(3, len(members)))
            body["routing"] = "direct"
            body["targets"] = [f"{USER_PREFIX}{i}" for i in picks]
        stats.notifies_sent += 1
        started = self.reactor.seconds()
        try:
            response = await treq.post(
                self.base + "/internal/notify",
                data=json.dumps(body).encode(),
                headers=self.service_headers,
                pool=pool,
                timeout=HTTP_TIMEOUT,
            )
            content = await response.content()
        except Exception as e:
            stats.error("notify_failed", repr(e))
            return
        if response.code != 200:
            stats.error(f"notify_status_{response.code}", content[:200].decode())
            return
        stats.notifies_ok += 1
        stats.notify_ms.add(self.reactor.seconds() - started)
        stats.notify_deliveries += int(json.loads(content).get("delivered", 0))

    async def backend(self, pool: HTTPConnectionPool, end: float) -> None:
        """Notify at ``notify_rate`` per second until ``end``, boundedly in flight."""
        in_flight: set[Deferred[None]] = set()

        def tick(due: int) -> None:
            # ``due`` counts the intervals since the last call: when the reactor
            # was late, catch up (in a burst), still within the in-flight bound.
            if self.reactor.seconds() >= end:
                loop.stop()
                return
            for _ in range(due):
                if len(in_flight) >= MAX_NOTIFIES_IN_FLIGHT:
                    self.stats.notifies_skipped += 1
                    continue
                d = Deferred.fromCoroutine(self.notify(pool))
                in_flight.add(d)
                d.addBoth(lambda _, d=d: in_flight.discard(d))

        loop = task.LoopingCall.withCount(tick)
        loop.clock = self.reactor
        await loop.start(1 / self.config.notify_rate, now=False)
        # Each request is bounded by HTTP_TIMEOUT.
        await defer.DeferredList(list(in_flight))

    async def health(self, pool: HTTPConnectionPool) -> dict[str, Any]:
        """GET /healthz."""
        response = await treq.get(
            self.base + "/healthz", pool=pool, timeout=HTTP_TIMEOUT
        )
        body: dict[str, Any] = json.loads(await response.content())
        if response.code != 200:
            raise RuntimeError(f"/healthz answered {response.code}: {body}")
        return body


class Poller:
    """Samples /healthz and the daemon's RSS every :data:`POLL_INTERVAL` seconds."""

    def __init__(self, run: Run, pool: HTTPConnectionPool, pid: int) -> None:
        self._run = run
        self._pool = pool
        self._pid = pid
        self._busy = False
        self._start = run.reactor.seconds()
        self._next_mark = 0.0
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = run.reactor

    def start(self) -> None:
        self._loop.start(POLL_INTERVAL, now=True)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def _tick(self) -> None:
        if not self._busy:
            self._busy = True
            Deferred.fromCoroutine(self._sample()).addBoth(self._done)

    def _done(self, _: object) -> None:
        self._busy = False

    async def _sample(self) -> None:
        stats = self._run.stats
        try:
            health = await self._run.health(self._pool)
        except Exception as e:
            stats.error("healthz_failed", repr(e))
            return
        rss = memory_kib(self._pid)["VmRSS"]
        connections = int(health["connections"])
        if connections > stats.peak_connections:
            stats.peak_connections = connections
            stats.rss_at_peak_connections_kib = rss
        stats.peak_rooms = max(stats.peak_rooms, int(health["rooms"]))
        stats.rss_peak_kib = max(stats.rss_peak_kib, rss)
        elapsed = self._run.reactor.seconds() - self._start
        if elapsed >= self._next_mark:
            self._next_mark += 1.0
            stats.timeline.append(
                {
                    "t": round(elapsed, 1),
                    "connections": connections,
                    "rooms": health["rooms"],
                    "rss_kib": rss,
                }
            )


# --------------------------------------------------------------------- the run


#: Types of these modules in the audit's cyclic garbage are a closed
#: connection (or request) that reference counting did not free.
CONNECTION_MODULES = ("officerouter.", "autobahn.", "twisted.internet.", "twisted.web.")


def twistd_argv(port: int, env_file: Path, gc_file: Path | None = None) -> list[str]:
    """The command line of the installed daemon (through bench/gcpauses.py
    with ``gc_file``)."""
    twistd = Path(sys.executable).parent / "twistd"
    wrapper: list[str] = []
    if gc_file is not None:
        wrapper = [
            sys.executable,
            str(Path(__file__).resolve().parent / "gcpauses.py"),
            "--out",
            str(gc_file),
            "--garbage",
            "--no-auto-gc",
            "--",
        ]
    return [
        *wrapper,
        str(twistd),
        "-n",
        "--pidfile=",
        "officerouter",
        "--port",
        f"tcp:{port}:interface={HOST}",
        "--env-file",
        str(env_file),
        "--ping-interval",
        "0",
    ]


async def wait_ready(run: Run, pool: HTTPConnectionPool, proc: Any, log: Path) -> None:
    """Wait until the daemon answers /healthz; fail if it exits or takes too long."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise RuntimeError(
                f"the daemon exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
            )
        try:
            await run.health(pool)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
        await sleep(run.reactor, 0.1)


async def gc_audit(reactor: Any, pid: int, gc_file: Path) -> dict[str, Any]:
    """Ask the daemon's gcpauses.py wrapper to name its cyclic garbage."""
    garbage = gc_file.with_suffix(".garbage.json")
    os.kill(pid, signal.SIGUSR2)
    deadline = time.monotonic() + 30
    while not garbage.exists() and time.monotonic() < deadline:
        await sleep(reactor, 0.2)
    if not garbage.exists():
        return {"error": "no audit written"}
    await sleep(reactor, 0.2)
    audit = json.loads(garbage.read_text())
    audit["connection_types"] = {
        name: count
        for name, count in audit["types"].items()
        if name.startswith(CONNECTION_MODULES)
    }
    return audit


async def drive(run: Run, pool: HTTPConnectionPool, pid: int) -> dict[str, Any]:
    """Run clients and backend for the configured duration; then measure the end."""
    reactor, config, stats = run.reactor, run.config, run.stats
    rss_before = memory_kib(pid)["VmRSS"]
    cpu_before, own_before = cpu_seconds(pid), own_cpu_seconds()
    load_before = load_average()
    health_before = await run.health(pool)
    poller = Poller(run, pool, pid)
    poller.start()
    started = reactor.seconds()
    end = started + config.duration
    idle = collections.deque(range(config.clients))
    run.rng.shuffle(idle)
    try:
        workers = [
            Deferred.fromCoroutine(run.worker(n, idle, end))
            for n in range(config.concurrency)
        ]
        workers.append(Deferred.fromCoroutine(run.backend(pool, end)))
        results = await defer.DeferredList(workers, consumeErrors=True)
        for ok, failure in results:
            if not ok:
                stats.error("harness", failure.getTraceback())
        traffic_seconds = reactor.seconds() - started
        daemon_cpu = cpu_seconds(pid) - cpu_before
        own_cpu = own_cpu_seconds() - own_before
        load_after = load_average()
        progress(
            f"traffic done after {traffic_seconds:.1f} s: {stats.sessions} sessions, "
            f"peak {stats.peak_connections} connections, {len(stats.errors)} error kinds"
        )
    finally:
        poller.stop()
    # The server may still be processing the last closes and aborts.
    deadline = time.monotonic() + DRAIN_TIMEOUT
    health = await run.health(pool)
    while health["connections"] and time.monotonic() < deadline:
        await sleep(reactor, 0.1)
        health = await run.health(pool)
    drained = reactor.seconds() - started - traffic_seconds
    progress(f"{health['connections']} connections left; settling {config.settle:g} s")
    await sleep(reactor, config.settle)
    memory = memory_kib(pid)
    health = await run.health(pool)
    return {
        "traffic_seconds": round(traffic_seconds, 1),
        "drain_seconds": round(drained, 1),
        "health_before": health_before,
        "health_after": health,
        "rss_before_kib": rss_before,
        "rss_after_kib": memory["VmRSS"],
        "rss_hwm_kib": memory["VmHWM"],
        "daemon_cpu_seconds": round(daemon_cpu, 1),
        "harness_cpu_seconds": round(own_cpu, 1),
        "load_average_before": load_before,
        "load_average_after": load_after,
    }


def rss_margin_mib(config: Config, stats: Stats) -> float:
    """The configured RSS margin, or the default for this run."""
    if config.rss_margin_mib is not None:
        return config.rss_margin_mib
    return default_rss_margin_mib(config.concurrency, stats.notifies_ok, config.orgs)


def checks(
    config: Config,
    stats: Stats,
    end: dict[str, Any],
    exit_code: int | None,
    bad_lines: list[str],
) -> dict[str, bool]:
    """Each end-state check by name: ``True`` when it passed."""
    after = end["health_after"]
    margin_kib = int(rss_margin_mib(config, stats) * 1024)
    return {
        "traffic_flowed": stats.opened > 0
        and stats.peak_connections > 0
        and stats.notifies_ok > 0,
        "zero_connections": after["connections"] == 0,
        "zero_live_rooms": after["rooms"] == 0,
        "rss_within_margin": end["rss_after_kib"] <= end["rss_before_kib"] + margin_kib,
        "no_unexpected_closes": not stats.unexpected_closes,
        "no_error_frames": not stats.error_frames,
        "no_errors": not stats.errors,
        "clean_daemon_log": not bad_lines,
        "daemon_exit_0": exit_code == 0,
        **(
            {"no_connection_cycles": not end["gc_audit"].get("connection_types", 1)}
            if config.gc_audit
            else {}
        ),
    }


def summarize(
    config: Config,
    stats: Stats,
    end: dict[str, Any],
    exit_code: int | None,
    bad_lines: list[str],
) -> dict[str, Any]:
    """The JSON summary: configuration, figures, checks."""
    results = checks(config, stats, end, exit_code, bad_lines)
    # Not asdict(): it rebuilds a Counter from (key, value) pairs, counting the pairs.
    counters = {
        f.name: dict(value)
        if isinstance(value, collections.Counter)
        else value.describe()
        if isinstance(value, Latency)
        else value
        for f in fields(stats)
        if f.name not in ("timeline", "samples")
        for value in [getattr(stats, f.name)]
    }
    return {
        "ok": all(results.values()),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "config": {
            **{
                k: (str(v) if isinstance(v, Path) else v)
                for k, v in asdict(config).items()
            },
            "rss_margin_mib": round(rss_margin_mib(config, stats), 1),
        },
        "checks": results,
        **end,
        **counters,
        "error_samples": stats.samples,
        "daemon_bad_log_lines": bad_lines[:MAX_SAMPLES],
        "daemon_exit_code": exit_code,
        "timeline": stats.timeline,
    }


def markdown_row(summary: dict[str, Any]) -> str:
    """One row of :data:`MARKDOWN_HEADER`."""
    c = summary["config"]

    def mib(kib: int) -> str:
        return f"{kib / 1024:.1f}"

    failed = [name for name, ok in summary["checks"].items() if not ok]
    cells = [
        summary["date"].split()[0],
        c["duration"],
        c["clients"],
        c["orgs"],
        c["concurrency"],
        summary["sessions"],
        summary["peak_connections"],
        summary["positions_sent"],
        summary["frames_received"],
        summary["notifies_ok"],
        mib(summary["rss_before_kib"]),
        mib(summary["rss_peak_kib"]),
        mib(summary["rss_after_kib"]),
        "pass" if not failed else "FAIL: " + ", ".join(failed),
    ]
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


async def soak(reactor: Any, config: Config) -> dict[str, Any]:
    """Start the installed daemon, churn it, stop it; return the summary."""
    # react() calls main before the reactor runs and installs its SIGTERM and
    # SIGINT handlers: let it start first, so that a signal stops the daemon too.
    await sleep(reactor, 0)
    scratch = Path(tempfile.mkdtemp(prefix="officerouter-soak-"))
    proc: subprocess.Popen[bytes] | None = None
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = MAX_NOTIFIES_IN_FLIGHT + 2
    log = config.daemon_log or scratch / "daemon.log"

    async def stop() -> int | None:
        return await stop_daemon(reactor, proc) if proc is not None else None

    stats = Stats()

    def harness_failures(event: dict[str, Any]) -> None:
        # An unhandled error in a Deferred, or a client protocol failure.
        if event.get("log_level") in (LogLevel.error, LogLevel.critical):
            stats.error("harness_log", str(event.get("log_format")))

    globalLogPublisher.addObserver(harness_failures)

    async def interrupted() -> None:
        # The reactor is stopping under us (SIGINT, SIGTERM): the finally below
        # will not get to run, so stop the daemon and clean up here.
        await stop()
        shutil.rmtree(scratch, ignore_errors=True)

    trigger = reactor.addSystemEventTrigger(
        "before", "shutdown", lambda: Deferred.fromCoroutine(interrupted())
    )
    try:
        env_file = scratch / "soak.vars"
        env_file.write_text(dev_vars())
        env_file.chmod(0o600)
        settings = load_settings({}, env_file)
        assert settings.private_key_pem is not None
        port = free_port()
        gc_file = scratch / "gc.json"
        with log.open("wb") as log_file:
            proc = subprocess.Popen(
                twistd_argv(port, env_file, gc_file if config.gc_audit else None),
                cwd=scratch,
                env=daemon_env(),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        users = [
            (f"{USER_PREFIX}{i}", f"{ORG_PREFIX}{i % config.orgs}")
            for i in range(config.clients)
        ]
        tokens = sign_all(settings.private_key_pem, users, reactor.seconds())
        run = Run(
            reactor=reactor,
            config=config,
            port=port,
            tokens=tokens,
            rng=random.Random(config.seed),
            stats=stats,
            service_headers={
                "Content-Type": "application/json",
                "CF-Access-Client-Id": settings.service_client_id,
                "CF-Access-Client-Secret": settings.service_client_secret,
            },
        )
        progress(f"signed {len(tokens)} tokens; waiting for the daemon on port {port}")
        await wait_ready(run, pool, proc, log)
        progress(f"daemon ready (pid {proc.pid}); churning for {config.duration:g} s")
        end = await drive(run, pool, proc.pid)
        if config.gc_audit:
            end["gc_audit"] = await gc_audit(reactor, proc.pid, gc_file)
    finally:
        await pool.closeCachedConnections()
        exit_code = await stop()
        reactor.removeSystemEventTrigger(trigger)
        globalLogPublisher.removeObserver(harness_failures)
        bad_lines = bad_log_lines(log) if log.exists() else []
        shutil.rmtree(scratch, ignore_errors=True)
    return summarize(config, stats, end, exit_code, bad_lines)


# --------------------------------------------------------------------- command line


def parse_args(argv: list[str]) -> tuple[Config, Path | None]:
    """The run's :class:`Config` and where to write the JSON summary, if anywhere."""
    d = Config()
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    p.add_argument("--duration", type=float, default=d.duration, help="seconds")
    p.add_argument("--clients", type=int, default=d.clients, help="distinct users")
    p.add_argument("--orgs", type=int, default=d.orgs)
    p.add_argument(
        "--concurrency",
        type=int,
        default=d.concurrency,
        help="connections open at once, at most",
    )
    p.add_argument(
        "--notify-rate", type=float, default=d.notify_rate, help="notifies per second"
    )
    p.add_argument(
        "--settle",
        type=float,
        default=d.settle,
        help="seconds between the last disconnect and the RSS after",
    )
    p.add_argument(
        "--rss-margin-mib",
        type=float,
        default=d.rss_margin_mib,
        help="how far RSS after may exceed RSS before (default: 8, plus 0.1 per "
        "connection of --concurrency, plus 6/1024 per notification kept)",
    )
    p.add_argument(
        "--abort-fraction",
        type=float,
        default=d.abort_fraction,
        help="share of sessions that end by aborting TCP",
    )
    p.add_argument("--seed", type=int, default=None, help="default: random")
    p.add_argument("--daemon-log", type=Path, help="keep the daemon's log here")
    p.add_argument("--summary", type=Path, help="also write the JSON summary here")
    p.add_argument(
        "--gc-audit",
        action="store_true",
        help="no automatic garbage collection in the daemon; at the end, name "
        "what only a cyclic collection would free (check no_connection_cycles)",
    )
    a = p.parse_args(argv)
    if a.clients < a.concurrency or a.orgs < 1 or a.orgs > a.clients:
        p.error("need orgs >= 1, clients >= orgs and clients >= concurrency")
    if a.duration <= 0 or a.duration > 3600 or a.notify_rate <= 0:
        p.error("need 0 < duration <= 3600 and notify-rate > 0")
    config = Config(
        duration=a.duration,
        clients=a.clients,
        orgs=a.orgs,
        concurrency=a.concurrency,
        notify_rate=a.notify_rate,
        settle=a.settle,
        rss_margin_mib=a.rss_margin_mib,
        abort_fraction=a.abort_fraction,
        seed=a.seed if a.seed is not None else random.SystemRandom().randrange(2**31),
        daemon_log=a.daemon_log,
        gc_audit=a.gc_audit,
    )
    return config, a.summary


async def main(reactor: Any, *argv: str) -> None:
    """Run a soak from the command line; exit 1 when a check fails."""
    config, summary_path = parse_args(list(argv))
    # The harness's own warnings and errors (an unhandled error in a Deferred, a
    # protocol violation the client saw) go to stderr.
    globalLogBeginner.beginLoggingTo(
        [
            FilteringLogObserver(
                textFileLogObserver(sys.stderr),
                [LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)],
            )
        ],
        redirectStandardIO=False,
    )
    progress(
        f"{config.clients} users, {config.orgs} orgs, {config.concurrency} at once, "
        f"{config.duration:g} s, seed {config.seed}"
    )
    summary = await soak(reactor, config)
    text = json.dumps(summary, indent=2)
    if summary_path is not None:
        summary_path.write_text(text + "\n")
    print(text)
    print()
    print(MARKDOWN_HEADER)
    print(markdown_row(summary))
    if not summary["ok"]:
        failed = [name for name, ok in summary["checks"].items() if not ok]
        progress(f"FAILED: {', '.join(failed)}")
        raise SystemExit(1)


if __name__ == "__main__":
    task.react(
        lambda reactor, *argv: Deferred.fromCoroutine(main(reactor, *argv)),
        sys.argv[1:],
    )
