"""Presence, sans IO: who is online, grace periods and role changes, on a Clock."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twisted.internet.task import Clock

from officerouter import codes
from officerouter.codec import Burst, encode
from officerouter.history import HistoryBounds
from officerouter.messages import (
    ClientMessage,
    Notification,
    PositionUpdate,
    Presence,
    RoomUpdated,
)
from officerouter.registry import OrgRegistry
from officerouter.rooms import RefusedError, Session

from .fakes import (
    PRESENCE_TYPES,
    FakeConnection,
    ban,
    identity,
    make_registry,
    role_change,
)


class Recorder(FakeConnection):
    """A fake connection that can also forget what it saw."""

    @property
    def types(self) -> list[str]:
        """The type of every frame sent so far."""
        return [frame["type"] for frame in self.frames]

    def clear(self) -> None:
        """Forget what was sent so far."""
        self.events.clear()


@pytest.fixture
def registry(clock: Clock) -> OrgRegistry:
    """A registry with the default five-second grace period, on the test clock."""
    return make_registry(clock)


def join(
    registry: OrgRegistry,
    user: str,
    role: str = "member",
    since: str | None = None,
    issued_at: float | None = 0.0,
) -> tuple[Recorder, Session]:
    """Connect a fake connection for ``user`` in org-a."""
    connection = Recorder()
    session = registry.connect(
        identity(user, "org-a", role, issued_at=issued_at), connection, since=since
    )
    return connection, session


def move(registry: OrgRegistry, session: Session, x: float, y: float) -> None:
    """Send a position_update from a session."""
    registry.receive(
        session,
        ClientMessage(
            type="position_update", payload=PositionUpdate(x=x, y=y, roomId="hall")
        ),
    )


def broadcast() -> Notification:
    """A room_updated broadcast."""
    return Notification(
        org_id="org-a",
        routing="broadcast",
        type="room_updated",
        payload=RoomUpdated(roomId="r1", name="Hall"),
    )


def presence_frames(connection: FakeConnection) -> list[dict[str, Any]]:
    """The presence frames a connection received, in order."""
    return [f for f in connection.frames if f["type"] in PRESENCE_TYPES]


def entry(user: str, role: str = "member", connections: int = 1, position=None):
    """A user as presence frames describe them."""
    return {
        "userId": user,
        "role": role,
        "connections": connections,
        "position": position,
    }


HALL = {"x": 3, "y": 4, "roomId": "hall"}


def test_snapshot_follows_connected_with_everyone_else(registry):
    """An admitted client gets ``presence`` right after ``connected``: others, their tabs and last positions."""
    alice, alice_session = join(registry, "alice")
    join(registry, "alice")
    move(registry, alice_session, 3, 4)
    join(registry, "carol", "admin")
    bob, _ = join(registry, "bob")
    assert bob.types[:2] == ["connected", "presence"]
    assert bob.frames[1] == {
        "type": "presence",
        "payload": {
            "users": [
                entry("alice", connections=2, position=HALL),
                entry("carol", "admin"),
            ]
        },
    }
    assert presence_frames(alice)[0] == {"type": "presence", "payload": {"users": []}}


def test_first_connection_is_announced_to_the_others_only(registry, clock):
    """``user_joined`` goes to everyone else when a user's first connection arrives, not for a second tab."""
    alice, _ = join(registry, "alice")
    bob, _ = join(registry, "bob", "guest")
    assert presence_frames(alice)[1:] == []
    clock.advance(0)  # presence events leave at the end of the reactor iteration
    assert presence_frames(alice)[1:] == [
        {"type": "user_joined", "payload": entry("bob", "guest")}
    ]
    assert [f["type"] for f in presence_frames(bob)] == ["presence"]
    alice.clear()
    bob_tab, _ = join(registry, "bob", "guest")
    clock.advance(0)
    assert alice.encoded == []
    assert bob_tab.frames[1]["payload"]["users"] == [entry("alice")]


