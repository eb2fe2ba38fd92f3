"""The installed ``twistd -n officerouter``, run the way a user runs it.

Each daemon runs with its working directory in a temporary directory: twistd puts
the working directory on ``sys.path``, and the checkout's plugin would hide a
packaging bug.  Run ``pip install .`` first (scripts/test does) so that the
installed copy is the code under test.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import pytest_twisted
from twisted.internet import error, reactor

from tests.daemon import (
    STARTUP_TIMEOUT,
    Daemon,
    clean_environ,
    handshake,
    open_client,
    post,
    signed,
    spawn_twistd,
    twistd_command,
    write_env_file,
)
from tests.loopback import Client

pytestmark = pytest.mark.e2e

ORG = "org-123"


@pytest_twisted.ensureDeferred
async def test_installed_twistd_round_trip_and_graceful_stop(tmp_path: Path):
    """A client of the installed daemon gets a notification, then 1001 on SIGTERM; exit 0."""
    env_file, values = write_env_file(tmp_path)
    daemon = Daemon()
    process = spawn_twistd(
        daemon,
        tmp_path,
        "--env-file",
        str(env_file),
        "--port",
        "tcp:0:interface=127.0.0.1",
    )
    client: Client | None = None
    try:
        port = await daemon.port.addTimeout(STARTUP_TIMEOUT, reactor)
        token = signed(values, "user-1", ORG, "member")
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
            {"ok": True, "delivered": 1, "seq": 1},
        )
        assert await client.next() == {
            "type": "room_updated",
            "payload": body["payload"],
        }

        # Two refusals, so that the daemon's own log is shown to keep secrets out.
        expired = signed(values, "user-2", ORG, "member", ttl=-120)
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
