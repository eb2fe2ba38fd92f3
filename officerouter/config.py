"""Configuration: one pure function turns an environment and an env file into Settings.

Names are those of the original deployment (``CONN_JWT_PUBLIC_KEY``,
``CF_ACCESS_CLIENT_ID``...); docs/configuration.md lists them all.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import unquote, urlsplit

import attrs

from officerouter.admin_login import AdminPassword
from officerouter.auth import VerifyKey, load_verify_keys

DEFAULT_ENV_FILE = ".dev.vars"

_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")
# A quoted value, optionally followed by a comment: KEY="a b"  # note
_QUOTED = re.compile(r"^([\"'])(.*?)\1(?:\s+#.*)?$")


def default_node_id() -> str:
    """This process's default name (``--node-id``): its host name and pid."""
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:40] or "node"
    return f"{host}-{os.getpid()}"


class ConfigError(Exception):
    """Configuration that cannot work: names the variable and how to fix it."""

    def __init__(self, variable: str, fix: str) -> None:
        super().__init__(variable, fix)
        self.variable = variable
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.variable}: {self.fix}"


@attrs.frozen(kw_only=True)
class RedisTarget:
    """Where the Redis server shared by every process is (``--redis``/``REDIS_URL``)."""

    host: str
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = attrs.field(default=None, repr=False)
    tls: bool = False

    def describe(self) -> str:
        """The URL without its credentials, safe for logs."""
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{self.host}:{self.port}/{self.db}"


def parse_redis_url(value: str, variable: str = "REDIS_URL") -> RedisTarget:
    """Parse ``redis://[[user]:password@]host[:port][/db]`` (``rediss://`` for TLS).

    :raises ConfigError: naming ``variable``; the message never repeats the URL,
        which may hold a password.
    """
    fix = "use redis://[[user]:password@]host[:port][/db] or rediss:// for TLS"
    try:
        parts = urlsplit(value.strip())
        port = parts.port or 6379
    except ValueError:
        raise ConfigError(variable, f"not a Redis URL; {fix}") from None
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ConfigError(variable, f"not a Redis URL; {fix}")
    if parts.query or parts.fragment:
        raise ConfigError(variable, f"query and fragment are not supported; {fix}")
    path = parts.path.strip("/")
    if path and not (path.isdigit() and path.isascii() and int(path) <= 1_000_000):
        raise ConfigError(variable, f"the database must be a number; {fix}")
    return RedisTarget(
        host=parts.hostname,
        port=port,
        db=int(path or 0),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        tls=parts.scheme == "rediss",
    )


@attrs.frozen(kw_only=True)
class Settings:
    """Everything the daemon needs from its environment, validated."""

    verify_keys: tuple[VerifyKey, ...] = attrs.field(repr=False)
    service_client_id: str = attrs.field(repr=False)
    service_client_secret: str = attrs.field(repr=False)
    private_key_pem: str | None = attrs.field(default=None, repr=False)
    audience: str | None = None
    issuer: str | None = None
    leeway_seconds: int = 30
    #: The shared Redis of a cluster; ``None``: one process, nothing shared.
    redis: RedisTarget | None = attrs.field(default=None, repr=False)
    #: How the admin page's password is checked; ``None``: no admin page.
    admin_password: AdminPassword | None = attrs.field(default=None, repr=False)


def unescape_pem(value: str) -> str:
    """Turn a PEM written on one line with literal ``\\n`` escapes into real lines."""
    return value.replace("\\r\\n", "\n").replace("\\n", "\n").strip() + "\n"


