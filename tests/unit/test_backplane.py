"""The cluster's sans-IO core: rooms and the registry over a shared backplane.

A :class:`~tests.unit.fakes.FakeBackplane` plays the other processes: it numbers
what is published and delivers when the test says so, and records what this
process tells the cluster.  No sockets, no Redis, no reactor: a Clock drives time.
"""

from __future__ import annotations

import gc
import hashlib
from collections.abc import Sequence
from typing import Any

import attrs
import orjson
import pytest
import txredisapi

from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, capturedLogs

from officerouter import codes
from officerouter.backplane import (
    BackplaneUnavailable,
    IdempotencyConflict,
    LocalBackplane,
    Numbered,
    Once,
    Outgoing,
    Published,
    RemoteEntry,
    StreamState,
    merge_entries,
)
from officerouter.catalog import BUILTIN, MessageSpec
from officerouter.codec import encode_numbered
from officerouter.config import parse_redis_url
from officerouter.effects import CloseUser, SetRole
from officerouter.history import HistoryBounds, MemoryStore, Stream
from officerouter.messages import (
    ClientMessage,
    Notification,
    PositionUpdate,
    PresenceUser,
    RoomUpdated,
)
from officerouter.redis_backplane import (
    RedisBackplane,
    _load_scripts,
    decode_actions,
    encode_actions,
    entry_text,
    header_tail,
    parse_entry,
    parse_record,
)
from officerouter.redis_client import RedisLink, RedisUnavailable
from officerouter.registry import OrgRegistry
from officerouter.rooms import OrgRoom, RefusedError, Session

from .fakes import (
    PRESENCE_TYPES,
    FakeBackplane,
    FakeConnection,
    FakeLink,
    RecordingFeed,
    ban,
    failure_of,
    identity,
    make_registry,
    result_of,
    role_change,
)

ORG = "org-a"
GRACE = 5.0
TICK = 0.05
HALL = PositionUpdate(x=3, y=4, roomId="hall")


@pytest.fixture
def backplane(clock: Clock) -> FakeBackplane:
    """A shared backplane the test delivers for."""
    return FakeBackplane(clock)


@pytest.fixture
def registry(clock: Clock, backplane: FakeBackplane) -> OrgRegistry:
    """A registry on the fake backplane, with a 5 s grace and a 50 ms tick."""
    return make_registry(
        clock,
        backplane=backplane,
        presence_grace=GRACE,
        position_tick=TICK,
        catalog={
            **BUILTIN,
            # A client message that is numbered and kept (not ephemeral).
            "wave": MessageSpec(payload=RoomUpdated, client_allowed=True),
        },
    )


def join(
    registry: OrgRegistry,
    user: str,
    role: str = "member",
    *,
    since: str | None = None,
    batch: bool = False,
    issued_at: float | None = 0.0,
) -> tuple[FakeConnection, Session]:
    """Connect a fake connection for ``user`` in org-a."""
    connection = FakeConnection()
    session = registry.connect(
        identity(user, ORG, role, issued_at=issued_at),
        connection,
        since=since,
        batch_positions=batch,
    )
    return connection, session


def room_of(registry: OrgRegistry) -> OrgRoom:
    """org-a's room, which must exist."""
    room = registry.room(ORG)
    assert room is not None
    return room


def broadcast(name: str = "hall", org: str = ORG) -> Notification:
    """A room_updated broadcast."""
    return Notification(
        org_id=org,
        routing="broadcast",
        type="room_updated",
        payload=RoomUpdated(roomId="r1", name=name),
    )


def types(connection: FakeConnection) -> list[str]:
    """The type of every frame a connection was sent."""
    return [frame["type"] for frame in connection.frames]


def presence_frames(connection: FakeConnection) -> list[dict[str, Any]]:
    """The presence frames a connection received, in order."""
    return [f for f in connection.frames if f["type"] in PRESENCE_TYPES]


def forget(*connections: FakeConnection) -> None:
    """Forget what these connections were sent so far."""
    for connection in connections:
        connection.events.clear()


