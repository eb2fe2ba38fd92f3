"""A first end-to-end round trip."""

import pytest

import pytest_twisted


@pytest.mark.e2e
@pytest_twisted.ensureDeferred
async def test_broadcast_reaches_member(router, token):
    """A broadcast notification reaches a connected member of the org."""
    client = await router.connect(token("alice", "org-a"))
    assert client.welcome["payload"]["userId"] == "alice"
    status, body = await router.notify(
        {
            "orgId": "org-a",
            "routing": "broadcast",
            "type": "room_updated",
            "payload": {"roomId": "r1", "name": "Main Hall"},
        }
    )
    assert (status, body) == (200, {"ok": True, "delivered": 1})
    frame = await client.next()
    assert frame == {
        "type": "room_updated",
        "payload": {"roomId": "r1", "name": "Main Hall"},
    }
