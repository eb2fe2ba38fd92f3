"""Rooms and the registry, sans IO: fake connections, a Clock for time."""

from __future__ import annotations

import json
from typing import Any

import pytest

from twisted.internet.task import Clock

from officerouter import codes, rooms
from officerouter.catalog import BOTH, BUILTIN, MessageSpec
from officerouter.codec import ContractError
from officerouter.effects import SetRole
from officerouter.messages import (
    ClientMessage,
    GuestKnock,
    Notification,
    PositionUpdate,
    RoomUpdated,
    SpaceDeleted,
)
from officerouter.registry import OrgRegistry
from officerouter.rooms import RefusedError, Session, error_frame

from .fakes import FakeConnection, ban, identity, make_registry, role_change

ROOM = {"roomId": "r1", "name": "Main Hall"}


@pytest.fixture
def registry(clock: Clock) -> OrgRegistry:
    """A registry without auto-knock, on the test clock."""
    return make_registry(clock)


def join(
    registry: OrgRegistry,
    user: str,
    role: str = "member",
    org: str = "org-a",
    **kw: Any,
) -> tuple[FakeConnection, Session]:
    """Connect a fake connection for ``user``; returns it and its session."""
    connection = FakeConnection()
    session = registry.connect(identity(user, org, role, **kw), connection)
    return connection, session


def broadcast(org: str = "org-a", type_: str = "room_updated", payload: Any = None):
    """A validated broadcast notification."""
    return Notification(
        org_id=org,
        routing="broadcast",
        type=type_,
        payload=payload if payload is not None else RoomUpdated(**ROOM),
    )


def direct(
    *targets: str, org: str = "org-a", type_: str = "room_updated", payload=None
):
    """A validated direct notification."""
    return Notification(
        org_id=org,
        routing="direct",
        type=type_,
        payload=payload if payload is not None else RoomUpdated(**ROOM),
        targets=targets,
    )


def position(x: float = 1, y: float = 2) -> ClientMessage:
    """A validated client position_update."""
    return ClientMessage(type="position_update", payload=PositionUpdate(x=x, y=y))


ROOM_FRAME = {"type": "room_updated", "payload": ROOM}


# ---------------------------------------------------------------- connecting


def test_connected_frame_comes_first(registry):
    """A new connection first receives connected with its ids, org and role."""
    connection, session = join(registry, "alice", "admin")
    payload = connection.welcome["payload"]
    assert {k: payload[k] for k in ("connectionId", "userId", "orgId", "role")} == {
        "connectionId": session.connection_id,
        "userId": "alice",
        "orgId": "org-a",
        "role": "admin",
    }
    assert connection.closes == []


def test_connection_ids_are_distinct(registry):
    """Every connection, even of the same user, gets its own id."""
    ids = {join(registry, "alice")[1].connection_id for _ in range(3)}
    ids.add(join(registry, "bob")[1].connection_id)
    assert len(ids) == 4


@pytest.mark.parametrize("role", ["owner", "admin", "member", "guest", "pending_guest"])
def test_connected_carries_the_token_role(registry, role):
    """A first connection takes the role its token carries."""
    connection, session = join(registry, "alice", role)
    assert connection.welcome["payload"]["role"] == role
    assert session.role == role
    assert session.admitted is (role != "pending_guest")


def test_counts(registry):
    """The registry counts rooms, connections per org and per user."""
    join(registry, "alice")
    join(registry, "alice")
    join(registry, "bob", org="org-b")
    assert registry.room_count == 2
    assert registry.connection_count == 3
    assert registry.org_connection_count("org-a") == 2
    assert registry.user_connection_count("org-a", "alice") == 2
    assert registry.user_connection_count("org-b", "alice") == 0
    assert registry.org_connection_count("org-z") == 0


# ---------------------------------------------------------------- broadcast and direct


def test_broadcast_reaches_admitted_sessions_only(registry):
    """A broadcast reaches owners, admins, members and guests, never pending guests."""
    admitted = [
        join(registry, user, role)[0]
        for user, role in [
            ("o", "owner"),
            ("a", "admin"),
            ("m", "member"),
            ("g", "guest"),
        ]
    ]
    pending, _ = join(registry, "p", "pending_guest")
    assert registry.notify(broadcast()) == 4
    for connection in admitted:
        assert connection.routed() == [ROOM_FRAME]
    assert pending.routed() == []


