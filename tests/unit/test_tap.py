"""The twistd options, dev-mode key generation, and makeService's assembly."""

from __future__ import annotations

import os
import platform
import stat
from pathlib import Path

import pytest

from twisted.application import service
from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.internet import reactor
from twisted.internet.error import ReactorNotRunning
from twisted.logger import capturedLogs
from twisted.python import usage
from twisted.python.reflect import namedAny

from officerouter import logs, tap
from officerouter.auth import TokenVerifier, sign_token
from officerouter.config import ConfigError

#: Every variable the daemon reads; tests that touch os.environ clear them all.
CONFIG_VARIABLES = (
    "CONN_JWT_PUBLIC_KEY",
    "CONN_JWT_PUBLIC_KEY_FILE",
    "JWT_PRIVATE_KEY",
    "CF_ACCESS_CLIENT_ID",
    "CF_ACCESS_CLIENT_SECRET",
    "CONN_JWT_AUDIENCE",
    "CONN_JWT_ISSUER",
    "CONN_JWT_LEEWAY_SECONDS",
)


def parse(*args: str) -> tap.Options:
    """Parse the officerouter options."""
    options = tap.Options()
    options.parseOptions(list(args))
    return options


def one_line(pem: str) -> str:
    """A PEM on one line with literal \\n escapes."""
    return pem.strip().replace("\n", "\\n")