def entry(
    user: str,
    role: str = "member",
    connections: int = 1,
    position: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A user as presence frames describe them."""
    return {
        "userId": user,
        "role": role,
        "connections": connections,
        "position": position,
    }


HALL_JSON = {"x": 3, "y": 4, "roomId": "hall"}


def numbered(seq: int, epoch: str, name: str = "hall", at: float = 0.0) -> Numbered:
    """A numbered room_updated broadcast, as the shared stream holds it."""
    head, tail = encode_numbered("room_updated", RoomUpdated(roomId="r1", name=name))
    return Numbered(
        epoch=epoch,
        seq=seq,
        at=at,
        type="room_updated",
        data=Outgoing("room_updated", head, tail).frame(seq),
    )


# ---------------------------------------------------------------- 1. numbering


def test_notification_is_routed_only_when_the_backplane_delivers(registry, backplane):
    """A notification is published and answered with its seq, but reaches no
    connection and no window until the backplane delivers it numbered."""
    alice, _ = join(registry, "alice")
    room = room_of(registry)
    published = result_of(registry.publish(broadcast()))
    assert published.seq == 1
    assert [(org, m.type) for org, m in backplane.published] == [(ORG, "room_updated")]
    assert alice.routed() == []
    assert room.stream.seq == 0
    assert backplane.deliver() == [1]
    assert alice.routed() == [
        {"type": "room_updated", "payload": {"roomId": "r1", "name": "hall"}}
    ]
    assert alice.frames[-1]["seq"] == 1
    assert room.stream.seq == 1
    assert [e.seq for e in room.stream.entries()] == [1]


def test_actions_wait_for_delivery_then_run_before_routing(registry, backplane):
    """A role change and a ban change nothing when published; on delivery the
    role is set before routing and the banned user is closed after their frame."""
    join(registry, "alice", "admin")
    bob, _ = join(registry, "bob")
    carol, _ = join(registry, "carol")
    room = room_of(registry)
    registry.publish(role_change("bob", "pending_guest"))
    registry.publish(ban("carol"))
    assert [m.actions for _, m in backplane.published] == [
        (SetRole("bob", "pending_guest"),),
        (CloseUser("carol", codes.CLOSE_BANNED, codes.REASON_BANNED, ban=True),),
    ]
    assert room.role_of("bob") == "member"
    assert carol.closes == []
    registry.check_admission(identity("carol", ORG))
    backplane.deliver()
    assert room.role_of("bob") == "pending_guest"
    # The subject of a role change hears of it, though no longer in the audience.
    assert bob.routed_types() == ["user_updated"]
    assert carol.events[-2:] == [
        ("send", carol.encoded[-1]),
        ("close", (codes.CLOSE_BANNED, codes.REASON_BANNED)),
    ]
    assert carol.routed_types() == ["user_updated", "user_banned"]
    with pytest.raises(RefusedError) as refused:
        registry.check_admission(identity("carol", ORG, issued_at=0.0))
    assert refused.value.status == 403


def _scenario(registry: OrgRegistry, clock: Clock, settle: Any) -> list[Any]:
    """Joins, a promotion, a demotion, a ban and a broadcast; what every
    connection saw (its epoch left out) and whether the banned user is refused."""
    joined = [
        join(registry, "owner", "owner"),
        join(registry, "bob"),
        join(registry, "bob"),
        join(registry, "guest", "pending_guest"),
        join(registry, "carol", "guest"),
    ]
    clock.advance(0)
    for notification in (
        role_change("guest", "guest"),
        role_change("bob", "pending_guest"),
        ban("carol", routing="broadcast"),
        broadcast("after"),
        role_change("bob", "admin", routing="direct"),
    ):
        registry.publish(notification)
        settle()
        clock.advance(0)
    seen = []
    for connection, _ in joined:
        frames = connection.frames
        del frames[0]["payload"]["epoch"]
        seen.append((frames, connection.closes))
    try:
        registry.check_admission(identity("carol", ORG))
        refused = None
    except RefusedError as e:
        refused = e.status
    return [seen, refused]


def test_delivery_does_exactly_what_one_process_does(clock, registry, backplane):
    """Delivered through a shared backplane, a run of role changes and a ban
    gives every connection the same frames and closes as one process does."""
    own_clock = Clock()
    alone = make_registry(own_clock, presence_grace=GRACE)
    one_process = _scenario(alone, own_clock, lambda: None)
    assert _scenario(registry, clock, backplane.deliver) == one_process
    assert one_process[1] == 403


def test_relayed_client_message_skips_only_its_sending_connection(registry, backplane):
    """A numbered client message comes back from the backplane to every
    admitted connection, the sender's other tab included, but not the sender."""
    sender, session = join(registry, "alice")
    other_tab, _ = join(registry, "alice")
    bob, _ = join(registry, "bob")
    pending, _ = join(registry, "pat", "pending_guest")
    registry.receive(
        session,
        ClientMessage(type="wave", payload=RoomUpdated(roomId="r", name="hi")),
    )
    ((_, outgoing),) = backplane.published
    assert (outgoing.sender, outgoing.exclude) == ("alice", session.connection_id)
    assert bob.routed() == []
    assert backplane.deliver() == [2]
    wave = {"type": "wave", "from": "alice", "payload": {"roomId": "r", "name": "hi"}}
    assert other_tab.routed() == [wave]
    assert bob.routed() == [wave]
    assert sender.routed() == []
    assert pending.routed() == []


def test_a_refused_publish_reaches_nobody(registry, backplane):
    """When the backplane cannot number, a notification fails for the caller to
    answer, and a relayed client message is dropped with a warning."""
    _, alice = join(registry, "alice")
    bob, _ = join(registry, "bob")
    backplane.refuse = BackplaneUnavailable("redis unavailable")
    assert failure_of(registry.publish(broadcast())).check(BackplaneUnavailable)
    with capturedLogs() as events:
        sent = registry.receive(
            alice,
            ClientMessage(type="wave", payload=RoomUpdated(roomId="r", name="hi")),
        )
    assert sent == 0
    assert [(e["log_level"], e["type"], e["org_id"]) for e in events] == [
        (LogLevel.warn, "wave", ORG)
    ]
    assert backplane.deliver() == []
    assert bob.routed() == []


# ---------------------------------------------------------------- 2. remote presence


def test_remote_user_joins_once_whatever_the_number_of_nodes(registry, clock):
    """A user first seen on another node is announced with their connections
    there; the same user on a third node announces nothing but adds up."""
    alice, _ = join(registry, "alice")
    pending, _ = join(registry, "pat", "pending_guest")
    clock.advance(0)
    forget(alice, pending)
    room = room_of(registry)
    room.remote_presence("node-b", "carol", RemoteEntry(2, "member"))
    clock.advance(0)
    assert alice.frames == [
        {"type": "user_joined", "payload": entry("carol", connections=2)}
    ]
    room.remote_presence("node-c", "carol", RemoteEntry(1, "member"))
    clock.advance(0)
    assert alice.frames[1:] == []
    assert pending.frames == []
    assert [u for u in room.presence() if u.userId == "carol"] == [
        PresenceUser(userId="carol", role="member", connections=3, position=None)
    ]
    assert registry.user_connection_count(ORG, "carol") == 3


def test_remote_user_leaves_when_their_last_node_drops_them(registry, clock):
    """Removing one node's entry announces nothing; removing the last announces
    user_left."""
    alice, _ = join(registry, "alice")
    room = room_of(registry)
    room.remote_presence("node-b", "carol", RemoteEntry(1, "member"))
    room.remote_presence("node-c", "carol", RemoteEntry(1, "member"))
    clock.advance(0)
    forget(alice)
    room.remote_presence("node-b", "carol", None)
    clock.advance(0)
    assert alice.frames == []
    assert [u.connections for u in room.presence() if u.userId == "carol"] == [1]
    room.remote_presence("node-c", "carol", None)
    clock.advance(0)
    assert alice.frames == [{"type": "user_left", "payload": {"userId": "carol"}}]
    assert [u.userId for u in room.presence()] == ["alice"]


def test_remote_role_change_is_announced(registry, clock):
    """Another node's entry with a new admitted role announces user_role_changed;
    the same role again announces nothing."""
    alice, _ = join(registry, "alice")
    room = room_of(registry)
    room.remote_presence("node-b", "carol", RemoteEntry(1, "member"))
    clock.advance(0)
    forget(alice)
    room.remote_presence("node-b", "carol", RemoteEntry(1, "admin"))
    room.remote_presence("node-b", "carol", RemoteEntry(2, "admin"))
    clock.advance(0)
    assert alice.frames == [
        {"type": "user_role_changed", "payload": {"userId": "carol", "role": "admin"}}
    ]


def test_remote_pending_guests_are_never_shown(registry, clock):
    """A pending guest on another node is neither announced, listed nor in a
    snapshot; once admitted there, they join."""
    alice, _ = join(registry, "alice")
    clock.advance(0)
    forget(alice)
    room = room_of(registry)
    room.remote_presence("node-b", "pat", RemoteEntry(1, "pending_guest"))
    clock.advance(0)
    assert alice.frames == []
    assert [u.userId for u in room.presence()] == ["alice"]
    bob, _ = join(registry, "bob")
    assert bob.frames[1] == {"type": "presence", "payload": {"users": [entry("alice")]}}
    room.remote_presence("node-b", "pat", RemoteEntry(1, "guest"))
    clock.advance(0)
    assert alice.frames[-1] == {"type": "user_joined", "payload": entry("pat", "guest")}


def test_snapshot_of_a_newcomer_lists_remote_users_with_positions(registry, clock):
    """A newcomer's presence snapshot lists the users of other nodes with their
    merged connections and last position."""
    join(registry, "alice")
    room = room_of(registry)
    room.remote_presence("node-b", "carol", RemoteEntry(1, "admin", HALL))
    room.remote_presence("node-c", "carol", RemoteEntry(2, "admin"))
    room.remote_presence("node-c", "dan", RemoteEntry(0, "guest"))
    bob, _ = join(registry, "bob")
    assert bob.frames[1] == {
        "type": "presence",
        "payload": {
            "users": [
                entry("alice"),
                entry("carol", "admin", 3, HALL_JSON),
                entry("dan", "guest", 0),
            ]
        },
    }


def test_a_gone_node_takes_only_its_own_entries(registry, clock):
    """node_gone removes that node's entries: its only users leave, users also
    on another node stay with fewer connections."""
    alice, _ = join(registry, "alice")
    room = room_of(registry)
    room.remote_presence("node-b", "carol", RemoteEntry(1, "member"))
    room.remote_presence("node-c", "carol", RemoteEntry(2, "member"))
    room.remote_presence("node-b", "dan", RemoteEntry(1, "member"))
    room.remote_presence("node-c", "eve", RemoteEntry(1, "member"))
    clock.advance(0)
    forget(alice)
    room.node_gone("node-b")
    clock.advance(0)
    assert alice.frames == [{"type": "user_left", "payload": {"userId": "dan"}}]
    assert {u.userId: u.connections for u in room.presence()} == {
        "alice": 1,
        "carol": 2,
        "eve": 1,
    }


def test_local_user_seen_elsewhere_neither_joins_nor_leaves(registry, clock):
    """A user already online on another node joining here announces nothing, and
    leaving here after the grace period announces nothing either."""
    bob, _ = join(registry, "bob")
    room = room_of(registry)
    room.remote_presence("node-b", "alice", RemoteEntry(1, "member"))
    clock.advance(0)
    forget(bob)
    _, alice = join(registry, "alice")
    clock.advance(0)
    assert bob.frames == []
    assert registry.user_connection_count(ORG, "alice") == 2
    registry.disconnect(alice)
    clock.advance(GRACE + 1)
    assert bob.frames == []
    assert [(u.userId, u.connections) for u in room.presence()] == [
        ("bob", 1),
        ("alice", 1),
    ]
    # Gone everywhere now: that is a leave.
    room.remote_presence("node-b", "alice", None)
    clock.advance(0)
    assert bob.frames == [{"type": "user_left", "payload": {"userId": "alice"}}]


# ---------------------------------------------------------------- 3. this node's entries


def test_entries_are_told_once_per_user_per_turn(registry, backplane, clock):
    """Joins are told to the cluster at the end of the reactor turn, one
    presence_changed per user with the connections of that moment."""
    join(registry, "alice")
    join(registry, "alice")
    join(registry, "bob", "admin")
    assert backplane.presence_calls == []
    clock.advance(0)
    assert backplane.presence_calls == [
        (ORG, "alice", RemoteEntry(2, "member")),
        (ORG, "bob", RemoteEntry(1, "admin")),
    ]
    clock.advance(1)
    assert len(backplane.presence_calls) == 2


def test_leaving_is_told_with_the_position_then_removed_after_grace(
    registry, backplane, clock
):
    """A user's last connection leaving is told as an entry without connections
    that keeps the position; after the grace period, as no entry."""
    _, tab1 = join(registry, "alice")
    _, tab2 = join(registry, "alice")
    registry.receive(tab1, ClientMessage(type="position_update", payload=HALL))
    clock.advance(0)
    backplane.presence_calls.clear()
    registry.disconnect(tab1)
    clock.advance(0)
    registry.disconnect(tab2)
    clock.advance(0)
    assert backplane.presence_calls == [
        (ORG, "alice", RemoteEntry(1, "member", HALL)),
        (ORG, "alice", RemoteEntry(0, "member", HALL)),
    ]
    clock.advance(GRACE - 0.1)
    assert len(backplane.presence_calls) == 2
    clock.advance(0.1)  # the grace period ends
    clock.advance(0)  # the turn ends
    assert backplane.presence_calls[2:] == [(ORG, "alice", None)]


def test_role_changes_are_told_with_the_new_role(registry, backplane, clock):
    """A delivered role change is told with the user's new role, a pending
    guest's entry carries pending_guest, and an admission is told as well."""
    join(registry, "alice")
    join(registry, "pat", "pending_guest")
    clock.advance(0)
    assert backplane.presence_calls == [
        (ORG, "alice", RemoteEntry(1, "member")),
        (ORG, "pat", RemoteEntry(1, "pending_guest")),
    ]
    backplane.presence_calls.clear()
    registry.publish(role_change("alice", "admin"))
    registry.publish(role_change("pat", "guest"))
    clock.advance(0)
    assert backplane.presence_calls == []  # nothing changed before delivery
    backplane.deliver()
    clock.advance(0)
    assert backplane.presence_calls == [
        (ORG, "alice", RemoteEntry(1, "admin")),
        (ORG, "pat", RemoteEntry(1, "guest")),
    ]


def test_one_process_tells_nobody(clock):
    """With the local backplane, rooms keep their presence to themselves."""
    backplane = LocalBackplane("solo")
    calls: list[Any] = []
    backplane.presence_changed = lambda *args: calls.append(args)  # type: ignore[method-assign]
    backplane.positions = lambda *args: calls.append(args)  # type: ignore[method-assign]
    registry = make_registry(clock, backplane=backplane, position_tick=TICK)
    _, session = join(registry, "alice")
    registry.receive(session, ClientMessage(type="position_update", payload=HALL))
    registry.disconnect(session)
    clock.advance(GRACE + 1)
    assert calls == []


# ---------------------------------------------------------------- 4. positions


def test_moves_are_published_once_per_tick_latest_per_user(registry, backplane, clock):
    """This node's moves go to the cluster once per tick, the latest per user,
    with each mover's entry; local plain connections still get every move."""
    _, alice = join(registry, "alice")
    _, bob = join(registry, "bob")
    carol, _ = join(registry, "carol")
    first = PositionUpdate(x=1, y=1)
    registry.receive(alice, ClientMessage(type="position_update", payload=first))
    registry.receive(alice, ClientMessage(type="position_update", payload=HALL))
    registry.receive(bob, ClientMessage(type="position_update", payload=first))
    assert backplane.position_calls == []
    assert [f["from"] for f in carol.routed()] == ["alice", "alice", "bob"]
    clock.advance(TICK)
    assert backplane.position_calls == [
        (
            ORG,
            [("alice", HALL), ("bob", first)],
            [
                ("alice", RemoteEntry(1, "member", HALL)),
                ("bob", RemoteEntry(1, "member", first)),
            ],
        )
    ]
    clock.advance(TICK * 3)
    assert len(backplane.position_calls) == 1


def test_remote_moves_reach_plain_and_batched_connections(registry, backplane, clock):
    """Another node's moves reach plain connections at once as position_update
    from the mover, batched ones in the next positions frame, and update the
    mover's presence; they are not published back."""
    plain, _ = join(registry, "alice")
    batched, _ = join(registry, "bob", batch=True)
    room = room_of(registry)
    room.remote_presence("node-b", "carol", RemoteEntry(1, "member"))
    clock.advance(0)
    forget(plain, batched)
    room.remote_positions("node-b", [("carol", HALL), ("zed", HALL)])
    assert plain.frames == [
        {"type": "position_update", "from": "carol", "payload": HALL_JSON}
    ]
    assert batched.frames == []
    clock.advance(TICK)
    assert batched.frames == [
        {
            "type": "positions",
            "payload": {"positions": [{"userId": "carol", **HALL_JSON}]},
        }
    ]
    assert [u.position for u in room.presence() if u.userId == "carol"] == [HALL]
    assert backplane.position_calls == []
    newcomer, _ = join(registry, "dan")
    assert entry("carol", position=HALL_JSON) in newcomer.frames[1]["payload"]["users"]


# ---------------------------------------------------------------- 5. restart


def test_restart_closes_everyone_and_continues_from_the_state(
    registry, backplane, clock
):
    """A stream restart closes every connection with 1012, takes the state's
    bans and held roles, and continues from its epoch, seq and window."""
    clock.advance(100)
    alice, alice_session = join(registry, "alice")
    pat, pat_session = join(registry, "pat", "pending_guest")
    room = room_of(registry)
    old_epoch = room.stream.epoch
    records = [numbered(seq, "e2", f"n{seq}", at=99.0) for seq in (8, 9, 10)]
    room.restart_stream(
        StreamState(
            epoch="e2",
            seq=10,
            records=records,
            bans={"mallory": 50.0},
            roles={"dave": "guest"},
        )
    )
    resync = (codes.CLOSE_SERVICE_RESTART, codes.REASON_RESYNC)
    assert alice.closes == [resync]
    assert pat.closes == [resync]
    registry.disconnect(alice_session)
    registry.disconnect(pat_session)
    back, _ = join(registry, "alice", since="e2.8")
    assert back.welcome["payload"]["epoch"] == "e2"
    assert back.welcome["payload"]["seq"] == 10
    assert back.welcome["payload"]["recovered"] is True
    assert [
        (f["seq"], f["payload"]["name"])
        for f in back.frames
        if f["type"] == "room_updated"
    ] == [
        (9, "n9"),
        (10, "n10"),
    ]
    stale, _ = join(registry, "bob", since=f"{old_epoch}.0")
    assert stale.welcome["payload"]["recovered"] is False
    with pytest.raises(RefusedError):
        join(registry, "mallory", issued_at=49.0)
    join(registry, "mallory", issued_at=51.0)
    dave, _ = join(registry, "dave")
    assert dave.welcome["payload"]["role"] == "guest"
    room.deliver(numbered(11, "e2", "n11", at=clock.seconds()))
    assert back.frames[-1]["seq"] == 11
    assert room.stream.seq == 11


def test_connected_role_is_not_held_over_by_a_restart(registry):
    """A held role in the state does not apply to a user connected here (their
    role here is already the newest)."""
    join(registry, "alice", "admin")
    room = room_of(registry)
    room.restart_stream(StreamState(epoch="e2", seq=0, roles={"alice": "guest"}))
    again, _ = join(registry, "alice", "admin")
    assert again.welcome["payload"]["role"] == "admin"


# ---------------------------------------------------------------- 6. the registry


def test_connect_waits_for_a_pending_attach(registry, backplane):
    """While the org's shared state is being read, connections are refused with
    503 and presence is asked of the backplane; once read, both are served and
    the stream starts where the cluster's is."""
    backplane.hold_attach = True
    backplane.states[ORG] = StreamState(epoch="e9", seq=4)
    ready = registry.prepare(ORG)
    also = registry.prepare(ORG)
    assert not ready.called
    with pytest.raises(RefusedError) as refused:
        join(registry, "alice")
    assert refused.value.status == 503
    assert result_of(registry.presence_of(ORG)) == []
    assert backplane.presence_reads == [ORG]
    backplane.finish_attach(ORG)
    assert result_of(ready) is None
    assert result_of(also) is None
    alice, _ = join(registry, "alice")
    assert (alice.welcome["payload"]["epoch"], alice.welcome["payload"]["seq"]) == (
        "e9",
        4,
    )
    assert [u.userId for u in result_of(registry.presence_of(ORG))] == ["alice"]
    assert backplane.presence_reads == [ORG]


def test_failed_attach_drops_the_room_and_refuses_with_503(registry, backplane):
    """When the org's shared state cannot be read, every waiting prepare fails
    with 503, the room is dropped and detached, and the next prepare tries again."""
    backplane.hold_attach = True
    first = registry.prepare(ORG)
    second = registry.prepare(ORG)
    backplane.fail_attach(ORG, RuntimeError("no redis"))
    for waiter in (first, second):
        error = failure_of(waiter).value
        assert isinstance(error, RefusedError)
        assert (error.status, error.reason) == (503, codes.REASON_UNAVAILABLE)
    assert registry.room(ORG) is None
    assert backplane.detached == [ORG]
    again = registry.prepare(ORG)
    assert ORG in backplane.attaching
    backplane.finish_attach(ORG)
    assert result_of(again) is None
    join(registry, "alice")


def test_prepare_fails_while_the_backplane_is_down(registry, backplane):
    """With the backplane away, a new org cannot be prepared (503); an org
    already served still can."""
    join(registry, "alice")
    backplane.set_up(False)
    error = failure_of(registry.prepare("org-new")).value
    assert (error.status, error.reason) == (503, codes.REASON_UNAVAILABLE)
    assert registry.room("org-new") is None
    assert result_of(registry.prepare(ORG)) is None


def test_abandon_idles_a_prepared_room(registry, backplane, clock):
    """A room prepared for a handshake refused after all is kept for its
    history only, then dropped and detached; one with a session stays live."""
    result_of(registry.prepare(ORG))
    assert (registry.room_count, registry.history_room_count) == (1, 0)
    registry.abandon(ORG)
    assert (registry.room_count, registry.history_room_count) == (0, 1)
    clock.advance(HistoryBounds().seconds)
    assert registry.room(ORG) is None
    assert backplane.detached == [ORG]
    join(registry, "alice")
    registry.abandon(ORG)
    assert (registry.room_count, registry.history_room_count) == (1, 0)


def test_long_outage_closes_every_connection(registry, backplane, clock):
    """A backplane away for outage_close seconds closes every connection of every
    org with 1012; one back in time closes nothing."""
    alice, _ = join(registry, "alice")
    other = FakeConnection()
    registry.connect(identity("bob", "org-b"), other)
    backplane.set_up(False)
    clock.advance(29)
    backplane.set_up(True)
    clock.advance(60)
    assert alice.closes == other.closes == []
    backplane.set_up(False)
    backplane.set_up(False)  # told twice: still one timer
    clock.advance(29.9)
    assert alice.closes == []
    clock.advance(0.1)
    down = (codes.CLOSE_SERVICE_RESTART, codes.REASON_BACKPLANE_DOWN)
    assert alice.closes == other.closes == [down]


def test_publish_for_an_org_without_a_room(registry, backplane):
    """A notification for an org served elsewhere goes through the backplane
    with its actions, and a ban in it is remembered here too."""
    published = result_of(registry.publish(ban("mallory", org="org-z")))
    assert published.seq == 1
    ((org, outgoing),) = backplane.published
    assert org == "org-z"
    assert outgoing.targets == ("mallory",)
    assert outgoing.actions == (
        CloseUser("mallory", codes.CLOSE_BANNED, codes.REASON_BANNED, ban=True),
    )
    assert registry.room("org-z") is None
    with pytest.raises(RefusedError):
        registry.check_admission(identity("mallory", "org-z"))


def test_presence_of_an_org_without_a_room_asks_the_backplane(registry, backplane):
    """Presence of an org not served here is the backplane's answer."""
    users = [PresenceUser(userId="carol", role="admin", connections=2, position=None)]
    backplane.remote_users["org-z"] = users
    assert result_of(registry.presence_of("org-z")) == users
    assert backplane.presence_reads == ["org-z"]
    assert registry.room("org-z") is None


def test_failed_attach_leaves_no_unhandled_error(registry, backplane):
    """A failed attach is answered to every waiter and leaves no failure behind
    to be logged as an unhandled error once collected."""
    backplane.hold_attach = True
    waiter = registry.prepare(ORG)
    with capturedLogs() as events:
        backplane.fail_attach(ORG, RuntimeError("no redis"))
        assert isinstance(failure_of(waiter).value, RefusedError)
        del waiter
        gc.collect()
    assert [e["log_format"] for e in events if e["log_level"] >= LogLevel.error] == []


@pytest.mark.parametrize(
    ("history_seconds", "drop_at"),
    [(0, 0), (2, 2)],
    ids=["history-off", "grace-outlives-history"],
)
def test_a_dropped_room_withdraws_its_entries(
    clock, backplane, history_seconds, drop_at
):
    """A room dropped while this node still has entries in the cluster (a user
    within grace, a change not yet told) tells the cluster they are gone."""
    registry = make_registry(
        clock,
        backplane=backplane,
        presence_grace=GRACE,
        history=HistoryBounds(seconds=history_seconds),
    )
    _, session = join(registry, "alice")
    clock.advance(0)
    registry.disconnect(session)
    clock.advance(drop_at)
    assert registry.room(ORG) is None
    clock.advance(GRACE * 2)
    assert backplane.presence_calls[0] == (ORG, "alice", RemoteEntry(1, "member"))
    assert backplane.presence_calls[-1] == (ORG, "alice", None)


def test_stopping_leaves_entries_to_expire_with_the_process(registry, backplane, clock):
    """Stopping the daemon withdraws no entry: they expire with the process, so
    that clients reconnecting to another one do not see their users leave."""
    join(registry, "alice")
    clock.advance(0)
    result_of(registry.stop())
    clock.advance(GRACE * 2)
    assert backplane.presence_calls == [(ORG, "alice", RemoteEntry(1, "member"))]


# ---------------------------------------------------------------- 8. one process


def test_local_backplane_numbers_and_delivers_in_the_same_call(clock):
    """LocalBackplane numbers with the room's stream and delivers before publish
    returns, answering the seq and the connections reached."""
    registry = make_registry(clock)
    alice, _ = join(registry, "alice")
    join(registry, "bob")
    backplane = registry.backplane
    head, tail = encode_numbered("room_updated", RoomUpdated(roomId="r", name="x"))
    d = backplane.publish(ORG, Outgoing("room_updated", head, tail))
    assert alice.routed()[-1]["payload"]["name"] == "x"
    assert alice.frames[-1]["seq"] == 1
    assert result_of(d) == Published(seq=1, delivered=2)
    assert result_of(backplane.attach(room_of(registry))) is None


def test_local_backplane_without_a_room_keeps_nothing(clock):
    """LocalBackplane answers Published(None, 0) for an org without a room, and
    the registry still remembers a ban in it."""
    registry = make_registry(clock)
    head, tail = encode_numbered("room_updated", RoomUpdated(roomId="r", name="x"))
    answer = registry.backplane.publish(
        "org-z", Outgoing("room_updated", head, tail, targets=("ann",))
    )
    assert result_of(answer) == Published(seq=None, delivered=0, per_target=(0,))
    assert result_of(registry.publish(ban("mallory", org="org-z"))) == Published(
        seq=None, delivered=0, per_target=(0,)
    )
    with pytest.raises(RefusedError):
        registry.check_admission(identity("mallory", "org-z"))


def test_merged_entries_show_admitted_users_once():
    """merge_entries adds up a user's connections over nodes, takes the latest
    admitted role and known position, and leaves out pending guests."""
    assert merge_entries(
        [
            ("carol", RemoteEntry(1, "member", HALL)),
            ("pat", RemoteEntry(2, "pending_guest")),
            ("carol", RemoteEntry(2, "admin")),
            ("carol", RemoteEntry(1, "pending_guest")),
        ]
    ) == [PresenceUser(userId="carol", role="admin", connections=4, position=HALL)]


# ---------------------------------------------------------------- 7. the Redis backplane
#
# RedisBackplane's ordering, presence and wire formats, with a FakeLink in place
# of Redis: every command is recorded and answered by the test.


@pytest.fixture
def link() -> FakeLink:
    """The Redis link, answered by hand."""
    return FakeLink()


@pytest.fixture
def reactor() -> MemoryReactorClock:
    """The Redis backplane's clock: a Clock that endpoints accept as a reactor
    (nothing ever connects)."""
    return MemoryReactorClock()


def redis_backplane(
    link: FakeLink, reactor: MemoryReactorClock, node_id: str = "node-a"
) -> RedisBackplane:
    """A Redis backplane with prefix t whose link is ``link``; never started."""
    backplane = RedisBackplane(
        parse_redis_url("redis://redis.invalid:6379"),
        node_id=node_id,
        prefix="t",
        bounds=HistoryBounds(),
        clock=reactor,
        ban_memory=3600.0,
        presence_grace=5.0,
        heartbeat_timeout=10.0,
        new_epoch=lambda: "fresh",
    )
    backplane.link = backplane._link = link  # type: ignore[assignment]
    return backplane


@pytest.fixture
def redis(link: FakeLink, reactor: MemoryReactorClock) -> RedisBackplane:
    """node-a's Redis backplane."""
    return redis_backplane(link, reactor)


@pytest.fixture
def feed() -> RecordingFeed:
    """org-a's room, as the backplane sees it."""
    return RecordingFeed(ORG)


CHANNEL = b"t:{org-a}:channel"
STREAM = "t:{org-a}:stream"


def outgoing(name: str = "hall", **kwargs: Any) -> Outgoing:
    """A room_updated ready to be numbered."""
    head, tail = encode_numbered("room_updated", RoomUpdated(roomId="r1", name=name))
    return Outgoing("room_updated", head, tail, **kwargs)


def record(
    seq: int, epoch: str = "e1", message: Outgoing | None = None, at: float = 1.5
) -> bytes:
    """A numbered record exactly as lua/publish.lua writes and publishes it."""
    message = message if message is not None else outgoing(f"m{seq}")
    number = str(seq).encode()
    return b"".join(
        (
            b'N{"e":"' + epoch.encode() + b'","s":' + number,
            b',"at":' + repr(at).encode() + header_tail(message),
            b"\n" + message.head + number + message.tail,
        )
    )


def stream_entries(*seqs: int, epoch: str = "e1") -> list[Any]:
    """An XRANGE reply holding these records."""
    return [[f"{seq}-0".encode(), [b"m", record(seq, epoch)]] for seq in seqs]


def attach_reply(
    epoch: str = "e1",
    seq: int = 0,
    records: Sequence[bytes] = (),
    presence: Sequence[bytes] = (),
    dead: Sequence[bytes] = (),
) -> list[Any]:
    """What lua/attach.lua answers: epoch, seq, records newest first, bans,
    roles, presence (field, entry, ...), dead nodes."""
    return [
        epoch.encode(),
        str(seq).encode(),
        list(records),
        [],
        [],
        list(presence),
        list(dead),
    ]


def script_digest(name: str) -> str:
    """The EVALSHA digest of one of the Lua scripts."""
    return hashlib.sha1(_load_scripts()[name].encode()).hexdigest()


def attached(
    redis: RedisBackplane, link: FakeLink, feed: Any, **state: Any
) -> StreamState | None:
    """Attach ``feed`` and answer the attach script with ``state``."""
    d = redis.attach(feed)
    assert link.subscribed[-1] == redis.channel(feed.org_id)
    args = link.answer("EVALSHA", attach_reply(**state))
    assert args[1] == script_digest("attach")
    return result_of(d)


def test_in_order_messages_are_delivered_and_duplicates_dropped(redis, link, feed):
    """Messages in seq order are delivered as they come, once each; nothing is
    read from the stream."""
    attached(redis, link, feed)
    for seq in (1, 2, 2, 1, 3):
        redis.on_message(CHANNEL, record(seq))
    assert feed.delivered == [1, 2, 3]
    assert feed.messages[1] == Numbered(
        epoch="e1",
        seq=2,
        at=1.5,
        type="room_updated",
        data=outgoing("m2").frame(2),
    )
    assert link.sent("XRANGE") == []


def test_a_gap_holds_later_messages_until_the_stream_fills_it(redis, link, feed):
    """A message after a gap is held, the gap is read from the stream once, then
    the filled and the held messages are delivered in order."""
    attached(redis, link, feed)
    redis.on_message(CHANNEL, record(1))
    redis.on_message(CHANNEL, record(4))
    redis.on_message(CHANNEL, record(5))
    assert feed.delivered == [1]
    assert link.sent("XRANGE") == [("XRANGE", STREAM, "2-0", "3-0")]
    link.answer("XRANGE", stream_entries(2, 3))
    assert feed.delivered == [1, 2, 3, 4, 5]
    assert [m.data for m in feed.messages[1:3]] == [
        outgoing("m2").frame(2),
        outgoing("m3").frame(3),
    ]
    redis.on_message(CHANNEL, record(6))
    assert feed.delivered == [1, 2, 3, 4, 5, 6]
    assert len(link.sent("XRANGE")) == 1
    assert ("restart", "e1", 3) not in feed.events


@pytest.mark.parametrize(
    "kept", [(), (3,)], ids=["stream-lost-all", "stream-lost-the-first"]
)
def test_a_gap_the_stream_cannot_fill_restarts_the_stream(redis, link, feed, kept):
    """When the stream no longer has the whole gap, the room restarts after it
    (its clients recover) and delivery goes on with the held message."""
    attached(redis, link, feed)
    redis.on_message(CHANNEL, record(1))
    redis.on_message(CHANNEL, record(4))
    link.answer("XRANGE", stream_entries(*kept))
    redis.on_message(CHANNEL, record(5))
    assert feed.events[1:] == [
        ("deliver", "e1", 1),
        ("restart", "e1", 3),
        ("deliver", "e1", 4),
        ("deliver", "e1", 5),
    ]


def test_a_lost_gap_closes_the_rooms_connections_with_1012(clock, redis, link):
    """A real room whose gap was lost closes its connections with 1012; its
    stream continues after the gap, so recovery across it fails and after it works."""
    room = OrgRoom(
        ORG,
        BUILTIN,
        bans={},
        clock=clock,
        stream=Stream(ORG, "local", HistoryBounds(), MemoryStore(), clock.seconds),
        backplane=redis,
    )
    attached(redis, link, room)
    alice = FakeConnection()
    room.join(identity("alice"), alice, "c1")
    redis.on_message(CHANNEL, record(1))
    redis.on_message(CHANNEL, record(3))
    assert alice.closes == []
    link.answer("XRANGE", [])
    assert alice.closes == [(codes.CLOSE_SERVICE_RESTART, codes.REASON_RESYNC)]
    assert [f.get("seq") for f in alice.frames if f["type"] == "room_updated"] == [
        1,
        3,
    ]
    assert (room.stream.epoch, room.stream.seq) == ("e1", 3)
    across = FakeConnection()
    room.join(identity("bob"), across, "c2", since="e1.1")
    assert across.welcome["payload"]["recovered"] is False
    after = FakeConnection()
    room.join(identity("carol"), after, "c3", since="e1.2")
    assert after.welcome["payload"]["recovered"] is True
    assert [f["seq"] for f in after.frames if f["type"] == "room_updated"] == [3]


def test_a_new_epoch_restarts_the_stream(redis, link, feed):
    """A message of another epoch restarts the room from that epoch; a gap at
    its start is read from the new stream."""
    attached(redis, link, feed)
    redis.on_message(CHANNEL, record(1))
    redis.on_message(CHANNEL, record(1, "e2"))
    redis.on_message(CHANNEL, record(3, "e3"))
    assert feed.events[1:] == [
        ("deliver", "e1", 1),
        ("restart", "e2", 0),
        ("deliver", "e2", 1),
        ("restart", "e3", 0),
    ]
    assert link.sent("XRANGE") == [("XRANGE", STREAM, "1-0", "2-0")]
    link.answer("XRANGE", stream_entries(1, 2, epoch="e3"))
    assert feed.events[-3:] == [
        ("deliver", "e3", 1),
        ("deliver", "e3", 2),
        ("deliver", "e3", 3),
    ]


def test_messages_before_the_state_is_read_are_replayed_after_it(redis, link, feed):
    """Messages published while the org's state is being read wait for it; those
    the state already covers are dropped."""
    d = redis.attach(feed)
    redis.on_message(CHANNEL, record(2))
    redis.on_message(CHANNEL, record(3))
    assert feed.events == []
    link.answer("EVALSHA", attach_reply(seq=2))
    assert result_of(d) == StreamState(epoch="e1", seq=2, records=[])
    assert feed.events == [("restart", "e1", 2), ("deliver", "e1", 3)]


def test_attach_hands_the_room_its_window_and_the_others_presence(redis, link, feed):
    """The attach reply restarts the room from the stream's window (oldest
    first), gives it the other nodes' entries (not this node's) and reaps the
    dead nodes it names."""
    carol = RemoteEntry(2, "admin", HALL)
    state = attached(
        redis,
        link,
        feed,
        seq=2,
        records=[record(2), record(1)],
        presence=[
            b"node-b\0carol",
            entry_text(carol),
            b"node-a\0alice",
            entry_text(RemoteEntry(1, "member")),
        ],
        dead=[b"node-c"],
    )
    assert state is not None
    assert [r.seq for r in state.records] == [1, 2]
    assert feed.events == [
        ("restart", "e1", 2),
        ("presence", "node-b", "carol", carol),
    ]
    (reap,) = [
        args for args in link.sent("EVALSHA") if args[1] == script_digest("reap")
    ]
    assert "node-c" in reap


def test_presence_messages_are_parsed_whatever_the_user_id(redis, link, feed):
    """A presence message (P entry NUL node NUL user) reaches the room with the
    node, the user id (even with | or NUL in it) and the entry; an empty entry
    removes one known before, and this node's own are ignored."""
    attached(redis, link, feed)
    carol = RemoteEntry(2, "member", PositionUpdate(x=1.5, y=-2, roomId="r|1"))
    odd = "ca|rol\0é"
    redis.on_message(CHANNEL, b"P" + entry_text(carol) + b"\0node-b\0" + odd.encode())
    redis.on_message(CHANNEL, b"P\0node-b\0" + odd.encode())
    redis.on_message(CHANNEL, b"P\0node-b\0" + odd.encode())
    redis.on_message(CHANNEL, b"P\0node-c\0never-seen")
    redis.on_message(CHANNEL, b"P" + entry_text(carol) + b"\0node-a\0alice")
    assert feed.events[1:] == [
        ("presence", "node-b", odd, carol),
        ("presence", "node-b", odd, None),
    ]


def test_position_messages_reach_the_room_unless_they_are_ours(redis, link, feed):
    """A tick of another node's moves reaches the room as (user, position)
    pairs; this node's own tick is ignored."""
    attached(redis, link, feed)
    moves = orjson.dumps([["carol", 1, 2, "hall"], ["dan", 3.5, 4, None]])
    redis.on_message(CHANNEL, b"Qnode-b\0" + moves)
    redis.on_message(CHANNEL, b"Qnode-a\0" + moves)
    assert feed.events[1:] == [
        (
            "positions",
            "node-b",
            [
                ("carol", PositionUpdate(x=1, y=2, roomId="hall")),
                ("dan", PositionUpdate(x=3.5, y=4)),
            ],
        )
    ]


def test_a_gone_node_is_forgotten(redis, link, feed):
    """A node reaped by another process is gone for the room, and a late removal
    of one of its entries is not passed on again; our own name re-registers."""
    attached(redis, link, feed)
    redis.on_message(
        CHANNEL, b"P" + entry_text(RemoteEntry(1, "member")) + b"\0node-b\0carol"
    )
    redis.on_message(CHANNEL, b"Gnode-b")
    redis.on_message(CHANNEL, b"P\0node-b\0carol")
    assert feed.events[2:] == [("gone", "node-b")]
    redis.on_message(CHANNEL, b"Gnode-a")
    assert feed.events[2:] == [("gone", "node-b")]
    assert link.sent("SET")[-1] == ("SET", "t:node:node-a", "1", "PX", 10000)


def test_other_channels_and_unreadable_records_are_ignored(redis, link, feed):
    """A message on a channel not served is dropped and an unreadable record is
    logged, not raised, and delivery goes on."""
    attached(redis, link, feed)
    redis.on_message(b"t:{org-z}:channel", record(1))
    with capturedLogs() as events:
        redis.on_message(CHANNEL, b"N{not json\n{}")
    assert [e["log_level"] for e in events] == [LogLevel.critical]
    redis.on_message(CHANNEL, record(1))
    assert feed.delivered == [1]


def test_publish_passes_the_arguments_publish_lua_reads(redis, link, reactor):
    """publish runs publish.lua with its keys and arguments in the documented
    order (targets, bans, roles counted) and answers its seq and counts."""
    reactor.advance(12.5)
    message = outgoing(
        targets=("bob", "carol"),
        actions=(
            SetRole("bob", "guest"),
            CloseUser("carol", codes.CLOSE_BANNED, codes.REASON_BANNED, ban=True),
            CloseUser("dan", 4000, "bye"),
        ),
    )
    d = redis.publish(ORG, message)
    args = link.answer("EVALSHA", [b"e1", b"7", b"3", b"1", b"2"])
    assert args[1:] == (
        script_digest("publish"),
        6,
        "t:{org-a}:meta",
        STREAM,
        "t:{org-a}:count",
        "t:{org-a}:bans",
        "t:{org-a}:roles",
        "-",
        CHANNEL,
        "fresh",
        "12.5",
        1000,
        301,
        message.head,
        message.tail,
        header_tail(message),
        3600,
        "0",
        "",
        0,
        2,
        "bob",
        "carol",
        1,
        "carol",
        1,
        "bob",
        "guest",
    )
    assert result_of(d) == Published(seq=7, delivered=3, per_target=(1, 2))
    d = redis.publish(ORG, outgoing())
    args = link.answer("EVALSHA", [b"e1", b"8", b"5"])
    assert args[-7:] == (3600, "1", "", 0, 0, 0, 0)
    assert result_of(d) == Published(seq=8, delivered=5)


def test_a_script_redis_does_not_know_is_sent_whole(redis, link):
    """A NOSCRIPT answer to EVALSHA sends the script itself with the same keys
    and arguments; another error is the caller's."""
    d = redis.publish(ORG, outgoing())
    (sha_args, sha_reply) = link.commands[-1]
    sha_reply.errback(txredisapi.ResponseError("NOSCRIPT No matching script."))
    args = link.answer("EVAL", [b"e1", b"1", b"0"])
    assert args[1] == _load_scripts()["publish"]
    assert args[2:] == sha_args[2:]
    assert result_of(d).seq == 1
    d = redis.publish(ORG, outgoing())
    link.commands[-1][1].errback(txredisapi.ResponseError("OOM"))
    assert failure_of(d).check(txredisapi.ResponseError)
    assert link.sent("EVAL") == [args]


def test_presence_written_by_one_node_is_read_by_another(redis, link, reactor):
    """This node's entry goes to presence.lua (field node NUL user); the message
    that script publishes reaches another node's room as that entry, and an
    empty entry as its removal."""
    alice = RemoteEntry(2, "member", HALL)
    redis.presence_changed(ORG, "al|ice", alice)
    redis.presence_changed(ORG, "al|ice", None)
    written = [
        args for args in link.sent("EVALSHA") if args[1] == script_digest("presence")
    ]
    assert [args[2:6] for args in written] == [
        (3, "t:{org-a}:pres", "t:{org-a}:count", "t:node:node-a:orgs")
    ] * 2
    assert written[0][6:] == (
        b"node-a\0al|ice",
        "al|ice",
        entry_text(alice),
        CHANNEL,
        ORG,
        86400,
    )
    assert written[1][8] == b""
    other_link = FakeLink()
    node_b = redis_backplane(other_link, reactor, "node-b")
    room_b = RecordingFeed(ORG)
    attached(node_b, other_link, room_b)
    for args in written:
        # What presence.lua publishes: 'P' .. entry .. '\0' .. field
        node_b.on_message(CHANNEL, b"P" + args[8] + b"\0" + args[6])
    assert room_b.events[1:] == [
        ("presence", "node-a", "al|ice", alice),
        ("presence", "node-a", "al|ice", None),
    ]


def test_moves_published_by_one_node_reach_another(redis, link, reactor):
    """A tick of moves goes to positions.lua with the mover's entries; the
    message it publishes reaches another node's room as the same moves."""
    moves = [("alice", HALL), ("bob", PositionUpdate(x=-1.5, y=0))]
    entries = [("alice", RemoteEntry(1, "member", HALL))]
    redis.positions(ORG, moves, entries)
    redis.positions(ORG, [], [])
    (args,) = link.sent("EVALSHA")
    assert args[1:4] == (script_digest("positions"), 1, "t:{org-a}:pres")
    assert args[4] == CHANNEL
    assert args[6:] == (b"node-a\0alice", entry_text(entries[0][1]))
    other_link = FakeLink()
    node_b = redis_backplane(other_link, reactor, "node-b")
    room_b = RecordingFeed(ORG)
    attached(node_b, other_link, room_b)
    node_b.on_message(CHANNEL, args[5])
    assert room_b.events[1:] == [("positions", "node-a", moves)]


def test_presence_is_read_from_every_node_merged(redis, link):
    """Presence of an org not served here merges every node's entries: one
    admitted user with all their connections, pending guests left out."""
    d = redis.read_presence(ORG)
    args = link.answer(
        "HGETALL",
        [
            b"node-b\0carol",
            b"1|member|null",
            b"node-c\0carol",
            b'2|admin|[3,4,"hall"]',
            b"node-b\0pat",
            b"1|pending_guest|null",
        ],
    )
    assert args == ("HGETALL", "t:{org-a}:pres")
    assert result_of(d) == [
        PresenceUser(userId="carol", role="admin", connections=3, position=HALL)
    ]


def test_entries_are_written_again_when_redis_comes_back(redis, link):
    """Entries changed while Redis was away are kept and written once it is
    back, with the liveness key; removed ones are not; watchers hear both."""
    heard: list[bool] = []
    redis.watch(heard.append)
    link.up = False
    redis.link_changed(False)
    redis.presence_changed(ORG, "alice", RemoteEntry(1, "member"))
    redis.presence_changed(ORG, "bob", RemoteEntry(1, "member"))
    redis.presence_changed(ORG, "bob", None)
    assert link.commands == []
    assert redis.unavailable() is not None
    link.up = True
    redis.link_changed(True)
    assert heard == [False, True]
    assert redis.unavailable() is None
    assert link.sent("SET") == [("SET", "t:node:node-a", "1", "PX", 10000)]
    written = [args[6:9] for args in link.sent("EVALSHA")]
    assert written == [(b"node-a\0alice", "alice", b"1|member|null")]


def test_a_reconnect_reads_each_served_org_again(redis, link, feed):
    """Back from an outage, an attached org's state is read again: messages
    missed in the same epoch are filled from the stream, a new epoch restarts
    the room, and the other nodes' presence is brought up to date."""
    carol = RemoteEntry(1, "member")
    attached(redis, link, feed, presence=[b"node-b\0carol", entry_text(carol)])
    redis.on_message(CHANNEL, record(1))
    redis.link_changed(True)
    link.answer("EVALSHA", attach_reply(seq=3))
    link.answer("XRANGE", stream_entries(2, 3))
    assert feed.delivered == [1, 2, 3]
    assert ("presence", "node-b", "carol", None) in feed.events
    redis.link_changed(True)
    link.answer("EVALSHA", attach_reply(epoch="e2", seq=5))
    assert feed.events[-1] == ("restart", "e2", 5)
    redis.on_message(CHANNEL, record(6, "e2"))
    assert feed.events[-1] == ("deliver", "e2", 6)


def test_attach_keeps_recent_bans_and_held_roles(redis, link, feed, reactor):
    """The attach reply's bans still within ban memory and its held roles reach
    the room's state."""
    reactor.advance(5000)
    d = redis.attach(feed)
    reply = attach_reply()
    reply[3] = [b"mallory", b"4000.5", b"old", b"1000"]
    reply[4] = [b"dave", b"guest"]
    link.answer("EVALSHA", reply)
    state = result_of(d)
    assert state is not None
    assert state.bans == {"mallory": 4000.5}
    assert state.roles == {"dave": "guest"}


def test_attach_without_redis_fails_and_detach_stops_delivery(redis, link, feed):
    """Attaching while Redis is away fails with RedisUnavailable; a detached org
    is unsubscribed and its messages no longer reach the room."""
    link.up = False
    assert failure_of(redis.attach(feed)).check(RedisUnavailable)
    link.up = True
    attached(redis, link, feed)
    redis.detach(ORG)
    redis.detach(ORG)
    assert link.unsubscribed == [CHANNEL]
    redis.on_message(CHANNEL, record(1))
    assert feed.delivered == []


def test_a_failed_state_read_detaches(redis, link, feed):
    """When the org's state cannot be read, the attach fails and the org is
    unsubscribed again."""
    d = redis.attach(feed)
    link.commands[-1][1].errback(RedisUnavailable("gone"))
    assert failure_of(d).check(RedisUnavailable)
    assert link.unsubscribed == [CHANNEL]


def test_heartbeat_registers_refreshes_and_reaps(redis, link, feed, reactor):
    """The heartbeat registers this node, refreshes its key (registering again
    when it had expired), and reaps a node whose key is gone."""
    attached(
        redis,
        link,
        feed,
        presence=[b"node-b\0carol", entry_text(RemoteEntry(1, "member"))],
    )
    redis.start()
    reactor.advance(2)
    assert link.sent("SET") == [("SET", "t:node:node-a", "1", "PX", 10000)]
    reactor.advance(2)
    assert link.sent("SET")[1] == ("SET", "t:node:node-a", "1", "PX", 10000, "XX")
    assert link.answer("EXISTS", b"0") == ("EXISTS", "t:node:node-b")
    reap = [args for args in link.sent("EVALSHA") if args[1] == script_digest("reap")]
    assert reap == [
        (
            "EVALSHA",
            script_digest("reap"),
            2,
            "t:node:node-b",
            "t:node:node-b:orgs",
            "node-b",
            "t:",
        )
    ]
    link.answer("SET", b"OK")
    link.answer("SET", None)  # our key had expired: register again
    assert link.sent("SET")[2] == ("SET", "t:node:node-a", "1", "PX", 10000)
    stopped = redis.stop()  # the key is left to expire after the grace
    assert link.answer("PEXPIRE", 1) == ("PEXPIRE", "t:node:node-a", 5000)
    assert result_of(stopped) is None
    reactor.advance(10)
    assert len(link.sent("SET")) == 3


def test_a_message_filled_before_it_arrives_does_not_stall_delivery(redis, link, feed):
    """After a reconnect, a message both read from the stream and received late
    on the channel leaves nothing behind: the next gap is still filled."""
    attached(redis, link, feed)
    redis.on_message(CHANNEL, record(1))
    redis.link_changed(True)  # the link came back: the state is read again
    link.answer("EVALSHA", attach_reply(seq=3))
    assert link.sent("XRANGE") == [("XRANGE", STREAM, "2-0", "3-0")]
    # Published before the read, it arrives on the other connection after it.
    redis.on_message(CHANNEL, record(3))
    link.answer("XRANGE", stream_entries(2, 3))
    assert feed.delivered == [1, 2, 3]
    redis.on_message(CHANNEL, record(5))  # 4 was lost on the channel
    assert link.sent("XRANGE")[1:] == [("XRANGE", STREAM, "4-0", "4-0")]
    link.answer("XRANGE", stream_entries(4))
    assert feed.delivered == [1, 2, 3, 4, 5]


def test_an_epoch_change_during_a_fill_does_not_stall_delivery(redis, link, feed):
    """A new epoch while a gap of the old one is being read: the new epoch's
    messages are delivered once the old read answers."""
    attached(redis, link, feed)
    redis.on_message(CHANNEL, record(1))
    redis.on_message(CHANNEL, record(3))  # reading 2 from the stream
    redis.on_message(CHANNEL, record(1, "e2"))
    link.answer("XRANGE", stream_entries(2))
    redis.on_message(CHANNEL, record(2, "e2"))
    assert feed.events[1:] == [
        ("deliver", "e1", 1),
        ("restart", "e2", 0),
        ("deliver", "e2", 1),
        ("deliver", "e2", 2),
    ]


def test_a_fill_never_delivers_another_epochs_records(redis, link, feed):
    """A gap read from a stream that has started a new epoch is not filled with
    that epoch's messages under the old one."""
    attached(redis, link, feed)
    redis.on_message(CHANNEL, record(1))
    redis.on_message(CHANNEL, record(3))
    # Redis lost the stream; publish.lua began e2, whose 2 is what is read.
    link.answer("XRANGE", stream_entries(2, epoch="e2"))
    assert ("deliver", "e2", 2) not in feed.events


# ---------------------------------------------------------------- wire formats


def test_records_round_trip_with_every_header_field():
    """A record as publish.lua builds it parses back to the message: frame,
    targets, sender, actions and excluded connection."""
    message = outgoing(
        targets=("bob", "ü|x"),
        sender="alice",
        actions=(
            SetRole("bob", "guest"),
            CloseUser("bob", codes.CLOSE_BANNED, codes.REASON_BANNED, ban=True),
            CloseUser("ü|x", 4000, "bye"),
        ),
        exclude="c7",
    )
    assert parse_record(record(7, "ep", message, at=12.25)) == Numbered(
        epoch="ep",
        seq=7,
        at=12.25,
        type="room_updated",
        data=message.frame(7),
        targets=("bob", "ü|x"),
        sender="alice",
        actions=message.actions,
        exclude="c7",
    )


def test_records_tell_a_broadcast_from_a_direct_message_to_nobody():
    """A broadcast's record has no targets, a direct message's an empty tuple,
    and neither carries sender, actions or exclusion unless given."""
    broadcast_record = parse_record(record(1, message=outgoing()))
    assert (
        broadcast_record.targets,
        broadcast_record.sender,
        broadcast_record.actions,
        broadcast_record.exclude,
    ) == (None, None, (), None)
    assert parse_record(record(1, message=outgoing(targets=()))).targets == ()


@pytest.mark.parametrize(
    "raw",
    [b"P1|member|null\0n\0u", b'N{"e":"e","s":1,"at":1,"y":"t"}'],
    ids=["not-numbered", "no-frame"],
)
def test_unreadable_records_raise_value_error(raw):
    """What is not a numbered record with its frame raises ValueError."""
    with pytest.raises(ValueError, match="record"):
        parse_record(raw)


@pytest.mark.parametrize(
    ("entry", "text"),
    [
        (RemoteEntry(2, "admin"), b"2|admin|null"),
        (RemoteEntry(0, "member", HALL), b'0|member|[3,4,"hall"]'),
        (
            RemoteEntry(1, "pending_guest", PositionUpdate(x=-1.5, y=0)),
            b"1|pending_guest|[-1.5,0,null]",
        ),
    ],
)
def test_presence_entries_round_trip(entry, text):
    """An entry is written as conns|role|position (what the Lua scripts parse)
    and read back equal."""
    assert entry_text(entry) == text
    assert parse_entry(text) == entry


def test_actions_round_trip():
    """Actions survive their header encoding."""
    actions = (SetRole("u", "admin"), CloseUser("v", 4003, "banned", ban=True))
    assert decode_actions(encode_actions(actions)) == actions
    assert decode_actions(None) == ()


def test_local_idempotency_key_answers_once_within_its_window(clock):
    """One process remembers an idempotency key for its window: a retry is the
    first answer (nothing numbered again), another body a conflict, and after
    the window the key is free again."""
    backplane = LocalBackplane("solo", now=clock.seconds)
    head, tail = encode_numbered("room_updated", RoomUpdated(roomId="r", name="x"))
    message = Outgoing("room_updated", head, tail, targets=("ann",))
    once = Once(key="k1", fingerprint="body-1", seconds=10)
    first = result_of(backplane.publish("org-q", message, once))
    assert first == Published(seq=None, delivered=0, per_target=(0,))
    again = result_of(backplane.publish("org-q", message, once))
    assert again == attrs.evolve(first, replayed=True)
    conflict = failure_of(
        backplane.publish("org-q", message, attrs.evolve(once, fingerprint="body-2"))
    )
    assert conflict.check(IdempotencyConflict)
    assert conflict.value.key == "k1"
    clock.advance(10)
    later = result_of(backplane.publish("org-q", message, once))
    assert later.replayed is False


def test_rediss_connects_through_tls():
    """A ``rediss://`` URL wraps the connection in TLS, checked against the
    host's name; ``redis://`` connects in the clear."""
    reactor = MemoryReactorClock()
    secure = RedisLink._endpoint(
        parse_redis_url("rediss://cache.example:6390"), reactor
    )
    plain = RedisLink._endpoint(parse_redis_url("redis://cache.example"), reactor)
    assert type(secure).__name__ == "_WrapperEndpoint"
    assert type(plain).__name__ == "HostnameEndpoint"
