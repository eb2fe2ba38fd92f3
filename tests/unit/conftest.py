"""Unit-only fixtures: a Clock and cheap extra key pairs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from twisted.internet.task import Clock

from officerouter.auth import generate_key_pair


@pytest.fixture
def clock() -> Clock:
    """A fake reactor clock starting at zero."""
    return Clock()


@pytest.fixture(scope="session")
def foreign_rsa_keys() -> tuple[str, str]:
    """An RSA key pair that no test configuration trusts."""
    return generate_key_pair("rsa")


@pytest.fixture(scope="session")
def ec_keys() -> tuple[str, str]:
    """An EC P-256 key pair (private PEM, public PEM)."""
    return generate_key_pair("ec")


@pytest.fixture(scope="session")
def ed25519_keys() -> tuple[str, str]:
    """An Ed25519 key pair (private PEM, public PEM)."""
    return generate_key_pair("ed25519")


@pytest.fixture(scope="session")
def _rsa_private_key(rsa_keys: tuple[str, str]) -> Any:
    """The session RSA private key, loaded once."""
    return serialization.load_pem_private_key(rsa_keys[0].encode(), password=None)


@pytest.fixture
def sign(_rsa_private_key: Any) -> Callable[..., str]:
    """The shared ``sign``, with the key loaded once.

    Loading an RSA PEM checks the key (about 60 ms); signing hundreds of tokens
    with the PEM would make this suite slow.
    """

    def sign(claims: dict[str, Any], **kwargs: Any) -> str:
        kwargs.setdefault("algorithm", "RS256")
        return jwt.encode(claims, _rsa_private_key, **kwargs)

    return sign
