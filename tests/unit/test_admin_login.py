"""The admin page's login core: password hashes, sessions, CSRF tokens, throttling."""

from __future__ import annotations

from pathlib import Path

import pytest

from twisted.internet.task import Clock

from officerouter.admin_login import (
    AdminPassword,
    LoginThrottle,
    SessionStore,
    csrf_matches,
    hash_password,
)
from officerouter.config import ConfigError, load_settings

CHEAP = {"log2_n": 10, "r": 8, "p": 1}


def test_hash_round_trip() -> None:
    """A hash made by hash_password accepts its password and nothing else."""
    stored = AdminPassword.parse_hash(hash_password("correct horse battery", **CHEAP))
    assert stored.matches("correct horse battery")
    assert not stored.matches("correct horse batterY")
    assert not stored.matches("")


def test_hashes_are_salted() -> None:
    """The same password hashes differently each time (a random salt)."""
    assert hash_password("same password!", **CHEAP) != hash_password(
        "same password!", **CHEAP
    )


@pytest.mark.parametrize(
    "value",
    [
        "",
        "md5$abc",
        "scrypt$15$8$1$c2FsdA",
        "scrypt$x$8$1$c2FsdHNhbHQ$" + "A" * 43,
        "scrypt$40$8$1$c2FsdHNhbHQ$" + "A" * 43,
        "scrypt$15$8$1$c2FsdHNhbHQ$c2hvcnQ",
    ],
)
def test_malformed_hashes_are_refused(value: str) -> None:
    """Anything but a well-formed scrypt hash is a ValueError."""
    with pytest.raises(ValueError, match=r"scrypt|malformed|range|length"):
        AdminPassword.parse_hash(value)


def test_plain_password_matches_only_itself() -> None:
    """ADMIN_PASSWORD is compared whole (a prefix or a longer one fails)."""
    stored = AdminPassword.plain("a long enough password")
    assert stored.matches("a long enough password")
    assert not stored.matches("a long enough")
    assert not stored.matches("a long enough password!")


def test_secret_never_in_repr() -> None:
    """Neither the hash nor the salt appears in a repr (logs, tracebacks)."""
    stored = AdminPassword.parse_hash(hash_password("correct horse battery", **CHEAP))
    assert "digest" not in repr(stored)
    assert repr(stored.digest) not in repr(stored)


def _settings(environ: dict[str, str], rsa_keys: tuple[str, str]) -> object:
    base = {
        "CONN_JWT_PUBLIC_KEY": rsa_keys[1],
        "CF_ACCESS_CLIENT_ID": "id",
        "CF_ACCESS_CLIENT_SECRET": "secret",
    }
    return load_settings({**base, **environ}, None)


def test_settings_read_the_hash_from_the_env_file(
    rsa_keys: tuple[str, str], tmp_path: Path
) -> None:
    """ADMIN_PASSWORD_HASH in the env file configures the admin password."""
    env = tmp_path / "env"
    env.write_text(
        f"ADMIN_PASSWORD_HASH={hash_password('correct horse battery', **CHEAP)}\n"
    )
    base = {
        "CONN_JWT_PUBLIC_KEY": rsa_keys[1],
        "CF_ACCESS_CLIENT_ID": "id",
        "CF_ACCESS_CLIENT_SECRET": "secret",
    }
    settings = load_settings(base, env)
    assert settings.admin_password is not None
    assert settings.admin_password.matches("correct horse battery")
    assert "admin_password" not in repr(settings)


def test_settings_without_admin_password(rsa_keys: tuple[str, str]) -> None:
    """No admin variable: no admin password (the page stays off)."""
    settings = _settings({}, rsa_keys)
    assert settings.admin_password is None  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"ADMIN_PASSWORD_HASH": "nope"}, "ADMIN_PASSWORD_HASH"),
        ({"ADMIN_PASSWORD": "short"}, "ADMIN_PASSWORD"),
        (
            {"ADMIN_PASSWORD": "long enough password", "ADMIN_PASSWORD_HASH": "x"},
            "ADMIN_PASSWORD",
        ),
    ],
)
def test_settings_refuse_bad_admin_passwords(
    environ: dict[str, str], variable: str, rsa_keys: tuple[str, str]
) -> None:
    """A malformed hash, a short password or both set: a ConfigError naming it."""
    with pytest.raises(ConfigError) as caught:
        _settings(environ, rsa_keys)
    assert caught.value.variable == variable
    assert "nope" not in str(caught.value)
    assert "short" not in str(caught.value)


