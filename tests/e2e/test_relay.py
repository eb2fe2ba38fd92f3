"""Client frames over real sockets: relay with ``from`` stamping, and every rejection."""

from __future__ import annotations

import json

import pytest

import pytest_twisted

from tests.loopback import Client, Router, both_deployments

pytestmark = pytest.mark.e2e

ORG = "org-a"


async def org_of_four(router: Router, token) -> tuple[Client, Client, Client, Client]:
    """Alice with two tabs, Bob, and Olga in another org."""
    alice_1 = await router.connect(token("alice", ORG, "member"))
    alice_2 = await router.connect(token("alice", ORG, "member"))
    bob = await router.connect(token("bob", ORG, "guest"))
    olga = await router.connect(token("olga", "org-b", "owner"))
    return alice_1, alice_2, bob, olga


@pytest_twisted.ensureDeferred
async def test_position_reaches_every_other_connection_with_from(router: Router, token):
    """A position reaches every other connection of the org, the sender's other tab too."""
    alice_1, alice_2, bob, olga = await org_of_four(router, token)

    alice_1.send_json(
        {"type": "position_update", "payload": {"x": 12.5, "y": -7, "roomId": "r1"}}
    )

    expected = {
        "type": "position_update",
        "from": "alice",
        "payload": {"x": 12.5, "y": -7, "roomId": "r1"},
    }
    assert await alice_2.next() == expected
    assert await bob.next() == expected
    bob.send_json({"type": "position_update", "payload": {"x": 0, "y": 0}})
    for tab in (alice_1, alice_2):
        assert await tab.next() == {
            "type": "position_update",
            "from": "bob",
            "payload": {"x": 0, "y": 0},
        }
    # The sender never gets its own position back; the other org gets nothing.
    await router.barrier(alice_1, bob, olga)
    for client in (alice_1, alice_2, bob, olga):
        assert client.pending() == []


@pytest_twisted.ensureDeferred
async def test_relayed_frame_is_reencoded_not_forwarded(router: Router, token):
    """What peers receive is the validated message, not the sender's bytes."""
    alice = await router.connect(token("alice", ORG))
    bob = await router.connect(token("bob", ORG))
    alice.sendMessage(b'{ "payload" : {"y": 2.0, "x": 1}, "type": "position_update" }')
    assert await bob.next() == {
        "type": "position_update",
        "from": "alice",
        "payload": {"x": 1, "y": 2.0},
    }
    assert bob.raw[-1].startswith(b'{"type":"position_update","from":"alice",')


