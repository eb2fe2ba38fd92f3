"""Opt-in position batching: one ``positions`` frame per tick, latest per user."""

from __future__ import annotations

from typing import Any

import pytest

from twisted.internet.task import Clock

from officerouter.messages import ClientMessage, PositionUpdate
from officerouter.registry import OrgRegistry
from officerouter.rooms import Session

from .fakes import FakeConnection, identity, make_registry

TICK = 0.05


@pytest.fixture
def registry(clock: Clock) -> OrgRegistry:
    """A registry with a 50 ms position tick, on the test clock."""
    return make_registry(clock, position_tick=TICK)


def join(
    registry: OrgRegistry, user: str, role: str = "member", **kw: Any
) -> tuple[FakeConnection, Session]:
    connection = FakeConnection()
    session = registry.connect(identity(user, "org-a", role), connection, **kw)
    return connection, session


def move(x: float, y: float, room: str | None = None) -> ClientMessage:
    return ClientMessage(
        type="position_update", payload=PositionUpdate(x=x, y=y, roomId=room)
    )


def positions(connection: FakeConnection) -> list[dict[str, Any]]:
    return [
        f for f in connection.routed() if f["type"] in ("positions", "position_update")
    ]


def test_batched_client_gets_one_frame_per_tick_with_the_latest_of_each_user(
    registry, clock
):
    """Within a tick, a batched client gets nothing; then one frame, latest per user."""
    watcher, _ = join(registry, "watcher", batch_positions=True)
    _, alice = join(registry, "alice")
    _, bob = join(registry, "bob")
    registry.receive(alice, move(1, 1))
    registry.receive(bob, move(5, 5, "lobby"))
    registry.receive(alice, move(2, 3))
    assert positions(watcher) == []
    clock.advance(TICK)
    assert positions(watcher) == [
        {
            "type": "positions",
            "payload": {
                "positions": [
                    {"userId": "bob", "x": 5, "y": 5, "roomId": "lobby"},
                    {"userId": "alice", "x": 2, "y": 3},
                ]
            },
        }
    ]
    clock.advance(TICK * 10)
    assert len(positions(watcher)) == 1, "no frame for a tick without movement"


def test_plain_clients_keep_the_per_update_contract(registry, clock):
    """Clients that did not opt in still get every position_update, with from."""
    _, batched_session = join(registry, "watcher", batch_positions=True)
    plain, _ = join(registry, "plain")
    _, alice = join(registry, "alice")
    registry.receive(alice, move(1, 1))
    registry.receive(alice, move(2, 2))
    clock.advance(TICK)
    assert positions(plain) == [
        {"type": "position_update", "from": "alice", "payload": {"x": 1, "y": 1}},
        {"type": "position_update", "from": "alice", "payload": {"x": 2, "y": 2}},
    ]
    assert batched_session.batch_positions


def test_one_encoding_serves_every_batched_client(registry, clock):
    """The positions frame is encoded once and the same object sent to all."""
    a, _ = join(registry, "a", batch_positions=True)
    b, _ = join(registry, "b", batch_positions=True)
    _, mover = join(registry, "mover")
    registry.receive(mover, move(1, 2))
    clock.advance(TICK)
    sent_a = [m for m in a.routed_encoded() if m.type == "positions"]
    sent_b = [m for m in b.routed_encoded() if m.type == "positions"]
    assert len(sent_a) == 1
    assert sent_a[0] is sent_b[0]


def test_batched_sender_sees_its_own_position_in_the_batch(registry, clock):
    """The batch is one frame for all, so a batched sender finds itself in it."""
    me, session = join(registry, "me", batch_positions=True)
    registry.receive(session, move(7, 8))
    clock.advance(TICK)
    assert positions(me)[0]["payload"]["positions"] == [
        {"userId": "me", "x": 7, "y": 8}
    ]


def test_pending_guest_never_gets_batches(registry, clock):
    """A batched pending guest receives no positions; promoted, it does."""
    guest, _ = join(registry, "guest", "pending_guest", batch_positions=True)
    _, mover = join(registry, "mover")
    registry.receive(mover, move(1, 1))
    clock.advance(TICK)
    assert positions(guest) == []


def test_the_tick_is_cancelled_when_the_room_goes(registry, clock):
    """A room dropped with positions pending leaves no timer behind."""
    _, w = join(registry, "watcher", batch_positions=True)
    _, mover = join(registry, "mover")
    registry.receive(mover, move(1, 1))
    registry.disconnect(w)
    registry.disconnect(mover)
    registry.stop()
    assert clock.getDelayedCalls() == []