def test_broadcast_reaches_every_connection_of_a_user(registry):
    """Each of a user's tabs receives a broadcast."""
    tabs = [join(registry, "alice")[0] for _ in range(3)]
    assert registry.notify(broadcast()) == 3
    assert all(tab.routed() == [ROOM_FRAME] for tab in tabs)


def test_direct_reaches_named_users_and_nobody_else(registry):
    """A direct message reaches every session of each named user, pending guests included."""
    alice1, _ = join(registry, "alice")
    alice2, _ = join(registry, "alice")
    pending, _ = join(registry, "guest-1", "pending_guest")
    bob, _ = join(registry, "bob", "owner")
    assert registry.notify(direct("alice", "guest-1")) == 3
    assert alice1.routed() == alice2.routed() == pending.routed() == [ROOM_FRAME]
    assert bob.routed() == []


def test_direct_to_absent_users_delivers_nothing(registry):
    """A direct message to users who are not connected is written nowhere."""
    alice, _ = join(registry, "alice")
    assert registry.notify(direct("bob", "carol")) == 0
    assert alice.routed() == []


def test_direct_with_guest_knock_payload(registry):
    """guest_knock sent directly to an admin arrives with its payload unchanged."""
    admin, _ = join(registry, "admin-1", "admin")
    knock = GuestKnock(guestId="guest-1", name="Visitor")
    assert registry.notify(direct("admin-1", type_="guest_knock", payload=knock)) == 1
    assert admin.routed() == [
        {"type": "guest_knock", "payload": {"guestId": "guest-1", "name": "Visitor"}}
    ]


def test_frames_carry_no_org_or_targets(registry):
    """Routed frames are {"type", "payload"}: neither orgId nor targets are echoed."""
    alice, _ = join(registry, "alice")
    registry.notify(direct("alice"))
    (encoded,) = alice.routed_encoded()
    frame = json.loads(encoded.data)
    assert set(frame) <= {"type", "payload", "seq"}


def test_two_orgs_are_isolated(registry):
    """Broadcasts, direct messages and relays of one org never reach another."""
    a_alice, a_session = join(registry, "alice", org="org-a")
    b_bob, _ = join(registry, "bob", org="org-b")
    b_alice, _ = join(registry, "alice", org="org-b")
    assert registry.notify(broadcast("org-a")) == 1
    # alice is connected in org-b too, but a direct message of org-a stays there.
    assert registry.notify(direct("alice", "bob", org="org-a")) == 1
    assert registry.receive(a_session, position()) == 0
    assert b_bob.routed() == []
    assert b_alice.routed() == []
    assert a_alice.routed() == [ROOM_FRAME, ROOM_FRAME]
    assert (
        registry.notify(
            broadcast("org-b", "space_deleted", SpaceDeleted(spaceId="s", name="n"))
        )
        == 2
    )
    assert a_alice.routed_types() == ["room_updated", "room_updated"]


def test_same_bytes_go_to_every_target(registry):
    """A broadcast is encoded once: every target gets the same object and bytes."""
    connections = [join(registry, f"user-{i}")[0] for i in range(5)]
    registry.notify(broadcast())
    sent = [connection.routed_encoded()[0] for connection in connections]
    assert all(message is sent[0] for message in sent)
    assert all(message.data is sent[0].data for message in sent)


def test_same_bytes_for_every_relay_target(registry):
    """A relayed message is encoded once for all its targets too."""
    _, sender = join(registry, "alice")
    others = [join(registry, f"user-{i}")[0] for i in range(3)]
    registry.receive(sender, position())
    sent = [connection.routed_encoded()[0] for connection in others]
    assert all(message is sent[0] for message in sent)


# ---------------------------------------------------------------- relay


def test_relay_stamps_from_and_skips_only_the_sender(registry):
    """A position reaches the user's other tabs and the org, stamped, not the sender."""
    tab1, session = join(registry, "alice")
    tab2, _ = join(registry, "alice")
    bob, _ = join(registry, "bob", "guest")
    pending, _ = join(registry, "p", "pending_guest")
    assert registry.receive(session, position(3, -4.5)) == 2
    expected = [
        {"type": "position_update", "from": "alice", "payload": {"x": 3, "y": -4.5}}
    ]
    assert tab2.routed() == bob.routed() == expected
    assert tab1.routed() == []
    assert pending.routed() == []


