"""``officerouter token``, ``keygen`` and ``admin-hash``, run in-process."""

from __future__ import annotations

import io
import time
from pathlib import Path

import jwt
import pytest

from officerouter.admin_login import AdminPassword
from officerouter.auth import Identity, TokenVerifier, load_verify_keys
from officerouter.cli import main
from officerouter.config import load_settings


def one_line(pem: str) -> str:
    """A PEM on one line with literal \\n escapes."""
    return pem.strip().replace("\n", "\\n")


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Run in an empty temporary directory with no signing key in the environment."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("JWT_PRIVATE_KEY", raising=False)
    return tmp_path


@pytest.fixture
def env_file(tmp_path: Path, rsa_keys: tuple[str, str]) -> Path:
    """An env file holding the session RSA private key, in .dev.vars form."""
    path = tmp_path / "keys.vars"
    path.write_text(f'JWT_PRIVATE_KEY="{one_line(rsa_keys[0])}"\n', encoding="utf-8")
    return path


def run_token(
    capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[str, float, float]:
    """Run ``officerouter token``; returns the token and the time bracket."""
    before = time.time()
    assert main(["token", *args]) == 0
    after = time.time()
    out, err = capsys.readouterr()
    assert err == ""
    assert out.endswith("\n")
    assert out.count("\n") == 1
    return out.strip(), before, after


def verify(token: str, public_pem: str) -> Identity:
    """Verify ``token`` with ``public_pem`` at the moment it claims it was issued."""
    issued = jwt.decode(token, options={"verify_signature": False})["iat"]
    verifier = TokenVerifier(load_verify_keys(public_pem), lambda: float(issued))
    return verifier.verify(token)


def test_token_default_claims(capsys, env_file, rsa_keys):
    """With no arguments the token is for test-user-1 in org-123 as member, for an hour."""
    token, before, after = run_token(capsys, "--env-file", str(env_file))
    identity = verify(token, rsa_keys[1])
    assert (identity.user_id, identity.org_id, identity.role) == (
        "test-user-1",
        "org-123",
        "member",
    )
    assert identity.issued_at is not None
    assert int(before) <= identity.issued_at <= after
    assert identity.expires_at == identity.issued_at + 3600


def test_token_arguments_and_ttl(capsys, env_file, rsa_keys):
    """USER_ID ORG_ID ROLE and --ttl set the claims."""
    token, _, _ = run_token(
        capsys,
        "alice",
        "org_01K2",
        "pending_guest",
        "--ttl",
        "60",
        "--env-file",
        str(env_file),
    )
    identity = verify(token, rsa_keys[1])
    assert (identity.user_id, identity.org_id, identity.role) == (
        "alice",
        "org_01K2",
        "pending_guest",
    )
    assert identity.issued_at is not None
    assert identity.expires_at == identity.issued_at + 60


def test_token_is_refused_by_another_key(capsys, env_file, foreign_rsa_keys):
    """The printed token is really signed: another RSA public key does not verify it."""
    token, _, _ = run_token(capsys, "--env-file", str(env_file))
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, foreign_rsa_keys[1], algorithms=["RS256"])


def test_token_reads_dev_vars_in_the_working_directory(capsys, isolated, rsa_keys):
    """Without --env-file, .dev.vars in the working directory is used."""
    (isolated / ".dev.vars").write_text(
        f'JWT_PRIVATE_KEY="{one_line(rsa_keys[0])}"\n', encoding="utf-8"
    )
    token, _, _ = run_token(capsys, "bob")
    assert verify(token, rsa_keys[1]).user_id == "bob"


def test_token_environment_wins_over_file(capsys, monkeypatch, env_file, ec_keys):
    """JWT_PRIVATE_KEY in the environment is used before the env file's."""
    monkeypatch.setenv("JWT_PRIVATE_KEY", one_line(ec_keys[0]))
    token, _, _ = run_token(capsys, "--env-file", str(env_file))
    assert jwt.get_unverified_header(token)["alg"] == "ES256"
    assert verify(token, ec_keys[1]).user_id == "test-user-1"


@pytest.mark.parametrize("kind", ["ec_keys", "ed25519_keys"])
def test_token_follows_the_key_type(capsys, monkeypatch, request, kind):
    """An EC key signs ES256 and an Ed25519 key EdDSA."""
    private, public = request.getfixturevalue(kind)
    monkeypatch.setenv("JWT_PRIVATE_KEY", private)
    token, _, _ = run_token(capsys)
    assert verify(token, public).role == "member"