def test_user_left_only_after_the_grace_period(registry, clock):
    """The last connection leaving is announced with ``user_left`` once the grace period is over."""
    alice, _ = join(registry, "alice")
    _, bob1 = join(registry, "bob")
    _, bob2 = join(registry, "bob")
    clock.advance(0)
    alice.clear()
    registry.disconnect(bob1)
    registry.disconnect(bob2)
    clock.advance(4.9)
    assert alice.encoded == []
    clock.advance(0.1)
    assert alice.frames == [{"type": "user_left", "payload": {"userId": "bob"}}]
    assert [u.userId for u in registry.presence("org-a")] == ["alice"]


def test_reconnect_within_grace_produces_no_event(registry, clock):
    """A reload within the grace period shows nothing to the others, and the user keeps their position."""
    alice, _ = join(registry, "alice")
    _, bob = join(registry, "bob")
    move(registry, bob, 3, 4)
    clock.advance(0)
    alice.clear()
    registry.disconnect(bob)
    clock.advance(4)
    assert [(u.userId, u.connections) for u in registry.presence("org-a")] == [
        ("alice", 1),
        ("bob", 0),
    ]
    bob_again, _ = join(registry, "bob")
    clock.advance(60)
    assert alice.encoded == []
    assert bob_again.frames[1]["payload"]["users"] == [entry("alice")]
    assert registry.presence("org-a")[1].position == PositionUpdate(
        x=3, y=4, roomId="hall"
    )


def test_grace_period_is_configurable(clock):
    """With a zero grace period the last connection leaving is announced at once."""
    registry = make_registry(clock, presence_grace=0)
    alice, _ = join(registry, "alice")
    _, bob = join(registry, "bob")
    clock.advance(0)
    alice.clear()
    registry.disconnect(bob)
    clock.advance(0)
    assert alice.frames == [{"type": "user_left", "payload": {"userId": "bob"}}]


def test_position_is_forgotten_once_the_user_has_left(registry, clock):
    """After ``user_left``, a returning user joins afresh without their old position."""
    alice, _ = join(registry, "alice")
    _, bob = join(registry, "bob")
    move(registry, bob, 3, 4)
    registry.disconnect(bob)
    clock.advance(5)
    alice.clear()
    join(registry, "bob")
    clock.advance(0)
    assert alice.frames == [{"type": "user_joined", "payload": entry("bob")}]


def test_pending_guests_are_neither_shown_nor_shown_anything(registry, clock):
    """A pending guest gets no snapshot or presence event and appears in none."""
    guest, guest_session = join(registry, "gus", "pending_guest")
    alice, _ = join(registry, "alice")
    join(registry, "bob")
    clock.advance(0)
    assert guest.types == ["connected"]
    assert alice.frames[1] == {"type": "presence", "payload": {"users": []}}
    alice.clear()
    join(registry, "gus", "pending_guest")
    registry.disconnect(guest_session)
    clock.advance(10)
    assert alice.encoded == []
    assert guest.types == ["connected"]
    assert [u.userId for u in registry.presence("org-a")] == ["alice", "bob"]


def test_admitted_guest_appears_as_user_joined_and_sees_the_floor(registry, clock):
    """A pending guest made guest joins presence: the others get ``user_joined``, the guest a snapshot."""
    alice, alice_session = join(registry, "alice")
    move(registry, alice_session, 3, 4)
    guest, _ = join(registry, "gus", "pending_guest")
    join(registry, "gus", "pending_guest")
    alice.clear()
    guest.clear()
    registry.notify(role_change("gus", "guest"))
    clock.advance(0)
    assert alice.types == ["user_updated", "user_joined"]
    assert alice.frames[1]["payload"] == entry("gus", "guest", connections=2)
    assert guest.types == ["user_updated", "presence"]
    assert guest.frames[1]["payload"] == {"users": [entry("alice", position=HALL)]}


def test_demoted_user_appears_as_user_left_at_once(registry, clock):
    """A member made pending guest leaves presence at once, without a grace period."""
    alice, _ = join(registry, "alice")
    bob, _ = join(registry, "bob")
    clock.advance(0)
    alice.clear()
    bob.clear()
    registry.notify(role_change("bob", "pending_guest"))
    clock.advance(0)
    assert alice.types == ["user_updated", "user_left"]
    # Bob hears of his own demotion, and of nothing else about presence.
    assert bob.types == ["user_updated"]
    clock.advance(10)
    assert alice.types == ["user_updated", "user_left"]
    assert [u.userId for u in registry.presence("org-a")] == ["alice"]