@pytest.mark.parametrize(
    ("frame", "code", "path"),
    [
        pytest.param(
            {
                "type": "position_update",
                "from": "mallory",
                "payload": {"x": 1, "y": 2},
            },
            "invalid_message",
            "$.from",
            id="from in envelope",
        ),
        pytest.param(
            {
                "type": "position_update",
                "payload": {"x": 1, "y": 2, "from": "mallory"},
            },
            "invalid_message",
            "$.payload.from",
            id="from in payload",
        ),
        pytest.param(
            {"type": "teleport", "payload": {"x": 1, "y": 2}},
            "unknown_type",
            "$.type",
            id="unknown type",
        ),
        pytest.param(
            {"type": "room_updated", "payload": {"roomId": "r", "name": "n"}},
            "type_not_allowed",
            "$.type",
            id="backend-only type",
        ),
        pytest.param(
            {"type": "user_banned", "payload": {"userId": "bob", "reason": "x"}},
            "type_not_allowed",
            "$.type",
            id="backend-only ban",
        ),
        pytest.param(
            {"type": "position_update", "payload": {"x": "1", "y": 2}},
            "invalid_message",
            "$.payload.x",
            id="string coordinate",
        ),
        pytest.param(
            {"type": "position_update", "payload": {"x": True, "y": 2}},
            "invalid_message",
            "$.payload.x",
            id="boolean coordinate",
        ),
        pytest.param(
            {"type": "position_update", "payload": {"x": 1e300, "y": 2}},
            "invalid_message",
            "$.payload.x",
            id="huge coordinate",
        ),
        pytest.param(
            {"type": "position_update", "payload": {"x": 1}},
            "invalid_message",
            "$.payload.y",
            id="missing field",
        ),
        pytest.param(
            {"type": "position_update", "payload": {"x": 1, "y": 2, "roomId": ""}},
            "invalid_message",
            "$.payload.roomId",
            id="empty roomId",
        ),
        pytest.param(
            {"type": "position_update", "payload": [1, 2]},
            "invalid_message",
            "$.payload",
            id="payload not an object",
        ),
        pytest.param(
            {"type": "position_update"},
            "invalid_message",
            "$.payload",
            id="no payload",
        ),
        pytest.param(["position_update"], "invalid_message", "$", id="not an object"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_frames_get_an_error_to_the_sender_only(
    router: Router, token, frame, code, path
):
    """A frame breaking the contract gets an error frame; nothing is relayed, it stays open."""
    alice_1, alice_2, bob, _olga = await org_of_four(router, token)

    alice_1.send_json(frame)

    error = await alice_1.next()
    assert error["type"] == "error"
    assert set(error) == {"type", "payload"}
    assert set(error["payload"]) == {"code", "message"}
    assert error["payload"]["code"] == code
    assert path in error["payload"]["message"]
    await router.barrier(alice_1, bob)
    assert alice_2.pending() == bob.pending() == []
    # Still open and still relaying.
    alice_1.send_json({"type": "position_update", "payload": {"x": 3, "y": 4}})
    assert (await bob.next())["from"] == "alice"


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"{not json", id="syntax"),
        pytest.param(b"", id="empty"),
        pytest.param(
            b'{"type":"position_update","type":"position_update","payload":{"x":1,"y":2}}',
            id="duplicate key",
        ),
        pytest.param(b'{"type":"position_update","payload":{"x":NaN,"y":2}}', id="NaN"),
        pytest.param(b"[" * 100 + b"]" * 100, id="deep"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_invalid_json_gets_invalid_json(router: Router, token, data):
    """Text that is not strict JSON gets ``invalid_json`` and is relayed to nobody."""
    alice = await router.connect(token("alice", ORG))
    bob = await router.connect(token("bob", ORG))
    alice.sendMessage(data)
    error = await alice.next()
    assert error["type"] == "error"
    assert error["payload"]["code"] == "invalid_json"
    assert error["payload"]["message"]
    await router.barrier(alice, bob)
    assert bob.pending() == []
    assert alice.open_now


@pytest_twisted.ensureDeferred
async def test_binary_frame_closes_1003(router: Router, token):
    """A binary frame closes its connection with 1003 and nothing is relayed."""
    alice, alice_2, bob, _olga = await org_of_four(router, token)
    position = json.dumps({"type": "position_update", "payload": {"x": 1, "y": 2}})
    alice.sendMessage(position.encode(), isBinary=True)
    code, _reason = await alice.wait_closed()
    assert code == 1003
    await router.until(lambda: router.registry.connection_count == 3)
    await router.barrier(alice_2, bob)
    assert alice.pending() == alice_2.pending() == bob.pending() == []
    assert bob.open_now


@pytest.mark.parametrize("router_options", [{"max_message_bytes": 256}])
@pytest_twisted.ensureDeferred
async def test_message_over_the_limit_closes_1009(router: Router, token):
    """A text message over max_message_bytes closes its connection with 1009."""
    alice = await router.connect(token("alice", ORG))
    bob = await router.connect(token("bob", ORG))
    fits = {"type": "position_update", "payload": {"x": 1, "y": 2, "roomId": "r"}}
    alice.send_json(fits)
    assert (await bob.next())["payload"] == fits["payload"]

    too_big = {
        "type": "position_update",
        "payload": {"x": 1, "y": 2, "roomId": "r" * 300},
    }
    alice.send_json(too_big)
    code, _reason = await alice.wait_closed()
    assert code == 1009
    await router.until(lambda: router.registry.connection_count == 1)
    await router.barrier(bob)
    assert bob.pending() == []


@pytest.mark.parametrize("router_options", [{"max_message_bytes": 256}])
@pytest_twisted.ensureDeferred
async def test_fragmented_message_over_the_limit_closes_1009(router: Router, token):
    """A message over the limit in small fragments also closes with 1009."""
    alice = await router.connect(token("alice", ORG))
    alice.sendMessage(b"x" * 1000, fragmentSize=100)
    code, _reason = await alice.wait_closed()
    assert code == 1009


deployment = both_deployments
