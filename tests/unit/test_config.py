"""Configuration: the env file reader and load_settings, from dicts and temp files."""

from __future__ import annotations

from pathlib import Path

import pytest

from officerouter.auth import load_verify_keys
from officerouter.config import (
    ConfigError,
    Settings,
    has_verify_keys,
    load_settings,
    parse_redis_url,
    read_env_file,
    unescape_pem,
)


def one_line(pem: str) -> str:
    """A PEM written on one line with literal \\n escapes, as in .dev.vars."""
    return pem.strip().replace("\n", "\\n")


def write(tmp_path: Path, text: str, name: str = ".dev.vars") -> Path:
    """Write ``text`` to a file under ``tmp_path``; returns its path."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def environ(rsa_keys: tuple[str, str]) -> dict[str, str]:
    """A complete, valid environment."""
    return {
        "CONN_JWT_PUBLIC_KEY": rsa_keys[1],
        "CF_ACCESS_CLIENT_ID": "client-id",
        "CF_ACCESS_CLIENT_SECRET": "client-secret",
    }


def config_error(environ: dict[str, str], env_file: Path | None = None) -> ConfigError:
    """The ConfigError load_settings raises for this configuration."""
    with pytest.raises(ConfigError) as info:
        load_settings(environ, env_file)
    return info.value


# ---------------------------------------------------------------- read_env_file


def test_env_file_quotes_comments_and_export(tmp_path):
    """Quotes are removed, comments and blank lines skipped, export accepted."""
    path = write(
        tmp_path,
        "# a comment\n"
        "\n"
        'DOUBLE="two words"\n'
        "SINGLE='single'\n"
        "   # indented comment\n"
        "export EXPORTED=yes\n"
        "PLAIN=value # trailing comment\n"
        "HASH=a#b\n"
        'QUOTED_HASH="keep # this"\n'
        "SPACED = padded  \n"
        'EMPTY=""\n'
        "BARE=\n"
        "EQUALS=a=b=c\n",
    )
    assert read_env_file(path) == {
        "DOUBLE": "two words",
        "SINGLE": "single",
        "EXPORTED": "yes",
        "PLAIN": "value",
        "HASH": "a#b",
        "QUOTED_HASH": "keep # this",
        "SPACED": "padded",
        "EMPTY": "",
        "BARE": "",
        "EQUALS": "a=b=c",
    }


def test_env_file_quoted_value_with_trailing_comment(tmp_path):
    """A quoted value followed by a comment loses both the quotes and the comment."""
    path = write(tmp_path, "A=\"x y\" # note\nB='z'   # note 'q'\n")
    assert read_env_file(path) == {"A": "x y", "B": "z"}


def test_env_file_keeps_escapes(tmp_path):
    """Backslash escapes are left alone; PEMs are unescaped where they are used."""
    path = write(tmp_path, 'KEY="a\\nb"\n')
    assert read_env_file(path) == {"KEY": "a\\nb"}


def test_env_file_later_line_wins(tmp_path):
    """A variable set twice takes its last value."""
    assert read_env_file(write(tmp_path, "A=1\nA=2\n")) == {"A": "2"}


def test_env_file_crlf_line_endings(tmp_path):
    """A file saved with Windows line endings reads the same."""
    path = tmp_path / "crlf.vars"
    path.write_bytes(b'A="1"\r\nB=2\r\n')
    assert read_env_file(path) == {"A": "1", "B": "2"}


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("A=1\nnot a pair\n", 2),
        ("A=1\n\n# c\n1BAD=2\n", 4),
        ("export\n", 1),
        ("A-B=1\n", 1),
    ],
)
def test_env_file_malformed_line(tmp_path, text, line):
    """A line that is not KEY=VALUE is a ConfigError naming the file and line."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        read_env_file(path)
    assert info.value.variable == "--env-file"
    assert str(path) in info.value.fix
    assert f"line {line}" in info.value.fix


def test_env_file_missing(tmp_path):
    """An env file that cannot be read is a ConfigError naming it."""
    path = tmp_path / "missing.vars"
    with pytest.raises(ConfigError) as info:
        read_env_file(path)
    assert info.value.variable == "--env-file"
    assert str(path) in info.value.fix


def test_env_file_not_utf8(tmp_path):
    """An env file that is not UTF-8 is a ConfigError, not a crash."""
    path = tmp_path / "latin1.vars"
    path.write_bytes(b"A=\xe9\n")
    with pytest.raises(ConfigError) as info:
        read_env_file(path)
    assert info.value.variable == "--env-file"


# ---------------------------------------------------------------- load_settings


