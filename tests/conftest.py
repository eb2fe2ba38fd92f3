"""Shared fixtures: real keys and tokens, a real router on loopback, real clients.

The router fixture listens on ``tcp:0:interface=127.0.0.1``; see
:mod:`tests.loopback` for the router and client helpers.  Teardown closes every
client and waits until the server has no TCP connection left before it stops
listening: pytest does not flag a dirty reactor the way trial does.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from zope.interface import provider

import pytest_twisted
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher

from officerouter.auth import generate_key_pair, load_verify_keys
from officerouter.config import Settings
from tests.loopback import (
    SERVICE_ID,
    SERVICE_SECRET,
    Router,
    start_router,
)
from tests.redis_server import RedisServer


@pytest.fixture(scope="session")
def rsa_keys() -> tuple[str, str]:
    """A real RSA key pair (private PEM, public PEM), made once per session."""
    return generate_key_pair("rsa")


@pytest.fixture(scope="session")
def other_rsa_keys() -> tuple[str, str]:
    """A second RSA key pair the router does not trust."""
    return generate_key_pair("rsa")


@pytest.fixture
def settings(rsa_keys: tuple[str, str]) -> Settings:
    """Settings that verify tokens signed by ``rsa_keys``."""
    private_pem, public_pem = rsa_keys
    return Settings(
        verify_keys=tuple(load_verify_keys(public_pem)),
        service_client_id=SERVICE_ID,
        service_client_secret=SERVICE_SECRET,
        private_key_pem=private_pem,
    )


@pytest.fixture(scope="session")
def rsa_private_key(rsa_keys: tuple[str, str]) -> Any:
    """The private key of ``rsa_keys``, loaded once: loading checks the key, slowly."""
    return serialization.load_pem_private_key(rsa_keys[0].encode(), password=None)


@pytest.fixture
def sign(rsa_private_key: Any) -> Callable[..., str]:
    """Sign arbitrary claims (and headers) with the test private key, RS256."""

    def sign(claims: dict[str, Any], **kwargs: Any) -> str:
        kwargs.setdefault("algorithm", "RS256")
        return jwt.encode(claims, rsa_private_key, **kwargs)

    return sign


@pytest.fixture
def token(sign: Callable[..., str]) -> Callable[..., str]:
    """Make a valid client token: ``token(user, org, role, ttl=300, **extra)``."""

    def token(
        user: str = "user-1",
        org: str = "org-a",
        role: str = "member",
        ttl: int = 300,
        **extra: Any,
    ) -> str:
        now = int(time.time())
        claims = {"sub": user, "orgId": org, "role": role, "iat": now, "exp": now + ttl}
        claims.update(extra)
        return sign(claims)

    return token


@pytest.fixture
def router_options() -> dict[str, Any]:
    """Override (or parametrize) to start the router with other options."""
    return {}


@pytest.fixture
def deployment() -> str:
    """How the ``router`` runs: ``one-process``, or ``redis`` (its numbering,
    history, presence and bans in a redis-server of the test's own).

    A module whose tests must hold for both overrides it with
    :func:`both_deployments`.
    """
    return "one-process"


@pytest_twisted.async_yield_fixture
async def router(
    settings: Settings,
    router_options: dict[str, Any],
    deployment: str,
    request: pytest.FixtureRequest,
) -> AsyncIterator[Router]:
    """A real router on an ephemeral loopback port."""
    options = dict(router_options)
    if deployment == "redis":
        redis: RedisServer = request.getfixturevalue("redis_server")
        options.update(redis_url=redis.url, node_id="router")
    r = await start_router(settings, **options)
    try:
        yield r
    finally:
        # Also stops the registry, as the daemon does once its connections are
        # gone: the rooms' timers (presence grace, history expiry) are cancelled.
        await r.close()


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server of this test's own on a free port, stopped afterwards.

    The test may stop, kill and start it again (``stop``, ``kill``, ``start``).
    """
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def log_events() -> Iterator[list[LogEvent]]:
    """Every twisted.logger event published while the test runs."""
    events: list[LogEvent] = []

    @provider(ILogObserver)
    def observe(event: LogEvent) -> None:
        events.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(observe)
