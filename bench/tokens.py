#!/usr/bin/env python3
"""Make the benchmark's own RSA key pair and one RS256 JWT per simulated user.

    python bench/tokens.py --keys DIR --out FILE --users N [--orgs K] [--ttl SECONDS]

Writes ``DIR/private.pem`` and ``DIR/public.pem`` when they do not exist yet (a new
pair removes the token files signed by the old one), then ``FILE``: line ``i`` is a
token for user ``u<i>`` in org ``bench-org-<i mod K>``, role ``member``, with ``iat``
and ``exp``. The load generator offers line ``i`` as client ``i``'s
Sec-WebSocket-Protocol. Needs PyJWT and cryptography (officerouter's own deps).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

ORG_PREFIX = "bench-org-"
PRIVATE = "private.pem"
PUBLIC = "public.pem"


def org_of(user: int, orgs: int) -> str:
    """The org of simulated user ``user`` when tokens span ``orgs`` orgs."""
    return f"{ORG_PREFIX}{user % orgs}"


def ensure_keys(keys: Path) -> tuple[bytes, str]:
    """Load the key pair in ``keys``, making one (mode 0600) when missing.

    :returns: the private key PEM and the public key PEM.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    keys.mkdir(parents=True, exist_ok=True)
    private_path, public_path = keys / PRIVATE, keys / PUBLIC
    if not (private_path.exists() and public_path.exists()):
        for stale in keys.glob("tokens-*.txt"):
            stale.unlink()
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        private_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        public_pem = key.public_key().public_bytes(
            serialization.Encoding.PEM,
            serialization.PublicFormat.SubjectPublicKeyInfo,
        )
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(private_pem)
        public_path.write_bytes(public_pem)
    return private_path.read_bytes(), public_path.read_text()


def write_tokens(
    keys: Path, out: Path, users: int, orgs: int = 1, ttl: int = 6 * 3600
) -> Path:
    """Sign ``users`` tokens spread over ``orgs`` orgs into ``out``, one per line."""
    import jwt
    from cryptography.hazmat.primitives import serialization

    if users < 1 or orgs < 1 or orgs > users:
        raise ValueError("need 1 <= orgs <= users")
    private_pem, _ = ensure_keys(keys)
    key = serialization.load_pem_private_key(private_pem, password=None)
    now = int(time.time())
    tmp = out.with_suffix(".tmp")
    with tmp.open("w", encoding="ascii") as f:
        for i in range(users):
            claims = {
                "sub": f"u{i}",
                "orgId": org_of(i, orgs),
                "role": "member",
                "iat": now,
                "exp": now + ttl,
            }
            f.write(jwt.encode(claims, key, algorithm="RS256") + "\n")  # type: ignore[arg-type]
    tmp.replace(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=Path, required=True, help="key pair directory")
    parser.add_argument("--out", type=Path, required=True, help="token file to write")
    parser.add_argument("--users", type=int, required=True)
    parser.add_argument("--orgs", type=int, default=1)
    parser.add_argument("--ttl", type=int, default=6 * 3600, help="seconds")
    args = parser.parse_args()
    t0 = time.monotonic()
    write_tokens(args.keys, args.out, args.users, args.orgs, args.ttl)
    print(
        f"{args.users} tokens over {args.orgs} org(s) in {args.out} "
        f"({time.monotonic() - t0:.1f} s)"
    )


if __name__ == "__main__":
    main()
