"""Client JWT verification, key loading, subprotocol parsing and the service token."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from officerouter.auth import (
    MAX_TOKEN_BYTES,
    AuthError,
    Identity,
    TokenVerifier,
    load_verify_keys,
    service_token_matches,
    sign_token,
    thumbprint,
    token_from_subprotocols,
)

NOW = 1_700_000_000.0
LEEWAY = 30


def claims(**overrides: Any) -> dict[str, Any]:
    """Valid claims at NOW; ``...`` as a value leaves that claim out."""
    base: dict[str, Any] = {
        "sub": "user-1",
        "orgId": "org-a",
        "role": "member",
        "iat": int(NOW),
        "exp": int(NOW) + 300,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not ...}


def verifier(public_pem: str, **kwargs: Any) -> TokenVerifier:
    """A verifier trusting ``public_pem`` whose clock stands at NOW."""
    kwargs.setdefault("leeway", LEEWAY)
    return TokenVerifier(load_verify_keys(public_pem), lambda: NOW, **kwargs)


def refused(v: TokenVerifier, token: str) -> str:
    """The reason ``v`` gives for refusing ``token``."""
    with pytest.raises(AuthError) as info:
        v.verify(token)
    return info.value.reason


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def handmade(header: dict[str, Any], payload: dict[str, Any], key: bytes) -> str:
    """A token signed with HMAC-SHA256 by hand (PyJWT refuses PEMs as HMAC keys)."""
    signing_input = (
        f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    )
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


@pytest.fixture
def rsa_verifier(rsa_keys: tuple[str, str]) -> TokenVerifier:
    """A verifier trusting the session RSA key."""
    return verifier(rsa_keys[1])


# ---------------------------------------------------------------- algorithms


def test_valid_rs256_token(rsa_verifier, sign):
    """An RS256 token signed by the configured RSA key yields its identity."""
    identity = rsa_verifier.verify(sign(claims(role="admin")))
    assert identity == Identity(
        user_id="user-1",
        org_id="org-a",
        role="admin",
        issued_at=NOW,
        expires_at=NOW + 300,
    )


def test_valid_es256_token(ec_keys):
    """An ES256 token signed by a configured EC P-256 key is accepted."""
    private, public = ec_keys
    token = jwt.encode(claims(), private, algorithm="ES256")
    assert verifier(public).verify(token).user_id == "user-1"


def test_valid_eddsa_token(ed25519_keys):
    """An EdDSA token signed by a configured Ed25519 key is accepted."""
    private, public = ed25519_keys
    token = jwt.encode(claims(), private, algorithm="EdDSA")
    assert verifier(public).verify(token).org_id == "org-a"


def test_alg_none_is_refused(rsa_verifier):
    """An unsigned token (alg none) is refused."""
    token = jwt.encode(claims(), None, algorithm="none")
    assert refused(rsa_verifier, token) == "algorithm not allowed"


def test_hs256_with_public_key_as_secret_is_refused(rsa_keys, rsa_verifier):
    """Algorithm confusion: HS256 keyed with the public PEM is refused."""
    token = handmade({"alg": "HS256", "typ": "JWT"}, claims(), rsa_keys[1].encode())
    assert refused(rsa_verifier, token) == "algorithm not allowed"


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512", "hs256", "RS512", "PS256"])
def test_other_algorithms_are_refused(rsa_verifier, alg):
    """Only RS256, ES256 and EdDSA are accepted, whatever the signature."""
    token = handmade({"alg": alg}, claims(), b"secret")
    assert refused(rsa_verifier, token) == "algorithm not allowed"


def test_algorithm_must_match_the_key_type(rsa_keys, ec_keys, rsa_verifier):
    """An ES256 token is refused when only an RSA key is configured."""
    token = jwt.encode(claims(), ec_keys[0], algorithm="ES256")
    assert refused(rsa_verifier, token) == "algorithm does not match the key"


def test_signature_from_another_key_is_refused(foreign_rsa_keys, rsa_verifier):
    """A well-formed RS256 token signed by an untrusted key is refused."""
    token = jwt.encode(claims(), foreign_rsa_keys[0], algorithm="RS256")
    assert refused(rsa_verifier, token) == "bad signature"


def test_tampered_payload_is_refused(rsa_verifier, sign):
    """Changing the claims of a signed token breaks its signature."""
    header, _, signature = sign(claims()).split(".")
    forged = _b64(json.dumps(claims(role="owner")).encode())
    assert refused(rsa_verifier, f"{header}.{forged}.{signature}") == "bad signature"


RS256_HEADER = _b64(b'{"alg":"RS256","typ":"JWT"}')


@pytest.mark.parametrize(
    "token",
    [
        "",
        "abc",
        "a.b.c",
        "a.b",
        "....",
        "é.é.é",
        # A header that is JSON but not an object.
        _b64(b"[1]") + ".e30.c2ln",
        # A header good enough to choose the key; the rest is not a JWS.
        RS256_HEADER + ".!!!.c2ln",
        RS256_HEADER,
        # Base64 that only a lenient decoder reads: PyJWT's strict check refuses it.
        RS256_HEADER.replace("J", "+", 1) + "." + _b64(b"{}") + ".c2ln",
    ],
)
def test_malformed_tokens_are_refused(rsa_verifier, token):
    """Garbage that is not a JWS is refused as malformed."""
    assert refused(rsa_verifier, token) == "malformed token"


def _with_header(raw: bytes) -> str:
    """A token whose JOSE header segment is ``raw`` (payload and signature filler)."""
    return f"{_b64(raw)}.{_b64(b'{}')}.c2ln"


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (b'{"alg":["RS256"]}', "algorithm not allowed"),
        (b'{"alg":{}}', "algorithm not allowed"),
        (b'{"alg":1}', "algorithm not allowed"),
        (b"[" * 3000, "malformed token"),
        (b'{"alg":"RS256","kid":5}', "malformed token"),
        (b'{"alg":"RS256","kid":["k"]}', "malformed token"),
        (b'{"alg":"RS256","kid":{}}', "malformed token"),
        (b'{"alg":"RS256","kid":"\\ud800"}', "malformed token"),
        (b'{"alg":"\\udfff"}', "malformed token"),
        (b'{"alg":"RS256","n":' + b"1" * 5000 + b"}", "malformed token"),
        (b'{"alg":"HS256","alg":"RS256"}', "malformed token"),
    ],
    ids=[
        "alg-list",
        "alg-object",
        "alg-number",
        "deep",
        "kid-number",
        "kid-list",
        "kid-object",
        "kid-surrogate",
        "alg-surrogate",
        "huge-int",
        "duplicate-alg",
    ],
)
def test_malformed_headers_are_refused_with_a_reason(rsa_verifier, header, reason):
    """A JOSE header of the wrong shape is refused with a reason, never an exception."""
    assert refused(rsa_verifier, _with_header(header)) == reason


def test_token_that_is_not_ascii_is_malformed(rsa_verifier, sign):
    """Outside the header too, a character no JWS holds makes the token malformed."""
    header, payload, signature = sign(claims()).split(".")
    for token in (
        f"{header}.\ud800{payload}.{signature}",
        f"{header}.{payload}.{signature}\udc00",
        f"{header}.{payload}é.{signature}",
    ):
        assert refused(rsa_verifier, token) == "malformed token"


def test_signed_claims_nested_past_the_recursion_limit_are_malformed(
    rsa_verifier, rsa_keys
):
    """Claims too deep for Python's JSON reader are malformed, whichever PyJWT reads them."""
    deep = b'{"sub":' + b"[" * 1100 + b"]" * 1100 + b"}"
    token = jwt.PyJWS().encode(deep, rsa_keys[0], algorithm="RS256")
    assert refused(rsa_verifier, token) == "malformed token"


