"""Opt-in presence diffs (``?presence=diff``), sans IO on a Clock: one
``presence_state`` per tick for the newcomers, one ``presence_diff`` per tick for
the others, and a folded view that is always who is online."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    rule,
)

from twisted.internet.task import Clock

from officerouter.backplane import RemoteEntry
from officerouter.messages import ClientMessage, PositionUpdate
from officerouter.registry import OrgRegistry
from officerouter.rooms import PRESENCE_FRAMES_PER_SECOND, OrgRoom, Session

from .fakes import FakeBackplane, FakeConnection, ban, identity, make_registry
from .fakes import role_change as role_change_to

TICK = 0.05
GRACE = 5.0
ORG = "org-a"


@pytest.fixture
def registry(clock: Clock) -> OrgRegistry:
    """A registry with a 5 s grace and a 50 ms tick, on the test clock."""
    return make_registry(clock, presence_grace=GRACE, position_tick=TICK)


def join(
    registry: OrgRegistry,
    user: str,
    role: str = "member",
    *,
    diff: bool = True,
    issued_at: float = 0.0,
) -> tuple[FakeConnection, Session]:
    connection = FakeConnection()
    session = registry.connect(
        identity(user, ORG, role, issued_at=issued_at), connection, presence_diff=diff
    )
    return connection, session


def presence_frames(connection: FakeConnection) -> list[dict[str, Any]]:
    """The presence frames a connection got, in order."""
    return [
        f
        for f in connection.frames
        if f["type"]
        in (
            "presence",
            "presence_state",
            "presence_diff",
            "user_joined",
            "user_left",
            "user_role_changed",
        )
    ]


def fold(connection: FakeConnection) -> dict[str, str] | None:
    """A client's view (user -> role) from its frames, as docs/protocol.md says
    to fold them; fails on what a correct stream never holds: a diff before the
    state, a leave of someone not listed, a join that changes nothing."""
    view: dict[str, str] | None = None
    for frame in connection.frames:
        payload = frame.get("payload", {})
        if frame["type"] == "presence_state":
            view = {
                user: role
                for role, users in payload.get("users", {}).items()
                for user in users
            }
        elif frame["type"] == "presence_diff":
            assert view is not None, "presence_diff before presence_state"
            for user in payload.get("leaves", []):
                assert user in view, f"{user} left but was not listed"
                del view[user]
            for role, users in payload.get("joins", {}).items():
                for user in users:
                    assert view.get(user) != role, f"{user} joined twice as {role}"
                    view[user] = role
        else:
            assert frame["type"] not in (
                "presence",
                "user_joined",
                "user_left",
                "user_role_changed",
            ), f"a diff connection got {frame['type']}"
    return view


def online(room: OrgRoom) -> dict[str, str]:
    """Who is online, as GET /internal/presence says."""
    return {user.userId: user.role for user in room.presence()}


def room_of(registry: OrgRegistry) -> OrgRoom:
    room = registry.room(ORG)
    assert room is not None
    return room


# ---------------------------------------------------------------- ticks


def test_state_comes_at_the_tick_then_one_diff_per_tick(registry, clock):
    """A newcomer gets connected at once and presence_state (itself included)
    at the next tick; later joins of one tick come as one presence_diff."""
    _, _ = join(registry, "alice", "admin", diff=False)
    watcher, _ = join(registry, "watcher")
    assert [f["type"] for f in watcher.frames] == ["connected"]
    clock.advance(TICK)
    assert watcher.frames[1:] == [
        {
            "type": "presence_state",
            "payload": {"users": {"admin": ["alice"], "member": ["watcher"]}},
        }
    ]
    join(registry, "bob", diff=False)
    join(registry, "carol", "guest")
    clock.advance(0)
    assert len(watcher.frames) == 2, "diffs wait for the tick"
    clock.advance(TICK)
    assert watcher.frames[2:] == [
        {
            "type": "presence_diff",
            "payload": {"joins": {"member": ["bob"], "guest": ["carol"]}},
        }
    ]
    clock.advance(TICK * 10)
    assert len(watcher.frames) == 3, "no frame for a tick without change"


def test_state_lists_last_positions(registry, clock):
    """The state carries the last position of those who moved, and only theirs."""
    _, alice = join(registry, "alice", diff=False)
    join(registry, "bob", diff=False)
    registry.receive(
        alice,
        ClientMessage(
            type="position_update", payload=PositionUpdate(x=1, y=2, roomId="hall")
        ),
    )
    watcher, _ = join(registry, "watcher")
    clock.advance(TICK)
    assert watcher.frames[-1]["payload"] == {
        "users": {"member": ["alice", "bob", "watcher"]},
        "positions": {"alice": {"x": 1, "y": 2, "roomId": "hall"}},
    }


def test_newcomers_of_a_tick_share_one_encoded_state_and_diff(registry, clock):
    """Every connection that arrived within a tick gets the same encoded state,
    and every diffed connection the same encoded diff: encoded once per tick."""
    first = [join(registry, f"u{i}")[0] for i in range(3)]
    clock.advance(TICK)
    later = [join(registry, f"v{i}")[0] for i in range(3)]
    clock.advance(TICK)
    states = [c.encoded[-1] for c in later]
    diffs = [c.encoded[-1] for c in first]
    assert all(s is states[0] for s in states)
    assert all(d is diffs[0] for d in diffs)
    assert diffs[0].type == "presence_diff"
    expected = {f"u{i}": "member" for i in range(3)} | {
        f"v{i}": "member" for i in range(3)
    }
    for connection in first + later:
        assert fold(connection) == expected


def test_snapshot_and_diffs_agree_under_joins_in_every_tick(registry, clock):
    """Joins landing in the same tick as a newcomer are in its state and not in
    a diff it gets; joins after it are in its next diff: none missing or doubled."""
    room = None
    connections = []
    for step in range(6):
        for i in range(3):
            connections.append(join(registry, f"u{step}-{i}")[0])
        clock.advance(TICK / 3)
        room = room_of(registry)
        for connection in connections:
            view = fold(connection)
            assert view is None or set(view) <= set(online(room))
    clock.advance(TICK)
    assert room is not None
    for connection in connections:
        assert fold(connection) == online(room)


def test_diffs_slow_down_for_a_crowd(clock):
    """With more diffed connections than a tick may write to at the frame budget,
    diffs come less often: no more than the budget of frames a second."""
    registry = make_registry(clock, presence_grace=GRACE, position_tick=TICK)
    crowd = int(PRESENCE_FRAMES_PER_SECOND * TICK * 2)
    watchers = [join(registry, f"u{i}")[0] for i in range(crowd)]
    clock.advance(TICK)
    assert all(len(w.frames) == 2 for w in watchers), "the state came at the tick"
    join(registry, "late", diff=False)
    clock.advance(TICK)
    assert len(watchers[0].frames) == 2, "no diff after one tick"
    clock.advance(TICK)
    assert watchers[0].frames[-1] == {
        "type": "presence_diff",
        "payload": {"joins": {"member": ["late"]}},
    }


# ---------------------------------------------------------------- leaves and roles


def test_leave_waits_for_grace_then_comes_in_a_diff(registry, clock):
    """A user gone for less than the grace period is no news; after it, a leave."""
    watcher, _ = join(registry, "watcher")
    _, bob = join(registry, "bob", diff=False)
    clock.advance(TICK)
    registry.disconnect(bob)
    clock.advance(GRACE / 2)
    join(registry, "bob", diff=False)
    clock.advance(TICK)
    assert [f["type"] for f in watcher.frames] == ["connected", "presence_state"]
    registry.disconnect(room_of(registry).sessions()[-1])
    clock.advance(GRACE)
    clock.advance(TICK)
    assert watcher.frames[-1] == {
        "type": "presence_diff",
        "payload": {"leaves": ["bob"]},
    }
    assert fold(watcher) == {"watcher": "member"}


def test_leave_and_rejoin_within_a_tick_is_a_leave_then_a_join(clock):
    """A user who left (no grace) and came back within one tick is listed in
    leaves and in joins: the client drops what it knew of them, then lists them."""
    registry = make_registry(clock, presence_grace=0, position_tick=TICK)
    watcher, _ = join(registry, "watcher")
    _, bob = join(registry, "bob", diff=False)
    clock.advance(TICK)
    registry.disconnect(bob)
    join(registry, "bob", "guest", diff=False)
    clock.advance(TICK)
    assert watcher.frames[-1] == {
        "type": "presence_diff",
        "payload": {"joins": {"guest": ["bob"]}, "leaves": ["bob"]},
    }
    assert fold(watcher) == {"watcher": "member", "bob": "guest"}


def test_join_then_leave_within_a_tick_is_no_news(clock):
    """Someone who came and went between two ticks never shows."""
    registry = make_registry(clock, presence_grace=0, position_tick=TICK)
    watcher, _ = join(registry, "watcher")
    clock.advance(TICK)
    _, bob = join(registry, "bob", diff=False)
    registry.disconnect(bob)
    clock.advance(TICK)
    assert [f["type"] for f in watcher.frames] == ["connected", "presence_state"]


def test_role_changes_are_joins_under_the_new_role(registry, clock):
    """Promotion: a join under the new role; demotion to pending guest: a leave;
    admission of a pending guest: a join; a ban: a leave."""
    watcher, _ = join(registry, "watcher")
    join(registry, "bob", diff=False)
    pat, _ = join(registry, "pat", "pending_guest")
    join(registry, "eve", diff=False)
    clock.advance(TICK)
    registry.notify(role_change_to("bob", "admin"))
    clock.advance(TICK)
    assert watcher.frames[-1]["payload"] == {"joins": {"admin": ["bob"]}}
    registry.notify(role_change_to("pat", "guest"))
    registry.notify(role_change_to("bob", "pending_guest"))
    registry.notify(ban("eve"))
    clock.advance(TICK)
    assert watcher.frames[-1]["payload"] == {
        "joins": {"guest": ["pat"]},
        "leaves": ["bob", "eve"],
    }
    assert fold(watcher) == online(room_of(registry))
    # The admitted guest's own connection gets a state, not a plain snapshot.
    assert [f["type"] for f in presence_frames(pat)] == ["presence_state"]
    assert fold(pat) == online(room_of(registry))


def test_demoted_then_admitted_diff_connection_starts_over(registry, clock):
    """A diffed connection taken out of presence gets nothing more; admitted
    again, it gets a fresh state."""
    watcher, _ = join(registry, "watcher")
    clock.advance(TICK)
    registry.notify(role_change_to("watcher", "pending_guest"))
    join(registry, "bob", diff=False)
    clock.advance(TICK)
    assert [f["type"] for f in presence_frames(watcher)] == ["presence_state"]
    registry.notify(role_change_to("watcher", "member"))
    clock.advance(TICK)
    assert [f["type"] for f in presence_frames(watcher)] == [
        "presence_state",
        "presence_state",
    ]
    assert fold(watcher) == {"bob": "member", "watcher": "member"}


def test_plain_clients_get_the_same_bytes_beside_diff_clients(clock):
    """The opt-in changes nothing for the others: a plain client's frames are
    the same, byte for byte, with or without diffed connections around."""

    def run(with_diff: bool) -> list[bytes]:
        registry = make_registry(Clock(), presence_grace=GRACE, position_tick=TICK)
        reg_clock: Clock = registry._clock  # type: ignore[attr-defined]
        plain, _ = join(registry, "plain", diff=False)
        if with_diff:
            join(registry, "d1")
        _, bob = join(registry, "bob", diff=False)
        if with_diff:
            join(registry, "d2")
        reg_clock.advance(TICK)
        registry.notify(role_change_to("bob", "admin"))
        registry.disconnect(bob)
        reg_clock.advance(GRACE + TICK)
        data = [m.data for m in plain.encoded]
        # Connection ids differ with the number of connections: compare the rest.
        skip = {"d1", "d2"}
        return [d for d in data[1:] if not any(s.encode() in d for s in skip)]

    assert run(False) == run(True)


# ---------------------------------------------------------------- the cluster


def test_remote_presence_flows_into_diffs(clock):
    """Joins, role changes and leaves on other processes reach diffed
    connections the same way, folded into the tick's diff."""
    backplane = FakeBackplane(clock)
    registry = make_registry(
        clock, backplane=backplane, presence_grace=GRACE, position_tick=TICK
    )
    watcher, _ = join(registry, "watcher")
    room = room_of(registry)
    room.remote_presence("node-b", "carol", RemoteEntry(1, "member"))
    clock.advance(TICK)
    assert fold(watcher) == {"watcher": "member", "carol": "member"}
    room.remote_presence("node-b", "dan", RemoteEntry(2, "guest"))
    room.remote_presence("node-b", "carol", RemoteEntry(1, "admin"))
    clock.advance(TICK)
    assert watcher.frames[-1]["payload"] == {
        "joins": {"guest": ["dan"], "admin": ["carol"]}
    }
    room.node_gone("node-b")
    clock.advance(TICK)
    assert watcher.frames[-1]["payload"] == {"leaves": ["carol", "dan"]}
    assert fold(watcher) == online(room) == {"watcher": "member"}