def test_role_change_is_announced_even_when_sent_direct(registry, clock):
    """A role change among admitted roles is ``user_role_changed`` to the others, whatever the routing."""
    alice, _ = join(registry, "alice")
    bob, _ = join(registry, "bob")
    clock.advance(0)
    alice.clear()
    bob.clear()
    registry.notify(role_change("bob", "admin", routing="direct"))
    clock.advance(0)
    assert alice.frames == [
        {"type": "user_role_changed", "payload": {"userId": "bob", "role": "admin"}}
    ]
    assert bob.types == ["user_updated"]
    assert registry.presence("org-a")[1].role == "admin"


def test_role_change_during_grace_is_kept_for_the_reconnection(registry, clock):
    """A user whose role changes while reconnecting comes back with the new role, still without events."""
    alice, _ = join(registry, "alice")
    _, bob = join(registry, "bob")
    registry.disconnect(bob)
    clock.advance(0)
    alice.clear()
    registry.notify(role_change("bob", "admin", routing="direct"))
    clock.advance(0)
    assert alice.types == ["user_role_changed"]
    bob_again, _ = join(registry, "bob", "member")
    assert bob_again.frames[0]["payload"]["role"] == "admin"
    clock.advance(10)
    assert alice.types == ["user_role_changed"]


def test_unchanged_role_announces_nothing(registry, clock):
    """A user_updated that repeats the current role causes no presence event."""
    alice, _ = join(registry, "alice")
    join(registry, "bob")
    clock.advance(0)
    alice.clear()
    registry.notify(role_change("bob", "member"))
    clock.advance(0)
    assert alice.types == ["user_updated"]


def test_ban_announces_user_left_at_once(registry, clock):
    """A banned user leaves presence immediately; closing their tabs adds nothing."""
    alice, _ = join(registry, "alice")
    bob, bob_session = join(registry, "bob")
    clock.advance(0)
    alice.clear()
    registry.notify(ban("bob"))
    clock.advance(0)
    assert alice.frames == [{"type": "user_left", "payload": {"userId": "bob"}}]
    assert bob.closes == [(codes.CLOSE_BANNED, codes.REASON_BANNED)]
    registry.disconnect(bob_session)
    clock.advance(10)
    assert alice.types == ["user_left"]


# ------------------------------------------------------------ roles held while away


def since_of(connection: FakeConnection) -> str:
    """The ``since`` value for everything a connection has seen."""
    welcome = connection.welcome["payload"]
    seqs = [f["seq"] for f in connection.frames if "seq" in f]
    return f"{welcome['epoch']}.{max([welcome['seq'], *seqs])}"


def note_to(user: str) -> Notification:
    """A room_updated sent direct to one user."""
    return Notification(
        org_id="org-a",
        routing="direct",
        type="room_updated",
        payload=RoomUpdated(roomId="for-" + user, name="Hall"),
        targets=(user,),
    )


def test_demotion_during_grace_holds_for_the_reconnection(registry, clock):
    """A member demoted within their grace period comes back with their old member
    token as a pending guest: only direct messages replayed, no snapshot, nobody told."""
    alice, _ = join(registry, "alice")
    bob, bob_session = join(registry, "bob")
    since = since_of(bob)
    registry.disconnect(bob_session)
    clock.advance(1)
    registry.notify(role_change("bob", "pending_guest"))
    registry.notify(broadcast())
    registry.notify(note_to("bob"))
    clock.advance(1)
    alice.clear()
    back, session = join(registry, "bob", "member", since=since)
    assert back.welcome["payload"]["role"] == "pending_guest"
    assert back.welcome["payload"]["recovered"] is True
    assert session.role == "pending_guest"
    assert [(f["type"], f["payload"].get("roomId")) for f in back.frames[1:]] == [
        ("room_updated", "for-bob")
    ]
    registry.notify(broadcast())
    clock.advance(10)
    assert back.types == ["connected", "room_updated"]
    assert alice.types == ["room_updated"]
    assert [u.userId for u in registry.presence("org-a")] == ["alice"]