def test_relay_is_ephemeral(registry):
    """Relayed positions are marked ephemeral and carry their sender."""
    _, session = join(registry, "alice")
    bob, _ = join(registry, "bob")
    registry.receive(session, position())
    (message,) = bob.routed_encoded()
    assert message.ephemeral
    assert message.sender == "alice"


def test_relay_alone_in_the_org_delivers_nothing(registry):
    """A position from the only connection of an org is written nowhere."""
    _, session = join(registry, "alice")
    assert registry.receive(session, position()) == 0


# ---------------------------------------------------------------- pending guests


def test_pending_guest_cannot_send(registry):
    """A pending guest's message is refused with not_permitted and relayed to nobody."""
    _, session = join(registry, "p", "pending_guest")
    bob, _ = join(registry, "bob")
    with pytest.raises(ContractError) as info:
        registry.receive(session, position())
    assert info.value.code == codes.ERR_NOT_PERMITTED
    assert bob.routed() == []


def test_pending_guest_gets_no_broadcasts_or_relays(registry):
    """A pending guest receives neither broadcasts nor relayed client messages."""
    pending, _ = join(registry, "p", "pending_guest")
    _, bob = join(registry, "bob")
    registry.notify(broadcast())
    registry.receive(bob, position())
    assert pending.routed() == []


def test_promotion_joins_the_org_traffic(registry):
    """user_updated making a pending guest a member: they get it and all that follows."""
    pending, session = join(registry, "p", "pending_guest")
    _, bob = join(registry, "bob")
    assert registry.notify(role_change("p", "member")) == 2
    registry.notify(broadcast())
    registry.receive(bob, position())
    assert pending.routed() == [
        {"type": "user_updated", "payload": {"userId": "p", "role": "member"}},
        ROOM_FRAME,
        {"type": "position_update", "from": "bob", "payload": {"x": 1, "y": 2}},
    ]
    assert session.role == "member"
    # And they may now send.
    assert registry.receive(session, position()) == 1


def test_demotion_leaves_the_org_traffic(registry):
    """user_updated making a member a pending guest stops broadcasts, relays and sending."""
    alice, session = join(registry, "alice")
    _, bob = join(registry, "bob")
    registry.notify(role_change("alice", "pending_guest"))
    registry.notify(broadcast())
    registry.receive(bob, position())
    assert ROOM_FRAME not in alice.routed()
    assert "position_update" not in alice.routed_types()
    with pytest.raises(ContractError) as info:
        registry.receive(session, position())
    assert info.value.code == codes.ERR_NOT_PERMITTED
    # Messages addressed to them still arrive.
    registry.notify(direct("alice"))
    assert alice.routed()[-1] == ROOM_FRAME


def test_broadcast_demotion_still_reaches_the_demoted_user(registry):
    """A broadcast user_updated demoting a member reaches them and the org alike."""
    alice, _ = join(registry, "alice")
    alice_tab, _ = join(registry, "alice")
    bob, _ = join(registry, "bob")
    assert registry.notify(role_change("alice", "pending_guest")) == 3
    update = {
        "type": "user_updated",
        "payload": {"userId": "alice", "role": "pending_guest"},
    }
    for connection in (alice, alice_tab, bob):
        assert connection.routed()[-1] == update
    # After it, broadcasts no longer reach them.
    registry.notify(broadcast())
    assert alice.routed()[-1] == update


def test_role_change_applies_to_every_tab(registry):
    """All live sessions of the user take the new role."""
    sessions = [join(registry, "p", "pending_guest")[1] for _ in range(2)]
    registry.notify(role_change("p", "guest", routing="direct"))
    assert [s.role for s in sessions] == ["guest", "guest"]


def test_role_change_for_absent_user_changes_nothing(registry):
    """user_updated for a user who is not connected touches no session."""
    _, alice = join(registry, "alice")
    assert registry.notify(role_change("nobody", "owner")) == 1
    assert alice.role == "member"


