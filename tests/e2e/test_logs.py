"""What the router logs about refusals: the reason, never the token or the secret."""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import jwt
import pytest

import pytest_twisted
from twisted.internet import error, reactor
from twisted.logger import (
    LogEvent,
    eventAsJSON,
    formatEvent,
)

from officerouter.config import default_node_id
from tests.daemon import (
    STARTUP_TIMEOUT,
    Daemon,
    handshake,
    post,
    signed,
    spawn_twistd,
    write_env_file,
)
from tests.loopback import SERVICE_ID, SERVICE_SECRET, ConnectionRefusedByServer, Router

pytestmark = pytest.mark.e2e

ORG = "org-a"
WRONG_SECRET = "wrong-secret-4f1c2b9a77d0"


def rendered(events: list[LogEvent]) -> list[str]:
    """Each event as text and as JSON, the two ways the daemon writes logs."""
    return [formatEvent(e) for e in events] + [eventAsJSON(e) for e in events]


def secrets_of(jwt_: str) -> list[str]:
    """The whole token and its claims and signature parts, each a telltale."""
    _header, claims, signature = jwt_.split(".")
    return [jwt_, claims, signature]


@pytest_twisted.ensureDeferred
async def test_refusals_are_logged_without_tokens_or_secrets(
    router: Router, token, other_rsa_keys, log_events
):
    """Refused connections and notifications log why, never the token or the secret."""
    now = int(time.time())
    expired = token("alice", ORG, ttl=-120)
    forged = jwt.encode(
        {"sub": "alice", "orgId": ORG, "role": "owner", "exp": now + 300},
        other_rsa_keys[0],
        algorithm="RS256",
    )
    valid = token("alice", ORG)
    banned_before = token("eve", ORG)

    assert await router.handshake({"Sec-WebSocket-Protocol": expired}) == (
        401,
        b"token expired",
    )
    assert await router.handshake({"Sec-WebSocket-Protocol": f"bearer, {forged}"}) == (
        401,
        b"bad signature",
    )
    with pytest.raises(ConnectionRefusedByServer):
        await router.connect(expired)
    alice = await router.connect(valid)
    eve = await router.connect(banned_before)
    ban = {
        "orgId": ORG,
        "routing": "direct",
        "type": "user_banned",
        "targets": ["eve"],
        "payload": {"userId": "eve", "reason": "spam"},
    }
    assert (await router.notify(ban))[0] == 200
    await eve.wait_closed()
    assert await router.handshake({"Sec-WebSocket-Protocol": banned_before}) == (
        403,
        b"banned",
    )
    body = {
        "orgId": ORG,
        "routing": "broadcast",
        "type": "room_updated",
        "payload": {"roomId": "r1", "name": "n"},
    }
    assert (await router.notify(body, secret=WRONG_SECRET))[0] == 401
    assert (await router.notify(body, client_id="x", secret=SERVICE_SECRET))[0] == 401
    assert (await router.notify(b"{oops"))[0] == 400
    alice.sendMessage(b"{oops")
    assert (await alice.next())["type"] == "error"

    texts = rendered(log_events)
    assert texts
    needles = {
        "service secret": SERVICE_SECRET,
        "presented secret": WRONG_SECRET,
        **{f"expired token {i}": s for i, s in enumerate(secrets_of(expired))},
        **{f"forged token {i}": s for i, s in enumerate(secrets_of(forged))},
        **{f"valid token {i}": s for i, s in enumerate(secrets_of(valid))},
        **{f"banned token {i}": s for i, s in enumerate(secrets_of(banned_before))},
    }
    leaks = {name for name, needle in needles.items() for t in texts if needle in t}
    assert not leaks
    # The reasons are there, so an operator can tell why.
    text = "\n".join(formatEvent(e) for e in log_events)
    for reason in ("token expired", "bad signature", "banned", "bad service token"):
        assert reason in text, f"no log says {reason!r}"
    assert SERVICE_ID not in text


def the_one(records: list[dict[str, Any]], start: str) -> dict[str, Any]:
    """The single record whose message starts with ``start``."""
    found = [r for r in records if r["message"].startswith(start)]
    assert len(found) == 1, (start, records)
    return found[0]