# ---------------------------------------------------------------- time claims


@pytest.mark.parametrize(
    ("exp", "ok"),
    [
        (NOW + 1, True),
        (NOW - LEEWAY + 1, True),
        (NOW - LEEWAY, False),
        (NOW - 3600, False),
    ],
)
def test_expiry_with_leeway(rsa_verifier, sign, exp, ok):
    """A token is accepted until its exp plus the leeway, then refused as expired."""
    token = sign(claims(exp=int(exp)))
    if ok:
        assert rsa_verifier.verify(token).expires_at == exp
    else:
        assert refused(rsa_verifier, token) == "token expired"


@pytest.mark.parametrize(
    ("nbf", "ok"),
    [(NOW, True), (NOW + LEEWAY, True), (NOW + LEEWAY + 1, False), (NOW + 3600, False)],
)
def test_not_before_with_leeway(rsa_verifier, sign, nbf, ok):
    """A token whose nbf lies beyond now plus the leeway is refused."""
    token = sign(claims(nbf=int(nbf)))
    if ok:
        assert rsa_verifier.verify(token).user_id == "user-1"
    else:
        assert refused(rsa_verifier, token) == "token not yet valid"


def test_time_comes_from_the_injected_clock(rsa_keys, sign):
    """The same token is valid or expired depending only on the injected now."""
    token = sign(claims(exp=int(NOW) + 60))
    keys = load_verify_keys(rsa_keys[1])
    now = [NOW]
    v = TokenVerifier(keys, lambda: now[0], leeway=0)
    assert v.verify(token).user_id == "user-1"
    now[0] = NOW + 60
    assert refused(v, token) == "token expired"


