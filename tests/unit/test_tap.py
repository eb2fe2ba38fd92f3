"""The twistd options, dev-mode key generation, and makeService's assembly."""

from __future__ import annotations

import itertools
import os
import platform
import socket
import stat
import sys
from pathlib import Path

import pytest

from twisted.application import service
from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.internet import endpoints, reactor
from twisted.internet.error import ReactorNotRunning
from twisted.logger import capturedLogs
from twisted.python import usage
from twisted.python.reflect import namedAny

from officerouter import logs, tap
from officerouter.admin import AdminResource
from officerouter.auth import TokenVerifier, sign_token
from officerouter.config import ConfigError
from officerouter.gctune import GcPolicy

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
    assert options["token-expiry"] == "enforce"
    assert options["token-expiry-grace"] == 10.0


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
        "--token-expiry",
        "ignore",
        "--token-expiry-grace",
        "2.5",
    )
    assert options["port"] == "ssl:8443:privateKey=key.pem"
    assert options["env-file"] == "/etc/officerouter.vars"
    assert options["dev"]
    assert options["auto-knock"]
    assert options["max-message-bytes"] == 1024
    assert options["ping-interval"] == 0.0
    assert options["ban-memory"] == 60.5
    assert options["token-expiry"] == "ignore"
    assert options["token-expiry-grace"] == 2.5


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
        ["--token-expiry", "warn"],
        ["--token-expiry-grace", "-1"],
        ["--token-expiry-grace", "later"],
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


def _site_of(top):
    (listener,) = [c for c in top if isinstance(c, StreamServerEndpointService)]
    return listener.factory


def test_admin_page_is_off_by_default(valid_env_file):
    """Without --admin, /admin is not mounted, even with a password configured."""
    with valid_env_file.open("a") as f:
        f.write("ADMIN_PASSWORD=a long enough password\n")
    top = tap.makeService(
        parse("--env-file", str(valid_env_file), "--port", "tcp:0:interface=127.0.0.1")
    )
    assert b"admin" not in _site_of(top).resource.children


def test_admin_page_needs_a_password(valid_env_file):
    """--admin without ADMIN_PASSWORD_HASH or ADMIN_PASSWORD exits with one line."""
    with pytest.raises(SystemExit) as info:
        tap.makeService(parse("--env-file", str(valid_env_file), "--admin"))
    message = str(info.value.code)
    assert message.startswith("officerouter: ADMIN_PASSWORD_HASH: not set")
    assert "\n" not in message


def test_admin_page_is_mounted_with_admin(valid_env_file):
    """--admin with a password mounts the page at /admin."""
    with valid_env_file.open("a") as f:
        f.write("ADMIN_PASSWORD=a long enough password\n")
    top = tap.makeService(
        parse(
            "--env-file",
            str(valid_env_file),
            "--port",
            "tcp:0:interface=127.0.0.1",
            "--admin",
        )
    )
    assert isinstance(_site_of(top).resource.children[b"admin"], AdminResource)


@pytest.mark.parametrize(
    ("args", "policies"),
    [
        ((), [(0.0, True)]),
        (("--gc-full-interval", "3600"), [(3600.0, True)]),
        (("--no-gc-freeze",), []),
    ],
)
def test_make_service_sets_the_gc_policy(valid_env_file, args, policies):
    """The garbage-collection policy starts just before the listener; --no-gc-freeze drops it."""
    top = tap.makeService(
        parse(
            "--env-file",
            str(valid_env_file),
            "--port",
            "tcp:0:interface=127.0.0.1",
            *args,
        )
    )
    children = list(top)
    found = [
        (c._full_interval, isinstance(after, StreamServerEndpointService))
        for c, after in itertools.pairwise(children)
        if isinstance(c, GcPolicy)
    ]
    assert found == policies


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


# ---------------------------------------------------------------- --workers


class StartingReactor:
    """Records what would run once the reactor starts; runs nothing."""

    def __init__(self) -> None:
        self.when_running: list[object] = []

    def callWhenRunning(self, f: object, *args: object) -> None:
        self.when_running.append(f)


@pytest.fixture
def env_values(rsa_keys: tuple[str, str]) -> dict[str, str]:
    """A complete configuration, as an env file holds it."""
    return {
        "CONN_JWT_PUBLIC_KEY": one_line(rsa_keys[1]),
        "CF_ACCESS_CLIENT_ID": "id-0123",
        "CF_ACCESS_CLIENT_SECRET": "secret-4567",
    }


def write_env(path: Path, values: dict[str, str]) -> Path:
    path.write_text("".join(f'{k}="{v}"\n' for k, v in values.items()))
    return path