def test_settings_from_environment_only(environ, rsa_keys):
    """A complete environment gives Settings with the key, token and defaults."""
    settings = load_settings(environ, None)
    assert settings.verify_keys == tuple(load_verify_keys(rsa_keys[1]))
    assert settings.service_client_id == "client-id"
    assert settings.service_client_secret == "client-secret"
    assert settings.private_key_pem is None
    assert (settings.audience, settings.issuer) == (None, None)
    assert settings.leeway_seconds == 30


def test_issue_example_shape_in_env_file(tmp_path, rsa_keys):
    """The .dev.vars of the issue, PEMs on one line with \\n escapes, works."""
    private, public = rsa_keys
    path = write(
        tmp_path,
        'CF_ACCESS_CLIENT_ID="your-local-client-id"\n'
        'CF_ACCESS_CLIENT_SECRET="your-local-client-secret"\n'
        f'CONN_JWT_PUBLIC_KEY="{one_line(public)}"\n'
        f'JWT_PRIVATE_KEY="{one_line(private)}"\n',
    )
    settings = load_settings({}, path)
    assert settings.verify_keys == tuple(load_verify_keys(public))
    assert settings.service_client_id == "your-local-client-id"
    assert settings.service_client_secret == "your-local-client-secret"
    assert settings.private_key_pem == private.strip() + "\n"


def test_escaped_pem_in_environment(environ, rsa_keys):
    """A one-line escaped PEM in the environment works too."""
    environ["CONN_JWT_PUBLIC_KEY"] = one_line(rsa_keys[1])
    settings = load_settings(environ, None)
    assert settings.verify_keys == tuple(load_verify_keys(rsa_keys[1]))


def test_escaped_pem_with_crlf_escapes(environ, rsa_keys):
    """A PEM escaped with \\r\\n (copied from Windows) works."""
    environ["CONN_JWT_PUBLIC_KEY"] = rsa_keys[1].strip().replace("\n", "\\r\\n")
    assert load_settings(environ, None).verify_keys


def test_unescape_pem():
    """unescape_pem turns \\n escapes into lines and ends with one newline."""
    assert unescape_pem("  -----A-----\\nxyz\\n-----B-----  ") == (
        "-----A-----\nxyz\n-----B-----\n"
    )


def test_environment_wins_over_file(tmp_path, environ, rsa_keys, ec_keys):
    """A variable set both in the environment and the file takes the environment's."""
    path = write(
        tmp_path,
        f'CONN_JWT_PUBLIC_KEY="{one_line(ec_keys[1])}"\n'
        "CF_ACCESS_CLIENT_ID=file-id\n"
        "CF_ACCESS_CLIENT_SECRET=file-secret\n"
        "CONN_JWT_AUDIENCE=file-audience\n",
    )
    settings = load_settings(environ, path)
    assert settings.verify_keys == tuple(load_verify_keys(rsa_keys[1]))
    assert settings.service_client_id == "client-id"
    assert settings.service_client_secret == "client-secret"
    # What only the file sets still applies.
    assert settings.audience == "file-audience"


def test_empty_environment_value_does_not_mask_the_file(tmp_path, environ):
    """An empty environment variable leaves the file's value in place."""
    path = write(tmp_path, "CF_ACCESS_CLIENT_ID=file-id\n")
    environ["CF_ACCESS_CLIENT_ID"] = ""
    assert load_settings(environ, path).service_client_id == "file-id"


def test_public_key_file(tmp_path, environ, ec_keys):
    """CONN_JWT_PUBLIC_KEY_FILE names a PEM file whose keys are used."""
    del environ["CONN_JWT_PUBLIC_KEY"]
    key_file = write(tmp_path, ec_keys[1], name="public.pem")
    environ["CONN_JWT_PUBLIC_KEY_FILE"] = str(key_file)
    settings = load_settings(environ, None)
    assert [k.algorithm for k in settings.verify_keys] == ["ES256"]


def test_public_key_file_and_inline_key_combine(tmp_path, environ, ec_keys):
    """An inline key and a key file together give both keys (rotation)."""
    key_file = write(tmp_path, ec_keys[1], name="public.pem")
    environ["CONN_JWT_PUBLIC_KEY_FILE"] = str(key_file)
    settings = load_settings(environ, None)
    assert [k.algorithm for k in settings.verify_keys] == ["RS256", "ES256"]


def test_several_keys_in_one_variable(environ, rsa_keys, ec_keys, ed25519_keys):
    """Several PEM blocks in CONN_JWT_PUBLIC_KEY are all used."""
    environ["CONN_JWT_PUBLIC_KEY"] = one_line(
        rsa_keys[1] + ec_keys[1] + ed25519_keys[1]
    )
    settings = load_settings(environ, None)
    assert [k.algorithm for k in settings.verify_keys] == ["RS256", "ES256", "EdDSA"]


