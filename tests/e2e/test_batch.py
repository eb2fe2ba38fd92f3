"""``POST /internal/notify`` with a JSON array: a batch, answered element by element."""

from __future__ import annotations

from typing import Any

import pytest

import pytest_twisted

from officerouter.messages import MAX_BATCH
from tests.loopback import Router, both_deployments

pytestmark = pytest.mark.e2e

deployment = both_deployments

ORG = "org-a"


def room_updated(name: str, **changes: Any) -> dict[str, Any]:
    """A broadcast ``room_updated`` to ORG, with some fields changed."""
    body = {
        "orgId": ORG,
        "routing": "broadcast",
        "type": "room_updated",
        "payload": {"roomId": "r1", "name": name},
    }
    body.update(changes)
    return body


async def post(
    router: Router, body: Any, key: str | None = None
) -> tuple[int, Any, bytes, list[bytes] | None]:
    """POST to /internal/notify: status, JSON answer, raw answer, and the
    ``Idempotent-Replayed`` header."""
    result = await router.notify_result(body, idempotency_key=key)
    return (
        result.code,
        result.json(),
        result.content,
        result.headers.getRawHeaders(b"idempotent-replayed"),
    )


@pytest_twisted.ensureDeferred
async def test_each_element_is_answered_in_order(router: Router, token):
    """A batch is validated and published element by element: the valid ones
    are delivered in order, a broken one is answered as it would be alone and
    does not stop the others."""
    alice = await router.connect(token("alice", ORG))
    batch = [
        room_updated("one"),
        room_updated("broken", payload={"roomId": "r1", "extra": 1}),
        room_updated("two", routing="direct", targets=["alice", "nobody"]),
        {"orgId": ORG, "routing": "broadcast", "type": "nope", "payload": {}},
        room_updated("three"),
    ]
    status, answer, _, replayed = await post(router, batch)
    assert status == 200
    assert replayed is None
    assert answer["ok"] is False
    results = answer["results"]
    assert [r["status"] for r in results] == [200, 400, 200, 400, 200]
    first, broken, direct, unknown, last = results
    assert first["ok"] is True
    assert first["delivered"] == 1
    assert direct["targets"] == {"alice": 1, "nobody": 0}
    assert direct["seq"] == first["seq"] + 1
    assert last["seq"] == direct["seq"] + 1
    # Paths are the element's own, as if it had been sent alone.
    assert broken["ok"] is False
    assert broken["error"] == "invalid_message"
    assert {e["path"] for e in broken["errors"]} == {
        "$.payload.extra",
        "$.payload.name",
    }
    assert unknown["error"] == "unknown_type"
    assert unknown["errors"] == [{"path": "$.type", "reason": "unknown type 'nope'"}]
    names = [(await alice.next())["payload"]["name"] for _ in range(3)]
    assert names == ["one", "two", "three"]
    assert alice.seqs == [first["seq"], direct["seq"], last["seq"]]
    await router.barrier(alice)
    assert alice.pending() == []


@pytest_twisted.ensureDeferred
async def test_a_batch_of_valid_notifications_is_ok(router: Router, token):
    """A batch whose every element was published answers ``ok: true``."""
    await router.connect(token("alice", ORG))
    status, answer, _, _ = await post(
        router, [room_updated(str(i)) for i in range(MAX_BATCH)]
    )
    assert status == 200
    assert answer["ok"] is True
    seqs = [r["seq"] for r in answer["results"]]
    assert seqs == list(range(seqs[0], seqs[0] + MAX_BATCH))


@pytest.mark.parametrize(
    "size", [pytest.param(0, id="empty"), pytest.param(MAX_BATCH + 1, id="too many")]
)
@pytest_twisted.ensureDeferred
async def test_an_empty_or_oversized_batch_is_400(router: Router, token, size):
    """A batch holds 1 to MAX_BATCH notifications; otherwise nothing is published."""
    alice = await router.connect(token("alice", ORG))
    status, answer, _, _ = await post(router, [room_updated("x")] * size)
    assert status == 400
    assert answer["error"] == "invalid_message"
    assert answer["errors"] == [
        {"path": "$", "reason": f"a batch holds 1 to {MAX_BATCH} notifications"}
    ]
    await router.barrier(alice)
    assert alice.pending() == []


@pytest_twisted.ensureDeferred
async def test_effects_run_per_element(router: Router, token):
    """A ban inside a batch closes the banned user's connection, and the
    notifications after it are still published."""
    eve = await router.connect(token("eve", ORG))
    alice = await router.connect(token("alice", ORG))
    ban = {
        "orgId": ORG,
        "routing": "direct",
        "type": "user_banned",
        "targets": ["eve"],
        "payload": {"userId": "eve", "reason": "spam"},
    }
    status, answer, _, _ = await post(router, [ban, room_updated("after")])
    assert status == 200
    assert answer["ok"] is True
    assert (await eve.next())["type"] == "user_banned"
    code, _ = await eve.wait_closed()
    assert code == 4003
    assert (await alice.next_of("room_updated"))["payload"]["name"] == "after"


@pytest_twisted.ensureDeferred
async def test_a_batch_retried_with_its_key_is_replayed(router: Router, token):
    """With an Idempotency-Key each element counts as its own request: a retry of
    the batch replays every published element and delivers nothing again; an
    element changed under the same key is a 409, the others are replayed."""
    alice = await router.connect(token("alice", ORG))
    batch = [room_updated("one"), room_updated("two")]
    status, first, _, replayed = await post(router, batch, key="flush-7")
    assert status == 200
    assert replayed is None
    assert [(await alice.next())["payload"]["name"] for _ in batch] == ["one", "two"]
    status, again, _, replayed = await post(router, batch, key="flush-7")
    assert status == 200
    assert replayed == [b"true"]
    assert [r["seq"] for r in again["results"]] == [r["seq"] for r in first["results"]]
    assert all(r["replayed"] is True for r in again["results"])
    changed = [room_updated("one"), room_updated("other")]
    status, mixed, _, replayed = await post(router, changed, key="flush-7")
    assert status == 200
    assert replayed is None
    assert mixed["ok"] is False
    kept, conflict = mixed["results"]
    assert kept["seq"] == first["results"][0]["seq"]
    assert conflict["status"] == 409
    assert conflict["error"] == "idempotency_conflict"
    # The key of one element is not the key of a single request.
    status, _, _, replayed = await post(router, room_updated("one"), "flush-7")
    assert status == 200
    assert replayed is None
    assert (await alice.next())["payload"]["name"] == "one"
    await router.barrier(alice)
    assert alice.pending() == []


@pytest_twisted.ensureDeferred
async def test_the_single_answer_is_unchanged(router: Router, token):
    """A single notification (an object, not an array) is answered exactly as
    before batches existed."""
    await router.connect(token("alice", ORG))
    status, answer, raw, _ = await post(router, room_updated("one"))
    assert status == 200
    assert raw == b'{"ok":true,"delivered":1,"seq":%d}' % answer["seq"]
    status, answer, raw, _ = await post(
        router, room_updated("two", routing="direct", targets=["alice"])
    )
    assert (
        raw
        == b'{"ok":true,"delivered":1,"seq":%d,"targets":{"alice":1}}' % (answer["seq"])
    )