def supervise(cwd: Path, environ: dict[str, str], *args: str) -> tap.Supervisor:
    """The parent's service for ``officerouter ARGS``, with nothing started."""
    reactor = StartingReactor()
    top = tap.supervisor_service(parse(*args), reactor, environ, cwd)
    (supervisor,) = list(top)
    assert isinstance(supervisor, tap.Supervisor)
    assert not supervisor.running
    # The parent, too, exits 0 on SIGTERM.
    assert len(reactor.when_running) == 1
    return supervisor


def test_workers_option():
    """--workers takes a number or auto (one per usable core); nothing without it."""
    assert parse()["workers"] is None
    assert parse("--workers", "3")["workers"] == 3
    assert parse("--workers", "auto")["workers"] == len(os.sched_getaffinity(0))
    for bad in ("0", "many"):
        with pytest.raises(usage.UsageError, match="--workers must be auto or"):
            parse("--workers", bad)
    with pytest.raises(usage.UsageError, match="exclude each other"):
        parse("--workers", "2", "--adopt-fd", "3")


def test_workers_without_redis_are_refused_with_one_line(tmp_path, env_values):
    """--workers without --redis or REDIS_URL exits 1 with one line, before starting anything."""
    env_file = write_env(tmp_path / "router.env", env_values)
    with pytest.raises(SystemExit) as info:
        supervise(tmp_path, {}, "--workers", "2", "--env-file", str(env_file))
    message = info.value.code
    assert isinstance(message, str)
    assert message.startswith("officerouter: --workers: needs --redis")
    assert "REDIS_URL" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "where", ["option", "environment", "env file", "default env file"]
)
def test_workers_find_redis_as_the_router_does(tmp_path, env_values, where):
    """REDIS_URL may come from --redis, the environment, --env-file or .dev.vars."""
    args = ["--workers", "1"]
    environ: dict[str, str] = {}
    url = "redis://10.0.0.5:6379/0"
    if where == "option":
        args += ["--redis", url]
    elif where == "environment":
        environ["REDIS_URL"] = url
    elif where == "env file":
        env_values = {**env_values, "REDIS_URL": url}
    if where == "default env file":
        write_env(tmp_path / ".dev.vars", {**env_values, "REDIS_URL": url})
    else:
        args += ["--env-file", str(write_env(tmp_path / "router.env", env_values))]
    supervisor = supervise(tmp_path, environ, *args)
    (worker,) = supervisor.workers
    assert "--redis" not in worker.args
    assert url not in worker.args


def test_workers_check_the_configuration_first(tmp_path):
    """A configuration a worker would refuse is refused by the parent, in one line."""
    with pytest.raises(SystemExit) as info:
        supervise(tmp_path, {"REDIS_URL": "redis://r"}, "--workers", "2")
    assert str(info.value.code).startswith("officerouter: CONN_JWT_PUBLIC_KEY: ")


@pytest.mark.parametrize(
    ("args", "prefix"),
    [
        (["--port", "ssl:8443:privateKey=k.pem"], "officerouter: --port: 'ssl:"),
        (["--port", "unix:/run/o.sock"], "officerouter: --port: 'unix:"),
        (["--port", "systemd:domain=INET:index=0"], "officerouter: --port: 'systemd:"),
        (["--history", "sqlite:/var/lib/h.sqlite"], "officerouter: --history: "),
        (["--admin"], "officerouter: --admin: each worker would keep its own"),
    ],
)
def test_workers_refuse_what_they_cannot_share(tmp_path, env_values, args, prefix):
    """Endpoints the parent cannot hand over, and one SQLite file for all, are one line each."""
    environ = {**env_values, "REDIS_URL": "redis://r"}
    with pytest.raises(SystemExit) as info:
        supervise(tmp_path, environ, "--workers", "2", *args)
    message = str(info.value.code)
    assert message.startswith(prefix)
    assert "\n" not in message


