"""Random and mutated input from two orgs at once, over real sockets."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

import pytest_twisted
from twisted.internet import defer

from officerouter.catalog import BUILTIN
from officerouter.codec import ContractError, decode_client, decode_notify
from tests.loopback import both_deployments

pytestmark = pytest.mark.e2e

ORGS = ("org-a", "org-b")


def _mutate(rng: random.Random, base: dict[str, Any], org: str) -> bytes:
    """One valid, mutated or garbage frame; strings carry the org's marker."""
    choice = rng.random()
    if choice < 0.1:
        # Text frames must be UTF-8 (invalid UTF-8 closes with 1007, tested apart).
        return "".join(
            chr(rng.choice([rng.randrange(32, 127), rng.randrange(160, 0x2FFF)]))
            for _ in range(rng.randrange(1, 40))
        ).encode()
    if choice < 0.2:
        return b'{"type":"position_update","payload":{"x":1,"x":2,"y":3}}'
    if choice < 0.25:
        return b"[" * 50 + b"]" * 50
    message = json.loads(json.dumps(base))
    target = message["payload"] if rng.random() < 0.6 else message
    key = rng.choice([*target, "from", "seq", "orgId", "extra"])
    action = rng.choice(["keep", "keep", "replace", "delete", "add"])
    values = [
        None,
        True,
        1,
        -1.5,
        1e308,
        "",
        f"{org}:x",
        [1],
        {"a": f"{org}:y"},
        "x" * 300,
    ]
    if action == "delete":
        target.pop(key, None)
    elif action != "keep":
        target[key] = rng.choice(values)
    return json.dumps(message).encode()


@pytest.mark.parametrize("router_options", [{"rate": 1000, "burst": 1000}])
@pytest_twisted.ensureDeferred
async def test_fuzzed_traffic_from_two_orgs_is_answered_and_never_crosses(
    router, token
):
    """Every bad frame gets one error frame, every bad body a 4xx, and nothing crosses orgs."""
    rng = random.Random(20261127)
    clients = {
        (org, i): await router.connect(token(f"{org}-u{i}", org))
        for org in ORGS
        for i in range(2)
    }
    expected_errors = dict.fromkeys(clients, 0)
    expected_relays = dict.fromkeys(clients, 0)
    notify_calls = []
    for step in range(200):
        org = rng.choice(ORGS)
        i = rng.randrange(2)
        if rng.random() < 0.7:
            base = {
                "type": "position_update",
                "payload": {"x": step, "y": 1, "roomId": f"{org}:r"},
            }
            data = _mutate(rng, base, org)
            try:
                decode_client(data, BUILTIN)
            except ContractError:
                expected_errors[org, i] += 1
            else:
                expected_relays[org, 1 - i] += 1
            clients[org, i].sendMessage(data)
        else:
            base = {
                "orgId": org,
                "routing": "broadcast",
                "type": "room_updated",
                "payload": {"roomId": f"{org}:room", "name": f"{org}:name"},
            }
            data = _mutate(rng, base, org)
            try:
                accepted = decode_notify(data, BUILTIN)
            except ContractError:
                accepted = None
            notify_calls.append((accepted, defer.ensureDeferred(router.notify(data))))
    results = await defer.gatherResults([d for _, d in notify_calls])
    for (accepted, _), (status, body) in zip(notify_calls, results, strict=True):
        if accepted is None:
            assert 400 <= status < 500, body
            assert body["errors"]
        else:
            assert status == 200, body
            if accepted.org_id in ORGS and accepted.routing == "broadcast":
                for key in clients:
                    if key[0] == accepted.org_id:
                        expected_relays[key] += 1
    for org in ORGS:
        status, _ = await router.notify(
            {
                "orgId": org,
                "routing": "direct",
                "type": "room_updated",
                "targets": [f"{org}-u0", f"{org}-u1"],
                "payload": {"roomId": "end", "name": "end"},
            }
        )
        assert status == 200
    for (org, i), client in clients.items():
        errors = relays = 0
        while True:
            frame = await client.next()
            if frame["type"] == "room_updated" and frame["payload"]["roomId"] == "end":
                break
            errors += frame["type"] == "error"
            relays += frame["type"] in ("position_update", "room_updated")
        assert client.pending() == []
        assert (errors, relays) == (expected_errors[org, i], expected_relays[org, i])
        assert client.open_now
        other = ORGS[1 - ORGS.index(org)]
        assert not [raw for raw in client.raw if f"{other}".encode() in raw]


@pytest_twisted.ensureDeferred
async def test_invalid_utf8_text_frame_closes_1007(router, token):
    """A text frame that is not UTF-8 breaks the WebSocket protocol: close 1007."""
    client = await router.connect(token("alice", "org-a"))
    client.sendMessage(b'{"type":"position_update","payload":{"x":1,"y":"\xff"}}')
    code, _ = await client.wait_closed()
    assert code == 1007


deployment = both_deployments
