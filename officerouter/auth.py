"""Client JWT verification and the backend's service-token check.

Pure functions and plain classes: no Twisted here.  Time comes in as a callable.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Callable, Sequence
from typing import Any, Final

import attrs
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from officerouter.codec import ContractError, is_unicode, parse_json
from officerouter.messages import MAX_ID_LENGTH, ROLES
from officerouter.messages import MAX_TOKEN_BYTES as MAX_TOKEN_BYTES

ALLOWED_ALGORITHMS: Final = frozenset({"RS256", "ES256", "EdDSA"})
# Time claims beyond this (year 285 million) are not dates.
_MAX_TIME: Final = 2**53
BEARER: Final = "bearer"

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

_PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----.*?-----END \1-----", re.DOTALL)
_JWT_SHAPE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")


class AuthError(Exception):
    """A credential was refused; ``reason`` is short and safe to show and log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@attrs.frozen
class VerifyKey:
    """A public key that verifies client tokens, with its algorithm and key id."""

    kid: str
    algorithm: str
    key: PublicKey = attrs.field(repr=False)


@attrs.frozen(kw_only=True)
class Identity:
    """Who a verified token says the client is.  The only source of identity."""

    user_id: str
    org_id: str
    role: str
    issued_at: float | None
    expires_at: float


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _int_b64(n: int) -> str:
    return _b64(n.to_bytes((n.bit_length() + 7) // 8 or 1, "big"))


def algorithm_for(key: PublicKey) -> str:
    """Return the one JWS algorithm a public key may verify.

    :raises ValueError: for key types and sizes we do not accept.
    """
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise ValueError("RSA keys must have at least 2048 bits")
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise ValueError("EC keys must be on curve P-256")
        return "ES256"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "EdDSA"
    raise ValueError(f"unsupported key type {type(key).__name__}")


def thumbprint(key: PublicKey) -> str:
    """Return the RFC 7638 JWK thumbprint of a public key: its default key id."""
    members: dict[str, str]
    if isinstance(key, rsa.RSAPublicKey):
        numbers = key.public_numbers()
        members = {"e": _int_b64(numbers.e), "kty": "RSA", "n": _int_b64(numbers.n)}
    elif isinstance(key, ec.EllipticCurvePublicKey):
        ec_numbers = key.public_numbers()
        members = {
            "crv": "P-256",
            "kty": "EC",
            "x": _b64(ec_numbers.x.to_bytes(32, "big")),
            "y": _b64(ec_numbers.y.to_bytes(32, "big")),
        }
    else:
        raw = key.public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        members = {"crv": "Ed25519", "kty": "OKP", "x": _b64(raw)}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True)
    return _b64(hashlib.sha256(canonical.encode("ascii")).digest())


def _verify_key(key: Any, kid: str | None) -> VerifyKey:
    if not isinstance(
        key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
    ):
        raise ValueError(f"unsupported key type {type(key).__name__}")
    # Check the key type first: the thumbprint assumes a supported key (a P-384
    # point does not fit its 32-byte coordinates).
    algorithm = algorithm_for(key)
    return VerifyKey(kid or thumbprint(key), algorithm, key)


def load_verify_keys(text: str) -> list[VerifyKey]:
    """Parse one or more PEM public keys, or a JWKS document, into verify keys.

    A PEM key's id is its RFC 7638 thumbprint; a JWKS key keeps its ``kid``.

    :raises ValueError: with a short description of what is wrong.
    """
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            jwks = jwt.PyJWKSet.from_json(stripped)
        except (jwt.PyJWKSetError, jwt.PyJWKError, ValueError) as e:
            raise ValueError(f"not a usable JWKS ({e.__class__.__name__})") from None
        return [_verify_key(k.key, k.key_id) for k in jwks.keys]
    blocks = list(_PEM_BLOCK.finditer(stripped))
    if not blocks:
        raise ValueError("no PEM block found")
    keys = []
    for block in blocks:
        if "PRIVATE" in block.group(1):
            raise ValueError("this is a private key; give the public key")
        try:
            key = serialization.load_pem_public_key(block.group(0).encode("ascii"))
        except (ValueError, TypeError):
            raise ValueError("a PEM block is not a valid public key") from None
        keys.append(_verify_key(key, None))
    return keys


def _claim_text(claims: dict[str, Any], name: str) -> str:
    value = claims.get(name)
    if value is None:
        raise AuthError(f"claim {name} missing")
    if (
        not isinstance(value, str)
        or not value.strip()
        or len(value) > MAX_ID_LENGTH
        or not is_unicode(value)
    ):
        raise AuthError(f"claim {name} invalid")
    return value


def _claim_time(claims: dict[str, Any], name: str, *, required: bool) -> float | None:
    value = claims.get(name)
    if value is None:
        if required:
            raise AuthError(f"claim {name} missing")
        return None
    # PyJWT's JSON reader accepts NaN, Infinity and integers of any size: an
    # infinite exp never expires, a NaN iat escapes the ban check, and a huge
    # integer overflows float().  One comparison refuses all three.
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not abs(value) <= _MAX_TIME
    ):
        raise AuthError(f"claim {name} invalid")
    return float(value)