def test_issued_at_is_optional(rsa_verifier, sign):
    """A token without iat is accepted, with no issue time."""
    assert rsa_verifier.verify(sign(claims(iat=...))).issued_at is None


# ---------------------------------------------------------------- required claims


@pytest.mark.parametrize("claim", ["sub", "orgId", "role", "exp"])
def test_missing_required_claim(rsa_verifier, sign, claim):
    """Each of sub, orgId, role and exp is required."""
    assert (
        refused(rsa_verifier, sign(claims(**{claim: ...}))) == f"claim {claim} missing"
    )


@pytest.mark.parametrize(
    ("claim", "value"),
    [
        ("sub", 5),
        ("sub", ""),
        ("sub", "  "),
        ("sub", ["user-1"]),
        ("sub", "u" * 129),
        ("orgId", 5),
        ("orgId", ""),
        ("orgId", {"id": "org-a"}),
        ("orgId", "o" * 129),
        ("role", 1),
        ("role", ["member"]),
        ("role", True),
        ("exp", "1700000300"),
        ("exp", True),
        ("exp", [1700000300]),
        ("nbf", "0"),
        ("iat", "now"),
        ("iat", False),
    ],
)
def test_claim_of_wrong_type_is_refused(rsa_verifier, sign, claim, value):
    """A required or time claim of the wrong type is refused."""
    reason = refused(rsa_verifier, sign(claims(**{claim: value})))
    # PyJWT itself rejects a non-string sub before our own check sees it.
    assert reason in (f"claim {claim} invalid", "malformed token")


@pytest.mark.parametrize(
    "value", [1e400, -1e400, 10**400], ids=["inf", "-inf", "huge-int"]
)
def test_non_finite_time_claims_are_refused(rsa_verifier, sign, value):
    """An infinite or absurdly large exp or iat is refused, not taken as "never"."""
    for claim in ("exp", "iat"):
        # json.dumps writes Infinity, which PyJWT's reader accepts.
        token = sign(claims(**{claim: value}))
        assert refused(rsa_verifier, token) == f"claim {claim} invalid"


@pytest.mark.parametrize(
    ("claim", "value"),
    [("sub", "\ud800"), ("sub", "user-\udfff"), ("orgId", "\udbff\udbff")],
)
def test_claim_that_is_not_valid_unicode_is_refused(rsa_verifier, sign, claim, value):
    """A sub or orgId holding a lone surrogate is refused: it could never be written back."""
    reason = refused(rsa_verifier, sign(claims(**{claim: value})))
    assert reason == f"claim {claim} invalid"


def test_nan_issued_at_is_refused(rsa_verifier, sign):
    """A NaN iat would compare false against any ban time: it is refused."""
    token = sign(claims(iat=float("nan")))
    assert refused(rsa_verifier, token) == "claim iat invalid"


@pytest.mark.parametrize("role", ["superuser", "Owner", "", "guest "])
def test_unknown_role_is_refused(rsa_verifier, sign, role):
    """A role outside owner, admin, member, guest, pending_guest is refused."""
    assert refused(rsa_verifier, sign(claims(role=role))) == "claim role invalid"


@pytest.mark.parametrize("role", ["owner", "admin", "member", "guest", "pending_guest"])
def test_every_role_is_accepted(rsa_verifier, sign, role):
    """Each of the five roles is carried into the identity."""
    assert rsa_verifier.verify(sign(claims(role=role))).role == role


def test_identity_ignores_other_claims(rsa_verifier, sign):
    """Extra claims such as X-Session-Data lookalikes change nothing."""
    token = sign(claims(userId="mallory", org="org-b", admin=True))
    identity = rsa_verifier.verify(token)
    assert (identity.user_id, identity.org_id, identity.role) == (
        "user-1",
        "org-a",
        "member",
    )


