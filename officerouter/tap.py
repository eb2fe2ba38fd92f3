"""What twistd calls: the ``officerouter`` options and :func:`makeService`."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, ClassVar

from twisted.application import service
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import defer, endpoints
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python import usage

from officerouter import codes, logs
from officerouter.auth import TokenVerifier, dev_vars
from officerouter.catalog import build_catalog
from officerouter.config import (
    DEFAULT_ENV_FILE,
    ConfigError,
    Settings,
    has_verify_keys,
    load_settings,
)
from officerouter.rooms import OrgRegistry
from officerouter.web import make_site
from officerouter.websocket import OfficeServerFactory

log = Logger()

DEFAULT_PORT = "tcp:8787"


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
            "auto-knock",
            None,
            "Send guest_knock to owners and admins when a pending guest connects.",
        ],
    ]
    optParameters: ClassVar[list[list[Any]]] = [
        [
            "port",
            "p",
            DEFAULT_PORT,
            "Listening endpoint (tcp:, ssl:, systemd:, unix:).",
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
        ["log-format", None, "text", "Log format: text or json (one object per line)."],
    ]

    def postOptions(self) -> None:
        if self["log-format"] not in ("text", "json"):
            raise usage.UsageError("--log-format must be text or json")
        if self["log-format"] == "json" and self.parent is not None:
            # twistd reads its "logger" option after ours are parsed.
            self.parent["logger"] = logs.json_observer


class RouterService(service.Service):
    """Closes every WebSocket with 1001 on stop, and waits for them (bounded)."""

    def __init__(
        self, registry: OrgRegistry, reactor: IReactorTime, timeout: float
    ) -> None:
        self._registry = registry
        self._reactor = reactor
        self._timeout = timeout

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        registry = self._registry
        if not registry.connection_count:
            return defer.succeed(None)
        log.info(
            "closing {count} connections",
            count=registry.connection_count,
        )
        registry.close_all(codes.CLOSE_GOING_AWAY, codes.REASON_SHUTDOWN)
        done: defer.Deferred[None] = defer.Deferred()
        deadline = self._reactor.seconds() + self._timeout

        def check() -> None:
            if not registry.connection_count or self._reactor.seconds() >= deadline:
                done.callback(None)
            else:
                self._reactor.callLater(0.05, check)

        check()
        return done


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
    http_port = port.split(":")[1] if port.startswith("tcp:") else "8787"
    return f"""\
officerouter: development mode, keys and service token in {env_file}
  get a token:   officerouter token user-1 org-123 member --env-file {env_file}
  connect:       wscat -c ws://localhost:{http_port}/websocket -s "$TOKEN"
  notify:        . ./{env_file.name}   # or copy the values
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
    env_file = resolve_env_file(options["env-file"], cwd)
    if options["dev"] and not has_verify_keys(environ, env_file):
        target = env_file or cwd / DEFAULT_ENV_FILE
        write_dev_vars(target)
        env_file = target
        print(_dev_banner(target, options["port"]))
    return load_settings(environ, env_file)


def makeService(options: usage.Options) -> service.IService:
    """Assemble the daemon: settings, registry, WebSocket factory, site, listener."""
    from twisted.internet import reactor

    try:
        settings = prepare_settings(options, dict(os.environ), Path.cwd())
        catalog = build_catalog()
    except ConfigError as e:
        # Not a UsageError: twistd would print its whole usage text for that.
        raise SystemExit(f"officerouter: {e}") from None
    clock: IReactorTime = reactor
    registry = OrgRegistry(
        catalog,
        now=clock.seconds,
        auto_knock=bool(options["auto-knock"]),
        ban_memory=options["ban-memory"],
    )
    verifier = TokenVerifier(
        settings.verify_keys,
        clock.seconds,
        audience=settings.audience,
        issuer=settings.issuer,
        leeway=settings.leeway_seconds,
    )
    factory = OfficeServerFactory(
        registry=registry,
        verifier=verifier,
        clock=clock,
        max_message_bytes=options["max-message-bytes"],
        ping_interval=options["ping-interval"],
        ping_timeout=options["ping-timeout"],
    )
    site = make_site(
        registry, settings, factory, max_body_bytes=options["max-body-bytes"]
    )
    try:
        endpoint = endpoints.serverFromString(reactor, options["port"])
    except (ValueError, KeyError, TypeError) as e:
        raise SystemExit(
            f"officerouter: --port: {options['port']!r} is not a valid endpoint ({e})"
        ) from None
    top = service.MultiService()
    # MultiService stops children in reverse order: the listener stops first,
    # then the router closes the connections.
    RouterService(registry, clock, options["shutdown-timeout"]).setServiceParent(top)
    StreamServerEndpointService(endpoint, site).setServiceParent(top)
    if options["dev"]:
        sys.stdout.flush()
    return top