def test_the_same_key_twice_is_refused(environ, rsa_keys):
    """The same key configured twice is a ConfigError (duplicate key id)."""
    environ["CONN_JWT_PUBLIC_KEY"] = rsa_keys[1] + rsa_keys[1]
    assert config_error(environ).variable == "CONN_JWT_PUBLIC_KEY"


def test_optional_settings(environ):
    """Audience, issuer and leeway are read when set."""
    environ.update(
        CONN_JWT_AUDIENCE="officerouter",
        CONN_JWT_ISSUER="https://backend.example",
        CONN_JWT_LEEWAY_SECONDS="5",
    )
    settings = load_settings(environ, None)
    assert settings.audience == "officerouter"
    assert settings.issuer == "https://backend.example"
    assert settings.leeway_seconds == 5


@pytest.mark.parametrize(
    "variable",
    ["CONN_JWT_PUBLIC_KEY", "CF_ACCESS_CLIENT_ID", "CF_ACCESS_CLIENT_SECRET"],
)
def test_missing_variable_is_named(environ, variable):
    """Each required variable, missing, gives a ConfigError naming it."""
    del environ[variable]
    error = config_error(environ)
    assert error.variable == variable
    assert str(error).startswith(f"{variable}: not set")


@pytest.mark.parametrize("variable", ["CF_ACCESS_CLIENT_ID", "CF_ACCESS_CLIENT_SECRET"])
def test_blank_service_token_is_missing(tmp_path, environ, variable):
    """A service token part that is only blanks counts as missing."""
    del environ[variable]
    path = write(tmp_path, f'{variable}="   "\n')
    assert config_error(environ, path).variable == variable


def test_missing_public_key_mentions_the_fixes(environ):
    """The missing-key message names the file variable and --dev."""
    del environ["CONN_JWT_PUBLIC_KEY"]
    error = config_error(environ)
    assert "CONN_JWT_PUBLIC_KEY_FILE" in error.fix
    assert "--dev" in error.fix


@pytest.mark.parametrize(
    "value",
    [
        "not a key",
        "-----BEGIN PUBLIC KEY-----\\nAAAA\\n-----END PUBLIC KEY-----",
        '{"keys": []}',
    ],
    ids=["text", "bad-pem", "empty-jwks"],
)
def test_malformed_public_key_is_named(environ, value):
    """A CONN_JWT_PUBLIC_KEY that holds no usable key is a ConfigError naming it."""
    environ["CONN_JWT_PUBLIC_KEY"] = value
    assert config_error(environ).variable == "CONN_JWT_PUBLIC_KEY"


def test_private_key_as_public_key_is_named(environ, rsa_keys):
    """A private key given as CONN_JWT_PUBLIC_KEY is refused, saying so."""
    environ["CONN_JWT_PUBLIC_KEY"] = one_line(rsa_keys[0])
    error = config_error(environ)
    assert error.variable == "CONN_JWT_PUBLIC_KEY"
    assert "private key" in error.fix
    # The message never repeats the key itself.
    assert "PRIVATE KEY-----" not in str(error)