@pytest.fixture
def clean_environ(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """os.environ without any officerouter variable, cwd an empty directory."""
    for name in CONFIG_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ---------------------------------------------------------------- Options


def test_option_defaults():
    """Without arguments: tcp:8787 (backlog 1024), no env file, dev and auto-knock off, 64 KiB limits."""
    options = parse()
    assert options["port"] == "tcp:8787:backlog=1024"
    assert options["env-file"] is None
    assert not options["dev"]
    assert not options["auto-knock"]
    assert options["max-message-bytes"] == 65536
    assert options["max-body-bytes"] == 65536
    assert options["ban-memory"] == 3600.0
    assert options["log-format"] == "text"


def test_options_are_coerced():
    """Numbers given on the command line arrive as numbers, flags as true."""
    options = parse(
        "--port",
        "ssl:8443:privateKey=key.pem",
        "--env-file",
        "/etc/officerouter.vars",
        "--dev",
        "--auto-knock",
        "--max-message-bytes",
        "1024",
        "--ping-interval",
        "0",
        "--ban-memory",
        "60.5",
    )
    assert options["port"] == "ssl:8443:privateKey=key.pem"
    assert options["env-file"] == "/etc/officerouter.vars"
    assert options["dev"]
    assert options["auto-knock"]
    assert options["max-message-bytes"] == 1024
    assert options["ping-interval"] == 0.0
    assert options["ban-memory"] == 60.5


def test_dev_listens_on_loopback_only():
    """--dev without --port listens on 127.0.0.1:8787 (backlog 1024), not every interface."""
    assert parse("--dev")["port"] == "tcp:8787:interface=127.0.0.1:backlog=1024"
    assert parse("--dev", "--auto-knock")["port"] == tap.DEV_PORT


@pytest.mark.parametrize(
    "args",
    [
        ["--dev", "--port", "tcp:9000"],
        ["--port", "tcp:9000", "--dev"],
        ["--dev", "-p", "tcp:9000"],
        ["--dev", "--port=tcp:9000"],
    ],
    ids=lambda a: " ".join(a),
)
def test_dev_keeps_an_explicit_port(args):
    """With --dev, a --port given on the command line wins, in any order or form."""
    assert parse(*args)["port"] == "tcp:9000"


def test_dev_keeps_an_explicit_port_equal_to_the_default():
    """--dev --port tcp:8787:backlog=1024 listens on every interface, as asked."""
    assert parse("--dev", "--port", "tcp:8787:backlog=1024")["port"] == (
        "tcp:8787:backlog=1024"
    )


def test_systemd_port_is_kept_verbatim():
    """A systemd: endpoint string passes through untouched."""
    port = "systemd:domain=INET:index=0"
    assert parse("-p", port)["port"] == port


@pytest.mark.parametrize(
    "args",
    [
        ["--max-message-bytes", "lots"],
        ["--max-message-bytes", "100"],
        ["--max-body-bytes", "1.5"],
        ["--ping-interval", "soon"],
        ["--ping-interval", "-1"],
        ["--ping-timeout", "86401"],
        ["--ban-memory", "forever"],
        ["--shutdown-timeout", "-0.5"],
        ["--log-format", "xml"],
        ["--no-such-option"],
        ["--port"],
        ["extra-argument"],
    ],
    ids=lambda a: " ".join(a),
)
def test_bad_options_are_usage_errors(args):
    """Malformed or out-of-range options raise UsageError naming the problem."""
    with pytest.raises(usage.UsageError):
        parse(*args)


def test_usage_error_names_the_option():
    """The UsageError for a bad number names its option."""
    with pytest.raises(usage.UsageError, match="--max-message-bytes"):
        parse("--max-message-bytes", "lots")


def test_json_log_format_selects_the_json_observer():
    """--log-format json asks twistd (the parent options) for the JSON observer."""
    parent: dict[str, object] = {}
    options = tap.Options()
    options.parent = parent  # type: ignore[assignment]
    options.parseOptions(["--log-format", "json"])
    # twistd resolves the logger option by its dotted name.
    assert namedAny(parent["logger"]) is logs.json_observer


def test_secrets_are_not_options():
    """No option takes a secret: those come from the environment only."""
    names = {row[0] for row in tap.Options.optParameters}
    names |= {row[0] for row in tap.Options.optFlags}
    for name in names:
        assert "secret" not in name
        assert "key" not in name.replace("knock", "")


# ---------------------------------------------------------------- prepare_settings


def test_dev_writes_a_private_env_file(tmp_path, capsys):
    """--dev with no keys writes .dev.vars, mode 0600, with keys that work together."""
    settings = tap.prepare_settings(parse("--dev"), {}, tmp_path)
    path = tmp_path / ".dev.vars"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert settings.private_key_pem is not None
    assert settings.service_client_id in path.read_text()
    token = sign_token(
        settings.private_key_pem,
        user_id="u",
        org_id="o",
        role="member",
        ttl=60,
        now=1000.0,
    )
    verifier = TokenVerifier(settings.verify_keys, lambda: 1000.0)
    assert verifier.verify(token).user_id == "u"
    # It says how to get a token and how to notify.
    out = capsys.readouterr().out
    assert "officerouter token" in out
    # The README's default user, so that its examples follow on.
    assert "token test-user-1 org-123 member " in out
    assert "token user-1 " not in out
    assert "ws://localhost:8787/websocket" in out
    assert "curl -X POST" in out
    assert str(path) in out


def test_dev_help_goes_to_stderr_with_json_logs(tmp_path, capsys):
    """With --log-format json the first-run help is on stderr: stdout stays JSON lines."""
    tap.prepare_settings(parse("--dev", "--log-format", "json"), {}, tmp_path)
    written = capsys.readouterr()
    assert written.out == ""
    assert "officerouter token" in written.err


def test_dev_mode_file_is_private_despite_umask(tmp_path, capsys):
    """The generated file is 0600 even with a permissive umask."""
    old = os.umask(0)
    try:
        tap.prepare_settings(parse("--dev"), {}, tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / ".dev.vars").stat().st_mode) == 0o600


def test_dev_reuses_existing_keys(tmp_path, capsys):
    """A second --dev start reuses .dev.vars and writes nothing."""
    first = tap.prepare_settings(parse("--dev"), {}, tmp_path)
    path = tmp_path / ".dev.vars"
    content = path.read_bytes()
    capsys.readouterr()
    second = tap.prepare_settings(parse("--dev"), {}, tmp_path)
    assert path.read_bytes() == content
    assert second.verify_keys == first.verify_keys
    assert capsys.readouterr().out == ""