@pytest.mark.parametrize(
    ("token_role", "room_role"),
    [("pending_guest", "member"), ("member", "pending_guest"), ("guest", "admin")],
)
def test_second_connection_takes_the_room_role(registry, token_role, room_role):
    """A user's next tab takes the role the room holds, not its token's."""
    join(registry, "alice", token_role)
    registry.notify(role_change("alice", room_role))
    connection, session = join(registry, "alice", token_role)
    assert connection.welcome["payload"]["role"] == room_role
    assert session.role == room_role
    registry.notify(broadcast())
    assert (ROOM_FRAME in connection.routed()) is (room_role != "pending_guest")


# ---------------------------------------------------------------- bans


def test_ban_delivers_then_closes_with_4003(registry, clock):
    """user_banned reaches the user's tabs, then each closes with 4003."""
    tabs = [join(registry, "mallory")[0] for _ in range(2)]
    bystander, _ = join(registry, "bob")
    assert registry.notify(ban("mallory")) == 2
    for tab in tabs:
        assert tab.routed()[-1] == {
            "type": "user_banned",
            "payload": {"userId": "mallory", "reason": "spam"},
        }
        # Exactly one close, with 4003, and only after the ban frame was queued.
        closes = [i for i, (kind, _) in enumerate(tab.events) if kind == "close"]
        banned = [
            i
            for i, (kind, message) in enumerate(tab.events)
            if kind == "send" and message.type == "user_banned"
        ]
        assert tab.closes == [(4003, codes.REASON_BANNED)]
        assert banned[0] < closes[0]
    assert bystander.closes == []
    assert bystander.routed() == []


def test_ban_refuses_older_tokens_until_it_expires(clock):
    """After a ban, tokens issued before it are refused (403) for ban_memory seconds."""
    registry = make_registry(clock, ban_memory=600)
    clock.advance(1000)
    join(registry, "mallory", issued_at=900)
    registry.notify(ban("mallory"))
    before = identity("mallory", issued_at=999)
    with pytest.raises(RefusedError) as info:
        registry.check_admission(before)
    assert (info.value.status, info.value.reason) == (403, codes.REASON_BANNED)
    with pytest.raises(RefusedError):
        registry.connect(before, FakeConnection())
    # A token without iat cannot prove it is newer.
    with pytest.raises(RefusedError):
        registry.check_admission(identity("mallory", issued_at=None))
    # A token issued after the ban is admitted.
    clock.advance(10)
    registry.check_admission(identity("mallory", issued_at=1005))
    # Other users and other orgs are not affected.
    registry.check_admission(identity("bob", issued_at=0))
    registry.check_admission(identity("mallory", "org-b", issued_at=0))
    # Once ban_memory has passed, the old token is admitted again.
    clock.advance(589)
    with pytest.raises(RefusedError):
        registry.check_admission(before)
    clock.advance(2)
    registry.check_admission(before)
    registry.connect(before, FakeConnection())


def test_ban_without_connections_still_takes_effect(registry, clock):
    """A ban for an org with nobody connected delivers 0 and refuses the old token."""
    clock.advance(100)
    assert registry.notify(ban("mallory", org="org-q")) == 0
    assert registry.room("org-q") is None
    with pytest.raises(RefusedError):
        registry.check_admission(identity("mallory", "org-q", issued_at=50))


def test_refused_connection_leaves_nothing_behind(registry, clock):
    """A refused connection is sent nothing and leaves no session or room."""
    clock.advance(100)
    registry.notify(ban("mallory", org="org-q"))
    connection = FakeConnection()
    with pytest.raises(RefusedError):
        registry.connect(identity("mallory", "org-q", issued_at=1), connection)
    assert connection.events == []
    assert registry.connection_count == 0
    assert registry.room_count == 0


# ---------------------------------------------------------------- lifecycle


def test_room_dropped_when_last_session_leaves(registry):
    """Once its last session leaves, an org no longer counts a room or connections."""
    _, s1 = join(registry, "alice")
    _, s2 = join(registry, "bob")
    registry.disconnect(s1)
    assert registry.room_count == 1
    registry.disconnect(s2)
    assert registry.room_count == 0
    assert registry.connection_count == 0
    assert registry.org_connection_count("org-a") == 0


def test_notify_to_org_without_connections(registry):
    """A notification for an org with no connection delivers 0 and creates no room."""
    assert registry.notify(broadcast("org-empty")) == 0
    assert registry.notify(direct("alice", org="org-empty")) == 0
    assert registry.notify(role_change("alice", "owner")) == 0
    assert registry.room("org-empty") is None
    assert registry.room("org-a") is None
    assert registry.room_count == 0