def test_local_leave_shows_the_role_seen_elsewhere(clock):
    """A user whose role here differs from the one another process lists stays
    online when they leave here, under the other process's role."""
    backplane = FakeBackplane(clock)
    registry = make_registry(
        clock, backplane=backplane, presence_grace=GRACE, position_tick=TICK
    )
    watcher, _ = join(registry, "watcher")
    room = room_of(registry)
    room.remote_presence("node-b", "carol", RemoteEntry(1, "member"))
    _, carol = join(registry, "carol", diff=False)
    registry.notify(role_change_to("carol", "admin"))
    backplane.deliver()
    clock.advance(TICK)
    assert fold(watcher) == {"watcher": "member", "carol": "admin"}
    registry.disconnect(carol)
    clock.advance(GRACE)
    clock.advance(TICK)
    assert fold(watcher) == online(room) == {"watcher": "member", "carol": "member"}


# ---------------------------------------------------------------- any sequence

USERS = ("ann", "bob", "cat", "dan")
ROLES = ("owner", "admin", "member", "guest", "pending_guest")


class DiffMachine(RuleBasedStateMachine):
    """Any sequence of joins, leaves, role changes, bans, remote changes and
    time: after each tick every diffed connection's folded view is who is online."""

    sessions = Bundle("sessions")

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.backplane = FakeBackplane(self.clock)
        self.registry = make_registry(
            self.clock,
            backplane=self.backplane,
            presence_grace=1.0,
            position_tick=TICK,
        )
        self.watchers: list[tuple[FakeConnection, Session]] = []

    @rule(
        target=sessions,
        user=st.sampled_from(USERS),
        role=st.sampled_from(ROLES),
        diff=st.booleans(),
    )
    def connect(self, user: str, role: str, diff: bool) -> Session:
        # Issued after any ban so far: a banned user may come back with a new token.
        issued_at = self.clock.seconds() + 0.001
        connection, session = join(
            self.registry, user, role, diff=diff, issued_at=issued_at
        )
        if diff:
            self.watchers.append((connection, session))
        return session

    @rule(session=consumes(sessions))
    def disconnect(self, session: Session) -> None:
        self.registry.disconnect(session)

    @rule(user=st.sampled_from(USERS), role=st.sampled_from(ROLES))
    def change_role(self, user: str, role: str) -> None:
        self.registry.notify(role_change_to(user, role))

    @rule(user=st.sampled_from(USERS))
    def banned(self, user: str) -> None:
        self.registry.notify(ban(user))

    @rule(
        node=st.sampled_from(("node-b", "node-c")),
        user=st.sampled_from(USERS),
        role=st.none() | st.sampled_from(ROLES),
    )
    def remote(self, node: str, user: str, role: str | None) -> None:
        room = self.registry.room(ORG)
        if room is not None:
            entry = None if role is None else RemoteEntry(1, role)
            room.remote_presence(node, user, entry)

    @rule(seconds=st.sampled_from((0.0, TICK / 2, TICK, 0.7, 2.0)))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def deliver(self) -> None:
        self.backplane.deliver()

    @invariant()
    def views_are_who_is_online_after_a_tick(self) -> None:
        room = self.registry.room(ORG)
        if room is None:
            return
        # Settle: deliver what was numbered, then let ticks pass until no tick
        # is due (a grace period running out meanwhile calls for another one).
        self.backplane.deliver()
        clock = self.clock
        for _ in range(100):
            horizon = clock.seconds() + TICK
            if all(c.getTime() > horizon for c in clock.getDelayedCalls()):
                break
            clock.advance(TICK)
        expected = online(room)
        for connection, session in self.watchers:
            if session.connection_id not in {s.connection_id for s in room.sessions()}:
                continue
            if not session.admitted:
                continue
            assert fold(connection) == expected


DiffMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=30)
test_any_sequence_folds_to_who_is_online = DiffMachine.TestCase