class TokenVerifier:
    """Verify client JWTs against the configured keys.

    :param keys: the verify keys; a token with ``kid`` uses the key with that id.
    :param now: returns the current POSIX time (``reactor.seconds`` in the daemon).
    """

    def __init__(
        self,
        keys: Sequence[VerifyKey],
        now: Callable[[], float],
        *,
        audience: str | None = None,
        issuer: str | None = None,
        leeway: float = 30,
    ) -> None:
        self._keys = tuple(keys)
        self._now = now
        self._audience = audience
        self._issuer = issuer
        self._leeway = leeway
        self._jwt = jwt.PyJWT(
            options={
                # Time claims are checked below against the injected clock.
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                "verify_aud": audience is not None,
                "verify_iss": issuer is not None,
            }
        )

    def verify(self, token: str) -> Identity:
        """Return the identity a token proves.

        :raises AuthError: with a short reason, for any token we do not accept.
        """
        if len(token) > MAX_TOKEN_BYTES:
            raise AuthError("token too large")
        if not token.isascii():
            # A JWS is base64url and dots; PyJWT would fail to even encode a lone
            # surrogate to bytes.
            raise AuthError("malformed token")
        header = _unverified_header(token)
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in ALLOWED_ALGORITHMS:
            raise AuthError("algorithm not allowed")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise AuthError("malformed token")
        candidates = self._keys
        if kid is not None:
            candidates = tuple(k for k in self._keys if k.kid == kid)
            if not candidates:
                raise AuthError("unknown key id")
        candidates = tuple(k for k in candidates if k.algorithm == alg)
        if not candidates:
            raise AuthError("algorithm does not match the key")
        claims = self._decode(token, alg, candidates)
        return self._identity(claims)

    def _decode(
        self, token: str, alg: str, keys: Sequence[VerifyKey]
    ) -> dict[str, Any]:
        for key in keys:
            try:
                claims: dict[str, Any] = self._jwt.decode(
                    token,
                    key.key,
                    algorithms=[alg],
                    audience=self._audience,
                    issuer=self._issuer,
                )
            except jwt.InvalidSignatureError:
                continue
            except (jwt.InvalidAudienceError, jwt.MissingRequiredClaimError) as e:
                claim = getattr(e, "claim", "aud")
                raise AuthError(
                    f"claim {claim} missing"
                    if isinstance(e, jwt.MissingRequiredClaimError)
                    else "audience mismatch"
                ) from None
            except jwt.InvalidIssuerError:
                raise AuthError("issuer mismatch") from None
            except jwt.InvalidTokenError:
                raise AuthError("malformed token") from None
            except (ValueError, RecursionError):
                # Claims PyJWT's own JSON reader chokes on: older releases let a
                # RecursionError (deep nesting) through unconverted.
                raise AuthError("malformed token") from None
            return claims
        raise AuthError("bad signature")

    def _identity(self, claims: dict[str, Any]) -> Identity:
        user_id = _claim_text(claims, "sub")
        org_id = _claim_text(claims, "orgId")
        role = claims.get("role")
        if role is None:
            raise AuthError("claim role missing")
        if role not in ROLES:
            raise AuthError("claim role invalid")
        exp = _claim_time(claims, "exp", required=True)
        assert exp is not None
        nbf = _claim_time(claims, "nbf", required=False)
        iat = _claim_time(claims, "iat", required=False)
        now = self._now()
        if exp <= now - self._leeway:
            raise AuthError("token expired")
        if nbf is not None and nbf > now + self._leeway:
            raise AuthError("token not yet valid")
        return Identity(
            user_id=user_id, org_id=org_id, role=role, issued_at=iat, expires_at=exp
        )


