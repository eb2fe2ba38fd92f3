"""``twistd -n officerouter --workers 2``: one port, supervised workers, one stop.

The installed daemon runs as a user runs it (see tests/daemon.py); its workers are
found through ``/proc`` as the parent's child processes.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import pytest_twisted
import treq
from twisted.internet import error, reactor, task

from tests.daemon import (
    STARTUP_TIMEOUT,
    Daemon,
    clean_environ,
    free_port,
    open_client,
    signed,
    spawn_twistd,
    twistd_command,
    write_env_file,
)
from tests.loopback import Client
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

STARTED = "OfficeSite starting on"


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The Redis the workers share: a real redis-server of the test's own."""
    return redis_server.url


def children(pid: int) -> set[int]:
    """The live (not zombie) child processes of ``pid``, from ``/proc``."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        # The command name, in parentheses, may hold anything: fields follow ")".
        state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
        if int(ppid) == pid and state != "Z":
            found.add(int(entry.name))
    return found


def command_line(pid: int) -> list[str]:
    raw = (Path("/proc") / str(pid) / "cmdline").read_bytes()
    return raw.decode().split("\0")[:-1]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def until(predicate: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await task.deferLater(reactor, 0.05, lambda: None)


async def healthz(port: int) -> int:
    response = await treq.get(f"http://127.0.0.1:{port}/healthz", persistent=False)
    await response.content()
    code: int = response.code
    return code


@pytest_twisted.ensureDeferred
async def test_workers_share_one_port_are_restarted_and_drain(tmp_path, redis_url):
    """Two workers serve one port; a killed worker is replaced while the port stays
    served; SIGTERM to the parent closes clients with 1001 and every process exits, 0."""
    env_file, values = write_env_file(tmp_path)
    port = free_port()
    daemon = Daemon()
    process = spawn_twistd(
        daemon,
        tmp_path,
        "--workers",
        "2",
        "--port",
        f"tcp:{port}:interface=127.0.0.1",
        "--env-file",
        str(env_file),
        "--node-id",
        "office",
        environ={"REDIS_URL": redis_url},
    )
    parent = process.pid
    seen: set[int] = set()
    client: Client | None = None
    try:
        await until(lambda: daemon.text.count(STARTED) == 2, STARTUP_TIMEOUT)
        workers = children(parent)
        seen |= workers
        assert len(workers) == 2
        names = set()
        for pid in workers:
            argv = command_line(pid)
            assert argv[argv.index("--adopt-fd") + 1] == "3"
            names.add(argv[argv.index("--node-id") + 1])
            assert "--workers" not in argv
            assert "--port" not in argv
        assert names == {"office-1", "office-2"}
        for _ in range(4):
            assert await healthz(port) == 200

        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        # The other worker (and the kernel's backlog) keeps the port served.
        assert await healthz(port) == 200
        await until(lambda: daemon.text.count(STARTED) == 3, STARTUP_TIMEOUT)
        workers = children(parent)
        seen |= workers
        assert len(workers) == 2
        assert victim not in workers
        assert f"(pid {victim}) ended after" in daemon.text
        assert "signal KILL; restarting in 1 s" in daemon.text

        client = await open_client(port, signed(values, "user-1", "org-1", "member"))
        assert client.welcome["type"] == "connected"
        assert await healthz(port) == 200

        process.signalProcess("TERM")
        code, _reason = await client.wait_closed(timeout=15)
        assert code == 1001
        ended = await daemon.ended.addTimeout(30, reactor)
        assert isinstance(ended, error.ProcessDone), daemon.text
        assert not [pid for pid in seen if alive(pid)]
    finally:
        if client is not None and client.open_now:
            client.dropConnection(abort=True)
        if not daemon.ended.called:
            process.signalProcess("KILL")
            await daemon.ended
        for pid in seen | children(parent):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)

    log = daemon.text
    assert "Traceback" not in log
    assert log.count("all workers stopped") == 1
    for secret in (values["CF_ACCESS_CLIENT_SECRET"], values["JWT_PRIVATE_KEY"]):
        assert secret not in log


SOCKET_ACTIVATE = shutil.which("systemd-socket-activate")


@pytest.mark.skipif(SOCKET_ACTIVATE is None, reason="needs systemd-socket-activate")
@pytest_twisted.ensureDeferred
async def test_workers_serve_a_socket_from_systemd(tmp_path, redis_url):
    """Under socket activation (as contrib/officerouter-workers.service runs it) the
    workers serve systemd's socket, without systemd's variables; SIGTERM exits 0."""
    assert SOCKET_ACTIVATE is not None
    env_file, _values = write_env_file(tmp_path)
    port = free_port()
    daemon = Daemon()
    process = reactor.spawnProcess(
        daemon,
        SOCKET_ACTIVATE,
        [
            SOCKET_ACTIVATE,
            f"--listen=127.0.0.1:{port}",
            "--fdname=officerouter.socket",
            "--setenv=REDIS_URL",
            *twistd_command(
                "--workers",
                "2",
                "--port",
                "systemd:domain=INET:index=0",
                "--env-file",
                str(env_file),
            ),
        ],
        env={**clean_environ(), "REDIS_URL": redis_url},
        path=str(tmp_path),
    )
    seen: set[int] = set()
    try:
        await until(lambda: "Listening on" in daemon.text, STARTUP_TIMEOUT)
        # The first connection starts the daemon; it waits in the backlog.
        assert await healthz(port) == 200
        await until(lambda: daemon.text.count(STARTED) == 2, STARTUP_TIMEOUT)
        seen = children(process.pid)
        assert len(seen) == 2
        for pid in seen:
            environ = (Path("/proc") / str(pid) / "environ").read_bytes()
            assert b"LISTEN_" not in environ
        assert await healthz(port) == 200
        process.signalProcess("TERM")
        ended = await daemon.ended.addTimeout(30, reactor)
        assert isinstance(ended, error.ProcessDone), daemon.text
        assert not [pid for pid in seen if alive(pid)]
    finally:
        if not daemon.ended.called:
            process.signalProcess("KILL")
            await daemon.ended
        for pid in seen:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert "Traceback" not in daemon.text