def test_dev_never_overwrites_an_existing_file(tmp_path, capsys):
    """--dev with a .dev.vars that sets no key refuses, leaving the file untouched."""
    path = tmp_path / ".dev.vars"
    path.write_text("CF_ACCESS_CLIENT_ID=mine\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        tap.prepare_settings(parse("--dev"), {}, tmp_path)
    assert info.value.variable == "CONN_JWT_PUBLIC_KEY"
    assert str(path) in info.value.fix
    assert path.read_text(encoding="utf-8") == "CF_ACCESS_CLIENT_ID=mine\n"


def test_dev_with_keys_in_the_environment_generates_nothing(tmp_path, rsa_keys):
    """--dev when keys are configured uses them and writes no file."""
    environ = {
        "CONN_JWT_PUBLIC_KEY": rsa_keys[1],
        "CF_ACCESS_CLIENT_ID": "id",
        "CF_ACCESS_CLIENT_SECRET": "secret",
    }
    settings = tap.prepare_settings(parse("--dev"), environ, tmp_path)
    assert settings.service_client_id == "id"
    assert list(tmp_path.iterdir()) == []


def test_dev_writes_the_named_env_file(tmp_path, capsys):
    """--dev --env-file PATH with no file there generates it at PATH, mode 0600."""
    path = tmp_path / "conf" / "dev.vars"
    path.parent.mkdir()
    settings = tap.prepare_settings(
        parse("--dev", "--env-file", str(path)), {}, tmp_path
    )
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert settings.private_key_pem is not None
    assert not (tmp_path / ".dev.vars").exists()


def test_without_dev_nothing_is_generated(tmp_path):
    """Without --dev, missing keys are a ConfigError and no file appears."""
    with pytest.raises(ConfigError) as info:
        tap.prepare_settings(parse(), {}, tmp_path)
    assert info.value.variable == "CONN_JWT_PUBLIC_KEY"
    assert "--dev" in info.value.fix
    assert list(tmp_path.iterdir()) == []


def test_default_env_file_is_read(tmp_path, rsa_keys):
    """Without --env-file, .dev.vars in the working directory is read."""
    (tmp_path / ".dev.vars").write_text(
        f'CONN_JWT_PUBLIC_KEY="{one_line(rsa_keys[1])}"\n'
        "CF_ACCESS_CLIENT_ID=file-id\nCF_ACCESS_CLIENT_SECRET=file-secret\n",
        encoding="utf-8",
    )
    settings = tap.prepare_settings(parse(), {}, tmp_path)
    assert settings.service_client_id == "file-id"


def test_resolve_env_file(tmp_path):
    """The option wins; else .dev.vars when it exists; else no file."""
    assert tap.resolve_env_file("x.vars", tmp_path) == Path("x.vars")
    assert tap.resolve_env_file(None, tmp_path) is None
    (tmp_path / ".dev.vars").touch()
    assert tap.resolve_env_file(None, tmp_path) == tmp_path / ".dev.vars"


# ---------------------------------------------------------------- makeService


def test_make_service_with_missing_config_exits_cleanly(clean_environ):
    """Missing keys: SystemExit with one line "officerouter: CONN_JWT_PUBLIC_KEY: ..."."""
    with pytest.raises(SystemExit) as info:
        tap.makeService(parse())
    message = info.value.code
    assert isinstance(message, str)
    assert message.startswith("officerouter: CONN_JWT_PUBLIC_KEY: ")
    assert "\n" not in message
    assert list(clean_environ.iterdir()) == []


@pytest.mark.parametrize("missing", ["CF_ACCESS_CLIENT_ID", "CF_ACCESS_CLIENT_SECRET"])
def test_make_service_names_the_missing_service_token(
    clean_environ, monkeypatch, rsa_keys, missing
):
    """Each missing half of the service token is named in the exit message."""
    monkeypatch.setenv("CONN_JWT_PUBLIC_KEY", one_line(rsa_keys[1]))
    monkeypatch.setenv("CF_ACCESS_CLIENT_ID", "id")
    monkeypatch.setenv("CF_ACCESS_CLIENT_SECRET", "secret")
    monkeypatch.delenv(missing)
    with pytest.raises(SystemExit) as info:
        tap.makeService(parse())
    assert str(info.value.code).startswith(f"officerouter: {missing}: ")


def test_make_service_with_malformed_env_file(clean_environ):
    """A malformed env file exits with one line naming it."""
    path = clean_environ / "bad.vars"
    path.write_text("this is not a pair\n", encoding="utf-8")
    with pytest.raises(SystemExit) as info:
        tap.makeService(parse("--env-file", str(path)))
    message = str(info.value.code)
    assert message.startswith("officerouter: --env-file: ")
    assert "\n" not in message


@pytest.fixture
def valid_env_file(clean_environ: Path, rsa_keys: tuple[str, str]) -> Path:
    """A complete env file in the (empty) working directory."""
    path = clean_environ / "service.vars"
    path.write_text(
        f'CONN_JWT_PUBLIC_KEY="{one_line(rsa_keys[1])}"\n'
        "CF_ACCESS_CLIENT_ID=id\nCF_ACCESS_CLIENT_SECRET=secret\n",
        encoding="utf-8",
    )
    return path


def test_make_service_does_not_listen(valid_env_file):
    """With valid config, makeService returns a stopped MultiService with a listener."""
    calls_before = set(reactor.getDelayedCalls())
    top = tap.makeService(
        parse("--env-file", str(valid_env_file), "--port", "tcp:0:interface=127.0.0.1")
    )
    assert isinstance(top, service.MultiService)
    assert not top.running
    children = list(top)
    assert children
    assert not any(child.running for child in children)
    listeners = [c for c in children if isinstance(c, StreamServerEndpointService)]
    assert len(listeners) == 1
    # Nothing was scheduled on the reactor either.
    assert set(reactor.getDelayedCalls()) == calls_before


@pytest.mark.parametrize(("interval", "timers"), [("1", [1.0]), ("0", [])])
def test_make_service_trims_memory_on_a_timer(valid_env_file, interval, timers):
    """glibc's free memory goes back to the system every --malloc-trim-interval."""
    top = tap.makeService(
        parse(
            "--env-file",
            str(valid_env_file),
            "--port",
            "tcp:0:interface=127.0.0.1",
            "--malloc-trim-interval",
            interval,
        )
    )
    found = [c for c in top if isinstance(c, TimerService)]
    expected = timers if platform.libc_ver()[0] == "glibc" else []
    assert [c.step for c in found] == expected


def test_make_service_with_bad_port_exits_cleanly(valid_env_file):
    """An endpoint string Twisted cannot parse exits with one line naming --port."""
    with pytest.raises(SystemExit) as info:
        tap.makeService(parse("--env-file", str(valid_env_file), "--port", "warp:9"))
    message = str(info.value.code)
    assert message.startswith("officerouter: --port: ")
    assert "\n" not in message


# ---------------------------------------------------------------- signals


class StoppableReactor:
    """Counts stops, and refuses a second one as a real reactor does."""

    def __init__(self) -> None:
        self.stops = 0

    def stop(self) -> None:
        if self.stops:
            raise ReactorNotRunning("Can't stop reactor that isn't running.")
        self.stops += 1


def test_a_second_stop_request_is_ignored():
    """SIGINT from a terminal then SIGTERM from a parent stop the reactor once, logging both."""
    reactor = StoppableReactor()
    stop = tap.GracefulStop(reactor)
    with capturedLogs() as events:
        stop("received SIGINT")
        stop("received SIGTERM")
    assert reactor.stops == 1
    assert stop.stopping
    assert [e["why"] for e in events] == ["received SIGINT", "received SIGTERM"]
    assert "already" in events[1]["log_format"]
