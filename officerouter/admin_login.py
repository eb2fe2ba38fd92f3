"""The admin page's human login: the password, sessions, CSRF tokens, throttling.  Sans-IO.

Nothing here sees a request or the reactor: time comes in as a ``now`` callable
(a ``Clock``'s ``seconds`` in tests), and :mod:`officerouter.admin` maps the
answers to HTTP.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Callable
from typing import Final, Literal

import attrs
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

#: scrypt's cost for new hashes: 2**15 x 8 x 1 takes about 32 MB and a tenth of
#: a second, and only a login pays it (the throttle bounds how often).
SCRYPT_LOG2_N: Final = 15
SCRYPT_R: Final = 8
SCRYPT_P: Final = 1
_HASH_BYTES: Final = 32
_PREFIX: Final = "scrypt"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _scrypt(password: str, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    kdf = Scrypt(salt=salt, length=_HASH_BYTES, n=2**log2_n, r=r, p=p)
    return kdf.derive(password.encode("utf-8"))


def hash_password(
    password: str,
    *,
    log2_n: int = SCRYPT_LOG2_N,
    r: int = SCRYPT_R,
    p: int = SCRYPT_P,
    salt: bytes | None = None,
) -> str:
    """The ``ADMIN_PASSWORD_HASH`` value for a password:
    ``scrypt$<log2 N>$<r>$<p>$<salt>$<hash>`` (base64url, no padding)."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = _scrypt(password, salt, log2_n, r, p)
    return f"{_PREFIX}${log2_n}${r}${p}${_b64(salt)}${_b64(digest)}"


@attrs.frozen(kw_only=True)
class AdminPassword:
    """How the admin password is checked: a scrypt hash, or the password itself
    (kept only as its SHA-256, so it is compared in constant time)."""

    scheme: Literal["scrypt", "plain"]
    digest: bytes = attrs.field(repr=False)
    salt: bytes = attrs.field(default=b"", repr=False)
    log2_n: int = 0
    r: int = 0
    p: int = 0

    @classmethod
    def plain(cls, password: str) -> AdminPassword:
        """From ``ADMIN_PASSWORD``."""
        return cls(scheme="plain", digest=hashlib.sha256(password.encode()).digest())

    @classmethod
    def parse_hash(cls, value: str) -> AdminPassword:
        """From ``ADMIN_PASSWORD_HASH``, as :func:`hash_password` writes it.

        :raises ValueError: for anything else (the message never repeats it).
        """
        parts = value.strip().split("$")
        if len(parts) != 6 or parts[0] != _PREFIX:
            raise ValueError("not scrypt$<log2 N>$<r>$<p>$<salt>$<hash>")
        try:
            log2_n, r, p = (int(x) for x in parts[1:4])
            salt, digest = _unb64(parts[4]), _unb64(parts[5])
        except ValueError:
            raise ValueError("a number or a base64url part is malformed") from None
        if not (10 <= log2_n <= 20 and 1 <= r <= 32 and 1 <= p <= 16):
            raise ValueError("the cost is out of range (log2 N 10-20, r 1-32, p 1-16)")
        if len(salt) < 8 or len(digest) != _HASH_BYTES:
            raise ValueError("the salt or the hash has the wrong length")
        return cls(scheme="scrypt", digest=digest, salt=salt, log2_n=log2_n, r=r, p=p)

    def matches(self, password: str) -> bool:
        """Whether ``password`` is the admin password (constant time)."""
        if self.scheme == "plain":
            given = hashlib.sha256(password.encode("utf-8")).digest()
        else:
            given = _scrypt(password, self.salt, self.log2_n, self.r, self.p)
        return hmac.compare_digest(given, self.digest)


@attrs.define(kw_only=True)
class AdminSession:
    """One logged-in browser."""

    key: bytes = attrs.field(repr=False)
    #: The token every form of this session carries (CSRF).
    csrf: str = attrs.field(repr=False)
    created: float
    last_seen: float


def _key(token: str) -> bytes:
    # Looked up by hash: the table never holds a usable cookie value, and the
    # lookup time says nothing about the token.
    return hashlib.sha256(token.encode("utf-8", "replace")).digest()