def test_promotion_of_an_absent_pending_guest_holds_for_the_reconnection(
    registry, clock
):
    """A pending guest let in while disconnected comes back admitted with their old
    token: the broadcasts since ``since`` are replayed, and the others see them join."""
    alice, _ = join(registry, "alice")
    gus, gus_session = join(registry, "gus", "pending_guest")
    since = since_of(gus)
    registry.disconnect(gus_session)
    registry.notify(role_change("gus", "guest"))
    registry.notify(broadcast())
    clock.advance(0)
    alice.clear()
    back, session = join(registry, "gus", "pending_guest", since=since)
    assert back.welcome["payload"]["role"] == "guest"
    assert back.welcome["payload"]["recovered"] is True
    assert session.role == "guest"
    assert back.types == ["connected", "presence", "user_updated", "room_updated"]
    clock.advance(0)
    assert alice.frames == [{"type": "user_joined", "payload": entry("gus", "guest")}]


def test_role_set_while_connected_outlives_the_last_connection(registry, clock):
    """A member demoted while connected who leaves and comes back past the grace
    period with their old member token is still a pending guest."""
    join(registry, "alice")
    _, bob = join(registry, "bob")
    registry.notify(role_change("bob", "pending_guest"))
    registry.disconnect(bob)
    clock.advance(60)
    back, session = join(registry, "bob", "member")
    assert back.welcome["payload"]["role"] == "pending_guest"
    assert back.types == ["connected"]
    assert session.role == "pending_guest"


def test_role_set_for_a_user_never_connected_is_held(registry, clock):
    """A user_updated for a user with no connection and no presence gives their
    first connection its role, whatever the token says."""
    join(registry, "alice")
    registry.notify(role_change("dave", "pending_guest"))
    registry.notify(role_change("erin", "admin"))
    clock.advance(30)
    dave, _ = join(registry, "dave", "member")
    erin, _ = join(registry, "erin", "guest")
    assert dave.welcome["payload"]["role"] == "pending_guest"
    assert erin.welcome["payload"]["role"] == "admin"


def test_held_role_lasts_the_history_window_then_the_token_decides(clock):
    """A held role lasts ``--history-seconds`` after it was set or its user last
    left (the grace period if longer), then the token's role applies again."""
    registry = make_registry(clock, history=HistoryBounds(seconds=60))
    join(registry, "alice")
    _, bob = join(registry, "bob")
    registry.notify(role_change("carol", "pending_guest"))
    clock.advance(30)
    registry.notify(role_change("bob", "pending_guest"))
    registry.disconnect(bob)
    clock.advance(29.5)
    early, carol = join(registry, "carol", "member")
    assert early.welcome["payload"]["role"] == "pending_guest"
    registry.disconnect(carol)
    clock.advance(59.5)
    assert join(registry, "carol", "member")[1].role == "pending_guest"
    assert join(registry, "bob", "member")[1].role == "member"
    longer = make_registry(clock, presence_grace=30, history=HistoryBounds(seconds=10))
    join(longer, "alice")
    longer.notify(role_change("dave", "pending_guest"))
    clock.advance(29)
    assert join(longer, "dave", "member")[1].role == "pending_guest"
    longer.notify(role_change("erin", "pending_guest"))
    clock.advance(30)
    assert join(longer, "erin", "member")[1].role == "member"


def test_ban_during_grace_is_final(registry, clock):
    """A user banned within their grace period leaves presence at once and their
    old token is refused; a token issued after the ban takes its own role."""
    clock.advance(100)
    alice, _ = join(registry, "alice")
    _, bob = join(registry, "bob", issued_at=90)
    registry.disconnect(bob)
    clock.advance(1)
    alice.clear()
    registry.notify(ban("bob"))
    clock.advance(0)
    assert alice.frames == [{"type": "user_left", "payload": {"userId": "bob"}}]
    with pytest.raises(RefusedError):
        registry.connect(identity("bob", issued_at=90), Recorder())
    clock.advance(1)
    _, session = join(registry, "bob", "member", issued_at=102)
    assert session.role == "member"


def test_ban_forgets_a_held_role(registry, clock):
    """A role held for a banned user is dropped with the ban: the token the backend
    issues afterwards decides."""
    clock.advance(100)
    join(registry, "alice")
    registry.notify(role_change("bob", "pending_guest"))
    registry.notify(ban("bob"))
    clock.advance(1)
    _, session = join(registry, "bob", "member", issued_at=102)
    assert session.role == "member"