def test_leave_is_idempotent(registry):
    """Disconnecting a session twice is harmless and counts once."""
    _, s1 = join(registry, "alice")
    other, _ = join(registry, "alice")
    registry.disconnect(s1)
    registry.disconnect(s1)
    assert registry.connection_count == 1
    assert registry.user_connection_count("org-a", "alice") == 1
    # The remaining tab still receives.
    registry.notify(broadcast())
    assert other.routed() == [ROOM_FRAME]


def test_disconnected_session_receives_nothing(registry):
    """After leaving, a connection is not written to any more."""
    gone, session = join(registry, "alice")
    join(registry, "bob")
    registry.disconnect(session)
    before = len(gone.encoded)
    registry.notify(broadcast())
    registry.notify(direct("alice"))
    assert len(gone.encoded) == before


def test_close_all(registry):
    """close_all closes every connection of every org with the given code."""
    connections = [
        join(registry, "alice")[0],
        join(registry, "bob", "pending_guest")[0],
        join(registry, "carol", org="org-b")[0],
    ]
    registry.close_all(codes.CLOSE_GOING_AWAY, codes.REASON_SHUTDOWN)
    for connection in connections:
        assert connection.closes == [(1001, codes.REASON_SHUTDOWN)]


# ---------------------------------------------------------------- auto knock


def test_auto_knock_notifies_owners_and_admins_once(clock):
    """With auto-knock, a pending guest's arrival knocks at owners and admins, once."""
    registry = make_registry(clock, auto_knock=True)
    owner_tabs = [join(registry, "owner", "owner")[0] for _ in range(2)]
    admin, _ = join(registry, "admin", "admin")
    member, _ = join(registry, "member", "member")
    guest, _ = join(registry, "guest", "guest")
    other_org, _ = join(registry, "boss", "owner", org="org-b")
    pending, _ = join(registry, "visitor", "pending_guest")
    knock = {"type": "guest_knock", "payload": {"guestId": "visitor"}}
    for connection in [*owner_tabs, admin]:
        assert connection.routed() == [knock]
    assert member.routed() == guest.routed() == other_org.routed() == []
    assert pending.routed() == []
    # The same guest opening a second tab does not knock again.
    join(registry, "visitor", "pending_guest")
    assert admin.routed() == [knock]


def test_auto_knock_off_by_default(registry):
    """Without auto-knock, a pending guest's arrival sends nothing to owners."""
    owner, _ = join(registry, "owner", "owner")
    join(registry, "visitor", "pending_guest")
    assert owner.routed() == []


def test_auto_knock_only_for_pending_guests(clock):
    """Members and guests arriving do not knock."""
    registry = make_registry(clock, auto_knock=True)
    owner, _ = join(registry, "owner", "owner")
    join(registry, "guest", "guest")
    join(registry, "member", "member")
    assert owner.routed() == []


# ---------------------------------------------------------------- error frames


def test_error_frame_shape():
    """A ContractError becomes {"type":"error","payload":{"code","message"}}."""
    error = ContractError(codes.ERR_NOT_PERMITTED, [("$.type", "no")])
    assert json.loads(error_frame(error).data) == {
        "type": "error",
        "payload": {"code": "not_permitted", "message": "$.type: no"},
    }


# ---------------------------------------------------------------- failures change nothing

#: Valid to the payload classes, but no UTF-8 writer can encode it.
UNENCODABLE = "\ud800"


def test_position_that_cannot_be_encoded_changes_no_presence(registry):
    """A position that fails to encode is not stored: newcomers still join, presence still answers."""
    _, session = join(registry, "alice")
    bad = ClientMessage(
        type="position_update",
        payload=PositionUpdate(x=1, y=1, roomId=UNENCODABLE),
    )
    with pytest.raises(TypeError):  # orjson refuses the lone surrogate
        registry.receive(session, bad)
    bob, _ = join(registry, "bob")
    assert [f["type"] for f in bob.frames] == ["connected", "presence"]
    assert bob.frames[1]["payload"]["users"][0]["position"] is None
    assert [user.position for user in registry.presence("org-a")] == [None, None]
    registry.receive(session, position(3, 4))
    assert bob.routed()[-1]["payload"] == {"x": 3, "y": 4}