def test_session_lives_until_idle(clock: Clock) -> None:
    """A session used within the idle time lives on; left idle, it ends."""
    store = SessionStore(clock.seconds, idle=60, lifetime=3600)
    token, session = store.create()
    clock.advance(59)
    assert store.get(token) is session
    clock.advance(59)
    assert store.get(token) is session
    clock.advance(60)
    assert store.get(token) is None
    assert len(store) == 0


def test_session_ends_at_its_lifetime(clock: Clock) -> None:
    """However busy, a session ends its lifetime after login."""
    store = SessionStore(clock.seconds, idle=60, lifetime=150)
    token, _ = store.create()
    for _ in range(3):
        clock.advance(50)
        found = store.get(token)
    assert found is None


def test_logout_ends_the_session(clock: Clock) -> None:
    """After end(), the cookie value names no session."""
    store = SessionStore(clock.seconds)
    token, _ = store.create()
    other, _ = store.create()
    assert store.end(token)
    assert store.get(token) is None
    assert store.get(other) is not None
    assert not store.end(token)


def test_unknown_and_empty_tokens(clock: Clock) -> None:
    """A made-up or missing cookie names no session."""
    store = SessionStore(clock.seconds)
    store.create()
    assert store.get(None) is None
    assert store.get("") is None
    assert store.get("made-up") is None


def test_oldest_session_makes_room(clock: Clock) -> None:
    """Past max_sessions, the oldest session goes."""
    store = SessionStore(clock.seconds, max_sessions=2)
    first, _ = store.create()
    clock.advance(1)
    second, _ = store.create()
    clock.advance(1)
    third, _ = store.create()
    assert store.get(first) is None
    assert store.get(second) is not None
    assert store.get(third) is not None


def test_tokens_and_csrf_are_distinct_and_random(clock: Clock) -> None:
    """Each session has its own cookie and CSRF token, and they differ."""
    store = SessionStore(clock.seconds)
    token_a, a = store.create()
    token_b, b = store.create()
    assert len({token_a, token_b, a.csrf, b.csrf}) == 4
    assert len(token_a) >= 40


def test_csrf_matches_only_its_session(clock: Clock) -> None:
    """A form's token must be its own session's."""
    store = SessionStore(clock.seconds)
    _, a = store.create()
    _, b = store.create()
    assert csrf_matches(a, a.csrf)
    assert not csrf_matches(a, b.csrf)
    assert not csrf_matches(a, None)
    assert not csrf_matches(a, "")
    assert not csrf_matches(a, "é")


def test_throttle_per_peer(clock: Clock) -> None:
    """A peer gets its burst, then waits; another peer is not affected."""
    throttle = LoginThrottle(clock.seconds, per_peer=3, per_peer_seconds=30)
    assert [throttle.attempt("10.0.0.1") for _ in range(3)] == [0, 0, 0]
    assert throttle.attempt("10.0.0.1") == pytest.approx(10)
    assert throttle.attempt("10.0.0.2") == 0
    clock.advance(10)
    assert throttle.attempt("10.0.0.1") == 0
    assert throttle.attempt("10.0.0.1") == pytest.approx(10)


def test_throttle_overall(clock: Clock) -> None:
    """Many peers together are held to the overall rate."""
    throttle = LoginThrottle(clock.seconds, per_peer=5, overall=4, overall_seconds=60)
    assert [throttle.attempt(f"10.0.0.{i}") for i in range(4)] == [0, 0, 0, 0]
    assert throttle.attempt("10.0.0.99") == pytest.approx(15)
    clock.advance(15)
    assert throttle.attempt("10.0.0.99") == 0


def test_refused_attempts_are_not_counted(clock: Clock) -> None:
    """Hammering while throttled does not push the wait further out."""
    throttle = LoginThrottle(clock.seconds, per_peer=1, per_peer_seconds=10)
    assert throttle.attempt("p") == 0
    for _ in range(20):
        assert throttle.attempt("p") == pytest.approx(10)
    clock.advance(10)
    assert throttle.attempt("p") == 0


def test_success_forgives(clock: Clock) -> None:
    """After a successful login, the peer has its whole burst again."""
    throttle = LoginThrottle(clock.seconds, per_peer=2, per_peer_seconds=60)
    throttle.attempt("p")
    throttle.attempt("p")
    throttle.succeeded("p")
    assert throttle.attempt("p") == 0


def test_peer_table_is_bounded(clock: Clock) -> None:
    """The table of peers never grows past max_peers."""
    throttle = LoginThrottle(clock.seconds, max_peers=10, overall=1000)
    for i in range(100):
        throttle.attempt(f"peer-{i}")
    assert len(throttle) <= 10