@pytest_twisted.ensureDeferred
async def test_installed_daemon_writes_one_json_object_per_line(tmp_path: Path):
    """With --log-format json every stdout line of the installed daemon is a JSON object
    with time, level, namespace, node, message and the event's fields.

    It runs the installed copy (``pip install .`` first, as scripts/test does).
    """
    env_file, values = write_env_file(tmp_path)
    daemon = Daemon()
    began = time.time()
    process = spawn_twistd(
        daemon,
        tmp_path,
        "--log-format",
        "json",
        "--access-log",
        "--env-file",
        str(env_file),
        "--port",
        "tcp:0:interface=127.0.0.1",
    )
    pid = process.pid
    secret = values["CF_ACCESS_CLIENT_SECRET"]
    wrong_secret = "not-" + secret
    expired = signed(values, "user-2", ORG, "member", ttl=-120)
    try:
        port = await daemon.port.addTimeout(STARTUP_TIMEOUT, reactor)
        assert await handshake(port, expired) == 401
        # Direct routing without targets breaks the contract.
        broken = {
            "orgId": ORG,
            "routing": "direct",
            "type": "room_updated",
            "payload": {"roomId": "r1", "name": "Zoë's {room}"},
        }
        client_id = values["CF_ACCESS_CLIENT_ID"]
        assert (await post(port, broken, client_id, secret))[0] == 400
        assert (await post(port, broken, client_id, wrong_secret))[0] == 401
        process.signalProcess("TERM")
        ended = await daemon.ended.addTimeout(15, reactor)
        assert isinstance(ended, error.ProcessDone), daemon.text
    finally:
        if not daemon.ended.called:
            process.signalProcess("KILL")
            await daemon.ended
    finished = time.time()

    stdout = daemon.stdout.decode("utf-8")
    assert stdout.endswith("\n"), daemon.text
    records = []
    for line in stdout[:-1].split("\n"):
        record = json.loads(line)
        assert isinstance(record, dict), line
        records.append(record)

    for record in records:
        assert {"time", "level", "namespace", "node", "message"} <= record.keys()
        assert not [key for key in record if key.startswith("log_")], record
        assert record["level"] in {"debug", "info", "warn", "error", "critical"}
        assert record["node"] == f"{default_node_id().rsplit('-', 1)[0]}-{pid}"
        assert isinstance(record["namespace"], str)
        assert isinstance(record["message"], str)
        assert record["time"].endswith("Z")
        when = datetime.fromisoformat(record["time"])
        assert when.utcoffset() is not None
        assert when.utcoffset().total_seconds() == 0
        assert began - 1 <= when.timestamp() <= finished + 1
    assert "Traceback" not in daemon.text
    assert not [r for r in records if "traceback" in r or r["level"] != "info"]

    # Start: twistd's own lines, then the listener.
    assert records[0]["message"].startswith("twistd ")
    assert records[0]["namespace"].endswith("AppLogger")
    assert records[0]["version"]
    listening = the_one(records, "OfficeSite starting on ")
    assert listening["message"] == f"OfficeSite starting on {port}"

    refused = the_one(records, "refused connection from ")
    assert refused["namespace"] == "officerouter.websocket.OfficeServerProtocol"
    assert refused["peer"].startswith("tcp4:127.0.0.1:")
    assert (refused["status"], refused["reason"]) == (401, "token expired")
    assert refused["message"] == (
        f"refused connection from {refused['peer']}: 401 token expired"
    )

    rejected = the_one(records, "rejected a notification from ")
    assert rejected["namespace"] == "officerouter.web"
    assert rejected["code"] == "invalid_message"
    assert "$.targets" in rejected["errors"]
    unauthorised = the_one(records, "refused notify from ")
    assert unauthorised["endpoint"] == "notify"
    assert unauthorised["message"].endswith(": bad service token")

    # Stop.
    assert the_one(records, "received SIGTERM")["signal"] == "SIGTERM"
    assert the_one(records, "stopping: closing ")["count"] == 0
    assert records[-1]["message"] in {"Main loop terminated.", "Server Shut Down."}

    for needle in (
        secret,
        wrong_secret,
        values["JWT_PRIVATE_KEY"],
        *secrets_of(expired),
    ):
        assert needle not in stdout