def test_presence_frames_carry_no_seq(registry, clock):
    """Presence frames are not numbered: a fresh snapshot on every connection supersedes them."""
    alice, _ = join(registry, "alice")
    _, bob = join(registry, "bob")
    move(registry, bob, 1, 2)
    registry.disconnect(bob)
    clock.advance(5)
    registry.notify(broadcast())
    assert [("seq" in f) for f in alice.frames[1:]] == [
        False,
        False,
        False,
        False,
        True,
    ]
    assert alice.types[1:] == [
        "presence",
        "user_joined",
        "position_update",
        "user_left",
        "room_updated",
    ]


def test_presence_of_an_org_without_a_room_is_empty(registry):
    """Asking about an org nobody is connected to lists nobody and creates no room."""
    assert registry.presence("org-nobody") == []
    assert registry.room("org-nobody") is None


def test_dropping_an_idle_room_cancels_grace_timers(clock):
    """A room dropped while a user is within grace leaves no timer behind."""
    registry = make_registry(clock, presence_grace=30)
    _, alice = join(registry, "alice")
    registry.disconnect(alice)
    clock.advance(300)
    assert registry.room("org-a") is None
    assert clock.getDelayedCalls() == []


def test_snapshot_bytes_equal_the_reference_encoding(registry):
    """The snapshot joined from cached per-user JSON is byte for byte the plain encoding."""
    _, alice = join(registry, "alice")
    join(registry, "bob", "admin")
    join(registry, "bob", "admin")
    registry.receive(
        alice,
        ClientMessage(
            type="position_update", payload=PositionUpdate(x=1.5, y=-2, roomId="r")
        ),
    )
    newcomer, _ = join(registry, "carol")
    snapshot = next(m for m in newcomer.encoded if m.type == "presence")
    users = registry.presence("org-a")
    expected = encode(
        "presence", Presence(users=[u for u in users if u.userId != "carol"])
    )
    assert snapshot.data == expected.data
    assert b'"connections":2' in snapshot.data
    assert b'"x":1.5' in snapshot.data


# ------------------------------------------------------------ storms


class BurstRecorder(Recorder):
    """A fake connection that also keeps each burst it was handed, as handed."""

    def __init__(self) -> None:
        super().__init__()
        self.bursts: list[Burst] = []

    def send_burst(self, burst: Burst) -> None:
        self.bursts.append(burst)
        super().send_burst(burst)


def view(connection: FakeConnection) -> dict[str, dict[str, Any]]:
    """Who a client believes is online, replaying its presence frames in order."""
    seen: dict[str, dict[str, Any]] = {}
    for frame in connection.frames:
        kind, payload = frame["type"], frame.get("payload", {})
        if kind == "presence":
            seen = {user["userId"]: user for user in payload["users"]}
        elif kind == "user_joined":
            assert payload["userId"] not in seen, f"joined twice: {payload}"
            seen[payload["userId"]] = payload
        elif kind == "user_left":
            assert seen.pop(payload["userId"], None) is not None, payload
        elif kind == "user_role_changed":
            seen[payload["userId"]]["role"] = payload["role"]
    return seen


def test_a_storm_reaches_everyone_as_one_shared_burst(clock):
    """Joins in one reactor iteration: one burst, framed once, for those already there."""
    registry = make_registry(clock)
    early = []
    for user in ("a", "b", "c"):
        connection = BurstRecorder()
        registry.connect(identity(user), connection)
        early.append(connection)
    clock.advance(0)
    late = []
    for n in range(20):
        connection = BurstRecorder()
        registry.connect(identity(f"new-{n}"), connection)
        late.append(connection)
    for connection in early:
        connection.bursts.clear()
    clock.advance(0)
    (shared,) = early[0].bursts
    assert all(c.bursts == [shared] for c in early)
    assert [m.type for m in shared.messages] == ["user_joined"] * 20
    # Each newcomer hears only of those who came after it.
    for n, connection in enumerate(late):
        joined = [f["payload"]["userId"] for f in connection.frames[2:]]
        assert joined == [f"new-{m}" for m in range(n + 1, 20)]