def _unverified_header(token: str) -> dict[str, Any]:
    """The JOSE header, read only to choose the key; PyJWT checks it all again.

    ``jwt.get_unverified_header`` would parse the whole token (signature included,
    character by character in Python) once more before ``decode`` does.  The
    header is read by the service's one strict JSON reader: nesting, integer
    length and lone surrogates are bounded before anything looks inside.

    :raises AuthError: ``malformed token``.
    """
    segment, dot, _ = token.partition(".")
    try:
        if not dot:
            raise ValueError("no payload")
        header = parse_json(
            base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        )
    except (ValueError, ContractError):  # base64, UTF-8 and JSON errors alike
        raise AuthError("malformed token") from None
    if not isinstance(header, dict):
        raise AuthError("malformed token")
    return header


def token_from_subprotocols(offered: Sequence[str]) -> tuple[str, str]:
    """Find the JWT among the offered ``Sec-WebSocket-Protocol`` values.

    Two forms are accepted: ``bearer, <jwt>`` (``bearer`` is echoed) and a single
    protocol that is the JWT itself (it is echoed).

    :returns: ``(token, protocol_to_echo)``.
    :raises AuthError: when no token is offered in either form.
    """
    lowered = [p.lower() for p in offered]
    if BEARER in lowered:
        i = lowered.index(BEARER)
        if i + 1 < len(offered) and _JWT_SHAPE.match(offered[i + 1]):
            return offered[i + 1], offered[i]
        raise AuthError("no token after bearer in Sec-WebSocket-Protocol")
    tokens = [p for p in offered if _JWT_SHAPE.match(p)]
    if len(tokens) == 1:
        return tokens[0], tokens[0]
    if len(tokens) > 1:
        raise AuthError("several tokens in Sec-WebSocket-Protocol")
    raise AuthError("no token in Sec-WebSocket-Protocol")


def service_token_matches(
    expected_id: str,
    expected_secret: str,
    given_id: bytes | None,
    given_secret: bytes | None,
) -> bool:
    """Compare the backend's service token in constant time (both parts always)."""
    id_ok = hmac.compare_digest(expected_id.encode(), given_id or b"")
    secret_ok = hmac.compare_digest(expected_secret.encode(), given_secret or b"")
    return id_ok and secret_ok


# ---------------------------------------------------------------- tools and dev mode


def load_private_key(pem: str) -> PrivateKey:
    """Load a PEM private key of a supported type.

    :raises ValueError: when it is not one.
    """
    try:
        key = serialization.load_pem_private_key(pem.encode("ascii"), password=None)
    except (ValueError, TypeError, UnicodeEncodeError):
        raise ValueError("not a valid unencrypted PEM private key") from None
    if not isinstance(
        key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
    ):
        raise ValueError(f"unsupported key type {type(key).__name__}")
    algorithm_for(key.public_key())
    return key


def sign_token(
    private_pem: str,
    *,
    user_id: str,
    org_id: str,
    role: str,
    ttl: int,
    now: float,
) -> str:
    """Sign a client token the way the backend does (``sub``, ``orgId``, ``role``)."""
    key = load_private_key(private_pem)
    public = key.public_key()
    claims = {
        "sub": user_id,
        "orgId": org_id,
        "role": role,
        "iat": int(now),
        "exp": int(now) + ttl,
    }
    return jwt.encode(
        claims,
        key,
        algorithm=algorithm_for(public),
        headers={"kid": thumbprint(public)},
    )


def generate_key_pair(kind: str = "rsa") -> tuple[str, str]:
    """Generate a fresh key pair; returns ``(private_pem, public_pem)``."""
    private: PrivateKey
    if kind == "rsa":
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif kind == "ec":
        private = ec.generate_private_key(ec.SECP256R1())
    elif kind == "ed25519":
        private = ed25519.Ed25519PrivateKey.generate()
    else:
        raise ValueError(f"unknown key kind {kind!r}; use rsa, ec or ed25519")
    private_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")
    public_pem = (
        private.public_key()
        .public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        .decode("ascii")
    )
    return private_pem, public_pem


def dev_vars(kind: str = "rsa") -> str:
    """Return a fresh ``.dev.vars`` file: key pair and service token, PEMs on one line."""
    private_pem, public_pem = generate_key_pair(kind)

    def one_line(pem: str) -> str:
        return pem.strip().replace("\n", "\\n")

    return (
        "# Generated by officerouter. Development only: keep this file private.\n"
        f'CF_ACCESS_CLIENT_ID="dev-{secrets.token_hex(8)}"\n'
        f'CF_ACCESS_CLIENT_SECRET="{secrets.token_urlsafe(32)}"\n'
        f'CONN_JWT_PUBLIC_KEY="{one_line(public_pem)}"\n'
        f'JWT_PRIVATE_KEY="{one_line(private_pem)}"\n'
    )
