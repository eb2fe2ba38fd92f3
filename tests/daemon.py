"""The installed daemon as the end-to-end tests run it, in a subprocess."""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import time
from pathlib import Path
from typing import Any

import treq
from autobahn.twisted.websocket import WebSocketClientFactory
from twisted.internet import endpoints, error, reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from officerouter.auth import dev_vars, sign_token
from officerouter.config import read_env_file, unescape_pem
from tests.loopback import TIMEOUT, Client

#: The ``twistd`` installed beside the Python running the tests.
TWISTD = Path(sys.executable).parent / "twistd"

#: Nothing from the test's own environment may configure the daemon.
SCRUBBED = ("CF_ACCESS_", "CONN_JWT_", "JWT_", "PYTHONPATH", "PYTHONHOME")

#: Seconds a daemon may take to listen.
STARTUP_TIMEOUT = 30.0


def twistd_command(*options: str) -> list[str]:
    """``twistd --nodaemon --pidfile= officerouter`` followed by the daemon's options."""
    return [str(TWISTD), "--nodaemon", "--pidfile=", "officerouter", *options]


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_environ() -> dict[str, str]:
    """The test's environment without any officerouter setting or extra path."""
    return {k: v for k, v in os.environ.items() if not k.startswith(SCRUBBED)}


def spawn_twistd(
    daemon: ProcessProtocol,
    directory: Path,
    *options: str,
    environ: dict[str, str] | None = None,
) -> Any:
    """Run the installed ``twistd -n officerouter OPTIONS`` with ``directory``
    as its working directory (twistd puts the cwd on ``sys.path``: the
    checkout's plugin must not hide a packaging bug), a clean environment plus
    ``environ``; returns the process transport."""
    return reactor.spawnProcess(
        daemon,
        str(TWISTD),
        twistd_command(*options),
        env={**clean_environ(), **(environ or {})},
        path=str(directory),
    )


class Daemon(ProcessProtocol):
    """A twistd child process: everything it writes, its port, and its end."""

    def __init__(self) -> None:
        #: Standard output and error, interleaved as they arrived.
        self.output = b""
        #: Standard output alone.
        self.stdout = b""
        self.port: Deferred[int] = Deferred()
        self.ended: Deferred[error.ProcessDone | error.ProcessTerminated] = Deferred()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self.output += data
        if childFD == 1:
            self.stdout += data
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


def signed(
    values: dict[str, str], user: str, org: str, role: str, ttl: int = 300
) -> str:
    """A client token signed with the env file's private key."""
    return sign_token(
        unescape_pem(values["JWT_PRIVATE_KEY"]),
        user_id=user,
        org_id=org,
        role=role,
        ttl=ttl,
        now=time.time(),
    )


async def post(port: int, body: Any, client_id: str, secret: str) -> tuple[int, Any]:
    """POST ``body`` as JSON to the daemon's /internal/notify: status and answer."""
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
    """The HTTP status of a WebSocket opening handshake offering ``token``."""
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


async def open_client(port: int, token: str, query: str = "") -> Client:
    """A real WebSocket client of the daemon, once it has its ``connected`` frame."""
    factory = WebSocketClientFactory(
        f"ws://127.0.0.1:{port}/websocket{query}", protocols=[token]
    )
    factory.protocol = Client
    factory.opened = Deferred()
    factory.opened.addTimeout(TIMEOUT, reactor)
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    await endpoint.connect(factory)
    client: Client = await factory.opened
    client.welcome = await client.next()
    return client
