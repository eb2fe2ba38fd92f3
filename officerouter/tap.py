"""What twistd calls: the ``officerouter`` options and :func:`makeService`."""

from __future__ import annotations

import os
import re
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from prometheus_client import GCCollector, ProcessCollector, disable_created_metrics

import txaio
from twisted.application import service
from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.internet import defer, endpoints, threads
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python import usage

from officerouter import codes, logs
from officerouter.admin import AdminResource
from officerouter.allocator import malloc_trimmer
from officerouter.auth import TokenVerifier, dev_vars
from officerouter.backplane import Backplane, LocalBackplane
from officerouter.catalog import build_catalog
from officerouter.config import (
    DEFAULT_ENV_FILE,
    ConfigError,
    Settings,
    configured,
    default_node_id,
    has_verify_keys,
    load_settings,
)
from officerouter.gctune import GcPolicy
from officerouter.history import HistoryBounds, HistoryStore, MemoryStore
from officerouter.history_sqlite import PoolRunner, SQLiteStore, StoreError
from officerouter.inflight import InFlight
from officerouter.limits import Limits, OriginPolicy
from officerouter.metrics import (
    GCPauses,
    Metrics,
    MetricsListener,
    MetricsResource,
    ReactorLag,
    RouterCollector,
    WorkersResource,
    metrics_site,
    worker_endpoint,
    worker_socket,
)
from officerouter.redis_backplane import NODE_ID, RedisBackplane
from officerouter.redis_client import RedisLink
from officerouter.registry import OrgRegistry
from officerouter.web import OfficeSite, make_site
from officerouter.websocket import OfficeServerFactory
from officerouter.workers import (
    SYSTEMD_VARIABLES,
    WORKER_FD,
    Supervisor,
    Worker,
    adopted_endpoint,
    parent_watch,
    parse_listener,
    with_default_backlog,
    worker_count,
)

log = Logger()

# Any tcp:/tcp6:/ssl: --port without backlog= listens with DEFAULT_BACKLOG (1024),
# not Twisted's 50 (workers.with_default_backlog); the defaults spell it out.
DEFAULT_PORT = "tcp:8787:backlog=1024"
#: A development server (--dev, with fresh credentials) answers this machine only.
DEV_PORT = "tcp:8787:interface=127.0.0.1:backlog=1024"