# ---------------------------------------------------------------- audience and issuer


def test_audience_mismatch_when_configured(rsa_keys, sign):
    """With an audience configured, a token for another audience is refused."""
    v = verifier(rsa_keys[1], audience="officerouter")
    assert refused(v, sign(claims(aud="other"))) == "audience mismatch"
    assert refused(v, sign(claims())) == "claim aud missing"


def test_audience_accepted_when_matching(rsa_keys, sign):
    """A token naming the configured audience, alone or in a list, is accepted."""
    v = verifier(rsa_keys[1], audience="officerouter")
    assert v.verify(sign(claims(aud="officerouter"))).user_id == "user-1"
    assert v.verify(sign(claims(aud=["x", "officerouter"]))).user_id == "user-1"


def test_issuer_mismatch_when_configured(rsa_keys, sign):
    """With an issuer configured, a token from another issuer is refused."""
    v = verifier(rsa_keys[1], issuer="https://backend.example")
    assert refused(v, sign(claims(iss="https://evil.example"))) == "issuer mismatch"
    assert refused(v, sign(claims())) == "claim iss missing"


def test_issuer_accepted_when_matching(rsa_keys, sign):
    """A token from the configured issuer is accepted."""
    v = verifier(rsa_keys[1], issuer="https://backend.example")
    token = sign(claims(iss="https://backend.example"))
    assert v.verify(token).user_id == "user-1"


def test_audience_and_issuer_ignored_when_not_configured(rsa_verifier, sign):
    """Without configuration, aud and iss in a token are not checked."""
    token = sign(claims(aud="anything", iss="anyone"))
    assert rsa_verifier.verify(token).user_id == "user-1"


# ---------------------------------------------------------------- size


def test_token_over_8_kib_is_refused(rsa_verifier, sign):
    """A token longer than 8 KiB is refused before it is parsed."""
    token = sign(claims(padding="x" * MAX_TOKEN_BYTES))
    assert len(token) > MAX_TOKEN_BYTES
    assert refused(rsa_verifier, token) == "token too large"