class SessionStore:
    """The admin sessions of this process, kept in memory.

    A session ends ``idle`` seconds after its last request, ``lifetime`` seconds
    after login, or at logout; at most ``max_sessions`` live at once (the oldest
    goes first).

    :param now: the current time.
    """

    def __init__(
        self,
        now: Callable[[], float],
        *,
        idle: float = 1800.0,
        lifetime: float = 43200.0,
        max_sessions: int = 64,
        new_token: Callable[[], str] = lambda: secrets.token_urlsafe(32),
    ) -> None:
        self._now = now
        self.idle = idle
        self.lifetime = lifetime
        self._max = max_sessions
        self._new_token = new_token
        self._sessions: dict[bytes, AdminSession] = {}

    def __len__(self) -> int:
        self._prune()
        return len(self._sessions)

    def create(self) -> tuple[str, AdminSession]:
        """Start a session: its cookie value (never stored) and the session."""
        self._prune()
        while len(self._sessions) >= self._max:
            oldest = min(self._sessions.values(), key=lambda s: s.created)
            del self._sessions[oldest.key]
        token = self._new_token()
        now = self._now()
        session = AdminSession(
            key=_key(token),
            csrf=secrets.token_urlsafe(32),
            created=now,
            last_seen=now,
        )
        self._sessions[session.key] = session
        return token, session

    def get(self, token: str | None) -> AdminSession | None:
        """The live session a cookie value names (its idle clock restarts), or ``None``."""
        if not token:
            return None
        key = _key(token)
        session = self._sessions.get(key)
        if session is None:
            return None
        now = self._now()
        if self._expired(session, now):
            del self._sessions[key]
            return None
        session.last_seen = now
        return session

    def end(self, token: str | None) -> bool:
        """Log out: forget the session a cookie value names."""
        if not token:
            return False
        return self._sessions.pop(_key(token), None) is not None

    def _expired(self, session: AdminSession, now: float) -> bool:
        return (
            now - session.last_seen >= self.idle
            or now - session.created >= self.lifetime
        )

    def _prune(self) -> None:
        now = self._now()
        for key in [k for k, s in self._sessions.items() if self._expired(s, now)]:
            del self._sessions[key]


def csrf_matches(session: AdminSession, given: str | None) -> bool:
    """Whether a form's CSRF field is its session's token (constant time)."""
    if not given:
        return False
    return hmac.compare_digest(given.encode("utf-8", "replace"), session.csrf.encode())


@attrs.define
class _Bucket:
    tokens: float
    at: float


class LoginThrottle:
    """How often passwords may be tried: per peer address and in all.

    Two token buckets: each peer may try ``per_peer`` times at once, then one
    more every ``per_peer_seconds / per_peer``; everyone together ``overall``
    times, then one every ``overall_seconds / overall``.  Every attempt counts
    (each costs a scrypt); a successful login refills its peer's bucket.

    :param now: the current time.
    """

    def __init__(
        self,
        now: Callable[[], float],
        *,
        per_peer: int = 5,
        per_peer_seconds: float = 60.0,
        overall: int = 30,
        overall_seconds: float = 60.0,
        max_peers: int = 10000,
    ) -> None:
        self._now = now
        self._peer_size = per_peer
        self._peer_rate = per_peer / per_peer_seconds
        self._all_size = overall
        self._all_rate = overall / overall_seconds
        self._max_peers = max_peers
        self._peers: dict[str, _Bucket] = {}
        self._all = _Bucket(float(overall), now())

    def __len__(self) -> int:
        """How many peers are remembered."""
        return len(self._peers)

    @staticmethod
    def _refill(bucket: _Bucket, size: int, rate: float, now: float) -> None:
        bucket.tokens = min(float(size), bucket.tokens + (now - bucket.at) * rate)
        bucket.at = now

    def attempt(self, peer: str) -> float:
        """Count an attempt from ``peer``: 0 when it may go ahead, else the
        seconds to wait before the next one (nothing is counted then)."""
        now = self._now()
        self._refill(self._all, self._all_size, self._all_rate, now)
        bucket = self._peers.get(peer)
        if bucket is None:
            if len(self._peers) >= self._max_peers:
                self._forget_full(now)
            bucket = self._peers[peer] = _Bucket(float(self._peer_size), now)
        self._refill(bucket, self._peer_size, self._peer_rate, now)
        waits = []
        if bucket.tokens < 1:
            waits.append((1 - bucket.tokens) / self._peer_rate)
        if self._all.tokens < 1:
            waits.append((1 - self._all.tokens) / self._all_rate)
        if waits:
            return max(waits)
        bucket.tokens -= 1
        self._all.tokens -= 1
        return 0.0

    def succeeded(self, peer: str) -> None:
        """A login from ``peer`` succeeded: its earlier mistakes are forgiven."""
        self._peers.pop(peer, None)

    def _forget_full(self, now: float) -> None:
        for peer, bucket in list(self._peers.items()):
            self._refill(bucket, self._peer_size, self._peer_rate, now)
            if bucket.tokens >= self._peer_size:
                del self._peers[peer]
        while len(self._peers) >= self._max_peers:
            # Still full of throttled peers: forget the oldest.
            del self._peers[next(iter(self._peers))]
