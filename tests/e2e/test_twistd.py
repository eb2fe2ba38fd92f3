"""The installed ``twistd -n officerouter``, run the way a user runs it.

Each daemon runs with its working directory in a temporary directory: twistd puts
the working directory on ``sys.path``, and the checkout's plugin would hide a
packaging bug.  Run ``pip install .`` first (scripts/test does) so that the
installed copy is the code under test.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

import pytest_twisted
import treq
from autobahn.twisted.websocket import WebSocketClientFactory
from twisted.internet import endpoints, error, reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from officerouter.auth import dev_vars, sign_token
from officerouter.config import read_env_file, unescape_pem
from tests.daemon import TWISTD, twistd_command
from tests.loopback import TIMEOUT, Client

pytestmark = pytest.mark.e2e

#: Nothing from the test's own environment may configure the daemon.
SCRUBBED = ("CF_ACCESS_", "CONN_JWT_", "JWT_", "PYTHONPATH", "PYTHONHOME")
STARTUP_TIMEOUT = 30.0
ORG = "org-123"


def clean_environ() -> dict[str, str]:
    """The test's environment without any officerouter setting or extra path."""
    return {k: v for k, v in os.environ.items() if not k.startswith(SCRUBBED)}


class Daemon(ProcessProtocol):
    """A twistd child process: everything it writes, its port, and its end."""

    def __init__(self) -> None:
        self.output = b""
        self.port: Deferred[int] = Deferred()
        self.ended: Deferred[error.ProcessDone | error.ProcessTerminated] = Deferred()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self.output += data
        if not self.port.called:
            found = re.search(rb"Site starting on (\d+)", self.output)
            if found:
                self.port.callback(int(found.group(1)))

    def processEnded(self, reason: Failure) -> None:
        if not self.port.called:
            self.port.errback(AssertionError(f"twistd exited:\n{self.text}"))
        self.ended.callback(reason.value)

    @property
    def text(self) -> str:
        return self.output.decode("utf-8", "replace")


def write_env_file(directory: Path) -> tuple[Path, dict[str, str]]:
    """A fresh env file made by officerouter itself, and its values."""
    path = directory / "officerouter.env"
    path.write_text(dev_vars(), encoding="utf-8")
    return path, read_env_file(path)


def signed(values: dict[str, str], user: str, role: str, ttl: int = 300) -> str:
    """A client token signed with the env file's private key."""
    return sign_token(
        unescape_pem(values["JWT_PRIVATE_KEY"]),
        user_id=user,
        org_id=ORG,
        role=role,
        ttl=ttl,
        now=time.time(),
    )


async def open_client(port: int, token: str) -> Client:
    """A real WebSocket client of the daemon, once it has its ``connected`` frame."""
    factory = WebSocketClientFactory(
        f"ws://127.0.0.1:{port}/websocket", protocols=[token]
    )
    factory.protocol = Client
    factory.opened = Deferred()
    factory.opened.addTimeout(TIMEOUT, reactor)
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    await endpoint.connect(factory)
    client: Client = await factory.opened
    client.welcome = await client.next()
    return client


async def post(port: int, body: Any, client_id: str, secret: str) -> tuple[int, Any]:
    response = await treq.post(
        f"http://127.0.0.1:{port}/internal/notify",
        data=json.dumps(body).encode(),
        headers={
            "Content-Type": "application/json",
            "CF-Access-Client-Id": client_id,
            "CF-Access-Client-Secret": secret,
        },
        persistent=False,
    )
    return response.code, json.loads(await response.content())


async def handshake(port: int, token: str) -> int:
    response = await treq.get(
        f"http://127.0.0.1:{port}/websocket",
        headers={
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Protocol": token,
        },
        persistent=False,
    )
    await response.content()
    code: int = response.code
    return code