def test_unsupported_curve_is_a_config_error(environ):
    """An EC key on P-384 is a ConfigError, not a crash."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = (
        ec.generate_private_key(ec.SECP384R1())
        .public_key()
        .public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        .decode()
    )
    environ["CONN_JWT_PUBLIC_KEY"] = pem
    error = config_error(environ)
    assert error.variable == "CONN_JWT_PUBLIC_KEY"
    assert "P-256" in error.fix


def test_unreadable_public_key_file_is_named(tmp_path, environ):
    """A CONN_JWT_PUBLIC_KEY_FILE that does not exist is a ConfigError naming it."""
    del environ["CONN_JWT_PUBLIC_KEY"]
    environ["CONN_JWT_PUBLIC_KEY_FILE"] = str(tmp_path / "nope.pem")
    error = config_error(environ)
    assert error.variable == "CONN_JWT_PUBLIC_KEY_FILE"
    assert "nope.pem" in error.fix


def test_malformed_public_key_file_is_named(tmp_path, environ):
    """A CONN_JWT_PUBLIC_KEY_FILE holding no key is a ConfigError naming it."""
    del environ["CONN_JWT_PUBLIC_KEY"]
    environ["CONN_JWT_PUBLIC_KEY_FILE"] = str(write(tmp_path, "junk", "junk.pem"))
    assert config_error(environ).variable == "CONN_JWT_PUBLIC_KEY_FILE"


@pytest.mark.parametrize("value", ["soon", "-1", "301", "1.5", ""])
def test_malformed_leeway_is_named(environ, value):
    """A leeway that is not a whole number from 0 to 300 is a ConfigError naming it."""
    environ["CONN_JWT_LEEWAY_SECONDS"] = value
    if value == "":
        # Empty means unset: the default applies.
        assert load_settings(environ, None).leeway_seconds == 30
    else:
        assert config_error(environ).variable == "CONN_JWT_LEEWAY_SECONDS"


def test_malformed_env_file_stops_loading(tmp_path, environ):
    """A malformed env file is a ConfigError even when the environment is complete."""
    path = write(tmp_path, "garbage\n")
    assert config_error(environ, path).variable == "--env-file"


def test_config_error_is_one_line(environ):
    """str(ConfigError) is "<variable>: <fix>" on one line."""
    del environ["CONN_JWT_PUBLIC_KEY"]
    text = str(config_error(environ))
    assert text.startswith("CONN_JWT_PUBLIC_KEY: ")
    assert "\n" not in text


def test_has_verify_keys(tmp_path, environ):
    """has_verify_keys tells whether any client-token key is configured."""
    assert has_verify_keys(environ, None)
    assert not has_verify_keys({}, None)
    assert has_verify_keys({"CONN_JWT_PUBLIC_KEY_FILE": "x"}, None)
    assert has_verify_keys({}, write(tmp_path, "CONN_JWT_PUBLIC_KEY=x\n"))


# ---------------------------------------------------------------- secrets


def test_settings_repr_hides_secrets(tmp_path, rsa_keys):
    """Neither the service secret, the keys nor the client id appear in repr()."""
    private, public = rsa_keys
    path = write(
        tmp_path,
        "CF_ACCESS_CLIENT_ID=id-visible-nowhere\n"
        "CF_ACCESS_CLIENT_SECRET=secret-visible-nowhere\n"
        f'CONN_JWT_PUBLIC_KEY="{one_line(public)}"\n'
        f'JWT_PRIVATE_KEY="{one_line(private)}"\n',
    )
    settings = load_settings({"CONN_JWT_AUDIENCE": "aud"}, path)
    text = repr(settings) + str(settings)
    for secret in ("id-visible-nowhere", "secret-visible-nowhere", "BEGIN", "MII"):
        assert secret not in text
    assert "aud" in text


def test_settings_is_frozen(settings):
    """Settings cannot be changed once loaded."""
    with pytest.raises(AttributeError):
        settings.service_client_secret = "other"  # type: ignore[misc]
    assert isinstance(settings, Settings)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://localhost", ("localhost", 6379, 0, None, None, False)),
        ("redis://10.0.0.5:6380/3", ("10.0.0.5", 6380, 3, None, None, False)),
        ("redis://:s%40cret@cache/1", ("cache", 6379, 1, None, "s@cret", False)),
        (
            "rediss://app:pw@cache.example:6390",
            ("cache.example", 6390, 0, "app", "pw", True),
        ),
        ("redis://[::1]:7000/", ("::1", 7000, 0, None, None, False)),
    ],
)
def test_redis_urls_are_parsed(url, expected):
    """REDIS_URL gives host, port, database, user, password and TLS."""
    target = parse_redis_url(url)
    assert (
        target.host,
        target.port,
        target.db,
        target.username,
        target.password,
        target.tls,
    ) == expected


@pytest.mark.parametrize(
    "url",
    [
        "http://:secret-pw@cache/0",
        "redis://:secret-pw@/0",
        "redis://:secret-pw@cache:99999/0",
        "redis://:secret-pw@cache/zero",
        "redis://:secret-pw@cache/0?timeout=1",
        "cache:6379",
    ],
)
def test_bad_redis_urls_name_the_variable_not_the_password(url):
    """An unusable Redis URL is a ConfigError naming the variable and the form,
    never repeating the URL (it may hold a password)."""
    with pytest.raises(ConfigError) as caught:
        parse_redis_url(url)
    assert caught.value.variable == "REDIS_URL"
    assert "redis://" in caught.value.fix
    assert "secret-pw" not in str(caught.value)


def test_redis_url_comes_from_the_environment_or_the_file(tmp_path, environ):
    """REDIS_URL is read like every variable (environment over file), and the
    settings never show the password."""
    env_file = tmp_path / "env"
    env_file.write_text('REDIS_URL="redis://:file-pw@from-file/2"\n')
    settings = load_settings(environ, env_file)
    assert settings.redis is not None
    assert (settings.redis.host, settings.redis.db) == ("from-file", 2)
    assert "file-pw" not in repr(settings)
    assert "file-pw" not in settings.redis.describe()
    settings = load_settings({**environ, "REDIS_URL": "redis://env/1"}, env_file)
    assert settings.redis is not None
    assert settings.redis.host == "env"
    assert load_settings(environ, None).redis is None