def read_env_file(path: Path) -> dict[str, str]:
    """Read a ``.dev.vars`` / dotenv style file: ``KEY=VALUE`` lines, ``#`` comments.

    Values may be wrapped in single or double quotes; escapes are left as they are
    (PEM values are unescaped where they are used, by :func:`unescape_pem`).

    :raises ConfigError: for a line that is not ``KEY=VALUE`` or an unreadable file.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(
            "--env-file", f"cannot read {path}: {e.__class__.__name__}"
        ) from None
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if match is None:
            raise ConfigError(
                "--env-file", f"{path} line {number} is not KEY=VALUE; fix or remove it"
            )
        key, value = match.group(1), match.group(2)
        quoted = _QUOTED.match(value)
        if quoted is not None:
            value = quoted.group(2)
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        values[key] = value
    return values


def _merged(environ: Mapping[str, str], env_file: Path | None) -> dict[str, str]:
    values = read_env_file(env_file) if env_file is not None else {}
    # The environment wins over the file.
    values.update({k: v for k, v in environ.items() if v != ""})
    return values


def configured(
    environ: Mapping[str, str], env_file: Path | None, name: str
) -> str | None:
    """One variable as :func:`load_settings` sees it: the environment over the
    file, the empty string as unset.

    :raises ConfigError: for an unreadable or malformed env file.
    """
    return _merged(environ, env_file).get(name) or None


def has_verify_keys(environ: Mapping[str, str], env_file: Path | None) -> bool:
    """Tell whether client-token verification keys are configured at all."""
    values = _merged(environ, env_file)
    return bool(
        values.get("CONN_JWT_PUBLIC_KEY") or values.get("CONN_JWT_PUBLIC_KEY_FILE")
    )


def _verify_keys(values: Mapping[str, str]) -> tuple[VerifyKey, ...]:
    keys: list[VerifyKey] = []
    inline = values.get("CONN_JWT_PUBLIC_KEY")
    if inline:
        try:
            keys.extend(load_verify_keys(unescape_pem(inline)))
        except ValueError as e:
            raise ConfigError(
                "CONN_JWT_PUBLIC_KEY",
                f"{e}; give one or more PEM public keys (RSA, EC P-256 or Ed25519) "
                "or a JWKS, with \\n escapes if on one line",
            ) from None
    path = values.get("CONN_JWT_PUBLIC_KEY_FILE")
    if path:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(
                "CONN_JWT_PUBLIC_KEY_FILE",
                f"cannot read {path} ({e.__class__.__name__}); point it at a PEM file",
            ) from None
        try:
            keys.extend(load_verify_keys(text))
        except ValueError as e:
            raise ConfigError(
                "CONN_JWT_PUBLIC_KEY_FILE",
                f"{path}: {e}; it must hold PEM public keys or a JWKS",
            ) from None
    if not keys:
        raise ConfigError(
            "CONN_JWT_PUBLIC_KEY",
            "not set; set it to the PEM public key that verifies client tokens "
            "(or CONN_JWT_PUBLIC_KEY_FILE to a file holding it), "
            "or run with --dev to generate a development key pair",
        )
    kids = [k.kid for k in keys]
    if len(set(kids)) != len(kids):
        raise ConfigError("CONN_JWT_PUBLIC_KEY", "the same key id appears twice")
    return tuple(keys)


def _required(values: Mapping[str, str], name: str, what: str) -> str:
    value = values.get(name, "")
    if not value.strip():
        raise ConfigError(name, f"not set; set it to {what}")
    return value


def _admin_password(values: Mapping[str, str]) -> AdminPassword | None:
    hashed = values.get("ADMIN_PASSWORD_HASH")
    plain = values.get("ADMIN_PASSWORD")
    if hashed and plain:
        raise ConfigError(
            "ADMIN_PASSWORD", "set ADMIN_PASSWORD_HASH or ADMIN_PASSWORD, not both"
        )
    if hashed:
        try:
            return AdminPassword.parse_hash(hashed)
        except ValueError as e:
            raise ConfigError(
                "ADMIN_PASSWORD_HASH",
                f"{e}; make one with `officerouter admin-hash`",
            ) from None
    if plain is not None:
        if len(plain) < 12:
            raise ConfigError(
                "ADMIN_PASSWORD",
                "must be at least 12 characters; prefer ADMIN_PASSWORD_HASH",
            )
        return AdminPassword.plain(plain)
    return None


def load_settings(environ: Mapping[str, str], env_file: Path | None) -> Settings:
    """Build :class:`Settings` from an environment and an optional env file.

    :param environ: the process environment (tests pass a dict).
    :param env_file: a ``.dev.vars`` style file, or ``None``; the environment wins.
    :raises ConfigError: naming the first variable that is missing or malformed.
    """
    values = _merged(environ, env_file)
    verify_keys = _verify_keys(values)
    client_id = _required(
        values, "CF_ACCESS_CLIENT_ID", "the service token id the backend sends"
    )
    client_secret = _required(
        values, "CF_ACCESS_CLIENT_SECRET", "the service token secret the backend sends"
    )
    private_key = values.get("JWT_PRIVATE_KEY")
    leeway_text = values.get("CONN_JWT_LEEWAY_SECONDS", "30")
    try:
        leeway = int(leeway_text)
        if not 0 <= leeway <= 300:
            raise ValueError(leeway)
    except ValueError:
        raise ConfigError(
            "CONN_JWT_LEEWAY_SECONDS", "must be a whole number of seconds, 0 to 300"
        ) from None
    redis_url = values.get("REDIS_URL")
    redis = parse_redis_url(redis_url, "--redis / REDIS_URL") if redis_url else None
    return Settings(
        redis=redis,
        admin_password=_admin_password(values),
        verify_keys=verify_keys,
        service_client_id=client_id,
        service_client_secret=client_secret,
        private_key_pem=unescape_pem(private_key) if private_key else None,
        audience=values.get("CONN_JWT_AUDIENCE") or None,
        issuer=values.get("CONN_JWT_ISSUER") or None,
        leeway_seconds=leeway,
    )