def test_token_without_private_key(capsys):
    """No JWT_PRIVATE_KEY anywhere: exit status 1 and one line naming it."""
    assert main(["token"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("officerouter: JWT_PRIVATE_KEY: ")
    assert err.count("\n") == 1


def test_token_with_env_file_lacking_the_key(capsys, isolated):
    """An env file without JWT_PRIVATE_KEY gives the same clear error."""
    path = isolated / "other.vars"
    path.write_text("CF_ACCESS_CLIENT_ID=x\n", encoding="utf-8")
    assert main(["token", "--env-file", str(path)]) == 1
    assert "JWT_PRIVATE_KEY" in capsys.readouterr().err


@pytest.mark.parametrize(
    "value",
    [
        "not a key",
        one_line("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----"),
    ],
    ids=["text", "bad-pem"],
)
def test_token_with_malformed_private_key(capsys, monkeypatch, value):
    """A JWT_PRIVATE_KEY that is not a key: exit 1, naming the variable, no traceback."""
    monkeypatch.setenv("JWT_PRIVATE_KEY", value)
    assert main(["token"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("officerouter: JWT_PRIVATE_KEY: ")
    assert "Traceback" not in err


def test_token_with_public_key_as_private_key(capsys, monkeypatch, rsa_keys):
    """A public key given as JWT_PRIVATE_KEY is refused cleanly."""
    monkeypatch.setenv("JWT_PRIVATE_KEY", rsa_keys[1])
    assert main(["token"]) == 1
    assert capsys.readouterr().err.startswith("officerouter: JWT_PRIVATE_KEY: ")


def test_token_with_missing_env_file(capsys, isolated):
    """An --env-file that does not exist is an error naming it, status 1."""
    assert main(["token", "--env-file", str(isolated / "nope.vars")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("officerouter: --env-file: ")
    assert "nope.vars" in err


@pytest.mark.parametrize("ttl", ["0", "-5", str(7 * 86400 + 1)])
def test_token_ttl_out_of_range(capsys, env_file, ttl):
    """A --ttl below one second or above seven days is refused, status 1."""
    assert main(["token", "--ttl", ttl, "--env-file", str(env_file)]) == 1
    assert capsys.readouterr().err.startswith("officerouter: --ttl: ")


def test_token_unknown_role(capsys, env_file):
    """A role outside the five is a usage error (status 2)."""
    with pytest.raises(SystemExit) as info:
        main(["token", "u", "o", "superuser", "--env-file", str(env_file)])
    assert info.value.code == 2
    assert "superuser" in capsys.readouterr().err


def test_no_command_is_a_usage_error(capsys):
    """Running without a command prints usage and exits 2."""
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2


# ---------------------------------------------------------------- keygen


@pytest.mark.parametrize(
    ("kind", "algorithm"), [("ec", "ES256"), ("ed25519", "EdDSA"), ("rsa", "RS256")]
)
def test_keygen_output_loads_with_load_settings(capsys, isolated, kind, algorithm):
    """keygen prints a .dev.vars that load_settings accepts, and writes no file."""
    assert main(["keygen", "--type", kind]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert list(isolated.iterdir()) == []
    path = isolated / "generated.vars"
    path.write_text(out, encoding="utf-8")
    settings = load_settings({}, path)
    assert [k.algorithm for k in settings.verify_keys] == [algorithm]
    assert settings.service_client_id
    assert len(settings.service_client_secret) >= 32
    assert settings.private_key_pem is not None

    # The generated private key signs tokens its public key verifies.
    assert main(["token", "carol", "--env-file", str(path)]) == 0
    token = capsys.readouterr().out.strip()
    issued = jwt.decode(token, options={"verify_signature": False})["iat"]
    verifier = TokenVerifier(settings.verify_keys, lambda: float(issued))
    assert verifier.verify(token).user_id == "carol"


def test_keygen_defaults_to_rsa(capsys, isolated):
    """keygen makes an RSA key pair unless told otherwise."""
    assert main(["keygen"]) == 0
    path = isolated / "generated.vars"
    path.write_text(capsys.readouterr().out, encoding="utf-8")
    assert [k.algorithm for k in load_settings({}, path).verify_keys] == ["RS256"]


def test_keygen_is_fresh_each_time(capsys):
    """Two runs share no value: keys and service token are new every time."""
    outputs = []
    for _ in range(2):
        assert main(["keygen", "--type", "ec"]) == 0
        out = capsys.readouterr().out
        outputs.append(
            dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        )
    assert sorted(outputs[0]) == [
        "CF_ACCESS_CLIENT_ID",
        "CF_ACCESS_CLIENT_SECRET",
        "CONN_JWT_PUBLIC_KEY",
        "JWT_PRIVATE_KEY",
    ]
    for name, value in outputs[0].items():
        assert outputs[1][name] != value, name


def test_admin_hash_from_stdin(capsys, monkeypatch):
    """admin-hash reads a password line on stdin and prints a hash that accepts it."""
    monkeypatch.setattr("sys.stdin", io.StringIO("a long admin password\n"))
    assert main(["admin-hash"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("ADMIN_PASSWORD_HASH=scrypt$15$8$1$")
    assert "a long admin password" not in line
    stored = AdminPassword.parse_hash(line.split("=", 1)[1])
    assert stored.matches("a long admin password")
    assert not stored.matches("a long admin password\n")


def test_admin_hash_refuses_short_passwords(capsys, monkeypatch):
    """A password under 12 characters is refused with exit status 1."""
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main(["admin-hash"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "12 characters" in captured.err