def _poison(registry: OrgRegistry, user: str) -> None:
    """Give an online user a position that cannot be encoded, as a bug might."""
    room = registry.room("org-a")
    assert room is not None
    room._presence.move(user, PositionUpdate(x=1, y=1, roomId=UNENCODABLE))
    room._stale[user] = None


def test_join_whose_snapshot_cannot_be_encoded_leaves_no_session(registry):
    """A join failing on the presence snapshot leaves no ghost session and right counts."""
    _, alice = join(registry, "alice")
    _poison(registry, "alice")
    for _ in range(3):
        connection = FakeConnection()
        with pytest.raises(TypeError):
            registry.connect(identity("bob"), connection)
        assert connection.events == []
    assert registry.connection_count == 1
    assert registry.org_connection_count("org-a") == 1
    assert registry.user_connection_count("org-a", "bob") == 0
    assert [user.userId for user in registry.presence("org-a")] == ["alice"]
    registry.disconnect(alice)
    assert (registry.room_count, registry.history_room_count) == (0, 1)


def test_join_failing_after_registration_is_undone(registry, clock, monkeypatch):
    """Whatever fails once the session is registered, the join is taken back, unannounced."""
    alice, _ = join(registry, "alice")
    clock.advance(0)
    real_encode = rooms.encode

    def encode(type_: str, payload: Any, **kw: Any) -> Any:
        if type_ == "user_joined":
            raise RuntimeError("boom")
        return real_encode(type_, payload, **kw)

    monkeypatch.setattr(rooms, "encode", encode)
    with pytest.raises(RuntimeError):
        registry.connect(identity("bob"), FakeConnection())
    clock.advance(60)
    assert registry.connection_count == 1
    assert registry.user_connection_count("org-a", "bob") == 0
    assert [user.userId for user in registry.presence("org-a")] == ["alice"]
    assert [f["type"] for f in alice.frames] == ["connected", "presence"]
    monkeypatch.undo()
    join(registry, "bob")
    clock.advance(0)
    joined = [
        f["payload"]["userId"] for f in alice.frames if f["type"] == "user_joined"
    ]
    assert joined == ["bob"]


def test_reconnection_failing_after_registration_keeps_the_grace_period(
    registry, clock, monkeypatch
):
    """A failed reconnection within the grace period leaves the user in grace, as before it."""
    alice, _ = join(registry, "alice")
    _, bob = join(registry, "bob")
    registry.disconnect(bob)
    clock.advance(1)
    monkeypatch.setattr(rooms.OrgRoom, "_admit", _raise)
    with pytest.raises(RuntimeError):
        registry.connect(identity("bob"), FakeConnection())
    monkeypatch.undo()
    assert registry.user_connection_count("org-a", "bob") == 0
    assert [u.userId for u in registry.presence("org-a")] == ["alice", "bob"]
    clock.advance(60)
    assert [u.userId for u in registry.presence("org-a")] == ["alice"]
    left = [f["payload"]["userId"] for f in alice.frames if f["type"] == "user_left"]
    assert left == ["bob"]


def _raise(*args: Any) -> None:
    raise RuntimeError("boom")


def test_notification_that_cannot_be_encoded_applies_no_effect(clock):
    """A notification failing to encode changes no role and burns no number."""
    catalog = {
        **BUILTIN,
        "promote": MessageSpec(
            payload=RoomUpdated,
            routings=BOTH,
            effect=lambda room, message: [SetRole("bob", "admin")],
        ),
    }
    registry = make_registry(clock, catalog=catalog)
    alice, _ = join(registry, "alice")
    join(registry, "bob")
    clock.advance(0)
    bad = broadcast(type_="promote", payload=RoomUpdated(roomId="r", name=UNENCODABLE))
    with pytest.raises(TypeError):
        registry.notify(bad)
    clock.advance(0)
    room = registry.room("org-a")
    assert room is not None
    assert (room.role_of("bob"), room.stream.seq) == ("member", 0)
    assert [f["type"] for f in alice.frames] == ["connected", "presence", "user_joined"]
    registry.notify(broadcast(type_="promote"))
    assert room.role_of("bob") == "admin"
    assert alice.frames[3]["seq"] == 1