def test_worker_command_lines(tmp_path, env_values):
    """Each worker runs the installed twistd with the parent's options but --workers,
    --port and --redis, adopts fd 3, and is named NODE-i; no secret is on them."""
    secret_url = "redis://:hunter2@10.0.0.5:6379/0"
    env_file = write_env(tmp_path / "router.env", env_values)
    environ = {
        "PATH": "/usr/bin",
        "LISTEN_FDNAMES": "officerouter.socket",
    }
    supervisor = supervise(
        tmp_path,
        environ,
        "--workers",
        "3",
        "--port",
        "tcp:0:interface=127.0.0.1:backlog=1024",
        "--env-file",
        str(env_file),
        "--redis",
        secret_url,
        "--node-id",
        "office-a",
        "--auto-knock",
        "--max-connections",
        "5000",
        "--ping-interval",
        "12.5",
        "--log-format",
        "json",
        "--allowed-origins",
        "https://app.example.com",
    )
    twistd = str(Path(sys.executable).parent / "twistd")
    assert [w.name for w in supervisor.workers] == [
        "office-a-1",
        "office-a-2",
        "office-a-3",
    ]
    for i, worker in enumerate(supervisor.workers, start=1):
        assert list(worker.args) == [
            twistd,
            "--nodaemon",
            "--pidfile=",
            "officerouter",
            "--auto-knock",
            "--env-file",
            str(env_file),
            "--ping-interval",
            "12.5",
            "--max-connections",
            "5000",
            "--allowed-origins",
            "https://app.example.com",
            "--log-format",
            "json",
            "--adopt-fd",
            "3",
            "--node-id",
            f"office-a-{i}",
        ]
        # Parsed back, the worker gets the parent's values.
        options = parse(*worker.args[4:])
        assert options["ping-interval"] == 12.5
        assert options["adopt-fd"] == 3
        command_line = " ".join(worker.args)
        for secret in [*env_values.values(), "hunter2"]:
            assert secret not in command_line
    # The URL reaches the workers through their environment; systemd's
    # variables, meant for the parent, do not.
    assert supervisor.env == {"PATH": "/usr/bin", "REDIS_URL": secret_url}


def test_workers_are_named_after_the_host_and_parent_pid(tmp_path, env_values):
    """Without --node-id, workers are HOST-PID-1..N."""
    environ = {**env_values, "REDIS_URL": "redis://r"}
    supervisor = supervise(tmp_path, environ, "--workers", "2")
    base = f"{socket.gethostname()}-{os.getpid()}"
    assert [w.name for w in supervisor.workers] == [f"{base}-1", f"{base}-2"]
    assert supervisor.workers[1].args[-2:] == ("--node-id", f"{base}-2")


def test_a_worker_serves_on_the_socket_it_was_handed(valid_env_file):
    """--adopt-fd: the listener adopts that descriptor, and the worker watches its parent."""
    with socket.socket() as sock:
        top = tap.makeService(
            parse("--env-file", str(valid_env_file), "--adopt-fd", str(sock.fileno()))
        )
        (listener,) = [c for c in top if isinstance(c, StreamServerEndpointService)]
        assert isinstance(listener.endpoint, endpoints.AdoptedStreamServerEndpoint)
        assert listener.endpoint.fileno == sock.fileno()
        assert any(c.step == 1.0 for c in top if isinstance(c, TimerService))


def test_a_worker_handed_no_socket_exits_cleanly(valid_env_file, tmp_path):
    """--adopt-fd naming something other than a socket is one line naming the option."""
    with (tmp_path / "f").open("w") as f, pytest.raises(SystemExit) as info:
        tap.makeService(
            parse("--env-file", str(valid_env_file), "--adopt-fd", str(f.fileno()))
        )
    assert str(info.value.code).startswith("officerouter: --adopt-fd: descriptor ")


def test_node_id_names_the_process_in_json_logs(valid_env_file):
    """--node-id (as each worker gets) becomes the ``node`` of every JSON log line."""
    try:
        tap.makeService(
            parse(
                "--env-file",
                str(valid_env_file),
                "--port",
                "tcp:0:interface=127.0.0.1",
                "--node-id",
                "office-2",
            )
        )
        assert logs.node() == "office-2"
    finally:
        logs.set_node(None)


def test_metrics_is_off_by_default_and_not_given_to_workers():
    """--metrics is off unless asked; a worker never gets the parent's endpoint
    (it gets a socket of its own from the parent)."""
    assert parse()["metrics"] is None
    options = parse(
        "--metrics", "tcp:9108:interface=127.0.0.1", "--workers", "2", "--rate", "5"
    )
    arguments = tap.worker_arguments(options)
    assert "--metrics" not in arguments
    assert arguments == ["--rate", "5.0"]


def test_bad_metrics_endpoint_is_one_line():
    """A --metrics string no endpoint parser takes ends the start with one line."""
    with pytest.raises(SystemExit) as raised:
        tap.metrics_endpoint("nonsense:9108", reactor)
    message = str(raised.value)
    assert message.startswith("officerouter: --metrics: 'nonsense:9108'")
    assert "\n" not in message


@pytest.mark.parametrize(
    ("port", "backlog"),
    [("tcp:8787:interface=127.0.0.1", 1024), ("tcp:8787:backlog=7", 7)],
)
def test_an_explicit_port_listens_with_a_backlog_of_1024_unless_it_names_one(
    port: str, backlog: int
):
    """``--port tcp:PORT`` as a user writes it gets backlog 1024, not Twisted's 50
    (a reconnect storm would overflow 50); a port that names its own keeps it."""
    endpoint = tap.listening_endpoint(parse("--port", port), reactor)
    assert isinstance(endpoint, endpoints.TCP4ServerEndpoint)
    assert endpoint._backlog == backlog