def test_token_just_under_8_kib_is_accepted(rsa_verifier, sign):
    """A valid token up to the size limit is accepted."""
    small = sign(claims(padding=""))
    token = sign(claims(padding="x" * ((MAX_TOKEN_BYTES - len(small)) * 3 // 4 - 4)))
    assert len(token) <= MAX_TOKEN_BYTES
    assert rsa_verifier.verify(token).user_id == "user-1"


# ---------------------------------------------------------------- key ids and rotation


def _ec_private() -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(
            serialization.Encoding.PEM,
            serialization.PublicFormat.SubjectPublicKeyInfo,
        )
        .decode()
    )
    return private, public


@pytest.fixture
def rotation(rsa_keys, ec_keys, ed25519_keys) -> tuple[TokenVerifier, list[str]]:
    """A verifier trusting three keys of three types, with their thumbprint kids."""
    publics = [rsa_keys[1], ec_keys[1], ed25519_keys[1]]
    keys = load_verify_keys("\n".join(publics))
    return TokenVerifier(keys, lambda: NOW), [k.kid for k in keys]


def test_several_pem_blocks_load_in_order(rotation, rsa_keys, ec_keys, ed25519_keys):
    """Three concatenated PEM blocks give three keys of the right algorithms."""
    keys = load_verify_keys("\n".join([rsa_keys[1], ec_keys[1], ed25519_keys[1]]))
    assert [k.algorithm for k in keys] == ["RS256", "ES256", "EdDSA"]
    assert len({k.kid for k in keys}) == 3


def test_kid_selects_the_key(rotation, rsa_keys, ec_keys, ed25519_keys):
    """A token carrying a kid is verified with that key, for every configured key."""
    v, kids = rotation
    for (private, _), alg, kid in zip(
        [rsa_keys, ec_keys, ed25519_keys],
        ["RS256", "ES256", "EdDSA"],
        kids,
        strict=True,
    ):
        token = jwt.encode(claims(), private, algorithm=alg, headers={"kid": kid})
        assert v.verify(token).user_id == "user-1"


def test_token_without_kid_tries_each_key_of_its_algorithm(ec_keys):
    """Without a kid, every configured key of the token's algorithm is tried."""
    old_private, old_public = _ec_private()
    keys = load_verify_keys(old_public + ec_keys[1])
    v = TokenVerifier(keys, lambda: NOW)
    for private in (old_private, ec_keys[0]):
        assert (
            v.verify(jwt.encode(claims(), private, algorithm="ES256")).role == "member"
        )


def test_kid_of_another_key_is_refused(rotation, ec_keys):
    """A token whose kid names a different key of the same set is refused."""
    v, kids = rotation
    old_private, _ = _ec_private()
    token = jwt.encode(
        claims(), old_private, algorithm="ES256", headers={"kid": kids[1]}
    )
    assert refused(v, token) == "bad signature"


def test_unknown_kid_is_refused(rotation, ec_keys):
    """A kid that names no configured key is refused."""
    v, _ = rotation
    token = jwt.encode(claims(), ec_keys[0], algorithm="ES256", headers={"kid": "gone"})
    assert refused(v, token) == "unknown key id"


def test_kid_with_wrong_algorithm_is_refused(rotation, ec_keys):
    """A kid naming an RSA key cannot be used with an ES256 signature."""
    v, kids = rotation
    token = jwt.encode(
        claims(), ec_keys[0], algorithm="ES256", headers={"kid": kids[0]}
    )
    assert refused(v, token) == "algorithm does not match the key"


def test_sign_token_uses_the_thumbprint_kid(ec_keys):
    """sign_token labels a token with its key's RFC 7638 thumbprint."""
    private, public = ec_keys
    token = sign_token(private, user_id="u", org_id="o", role="guest", ttl=60, now=NOW)
    (key,) = load_verify_keys(public)
    assert jwt.get_unverified_header(token)["kid"] == key.kid == thumbprint(key.key)
    identity = TokenVerifier([key], lambda: NOW).verify(token)
    assert (identity.user_id, identity.org_id, identity.role) == ("u", "o", "guest")
    assert identity.expires_at == int(NOW) + 60


def test_rfc7638_thumbprint_of_a_known_key():
    """The thumbprint of the RFC 7638 section 3.1 example key is the RFC's."""
    n = (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_"
        "BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_"
        "FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI"
        "4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
    )
    jwks = json.dumps({"keys": [{"kty": "RSA", "n": n, "e": "AQAB"}]})
    (key,) = load_verify_keys(jwks)
    assert thumbprint(key.key) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


# ---------------------------------------------------------------- JWKS and bad keys


def _jwk(public_pem: str, kid: str) -> dict[str, Any]:
    key = serialization.load_pem_public_key(public_pem.encode())
    if isinstance(key, rsa.RSAPublicKey):
        jwk = RSAAlgorithm.to_jwk(key, as_dict=True)
    else:
        assert isinstance(key, ec.EllipticCurvePublicKey)
        jwk = ECAlgorithm.to_jwk(key, as_dict=True)
    return dict(jwk, kid=kid)


def test_keys_from_a_jwks_keep_their_kid(rsa_keys, ec_keys, sign):
    """A JWKS document loads every key with the kid it declares."""
    jwks = json.dumps(
        {"keys": [_jwk(rsa_keys[1], "2024-rsa"), _jwk(ec_keys[1], "2025-ec")]}
    )
    keys = load_verify_keys(jwks)
    assert [(k.kid, k.algorithm) for k in keys] == [
        ("2024-rsa", "RS256"),
        ("2025-ec", "ES256"),
    ]
    v = TokenVerifier(keys, lambda: NOW)
    assert v.verify(sign(claims(), headers={"kid": "2024-rsa"})).user_id == "user-1"
    assert refused(v, sign(claims(), headers={"kid": "2025-ec"})) == (
        "algorithm does not match the key"
    )


@pytest.mark.parametrize(
    "text",
    ["{", '{"keys": []}', '{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}', "{}"],
    ids=["broken", "empty", "hmac", "no-keys"],
)
def test_unusable_jwks_is_refused(text):
    """A JWKS that is broken, empty or holds only a symmetric key is refused."""
    with pytest.raises(ValueError, match=r"JWKS|unsupported key type"):
        load_verify_keys(text)


def test_private_key_where_a_public_one_is_expected(rsa_keys, ec_keys):
    """Giving a private key PEM is refused with a message saying so."""
    for private in (rsa_keys[0], ec_keys[0]):
        with pytest.raises(ValueError, match="private key"):
            load_verify_keys(private)


def test_private_key_among_public_ones_is_refused(rsa_keys, ec_keys):
    """One private key in a list of public keys spoils the whole list."""
    with pytest.raises(ValueError, match="private key"):
        load_verify_keys(rsa_keys[1] + ec_keys[0])


def test_rsa_key_under_2048_bits_is_refused():
    """An RSA key of 1024 bits is refused."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    pem = (
        key.public_key()
        .public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        .decode()
    )
    with pytest.raises(ValueError, match="2048"):
        load_verify_keys(pem)


@pytest.mark.parametrize("curve", [ec.SECP384R1(), ec.SECP256K1(), ec.SECP521R1()])
def test_ec_key_not_on_p256_is_refused(curve):
    """EC keys on curves other than P-256 are refused."""
    pem = (
        ec.generate_private_key(curve)
        .public_key()
        .public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        .decode()
    )
    with pytest.raises(ValueError, match="P-256"):
        load_verify_keys(pem)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not a key",
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----",
        "-----BEGIN PUBLIC KEY-----\nMIIB\n",
    ],
    ids=["empty", "text", "bad-body", "unterminated"],
)
def test_garbage_is_not_a_key(text):
    """Text without a valid PEM public key is refused."""
    with pytest.raises(ValueError, match="PEM"):
        load_verify_keys(text)


# ---------------------------------------------------------------- subprotocols


JWT_LIKE = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1In0.c2lnbmF0dXJl"


def test_single_jwt_protocol_is_echoed():
    """One offered protocol that is the JWT itself is the token and is echoed."""
    assert token_from_subprotocols([JWT_LIKE]) == (JWT_LIKE, JWT_LIKE)


@pytest.mark.parametrize("bearer", ["bearer", "Bearer", "BEARER"])
def test_bearer_form_echoes_bearer(bearer):
    """`bearer, <jwt>` yields the JWT and echoes the bearer protocol as offered."""
    assert token_from_subprotocols([bearer, JWT_LIKE]) == (JWT_LIKE, bearer)


def test_real_token_is_found(sign):
    """A real signed JWT is recognised in both forms."""
    token = sign(claims())
    assert token_from_subprotocols([token])[0] == token
    assert token_from_subprotocols(["bearer", token])[0] == token


def test_other_protocols_beside_the_token_are_ignored():
    """A token offered next to an ordinary protocol name is still found."""
    assert token_from_subprotocols(["chat", JWT_LIKE]) == (JWT_LIKE, JWT_LIKE)


@pytest.mark.parametrize(
    "offered",
    [
        [],
        ["chat"],
        ["not a token"],
        ["a.b"],
        ["bearer"],
        ["bearer", "garbage"],
        [JWT_LIKE, "bearer"],
    ],
    ids=[
        "none",
        "chat",
        "spaces",
        "two-parts",
        "bare-bearer",
        "bearer-garbage",
        "bearer-last",
    ],
)
def test_no_token_is_refused(offered):
    """Garbage, or bearer without a JWT after it, is refused."""
    with pytest.raises(AuthError):
        token_from_subprotocols(offered)


def test_several_tokens_are_refused():
    """Two JWT-shaped protocols are ambiguous and refused."""
    other = JWT_LIKE.replace("c2lnbmF0dXJl", "b3RoZXI")
    with pytest.raises(AuthError, match="several tokens"):
        token_from_subprotocols([JWT_LIKE, other])


# ---------------------------------------------------------------- service token


@pytest.mark.parametrize(
    ("given_id", "given_secret", "ok"),
    [
        (b"client", b"s3cret", True),
        (None, None, False),
        (None, b"s3cret", False),
        (b"client", None, False),
        (b"", b"", False),
        (b"client", b"wrong", False),
        (b"wrong", b"s3cret", False),
        (b"client", b"s3cret ", False),
        (b"client", b"S3CRET", False),
    ],
)
def test_service_token_matches(given_id, given_secret, ok):
    """Both the id and the secret must be given and match exactly."""
    assert service_token_matches("client", "s3cret", given_id, given_secret) is ok


def test_service_token_comparison_is_constant_time(monkeypatch):
    """Both parts go through hmac.compare_digest, even when the id is wrong."""
    calls: list[tuple[bytes, bytes]] = []
    real: Callable[[bytes, bytes], bool] = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert not service_token_matches("client", "s3cret", b"wrong", b"s3cret")
    assert calls == [(b"client", b"wrong"), (b"s3cret", b"s3cret")]