def test_waiting_presence_events_go_before_anything_sent_after_them(registry, clock):
    """A notification in the same iteration as a join reaches the others after ``user_joined``."""
    alice, _ = join(registry, "alice")
    clock.advance(0)
    alice.clear()
    join(registry, "bob")
    registry.notify(broadcast())
    assert alice.types == ["user_joined", "room_updated"]
    clock.advance(0)
    assert alice.types == ["user_joined", "room_updated"]


_USERS = ("u0", "u1", "u2", "u3")
_ROLES = ("member", "admin", "guest", "pending_guest")
_STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("join"), st.sampled_from(_USERS), st.sampled_from(_ROLES)),
        st.tuples(st.just("leave"), st.integers(0, 30)),
        st.tuples(st.just("move"), st.integers(0, 30), st.integers(-5, 5)),
        st.tuples(st.just("role"), st.sampled_from(_USERS), st.sampled_from(_ROLES)),
        st.tuples(st.just("ban"), st.sampled_from(_USERS)),
        st.tuples(st.just("tick"), st.sampled_from((0.0, 0.0, 1.0, 6.0))),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(_STEPS, st.sampled_from((0.0, 5.0)))
def test_every_client_view_replayed_from_its_frames_is_the_truth(steps, grace):
    """Whatever happens within and across reactor iterations, what each admitted
    client saw (its snapshot, then the events) adds up to who is online now, and
    every snapshot is byte for byte the plain encoding of the room's presence."""
    clock = Clock()
    registry = make_registry(clock, presence_grace=grace, ban_memory=0)
    live: list[tuple[Recorder, Session]] = []
    for step in steps:
        kind = step[0]
        if kind == "join":
            _, user, role = step
            connection = Recorder()
            try:
                session = registry.connect(identity(user, "org-a", role), connection)
            except Exception:
                continue
            live.append((connection, session))
            snapshots = [m for m in connection.encoded if m.type == "presence"]
            if snapshots:
                expected = encode(
                    "presence",
                    Presence(
                        users=[
                            u for u in registry.presence("org-a") if u.userId != user
                        ]
                    ),
                )
                assert snapshots[0].data == expected.data
        elif kind == "leave" and live:
            _, session = live.pop(step[1] % len(live))
            registry.disconnect(session)
        elif kind == "move" and live:
            _, session = live[step[1] % len(live)]
            if session.admitted:
                move(registry, session, step[2], 0)
        elif kind == "role":
            registry.notify(role_change(step[1], step[2]))
        elif kind == "ban":
            registry.notify(ban(step[1], routing="broadcast"))
            for connection, session in list(live):
                if connection.closes:
                    live.remove((connection, session))
                    registry.disconnect(session)
        else:
            clock.advance(step[1])
    clock.advance(0)
    truth = {
        user.userId: attrs.asdict(user, recurse=True)
        for user in registry.presence("org-a")
    }
    for connection, session in live:
        if not session.admitted or connection.closes:
            continue
        expected = {k: v for k, v in truth.items() if k != session.user_id}
        seen = view(connection)
        assert set(seen) == set(expected), (session.user_id, seen, expected)
        for user_id, user in seen.items():
            assert user["role"] == expected[user_id]["role"]


def test_snapshots_follow_arrivals_departures_and_returns_in_order(registry, clock):
    """Snapshots taken during a grace period, after it and after a return list
    exactly who is online, in the order they came online."""
    join(registry, "alice")
    _, bob = join(registry, "bob")
    join(registry, "carol")
    registry.disconnect(bob)
    during, _ = join(registry, "dave")
    assert [u["userId"] for u in during.frames[1]["payload"]["users"]] == [
        "alice",
        "bob",
        "carol",
    ]
    clock.advance(5)
    after, _ = join(registry, "erin")
    assert [u["userId"] for u in after.frames[1]["payload"]["users"]] == [
        "alice",
        "carol",
        "dave",
    ]
    join(registry, "bob")
    back, _ = join(registry, "frank")
    assert [u["userId"] for u in back.frames[1]["payload"]["users"]] == [
        "alice",
        "carol",
        "dave",
        "erin",
        "bob",
    ]