@pytest_twisted.ensureDeferred
async def test_installed_twistd_round_trip_and_graceful_stop(tmp_path: Path):
    """A client of the installed daemon gets a notification, then 1001 on SIGTERM; exit 0."""
    env_file, values = write_env_file(tmp_path)
    daemon = Daemon()
    process = reactor.spawnProcess(
        daemon,
        str(TWISTD),
        twistd_command(
            "--env-file", str(env_file), "--port", "tcp:0:interface=127.0.0.1"
        ),
        env=clean_environ(),
        path=str(tmp_path),
    )
    client: Client | None = None
    try:
        port = await daemon.port.addTimeout(STARTUP_TIMEOUT, reactor)
        token = signed(values, "user-1", "member")
        client = await open_client(port, token)
        assert client.welcome["type"] == "connected"
        payload = client.welcome["payload"]
        assert (payload["userId"], payload["orgId"], payload["role"]) == (
            "user-1",
            ORG,
            "member",
        )

        body = {
            "orgId": ORG,
            "routing": "broadcast",
            "type": "room_updated",
            "payload": {"roomId": "room-1", "name": "Main Hall"},
        }
        secret = values["CF_ACCESS_CLIENT_SECRET"]
        client_id = values["CF_ACCESS_CLIENT_ID"]
        assert await post(port, body, client_id, secret) == (
            200,
            {"ok": True, "delivered": 1},
        )
        assert await client.next() == {
            "type": "room_updated",
            "payload": body["payload"],
        }

        # Two refusals, so that the daemon's own log is shown to keep secrets out.
        expired = signed(values, "user-2", "member", ttl=-120)
        assert await handshake(port, expired) == 401
        wrong_secret = "not-" + secret
        status, _ = await post(port, body, client_id, wrong_secret)
        assert status == 401

        process.signalProcess("TERM")
        code, _reason = await client.wait_closed(timeout=15)
        assert code == 1001
        ended = await daemon.ended.addTimeout(15, reactor)
        assert isinstance(ended, error.ProcessDone), daemon.text
    finally:
        if client is not None and client.open_now:
            client.dropConnection(abort=True)
        if not daemon.ended.called:
            process.signalProcess("KILL")
            await daemon.ended

    log = daemon.text
    assert "Traceback" not in log
    for needle in (secret, wrong_secret, token, expired, values["JWT_PRIVATE_KEY"]):
        assert needle not in log
    assert not (tmp_path / "twistd.pid").exists()
    assert not (tmp_path / ".dev.vars").exists()


@pytest.mark.parametrize(
    ("drop", "spoil", "variable"),
    [
        pytest.param(None, None, "CONN_JWT_PUBLIC_KEY", id="no configuration"),
        pytest.param(
            "CF_ACCESS_CLIENT_SECRET", None, "CF_ACCESS_CLIENT_SECRET", id="no secret"
        ),
        pytest.param(
            None, "CONN_JWT_PUBLIC_KEY", "CONN_JWT_PUBLIC_KEY", id="malformed key"
        ),
    ],
)
def test_installed_twistd_refuses_missing_configuration(
    tmp_path: Path, drop, spoil, variable
):
    """Without usable configuration the daemon exits non-zero with one line naming the variable."""
    args = twistd_command("--port", "tcp:0:interface=127.0.0.1")
    if drop or spoil:
        env_file, values = write_env_file(tmp_path)
        values.pop(drop, None)
        if spoil:
            values[spoil] = "-----BEGIN PUBLIC KEY-----\\nnot a key\\n"
        env_file.write_text(
            "".join(f'{k}="{v}"\n' for k, v in values.items()), encoding="utf-8"
        )
        args += ["--env-file", str(env_file)]

    result = subprocess.run(
        args,
        cwd=tmp_path,
        env=clean_environ(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode != 0
    output = (result.stdout + result.stderr).strip()
    assert "Traceback" not in output
    lines = output.splitlines()
    assert len(lines) == 1, output
    assert lines[0].startswith(f"officerouter: {variable}"), output
    # Without --dev nothing is ever generated.
    assert not (tmp_path / ".dev.vars").exists()