def _positive_int(name: str, low: int = 1) -> Any:
    def coerce(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise usage.UsageError(f"--{name} must be a whole number") from None
        if number < low:
            raise usage.UsageError(f"--{name} must be at least {low}")
        return number

    return coerce


def _number(name: str, low: float) -> Any:
    def coerce(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise usage.UsageError(f"--{name} must be a number") from None
        if not low <= number <= 1e9:
            raise usage.UsageError(f"--{name} must be at least {low}")
        return number

    return coerce


def _seconds(name: str) -> Any:
    def coerce(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise usage.UsageError(f"--{name} must be a number of seconds") from None
        if not 0 <= number <= 86400:
            raise usage.UsageError(f"--{name} must be between 0 and 86400 seconds")
        return number

    return coerce


def _workers(value: str) -> int:
    try:
        return worker_count(value)
    except ValueError:
        raise usage.UsageError("--workers must be auto or a whole number") from None


class Options(usage.Options):
    """``twistd officerouter`` options; secrets come from the environment only."""

    synopsis = "[options]"
    longdesc = (
        "Serve the office router: WebSocket clients on /websocket, backend "
        "notifications on /internal/notify, health on /healthz. Secrets and keys "
        "come from the environment or the env file (docs/configuration.md)."
    )
    optFlags: ClassVar[list[list[str | None]]] = [
        [
            "dev",
            None,
            "Development: generate .dev.vars with fresh keys if none are set.",
        ],
        [
            "access-log",
            None,
            "Log one line per HTTP request (off: it costs a quarter of a notify).",
        ],
        [
            "permessage-deflate",
            None,
            "Accept permessage-deflate (costs CPU per connection on every broadcast).",
        ],
        [
            "no-direct-writes",
            None,
            "Write frames and HTTP answers only through Twisted's transport buffer "
            "(see docs/benchmarks.md).",
        ],
        [
            "no-gc-freeze",
            None,
            "Leave the garbage collector as Python sets it (long pauses with many "
            "connections; see docs/configuration.md).",
        ],
        [
            "auto-knock",
            None,
            "Send guest_knock to owners and admins when a pending guest connects.",
        ],
        [
            "admin",
            None,
            "Serve the admin page on /admin (needs ADMIN_PASSWORD_HASH or "
            "ADMIN_PASSWORD in the environment or env file).",
        ],
    ]
    optParameters: ClassVar[list[list[Any]]] = [
        [
            "port",
            "p",
            # None tells "not given" from "given the default": see postOptions.
            None,
            f"Listening endpoint (tcp:, ssl:, systemd:, unix:) [default: "
            f"{DEFAULT_PORT}; with --dev, {DEV_PORT}]",
        ],
        [
            "env-file",
            None,
            None,
            f"Env file to read (default: {DEFAULT_ENV_FILE} when present).",
        ],
        [
            "max-message-bytes",
            None,
            65536,
            "Largest client message, bytes (1009 above).",
            _positive_int("max-message-bytes", 256),
        ],
        [
            "max-body-bytes",
            None,
            65536,
            "Largest /internal/notify body, bytes (413 above).",
            _positive_int("max-body-bytes", 256),
        ],
        [
            "ping-interval",
            None,
            25.0,
            "Seconds between keepalive pings (0: off).",
            _seconds("ping-interval"),
        ],
        [
            "ping-timeout",
            None,
            10.0,
            "Seconds to wait for a pong before dropping.",
            _seconds("ping-timeout"),
        ],
        [
            "shutdown-timeout",
            None,
            10.0,
            "Seconds to wait for closing handshakes on stop.",
            _seconds("shutdown-timeout"),
        ],
        [
            "ban-memory",
            None,
            3600.0,
            "Seconds a ban refuses tokens issued before it.",
            _seconds("ban-memory"),
        ],
        [
            "rate",
            None,
            20.0,
            "Client messages per second per connection, sustained.",
            _number("rate", 0.1),
        ],
        [
            "burst",
            None,
            40,
            "Client messages a connection may send at once.",
            _positive_int("burst"),
        ],
        [
            "flood-seconds",
            None,
            5.0,
            "Seconds of continuous flooding before closing 1008.",
            _number("flood-seconds", 1),
        ],
        [
            "max-connections-per-user",
            None,
            10,
            "Connections per user per org (429 above).",
            _positive_int("max-connections-per-user"),
        ],
        [
            "max-connections-per-org",
            None,
            10000,
            "Connections per org (429 above).",
            _positive_int("max-connections-per-org"),
        ],
        [
            "max-connections",
            None,
            50000,
            "Connections per process (503 above).",
            _positive_int("max-connections"),
        ],
        [
            "soft-buffer-bytes",
            None,
            262144,
            "Queued bytes for a slow client above which old positions are dropped.",
            _positive_int("soft-buffer-bytes", 1024),
        ],
        [
            "hard-buffer-bytes",
            None,
            1048576,
            "Queued bytes for a slow client above which it is closed with 1013.",
            _positive_int("hard-buffer-bytes", 4096),
        ],
        [
            "socket-send-buffer",
            None,
            0,
            "SO_SNDBUF for WebSocket sockets, bytes (0: kernel autotuning).",
            _positive_int("socket-send-buffer", 0),
        ],
        [
            "allowed-origins",
            None,
            "",
            "Comma-separated browser origins allowed to connect (empty: any).",
            None,
        ],
        [
            "http-timeout",
            None,
            30.0,
            "Seconds an HTTP connection may idle or dribble.",
            _number("http-timeout", 1),
        ],
        [
            "malloc-trim-interval",
            None,
            1.0,
            "glibc: seconds between returning freed memory to the system (0: never).",
            _number("malloc-trim-interval", 0),
        ],
        [
            "gc-full-interval",
            None,
            0.0,
            "Seconds between full garbage collections of frozen objects too, one "
            "long pause each (0: never).",
            _number("gc-full-interval", 0),
        ],
        [
            "position-tick",
            None,
            0.05,
            "Seconds between positions frames for clients with ?positions=batched, "
            "and between presence diffs for clients with ?presence=diff.",
            _number("position-tick", 0.005),
        ],
        [
            "presence-grace",
            None,
            5.0,
            "Seconds a user stays online after their last connection left.",
            _seconds("presence-grace"),
        ],
        [
            "history",
            None,
            "memory",
            "Where history is kept: memory, or sqlite:PATH (survives restarts).",
        ],
        [
            "history-size",
            None,
            1000,
            "Messages kept per org for recovery (0: none).",
            _positive_int("history-size", 0),
        ],
        [
            "history-seconds",
            None,
            300.0,
            "Seconds messages, and idle orgs' streams, are kept for recovery.",
            _seconds("history-seconds"),
        ],
        [
            "idempotency-seconds",
            None,
            300.0,
            "Seconds a notify's Idempotency-Key is remembered (retries answered once).",
            _seconds("idempotency-seconds"),
        ],
        [
            "token-expiry",
            None,
            "enforce",
            "enforce: close a connection (4001) when its token expires unless the "
            "client sent refresh_token; ignore: a connection outlives its token "
            "(for clients that cannot refresh).",
        ],
        [
            "token-expiry-grace",
            None,
            10.0,
            "Seconds past a token's exp before its connection is closed.",
            _seconds("token-expiry-grace"),
        ],
        ["log-format", None, "text", "Log format: text or json (one object per line)."],
        [
            "metrics",
            None,
            None,
            "Serve Prometheus metrics on /metrics of this endpoint of its own, "
            "e.g. tcp:9108:interface=127.0.0.1 (default: off).",
        ],
        [
            "redis",
            None,
            None,
            "Share orgs with every process on this Redis: redis://[[user]:password@]"
            "host[:port][/db] or rediss:// (or REDIS_URL; prefer it with a password).",
        ],
        [
            "redis-prefix",
            None,
            "officerouter",
            "Prefix of every Redis key and channel; processes sharing orgs share it.",
        ],
        [
            "redis-wait",
            None,
            10.0,
            "Seconds to wait for Redis at start before giving up (exit 1).",
            _number("redis-wait", 0),
        ],
        [
            "redis-outage",
            None,
            30.0,
            "Seconds without Redis after which connections are closed with 1012.",
            _number("redis-outage", 1),
        ],
        [
            "heartbeat-timeout",
            None,
            10.0,
            "Seconds after which a silent process's users leave presence (cluster).",
            _number("heartbeat-timeout", 3),
        ],
        [
            "workers",
            None,
            None,
            "Run N worker processes on one port, or auto: one per core (needs --redis).",
            _workers,
        ],
        [
            "node-id",
            None,
            None,
            "Name of this process in logs, presence and /healthz "
            "(default: host name and pid).",
        ],
        [
            "adopt-fd",
            None,
            None,
            "Internal, set by --workers: serve on this inherited listening socket.",
            _positive_int("adopt-fd", 0),
        ],
    ]

    def postOptions(self) -> None:
        if self["port"] is None:
            self["port"] = DEV_PORT if self["dev"] else DEFAULT_PORT
        if self["log-format"] not in ("text", "json"):
            raise usage.UsageError("--log-format must be text or json")
        if self["token-expiry"] not in ("enforce", "ignore"):
            raise usage.UsageError("--token-expiry must be enforce or ignore")
        if self["soft-buffer-bytes"] >= self["hard-buffer-bytes"]:
            raise usage.UsageError(
                "--soft-buffer-bytes must be below --hard-buffer-bytes"
            )
        history = self["history"]
        if history != "memory" and not (
            history.startswith("sqlite:") and history[len("sqlite:") :]
        ):
            raise usage.UsageError("--history must be memory or sqlite:PATH")
        if self["node-id"] is not None and not NODE_ID.match(self["node-id"]):
            raise usage.UsageError(
                "--node-id must be 1 to 64 letters, digits, '.', '_' or '-'"
            )
        if not re.match(r"^[A-Za-z0-9._:-]{1,64}$", self["redis-prefix"]):
            raise usage.UsageError(
                "--redis-prefix must be 1 to 64 letters, digits, '.', '_', ':' or '-'"
            )
        if self["workers"] is not None and self["adopt-fd"] is not None:
            raise usage.UsageError("--workers and --adopt-fd exclude each other")
        if self["log-format"] == "json" and self.parent is not None:
            # twistd reads its "logger" option after ours are parsed.
            self.parent["logger"] = "officerouter.logs.json_observer"


def when_quiet(
    connections: InFlight[Any],
    requests: InFlight[Any],
    reactor: IReactorTime,
    timeout: float,
) -> defer.Deferred[None]:
    """Fire once no WebSocket and no HTTP request is left, or after ``timeout``."""
    idle = defer.gatherResults([connections.when_idle(), requests.when_idle()])
    idle.addTimeout(timeout, reactor, onTimeoutCancel=lambda *_: None)
    return idle.addCallback(lambda _: None)


class RouterService(service.Service):
    """The router's life: open the history store before the daemon listens; on
    stop, refuse new handshakes, close every WebSocket with 1001, wait (bounded)
    until no connection and no HTTP request is left, then write the history's
    last state.

    A notify still arriving during the stop is answered, numbered and kept.
    """

    def __init__(
        self,
        registry: OrgRegistry,
        factory: OfficeServerFactory,
        in_flight: InFlight[Any],
        reactor: IReactorTime,
        timeout: float,
    ) -> None:
        self._registry = registry
        self._factory = factory
        self._in_flight = in_flight
        self._reactor = reactor
        self._timeout = timeout

    def startService(self) -> None:
        super().startService()
        try:
            self._registry.start()
        except StoreError as e:
            raise SystemExit(f"officerouter: --history: {e}") from None

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        log.info(
            "stopping: closing {count} connections",
            count=len(self._factory.live),
        )
        self._factory.stopping = True
        self._registry.close_all(codes.CLOSE_GOING_AWAY, codes.REASON_SHUTDOWN)
        quiet = when_quiet(
            self._factory.live, self._in_flight, self._reactor, self._timeout
        )
        return quiet.addCallback(lambda _: self._registry.stop())


def history_store(option: str, reactor: Any) -> HistoryStore:
    """The store ``--history`` names: ``memory`` or ``sqlite:PATH``."""
    if option == "memory":
        return MemoryStore()
    path = Path(option[len("sqlite:") :]).expanduser()
    if not path.parent.is_dir():
        raise SystemExit(
            f"officerouter: --history: directory {path.parent} does not exist; "
            "create it or choose another path"
        )
    return SQLiteStore(path.absolute(), clock=reactor, runner=PoolRunner(reactor))


class GracefulStop:
    """Stop the reactor once, gracefully, whatever asks first.

    A terminal's Ctrl+C reaches a whole process group, so a ``--workers`` child
    gets SIGINT from the terminal and SIGTERM from its parent; a second request
    while stopping is logged and ignored (the reactor refuses a second stop).
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self.stopping = False

    def __call__(self, why: str, **fields: str) -> None:
        """Stop, saying why; ``fields`` go into the log event (``signal``)."""
        if self.stopping:
            log.info("{why}: already shutting down", why=why, **fields)
            return
        self.stopping = True
        log.info("{why}, shutting down", why=why, **fields)
        self._reactor.stop()


def exit_cleanly_on_signals(reactor: Any) -> GracefulStop:
    """Stop gracefully on SIGTERM and SIGINT, and exit with status 0.

    twistd's own handlers re-raise the signal after shutdown, so the process
    would end "killed by SIGTERM"; a graceful stop is a success for us.
    Installed once the reactor runs, over twistd's handlers.

    :returns: the stop the handlers call, for others to share.
    """
    stop = GracefulStop(reactor)

    def handler(number: int, frame: object) -> None:
        name = signal.Signals(number).name
        reactor.callFromThread(stop, f"received {name}", signal=name)

    def install() -> None:
        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    reactor.callWhenRunning(install)
    return stop


def limits_from(options: usage.Options) -> Limits:
    """The :class:`Limits` the options ask for."""
    return Limits(
        max_message_bytes=options["max-message-bytes"],
        max_body_bytes=options["max-body-bytes"],
        rate=options["rate"],
        burst=options["burst"],
        flood_seconds=options["flood-seconds"],
        max_connections_per_user=options["max-connections-per-user"],
        max_connections_per_org=options["max-connections-per-org"],
        max_connections=options["max-connections"],
        soft_buffer_bytes=options["soft-buffer-bytes"],
        hard_buffer_bytes=options["hard-buffer-bytes"],
        socket_send_buffer=options["socket-send-buffer"],
    )


def resolve_env_file(option: str | None, cwd: Path) -> Path | None:
    """The env file to read: the option's, else ``.dev.vars`` when it exists."""
    if option:
        return Path(option)
    default = cwd / DEFAULT_ENV_FILE
    return default if default.exists() else None


def write_dev_vars(path: Path) -> None:
    """Create ``path`` (mode 0600) with fresh keys; never overwrite.

    :raises ConfigError: when it exists already.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(
            "CONN_JWT_PUBLIC_KEY",
            f"{path} exists but sets no keys; add them, or remove the file and "
            "run --dev again to generate it",
        ) from None
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(dev_vars())


def _dev_banner(env_file: Path, port: str) -> str:
    parts = port.split(":")
    http_port = parts[1] if parts[0] == "tcp" and len(parts) > 1 else "<port>"
    tool = Path(sys.executable).parent / "officerouter"
    return f"""\
officerouter: development mode; keys and service token are in {env_file}
  get a token:  TOKEN=$({tool} token test-user-1 org-123 member --env-file {env_file})
  connect:      wscat -c ws://localhost:{http_port}/websocket -s "$TOKEN"
  notify:       set -a; . {env_file}; set +a
                curl -X POST "http://localhost:{http_port}/internal/notify" \\
                  -H "Content-Type: application/json" \\
                  -H "CF-Access-Client-Id: $CF_ACCESS_CLIENT_ID" \\
                  -H "CF-Access-Client-Secret: $CF_ACCESS_CLIENT_SECRET" \\
                  -d '{{"orgId":"org-123","routing":"broadcast","type":"room_updated","payload":{{"roomId":"room-1","name":"Main Hall"}}}}'
"""


def prepare_settings(
    options: usage.Options, environ: dict[str, str], cwd: Path
) -> Settings:
    """Resolve the env file, generate dev keys when asked, and load settings.

    :raises ConfigError: for missing or malformed configuration.
    """
    if options["redis"]:
        # The option wins over the environment and the env file.
        environ = {**environ, "REDIS_URL": options["redis"]}
    env_file = resolve_env_file(options["env-file"], cwd)
    # --dev may name an env file that does not exist yet: it is generated there.
    existing = env_file if env_file is not None and env_file.exists() else None
    if options["dev"] and not has_verify_keys(environ, existing):
        target = env_file or cwd / DEFAULT_ENV_FILE
        write_dev_vars(target)
        env_file = target
        # Standard output carries nothing but JSON lines with --log-format json.
        out = sys.stderr if options["log-format"] == "json" else sys.stdout
        print(_dev_banner(target, options["port"]), file=out)
    return load_settings(environ, env_file)


class BackplaneService(service.Service):
    """The cluster's Redis: connected before the daemon listens, left after it stopped.

    Start-up waits up to ``--redis-wait`` seconds for Redis; a refused password or
    no answer in time ends the process with one line and status 1, before any
    client is accepted.  A Redis outage after start-up is survived: see
    docs/cluster.md.
    """

    def __init__(
        self,
        link: RedisLink,
        backplane: RedisBackplane,
        wait: float,
        on_ready: Any,
    ) -> None:
        self._link = link
        self._backplane = backplane
        self._wait = wait
        self._on_ready = on_ready

    def startService(self) -> None:
        super().startService()
        self._link.startService()
        self._backplane.start()
        d = self._link.when_up(self._wait)
        d.addCallbacks(lambda _: self._on_ready(), self._give_up)

    def _give_up(self, failure: Any) -> None:
        reason = failure.getErrorMessage()
        sys.stderr.write(
            f"officerouter: --redis: cannot use {self._link.target.describe()}: "
            f"{reason}\n"
        )
        sys.stderr.flush()
        # Nothing was accepted yet: there is nothing to stop gracefully.
        os._exit(1)

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        d = self._backplane.stop()
        return d.addBoth(lambda _: self._link.stopService())


class ListenWhenReady(service.Service):
    """Listen once the backplane is ready."""

    def __init__(self, listener: service.Service) -> None:
        self._listener = listener

    def ready(self) -> None:
        """The backplane is ready: listen now."""
        if self.running and not self._listener.running:
            self._listener.startService()

    def stopService(self) -> Any:
        super().stopService()
        if self._listener.running:
            return self._listener.stopService()
        return None


def listening_endpoint(options: usage.Options, reactor: Any) -> Any:
    """The endpoint ``--port`` names, or the socket ``--adopt-fd`` hands over.

    :raises SystemExit: with one line, for an endpoint that cannot be used.
    """
    if options["adopt-fd"] is not None:
        try:
            return adopted_endpoint(reactor, options["adopt-fd"])
        except ConfigError as e:
            raise SystemExit(f"officerouter: {e}") from None
    try:
        return endpoints.serverFromString(
            reactor, with_default_backlog(options["port"])
        )
    except Exception as e:  # any parser's error: a bad --port is a config error
        raise SystemExit(
            f"officerouter: --port: {options['port']!r} is not a usable endpoint "
            f"({e.__class__.__name__}: {e})"
        ) from None


#: Options the parent of --workers keeps: each worker gets its own instead.
_PARENT_ONLY = frozenset({"workers", "port", "redis", "node-id", "adopt-fd", "metrics"})


def worker_arguments(options: usage.Options) -> list[str]:
    """The officerouter options a worker is given: the parent's, except those
    it keeps (:data:`_PARENT_ONLY`) and those left at their default.

    No option holds a secret (``test_secrets_are_not_options``): secrets reach
    the workers through their environment.
    """
    args: list[str] = []
    for flag, *_ in Options.optFlags:
        if flag is not None and options[flag]:
            args.append(f"--{flag}")
    for name, _short, default, *_rest in Options.optParameters:
        value = options[name]
        if name in _PARENT_ONLY or value is None or value == default:
            continue
        args += [f"--{name}", str(value)]
    return args


def supervisor_service(
    options: usage.Options,
    reactor: Any,
    environ: Mapping[str, str],
    cwd: Path,
) -> service.IService:
    """The parent of ``--workers``: one socket, N supervised ``twistd`` workers.

    It checks what a worker would check, so that bad configuration is one line
    and exit status 1 here rather than N workers failing in a restart loop, then
    serves nobody itself: no registry, no Redis.

    :param environ: the process environment.
    :raises SystemExit: with one line, for configuration that cannot work.
    """
    try:
        env_file = resolve_env_file(options["env-file"], cwd)
        existing = env_file if env_file is not None and env_file.exists() else None
        redis = options["redis"] or configured(environ, existing, "REDIS_URL")
        if not redis:
            raise ConfigError(
                "--workers",
                "needs --redis URL (or REDIS_URL in the environment or env file): "
                "the workers share rooms, history and presence through Redis",
            )
        if options["history"] != "memory":
            raise ConfigError(
                "--history",
                "several workers cannot share one SQLite file; "
                "leave --history out with --workers",
            )
        if options["admin"]:
            raise ConfigError(
                "--admin",
                "each worker would keep its own admin sessions, and a browser's "
                "connections land on any of them; serve the admin page from a "
                "process of its own (--admin --redis on another port, without "
                "--workers; docs/operations.md, Admin page)",
            )
        twistd = Path(sys.executable).parent / "twistd"
        if not twistd.exists():
            raise ConfigError(
                "--workers", f"cannot start workers: {twistd} does not exist"
            )
        listener = parse_listener(options["port"], reactor)
        prepare_settings(options, dict(environ), cwd)
        build_catalog()
    except ConfigError as e:
        raise SystemExit(f"officerouter: {e}") from None
    node = options["node-id"] or default_node_id()
    common = (
        str(twistd),
        "--nodaemon",
        "--pidfile=",
        "officerouter",
        *worker_arguments(options),
        "--adopt-fd",
        str(WORKER_FD),
    )
    workers = [
        Worker(f"{node}-{i}", (*common, "--node-id", f"{node}-{i}"))
        for i in range(1, options["workers"] + 1)
    ]
    directory = (
        Path(tempfile.mkdtemp(prefix="officerouter-metrics-"))
        if options["metrics"] is not None
        else Path()
    )
    env = {k: v for k, v in environ.items() if k not in SYSTEMD_VARIABLES}
    if options["redis"]:
        # Through the environment: a URL may hold a password, and every
        # worker's command line is visible in ps.
        env["REDIS_URL"] = options["redis"]
    exit_cleanly_on_signals(reactor)
    top = service.MultiService()
    Supervisor(
        listener,
        workers,
        env,
        processes=reactor,
        clock=reactor,
        stop_timeout=options["shutdown-timeout"],
    ).setServiceParent(top)
    if options["metrics"] is not None:
        # One target for the machine: the parent reads each worker's metrics
        # from a private socket and labels them with the worker.
        for worker in workers:
            worker.args = (
                *worker.args,
                "--metrics",
                worker_endpoint(worker_socket(directory, worker.name)),
            )
        endpoint = metrics_endpoint(options["metrics"], reactor)
        TemporaryDirectory(directory).setServiceParent(top)
        MetricsListener(
            endpoint,
            metrics_site(WorkersResource(reactor, workers, directory)),
            options["metrics"],
        ).setServiceParent(top)
    if options["dev"]:
        sys.stdout.flush()
    return top


class TemporaryDirectory(service.Service):
    """Removes a directory made for the process (the workers' metrics sockets)
    when the process stops."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def stopService(self) -> None:
        super().stopService()
        shutil.rmtree(self.path, ignore_errors=True)


def metrics_endpoint(description: str, reactor: Any) -> Any:
    """The endpoint ``--metrics`` names.

    :raises SystemExit: with one line, for an endpoint that cannot be used.
    """
    try:
        return endpoints.serverFromString(reactor, description)
    except Exception as e:  # any parser's error: a bad --metrics is a config error
        raise SystemExit(
            f"officerouter: --metrics: {description!r} is not a usable endpoint "
            f"({e.__class__.__name__}: {e})"
        ) from None


def metrics_service(
    description: str,
    metrics: Metrics,
    registry: OrgRegistry,
    factory: OfficeServerFactory,
    reactor: Any,
    redis: RedisBackplane | None,
) -> service.IService:
    """The ``--metrics`` listener, the reactor-lag probe and the GC timer."""
    endpoint = metrics_endpoint(description, reactor)
    # Each counter's _created twin doubles the series for nothing a dashboard
    # uses (process-wide: this is the daemon, and its only registry).
    disable_created_metrics()
    # The process's CPU, memory and descriptors, and the interpreter's own
    # collection counts, as every Python exporter shows them.
    ProcessCollector(registry=metrics.registry)
    GCCollector(registry=metrics.registry)
    metrics.registry.register(
        RouterCollector(
            registry,
            factory,
            link=redis.link if redis is not None else None,
            backplane=redis,
        )
    )
    if redis is not None:
        redis.link.on_rtt = metrics.redis_rtt.observe
    top = service.MultiService()
    ReactorLag(metrics, factory.lag_probe).setServiceParent(top)
    GCPauses(metrics).setServiceParent(top)
    MetricsListener(
        endpoint, metrics_site(MetricsResource(metrics.registry)), description
    ).setServiceParent(top)
    return top


def admin_page(
    options: usage.Options,
    settings: Settings,
    registry: OrgRegistry,
    clock: IReactorTime,
    site: Callable[[], OfficeSite],
) -> AdminResource | None:
    """The admin page ``--admin`` asks for, or ``None``.

    :param site: the site it is mounted on (built later), for its counters.
    :raises SystemExit: with one line, when no admin password is configured.
    """
    if not options["admin"]:
        return None
    if settings.admin_password is None:
        raise SystemExit(
            "officerouter: ADMIN_PASSWORD_HASH: not set; --admin needs it (make "
            "one with `officerouter admin-hash`) or ADMIN_PASSWORD, in the "
            "environment or the env file"
        )
    password = settings.admin_password
    return AdminResource(
        registry,
        password,
        clock,
        counters=lambda: {"httpRequests": len(site().in_flight)},
        # An scrypt takes a tenth of a second: not on the reactor's thread.
        check=lambda given: threads.deferToThread(password.matches, given),
    )


def makeService(options: usage.Options) -> service.IService:
    """Assemble the daemon: settings, registry, WebSocket factory, site, listener.

    With ``--workers``, the parent instead: see :func:`supervisor_service`.
    """
    from twisted.internet import reactor

    if options["node-id"]:
        logs.set_node(options["node-id"])
    if options["workers"] is not None:
        return supervisor_service(options, reactor, os.environ, Path.cwd())
    # Autobahn logs through txaio.  Our adapter logs every refusal and close
    # that matters with its reason and peer, once; Autobahn's info and warn lines
    # repeat them (a refused handshake would take three lines), and its debug
    # lines quote whole handshakes, tokens included.  Keep its errors only.
    txaio.set_global_log_level("error")  # type: ignore[attr-defined]
    try:
        settings = prepare_settings(options, dict(os.environ), Path.cwd())
        catalog = build_catalog()
    except ConfigError as e:
        # Not a UsageError: twistd would print its whole usage text for that.
        raise SystemExit(f"officerouter: {e}") from None
    clock: IReactorTime = reactor
    node_id = options["node-id"] or default_node_id()
    bounds = HistoryBounds(
        size=options["history-size"],
        seconds=options["history-seconds"],
        # A replay that could not fit a slow client's buffer is refused
        # (recovered: false) rather than cut off with 1013.
        replay_bytes=options["hard-buffer-bytes"] // 2,
    )
    link: RedisLink | None = None
    backplane: Backplane
    if settings.redis is None:
        backplane = LocalBackplane(node_id, now=reactor.seconds)
    else:
        if options["history"] != "memory":
            raise SystemExit(
                "officerouter: --history: with --redis the history is kept in "
                "Redis; drop --history"
            )
        redis_backplane = RedisBackplane(
            settings.redis,
            node_id=node_id,
            prefix=options["redis-prefix"],
            bounds=bounds,
            clock=reactor,
            heartbeat_timeout=options["heartbeat-timeout"],
            presence_grace=options["presence-grace"],
            ban_memory=options["ban-memory"],
        )
        link = redis_backplane.link
        backplane = redis_backplane
    registry = OrgRegistry(
        catalog,
        clock=clock,
        auto_knock=bool(options["auto-knock"]),
        ban_memory=options["ban-memory"],
        presence_grace=options["presence-grace"],
        position_tick=options["position-tick"],
        history=bounds,
        store=history_store(options["history"], reactor),
        backplane=backplane,
        outage_close=options["redis-outage"],
    )
    verifier = TokenVerifier(
        settings.verify_keys,
        clock.seconds,
        audience=settings.audience,
        issuer=settings.issuer,
        leeway=settings.leeway_seconds,
    )
    limits = limits_from(options)
    metrics = Metrics()
    admin = admin_page(options, settings, registry, clock, lambda: site)
    factory = OfficeServerFactory(
        metrics=metrics,
        registry=registry,
        verifier=verifier,
        clock=clock,
        limits=limits,
        origins=OriginPolicy(options["allowed-origins"].split(",")),
        ping_interval=options["ping-interval"],
        ping_timeout=options["ping-timeout"],
        permessage_deflate=bool(options["permessage-deflate"]),
        direct_writes=not options["no-direct-writes"],
        token_expiry_enforced=options["token-expiry"] == "enforce",
        token_expiry_grace=options["token-expiry-grace"],
    )
    site = make_site(
        registry,
        settings,
        factory,
        max_body_bytes=limits.max_body_bytes,
        http_timeout=options["http-timeout"],
        idempotency_seconds=options["idempotency-seconds"],
        access_log=bool(options["access-log"]),
        admin=admin,
    )
    endpoint = listening_endpoint(options, reactor)
    stop = exit_cleanly_on_signals(reactor)
    top = service.MultiService()
    if options["metrics"] is not None:
        # First: it answers while Redis is awaited, and stops last.
        metrics_service(
            options["metrics"],
            metrics,
            registry,
            factory,
            reactor,
            redis_backplane if link is not None else None,
        ).setServiceParent(top)
    if options["adopt-fd"] is not None:
        parent_watch(stop).setServiceParent(top)
    listener = StreamServerEndpointService(endpoint, site)
    # MultiService starts children in order and stops them in reverse: Redis is
    # connected and the store open before anyone connects; the listener stops
    # first, Redis is left last.
    if link is not None:
        listen = ListenWhenReady(listener)
        BackplaneService(
            link, redis_backplane, options["redis-wait"], listen.ready
        ).setServiceParent(top)
    RouterService(
        registry, factory, site.in_flight, clock, options["shutdown-timeout"]
    ).setServiceParent(top)
    if not options["no-gc-freeze"]:
        # Started after the registry and the store, just before listening: what
        # start-up built is frozen before the first client arrives.
        GcPolicy(reactor, full_interval=options["gc-full-interval"]).setServiceParent(
            top
        )
    (listener if link is None else listen).setServiceParent(top)
    trim = malloc_trimmer() if options["malloc-trim-interval"] > 0 else None
    if trim is not None:
        TimerService(options["malloc-trim-interval"], trim).setServiceParent(top)
    if options["dev"]:
        sys.stdout.flush()
        sys.stderr.flush()
    return top
