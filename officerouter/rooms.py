"""Rooms and the registry: where messages are routed, numbered and remembered.  Sans-IO.

An :class:`OrgRoom` holds the live sessions of one org and reaches each through the
:class:`Connection` seam (send an encoded message; close with a code and reason).
It knows nothing of Autobahn or sockets, so the same room serves WebSocket
connections today and a backplane later.  Each room numbers what it delivers in
its :class:`~officerouter.history.Stream` and keeps who is online in a
:class:`~officerouter.presence.PresenceTracker`.  The :class:`OrgRegistry` creates a
room on first use; when its last session leaves, the room keeps its history until
that expires and is then dropped (one timer per idle room, no sweep).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any
from typing import Protocol as TypingProtocol

import attrs

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from officerouter import codes
from officerouter.auth import Identity
from officerouter.backplane import (
    Backplane,
    LocalBackplane,
    Numbered,
    Once,
    Outgoing,
    Published,
    RemoteEntry,
    StreamState,
)
from officerouter.catalog import MessageSpec
from officerouter.codec import (
    Burst,
    ContractError,
    Encoded,
    encode,
    encode_fragment,
    encode_list,
    encode_numbered,
)
from officerouter.effects import CloseUser, RoomView, SetRole
from officerouter.history import (
    Stream,
    StreamPosition,
)
from officerouter.messages import (
    ADMITTED_ROLES,
    KNOCK_RECEIVER_ROLES,
    ClientMessage,
    Connected,
    ErrorPayload,
    GuestKnock,
    Notification,
    Positions,
    PositionUpdate,
    PresenceDiff,
    PresenceState,
    PresenceUser,
    UserLeft,
    UserPosition,
    UserRoleChanged,
)
from officerouter.presence import HeldRoles, PresenceTracker, RemotePresence
from officerouter.tally import Tally

log = Logger()

#: Presence diffs go out every position tick, unless that would write more than
#: this many ``presence_diff`` frames a second in one org: then every
#: ``diffed connections / PRESENCE_FRAMES_PER_SECOND`` seconds (5 000 connections:
#: 250 ms).  In a join storm every tick has news for everyone, and each frame
#: written costs the process a system call and some Python (about 10 µs).
PRESENCE_FRAMES_PER_SECOND = 20_000


class Connection(TypingProtocol):
    """What a room needs of a connection.  Implementations never raise."""

    def send(self, message: Encoded) -> None:
        """Queue an encoded message for this connection, in order."""

    def send_burst(self, burst: Burst) -> None:
        """Queue each message of a burst, in order (the same as ``send`` each)."""

    def close(self, code: int, reason: str) -> None:
        """Close after everything already queued has been sent."""


class RefusedError(Exception):
    """A connection the registry will not admit; ``reason`` is safe to show."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason


@attrs.define(eq=False)
class Session:
    """One live connection of a user in a room."""

    connection_id: str
    user_id: str
    role: str
    connection: Connection = attrs.field(repr=False)
    org_id: str
    #: Receives position updates as one ``positions`` frame per tick.
    batch_positions: bool = False
    #: Receives presence as ``presence_state``, then one ``presence_diff`` per tick.
    presence_diff: bool = False

    @property
    def admitted(self) -> bool:
        """Whether this session takes part in the org's traffic."""
        return self.role in ADMITTED_ROLES

    def check_may_send(self) -> None:
        """Refuse anything from a session that may not send.

        Checked before a frame is even decoded: whatever a pending guest sends,
        well-formed or not, is answered ``not_permitted``.

        :raises ContractError: ``not_permitted``.
        """
        if not self.admitted:
            raise ContractError(
                codes.ERR_NOT_PERMITTED,
                [("$.type", f"a {self.role} may not send messages")],
            )


def prepare(
    catalog: Mapping[str, MessageSpec], room: RoomView, notification: Notification
) -> Outgoing:
    """Run a notification's effect against a room's view and encode it, split
    where its ``seq`` goes.  Nothing changes anywhere until it is delivered.

    :raises ContractError: when the payload cannot be encoded.
    """
    spec = catalog[notification.type]
    actions = tuple(spec.effect(room, notification)) if spec.effect is not None else ()
    head, tail = encode_numbered(notification.type, notification.payload)
    return Outgoing(
        notification.type,
        head,
        tail,
        targets=None
        if notification.routing == "broadcast"
        else tuple(notification.targets),
        actions=actions,
    )


def _by_role(users: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """User ids grouped by role, roles in the order they first appear."""
    grouped: dict[str, list[str]] = {}
    for user_id, role in users:
        grouped.setdefault(role, []).append(user_id)
    return grouped


def error_frame(error: ContractError) -> Encoded:
    """Encode the ``error`` frame that answers a client's bad input."""
    return encode("error", ErrorPayload(code=error.code, message=error.message))


class OrgRoom:
    """The live sessions of one org, the routing of its messages, and who is online.

    :param org_id: the org.
    :param catalog: message type -> spec (effects, routings).
    :param bans: the registry's ban record for this org (user id -> ban time).
    :param clock: the current time and the presence grace timers.
    :param stream: numbers and keeps what the room delivers.
    :param presence_grace: seconds a user stays online after their last
        connection left.
    :param auto_knock: send ``guest_knock`` to owners and admins when a pending
        guest connects.
    :param role_memory: seconds a role set by the backend outlives its user's
        connections (see :class:`~officerouter.presence.HeldRoles`).
    :param backplane: numbers the room's messages and shares its presence with
        other processes (default: one process, nothing shared).
    :param tally: where the room counts deliveries and recoveries (metrics).
    """

    def __init__(
        self,
        org_id: str,
        catalog: Mapping[str, MessageSpec],
        *,
        bans: dict[str, float],
        clock: IReactorTime,
        stream: Stream,
        presence_grace: float = 5.0,
        auto_knock: bool = False,
        position_tick: float = 0.05,
        role_memory: float = 0.0,
        backplane: Backplane | None = None,
        tally: Tally | None = None,
    ) -> None:
        self.org_id = org_id
        self._tally = tally if tally is not None else Tally()
        self._backplane: Backplane = backplane or LocalBackplane(
            "local", now=clock.seconds
        )
        # With several processes, this room's presence entries and position
        # updates are told to the others (and theirs received).
        self._shared = self._backplane.shared
        self._remote = RemotePresence()
        self._moves: dict[str, PositionUpdate] = {}
        self._changed_users: dict[str, None] = {}
        self._changed_call: IDelayedCall | None = None
        self._catalog = catalog
        self._bans = bans
        self._clock = clock
        self.stream = stream
        self._auto_knock = auto_knock
        self._sessions: dict[str, Session] = {}
        self._by_user: dict[str, dict[str, Session]] = {}
        # Kept up to date on join, leave and role change rather than filtered per
        # message: a broadcast walks exactly its recipients.
        self._audience: dict[str, Session] = {}
        # The audience split by how it takes positions: one frame per update, or
        # one ``positions`` frame per tick.
        self._plain: dict[str, Session] = {}
        self._batched: dict[str, Session] = {}
        self._position_tick = position_tick
        self._tick_positions: dict[str, UserPosition] = {}
        # The audience split by how it takes presence: one frame per event
        # (``_announced``), or one ``presence_diff`` per tick (``_diffed``);
        # ``_awaiting`` get their ``presence_state`` at the next tick.
        self._announced: dict[str, Session] = {}
        self._diffed: dict[str, Session] = {}
        self._awaiting: dict[str, Session] = {}
        # What every diffed connection was told so far (user -> role; None while
        # there is none), the users whose presence changed since, and those of
        # them who went offline meanwhile (they leave, then join again).
        self._diff_view: dict[str, str] | None = None
        self._diff_touched: dict[str, None] = {}
        self._diff_gone: set[str] = set()
        self._presence_call: IDelayedCall | None = None
        self._tick_call: IDelayedCall | None = None
        self._presence = PresenceTracker(clock, presence_grace, self._announce_left)
        # Roles the backend set: held for users without a connection, and the
        # connected users whose role it set, to be held when they leave.
        self._held = HeldRoles(clock.seconds, max(role_memory, presence_grace))
        self._assigned: set[str] = set()
        # Each online user's snapshot entry, in arrival order, and the users whose
        # entry must be re-encoded before the next snapshot.
        self._entries: dict[str, bytes] = {}
        self._stale: dict[str, None] = {}
        # Presence events waiting for the end of the reactor iteration: (about
        # whom, message); and where each session that entered the audience
        # meanwhile starts in it.
        self._events: list[tuple[str, Encoded]] = []
        self._event_starts: dict[str, int] = {}
        self._events_call: IDelayedCall | None = None

    # ------------------------------------------------------------ RoomView

    def user_ids(self) -> frozenset[str]:
        """The users with at least one live connection."""
        return frozenset(self._by_user)

    def role_of(self, user_id: str) -> str | None:
        """A connected user's current role, or ``None``."""
        sessions = self._by_user.get(user_id)
        if not sessions:
            return None
        return next(iter(sessions.values())).role

    # ------------------------------------------------------------ membership

    def __len__(self) -> int:
        return len(self._sessions)

    def connection_count_of(self, user_id: str) -> int:
        """How many live connections a user has here."""
        return len(self._by_user.get(user_id, ()))

    def sessions(self) -> Iterable[Session]:
        """Every live session (a snapshot)."""
        return list(self._sessions.values())

    def join(
        self,
        identity: Identity,
        connection: Connection,
        connection_id: str,
        *,
        since: str | None = None,
        batch_positions: bool = False,
        presence_diff: bool = False,
    ) -> Session:
        """Add a verified connection.

        It receives ``connected``; then, when admitted, the ``presence`` snapshot;
        then what it missed since ``since`` and may see now; then the live stream.
        All of it happens in this call, so nothing can slip in between.  With
        ``presence_diff`` the snapshot is a ``presence_state`` at the next tick
        instead, shared by every connection that arrived within it.

        :param since: the ``<epoch>.<seq>`` the client last saw, if it asked.
        """
        user_id = identity.user_id
        user_sessions = self._by_user.get(user_id)
        present = self._presence.get(user_id)
        # A second tab, a reconnection within the grace period, or a user whose
        # role the backend set while away follows the role the room holds: a
        # user_updated may have changed it since the token was issued.
        held = self._held.get(user_id)
        role = (
            self.role_of(user_id)
            or held
            or (present.role if present is not None else None)
            or self._remote.role(user_id)
            or identity.role
        )
        session = Session(
            connection_id=connection_id,
            user_id=user_id,
            role=role,
            connection=connection,
            org_id=self.org_id,
            batch_positions=batch_positions,
            presence_diff=presence_diff,
        )
        missed = None
        if since is not None:
            missed = self._missed(since, session)
            self._tally.recoveries[missed is not None] += 1
        # Encoded before the session exists: a snapshot that cannot be encoded
        # must leave nothing behind.
        snapshot = (
            self._snapshot(exclude=user_id)
            if session.admitted and not presence_diff
            else None
        )
        connection.send(
            encode(
                "connected",
                Connected(
                    connectionId=connection_id,
                    userId=user_id,
                    orgId=self.org_id,
                    role=role,
                    epoch=self.stream.epoch,
                    seq=self.stream.seq,
                    recovered=None if since is None else missed is not None,
                ),
            )
        )
        self._sessions[connection_id] = session
        self._by_user.setdefault(user_id, {})[connection_id] = session
        self._stale[user_id] = None
        if held is not None:
            self._held.forget(user_id)
            self._assigned.add(user_id)
        arrived = False
        try:
            if session.admitted:
                arrived = self._presence.arrive(user_id, role)
            if snapshot is not None:
                connection.send(snapshot)
            for message in missed or ():
                connection.send(message)
            if session.admitted:
                self._admit(session)
                if arrived:
                    self._touch(user_id)
                if arrived and not self._remote.online(user_id):
                    self._announce(
                        user_id, encode("user_joined", self._describe(user_id))
                    )
            elif self._auto_knock and not user_sessions:
                self._knock(session)
        except BaseException:
            self._undo_join(session, arrived)
            raise
        self._changed(user_id)
        return session

    def _undo_join(self, session: Session, arrived: bool) -> None:
        """Take back a join that failed half-way; nobody was told of it."""
        if arrived:
            # Not announced yet, so not announced as gone either: no grace.
            self._presence.remove(session.user_id)
            self._entries.pop(session.user_id, None)
        self.leave(session)

    def _missed(self, since: str, session: Session) -> list[Encoded] | None:
        try:
            position = StreamPosition.parse(since)
        except ValueError:
            return None
        return self.stream.replay(position, session.user_id, session.admitted)

    def leave(self, session: Session) -> bool:
        """Remove a session; idempotent.

        :returns: whether it was here.
        """
        if self._sessions.pop(session.connection_id, None) is None:
            return False
        self._dismiss(session)
        self._stale[session.user_id] = None
        user_sessions = self._by_user[session.user_id]
        del user_sessions[session.connection_id]
        if not user_sessions:
            del self._by_user[session.user_id]
            if session.user_id in self._assigned:
                self._assigned.discard(session.user_id)
                self._held.hold(session.user_id, session.role)
            if self._presence.depart(session.user_id):
                self._announce_left(session.user_id)
        self._changed(session.user_id)
        return True

    def _knock(self, guest: Session) -> None:
        receivers = tuple(
            user_id
            for user_id in self._online_users()
            if self._role(user_id) in KNOCK_RECEIVER_ROLES
        )
        if not receivers:
            return
        head, tail = encode_numbered("guest_knock", GuestKnock(guestId=guest.user_id))
        self._publish(Outgoing("guest_knock", head, tail, targets=receivers))

    def _publish(self, message: Outgoing) -> None:
        """Number and route a message of the room's own (a knock, a relayed
        client message) through the backplane; delivery is :meth:`deliver`."""
        self._backplane.publish(self.org_id, message).addErrback(
            self._not_published, message.type
        )

    def _not_published(self, failure: Any, type_: str) -> None:
        log.warn(
            "org {org_id}: {type} not published: {error}",
            org_id=self.org_id,
            type=type_,
            error=failure.getErrorMessage(),
        )

    # ------------------------------------------------------------ presence

    def presence(self) -> list[PresenceUser]:
        """Everyone online: admitted users, connected or within their grace
        period, on this process or (with a shared backplane) any other."""
        return [self._describe(user_id) for user_id in self._online_users()]

    def _online_users(self) -> list[str]:
        local = [user.user_id for user in self._presence]
        if not self._shared:
            return local
        known = set(local)
        return local + [user for user in self._remote if user not in known]

    def _online(self, user_id: str) -> bool:
        return self._presence.get(user_id) is not None or self._remote.online(user_id)

    def _role(self, user_id: str) -> str | None:
        """The user's role in presence: this process's view first."""
        user = self._presence.get(user_id)
        return user.role if user is not None else self._remote.role(user_id)

    def _describe(self, user_id: str) -> PresenceUser:
        user = self._presence.get(user_id)
        connections = self.connection_count_of(user_id)
        if not self._shared:
            assert user is not None
            return user.describe(connections)
        connections += self._remote.connections(user_id)
        if user is not None:
            described = user.describe(connections)
            if described.position is None:
                described = attrs.evolve(
                    described, position=self._remote.position(user_id)
                )
            return described
        role = self._remote.role(user_id)
        assert role is not None
        return PresenceUser(
            userId=user_id,
            role=role,
            connections=connections,
            position=self._remote.position(user_id),
        )

    def online_count(self) -> int:
        """How many users are online in presence (as :meth:`presence` lists)."""
        if not self._shared:
            return len(self._presence)
        return len(self._online_users())

    def cluster_connection_count_of(self, user_id: str) -> int:
        """A user's connections here and, with a shared backplane, elsewhere."""
        return self.connection_count_of(user_id) + self._remote.connections(user_id)

    def _snapshot(self, exclude: str) -> Encoded:
        """Everyone online but ``exclude``, from each user's cached entry.

        Every newcomer gets one, so in a storm of N joins this is N² entries:
        entries are re-encoded only when their user changed, and a snapshot is a
        copy and a join of byte strings.
        """
        entries = self._entries
        for user_id in self._stale:
            if not self._online(user_id):
                entries.pop(user_id, None)
            elif self._shared:
                entries[user_id] = encode_fragment(self._describe(user_id))
            else:
                user = self._presence.get(user_id)
                assert user is not None
                entries[user_id] = user.describe_json(self.connection_count_of(user_id))
        self._stale.clear()
        if exclude in entries:
            others = entries.copy()
            del others[exclude]
            return encode_list("presence", "users", others.values())
        return encode_list("presence", "users", entries.values())

    def _announce(self, user_id: str, message: Encoded) -> None:
        """Send a presence event about a user to every other admitted connection.

        Events wait for the end of the reactor iteration, so that a storm of
        joins reaches each connection as one burst per iteration rather than one
        send per join (see :meth:`_deliver_events`).  Connections that take
        presence diffs hear of it at the next tick.
        """
        self._touch(user_id, gone=message.type == "user_left")
        self._events.append((user_id, message))
        if self._events_call is None:
            self._events_call = self._clock.callLater(0, self._deliver_events)

    def _deliver_events(self) -> None:
        """Send the waiting presence events; called before anything else is sent.

        Each connection gets the events after it entered the audience (its
        snapshot already showed the earlier ones), except those about its own
        user.  Everyone else gets the same burst, framed once.
        """
        call, self._events_call = self._events_call, None
        if call is not None and call.active():
            call.cancel()
        events, self._events = self._events, []
        if not events:
            return
        starts, self._event_starts = self._event_starts, {}
        subjects = {user_id for user_id, _ in events}
        everything: Burst | None = None
        for session in self._announced.values():
            start = starts.get(session.connection_id, 0)
            if start == 0 and session.user_id not in subjects:
                if everything is None:
                    everything = Burst(tuple(message for _, message in events))
                session.connection.send_burst(everything)
                continue
            for user_id, message in events[start:]:
                if user_id != session.user_id:
                    session.connection.send(message)

    def _announce_left(self, user_id: str) -> None:
        """The user is gone from this process's presence (grace over, demoted,
        banned): the others hear of it unless another process still has them."""
        self._changed(user_id)
        if self._remote.online(user_id):
            self._stale[user_id] = None
            # Still online elsewhere, maybe with the role seen there.
            self._touch(user_id)
            return
        # Gone now: a return later is a new entry at the end, as in the tracker.
        self._entries.pop(user_id, None)
        self._announce(user_id, encode("user_left", UserLeft(userId=user_id)))

    # ------------------------------------------------------------ routing

    def receive(self, session: Session, message: ClientMessage) -> int:
        """Relay a validated client message to every other admitted connection.

        :returns: how many connections it was written to.
        :raises ContractError: ``not_permitted`` when the sender may not send.
        """
        session.check_may_send()
        self._deliver_events()
        if not self._catalog[message.type].ephemeral:
            head, tail = encode_numbered(
                message.type, message.payload, sender=session.user_id
            )
            answers: list[int] = []
            self._backplane.publish(
                self.org_id,
                Outgoing(
                    message.type,
                    head,
                    tail,
                    sender=session.user_id,
                    exclude=session.connection_id,
                ),
            ).addCallbacks(
                lambda published: answers.append(published.delivered),
                self._not_published,
                errbackArgs=(message.type,),
            )
            # One process delivers at once; a shared backplane later, in order.
            return answers[0] if answers else 0
        encoded = encode(
            message.type, message.payload, sender=session.user_id, ephemeral=True
        )
        recipients: Iterable[Session] = self._plain.values()
        if isinstance(message.payload, PositionUpdate):
            self._presence.move(session.user_id, message.payload)
            self._stale[session.user_id] = None
            if self._shared:
                self._share_move(session.user_id, message.payload)
            if self._batched:
                self._batch(session.user_id, message.payload)
            else:
                recipients = self._audience.values()
        else:
            recipients = self._audience.values()
        delivered = 0
        for target in recipients:
            if target is not session:
                target.connection.send(encoded)
                delivered += 1
        self._tally.delivered(message.type, delivered)
        return delivered

    # ------------------------------------------------------------ audience

    def _admit(self, session: Session) -> None:
        key = session.connection_id
        if self._events:
            self._event_starts[key] = len(self._events)
        self._audience[key] = session
        (self._batched if session.batch_positions else self._plain)[key] = session
        if not session.presence_diff:
            self._announced[key] = session
        elif key not in self._diffed:
            self._awaiting[key] = session
            self._schedule_presence()

    def _dismiss(self, session: Session) -> None:
        key = session.connection_id
        self._audience.pop(key, None)
        self._plain.pop(key, None)
        self._batched.pop(key, None)
        self._announced.pop(key, None)
        self._awaiting.pop(key, None)
        if self._diffed.pop(key, None) is not None and not self._diffed:
            # Nobody holds the view any more: the next one starts afresh.
            self._diff_view = None
            self._diff_touched.clear()
            self._diff_gone.clear()

    # ------------------------------------------------------------ presence diffs

    def _touch(self, user_id: str, gone: bool = False) -> None:
        """The user's presence may have changed: diffed connections hear of it
        at the next tick (``gone``: they went offline, whatever follows)."""
        if self._diff_view is None:
            return
        self._diff_touched[user_id] = None
        if gone:
            self._diff_gone.add(user_id)
        self._schedule_presence()

    def _schedule_presence(self) -> None:
        if self._presence_call is None:
            interval = max(
                self._position_tick, len(self._diffed) / PRESENCE_FRAMES_PER_SECOND
            )
            self._presence_call = self._clock.callLater(interval, self._presence_tick)

    def _presence_tick(self) -> None:
        self._presence_call = None
        self._deliver_events()
        self._tell_presence()

    def _current_view(self) -> dict[str, str]:
        """Who is online now, with their role, in the order of :meth:`presence`."""
        view = {}
        for user_id in self._online_users():
            role = self._role(user_id)
            assert role is not None
            view[user_id] = role
        return view

    def _tell_presence(self) -> None:
        """The tick's presence: one ``presence_diff`` for the diffed connections
        and one ``presence_state`` for those awaiting it, each encoded once.

        The state is the view the diff leads to, so a connection's state plus
        the diffs it gets afterwards is always exactly who is online.
        """
        view = self._diff_view
        if view is not None and self._diff_touched:
            diff = self._diff(view)
            if diff is not None:
                for target in self._diffed.values():
                    target.connection.send(diff)
        if not self._awaiting:
            return
        if view is None:
            view = self._diff_view = self._current_view()
        positions = {}
        for user_id in view:
            present = self._presence.get(user_id)
            position = present.position if present is not None else None
            if position is None and self._shared:
                position = self._remote.position(user_id)
            if position is not None:
                positions[user_id] = position
        state = encode(
            "presence_state",
            PresenceState(users=_by_role(view.items()), positions=positions),
        )
        awaiting, self._awaiting = self._awaiting, {}
        for key, session in awaiting.items():
            session.connection.send(state)
            self._diffed[key] = session

    def _diff(self, view: dict[str, str]) -> Encoded | None:
        """Bring ``view`` up to date with the users touched since the last tick;
        the ``presence_diff`` that does the same for a client, or ``None``."""
        touched, self._diff_touched = self._diff_touched, {}
        gone, self._diff_gone = self._diff_gone, set()
        leaves: list[str] = []
        joins: list[tuple[str, str]] = []
        for user_id in touched:
            before = view.get(user_id)
            now = self._role(user_id) if self._online(user_id) else None
            if before is not None and (now is None or user_id in gone):
                leaves.append(user_id)
                del view[user_id]
                before = None
            if now is not None and now != before:
                joins.append((user_id, now))
                view[user_id] = now
        if not leaves and not joins:
            return None
        return encode(
            "presence_diff", PresenceDiff(joins=_by_role(joins), leaves=leaves)
        )

    # ------------------------------------------------------------ position batches

    def _schedule_tick(self) -> None:
        if self._tick_call is None:
            self._tick_call = self._clock.callLater(self._position_tick, self._tick)

    def _batch(self, user_id: str, position: PositionUpdate) -> None:
        # Latest per user wins; a user moving again within the tick is sent once.
        self._tick_positions.pop(user_id, None)
        self._tick_positions[user_id] = UserPosition(
            userId=user_id, x=position.x, y=position.y, roomId=position.roomId
        )
        self._schedule_tick()

    def _share_move(self, user_id: str, position: PositionUpdate) -> None:
        # Other processes get this process's moves once per tick, latest per user.
        self._moves.pop(user_id, None)
        self._moves[user_id] = position
        self._schedule_tick()

    def _tick(self) -> None:
        """Send the tick's positions to every batched connection, encoded once,
        and (with a shared backplane) this process's moves to the others."""
        self._tick_call = None
        self._deliver_events()
        if self._moves:
            moves, self._moves = list(self._moves.items()), {}
            entries = []
            for user_id, _ in moves:
                entry = self._entry(user_id)
                if entry is not None:
                    entries.append((user_id, entry))
            self._backplane.positions(self.org_id, moves, entries)
        positions = list(self._tick_positions.values())
        self._tick_positions.clear()
        if not positions or not self._batched:
            return
        encoded = encode("positions", Positions(positions=positions), ephemeral=True)
        for target in self._batched.values():
            target.connection.send(encoded)

    def prepare(self, notification: Notification) -> Outgoing:
        """Run the type's effect and encode a notification, ready to be numbered.

        Nothing in the room changes here: what the effect decided is carried
        out by :meth:`deliver`, on every process, once the message is numbered.
        """
        return prepare(self._catalog, self, notification)

    def publish(
        self, notification: Notification, once: Once | None = None
    ) -> defer.Deferred[Published]:
        """Number, keep and route a backend notification through the backplane.

        With one process it is delivered before this returns; with several, as
        every process delivers the org's messages: in ``seq`` order.
        """
        return self._backplane.publish(self.org_id, self.prepare(notification), once)

    def notify(self, notification: Notification) -> int:
        """Publish a notification and return how many connections it reached
        (one process: delivered at once)."""
        answers: list[Published] = []
        self.publish(notification).addCallback(answers.append)
        return answers[0].delivered if answers else 0

    def number(self, message: Outgoing) -> Numbered:
        """Number a message with the room's own stream (one process)."""
        return self.stream.number(message)

    def deliver(self, message: Numbered) -> int:
        """Carry out a numbered message's actions, then route and keep it.

        Role changes come first, so that routing follows them; presence events
        they cause (a role change, an admission) follow the message itself;
        connections are closed (a ban) last.

        :returns: how many of this process's connections it was written to.
        """
        self._deliver_events()
        after: list[Callable[[], None]] = []
        role_changes = [a for a in message.actions if isinstance(a, SetRole)]
        for action in role_changes:
            after.extend(self._set_role(action.user_id, action.role))
        targets = self._targets(message.targets)
        if role_changes and message.targets is None:
            # The subject of a role change always hears of it, even when the new
            # role (pending_guest) takes them out of the broadcast audience.
            listed = {session.connection_id for session in targets}
            for action in role_changes:
                targets.extend(
                    session
                    for session in self._by_user.get(action.user_id, {}).values()
                    if session.connection_id not in listed
                )
        if message.exclude is not None:
            targets = [t for t in targets if t.connection_id != message.exclude]
        self.stream.keep(message)
        encoded = Encoded(
            type=message.type, data=message.data, sender=message.sender, seq=message.seq
        )
        for session in targets:
            session.connection.send(encoded)
        self._tally.delivered(message.type, len(targets))
        for then in after:
            then()
        for closing in message.actions:
            if isinstance(closing, CloseUser):
                self._close_user(closing)
        return len(targets)

    def _targets(self, users: tuple[str, ...] | None) -> list[Session]:
        if users is None:
            return list(self._audience.values())
        targets: list[Session] = []
        for user_id in users:
            targets.extend(self._by_user.get(user_id, {}).values())
        return targets

    def _set_role(self, user_id: str, role: str) -> list[Callable[[], None]]:
        """Apply a role now; return the presence events to send after delivery."""
        sessions = self._by_user.get(user_id, {})
        self._stale[user_id] = None
        self._changed(user_id)
        if sessions:
            self._assigned.add(user_id)
        else:
            self._held.hold(user_id, role)
        for session in sessions.values():
            session.role = role
            if session.admitted:
                self._admit(session)
            else:
                self._dismiss(session)
        admitted = role in ADMITTED_ROLES
        present = self._presence.get(user_id)
        if present is not None:
            if not admitted:
                self._presence.remove(user_id)
                return [lambda: self._announce_left(user_id)]
            if present.role != role:
                present.role = role
                changed = UserRoleChanged(userId=user_id, role=role)
                return [
                    lambda: self._announce(
                        user_id, encode("user_role_changed", changed)
                    )
                ]
            return []
        if admitted and sessions:
            self._presence.arrive(user_id, role)
            return [lambda: self._admitted(user_id)]
        return []

    def refresh_role(self, user_id: str, role: str) -> None:
        """A user's refreshed token carries another role: apply it now, as a
        ``user_updated`` would, to this process's sessions of the user.

        Nothing is relayed or numbered: the others see the presence events
        (``user_role_changed``, ``user_joined``, ``user_left``) only.
        """
        self._deliver_events()
        for then in self._set_role(user_id, role):
            then()

    def _admitted(self, user_id: str) -> None:
        """A pending guest was let in: they see the floor, the floor sees them."""
        if self._presence.get(user_id) is None:
            return
        plain = [
            session
            for session in self._by_user.get(user_id, {}).values()
            if not session.presence_diff
        ]
        if plain:
            snapshot = self._snapshot(exclude=user_id)
            for session in plain:
                session.connection.send(snapshot)
        self._announce(user_id, encode("user_joined", self._describe(user_id)))

    def _close_user(self, action: CloseUser) -> None:
        self._changed(action.user_id)
        if action.ban:
            self._bans[action.user_id] = self._clock.seconds()
            # The backend's next word on this user is a token issued after the ban.
            self._held.forget(action.user_id)
            self._assigned.discard(action.user_id)
            # A banned user will not be back: no grace period.
            if self._presence.remove(action.user_id):
                self._announce_left(action.user_id)
        for session in list(self._by_user.get(action.user_id, {}).values()):
            session.connection.close(action.code, action.reason)

    def close_all(self, code: int, reason: str) -> None:
        """Close every connection (shutdown)."""
        for session in list(self._sessions.values()):
            session.connection.close(code, reason)

    # ------------------------------------------------------------ the cluster

    def _entry(self, user_id: str) -> RemoteEntry | None:
        """This process's presence entry for a user, as the others see it."""
        sessions = self._by_user.get(user_id)
        present = self._presence.get(user_id)
        position = present.position if present is not None else None
        if sessions:
            role = next(iter(sessions.values())).role
            return RemoteEntry(len(sessions), role, position)
        if present is not None:
            return RemoteEntry(0, present.role, position)
        return None

    def _changed(self, user_id: str) -> None:
        """This process's entry for a user may have changed: tell the others at
        the end of the reactor iteration (once per user, however many changes)."""
        if not self._shared:
            return
        self._changed_users[user_id] = None
        if self._changed_call is None:
            self._changed_call = self._clock.callLater(0, self._tell_changes)

    def _tell_changes(self) -> None:
        self._changed_call = None
        users, self._changed_users = self._changed_users, {}
        for user_id in users:
            self._backplane.presence_changed(self.org_id, user_id, self._entry(user_id))

    def restart_stream(self, state: StreamState) -> None:
        """Continue from the shared stream's state; every connection recovers.

        At start (the room has no connection yet) this is the org's state when
        this process began serving it: its window, bans and held roles.
        """
        self.stream.restart(state.epoch, state.seq, state.records)
        self._bans.update(state.bans)
        for user_id, role in state.roles.items():
            if user_id not in self._by_user:
                self._held.hold(user_id, role)
        for session in list(self._sessions.values()):
            session.connection.close(codes.CLOSE_SERVICE_RESTART, codes.REASON_RESYNC)

    def remote_presence(
        self, node: str, user_id: str, entry: RemoteEntry | None
    ) -> None:
        """Another process's entry for a user changed: the others here hear of a
        join, a leave or a role change as the cluster's presence changes."""
        self._deliver_events()
        was_online = self._online(user_id)
        role_before = self._role(user_id) if was_online else None
        self._remote.set(node, user_id, entry)
        self._stale[user_id] = None
        online = self._online(user_id)
        if online and not was_online:
            self._entries.pop(user_id, None)
            self._announce(user_id, encode("user_joined", self._describe(user_id)))
        elif was_online and not online:
            self._entries.pop(user_id, None)
            self._announce(user_id, encode("user_left", UserLeft(userId=user_id)))
        elif online:
            role = self._role(user_id)
            if role is not None and role != role_before:
                changed = UserRoleChanged(userId=user_id, role=role)
                self._announce(user_id, encode("user_role_changed", changed))

    def remote_positions(
        self, node: str, positions: Sequence[tuple[str, PositionUpdate]]
    ) -> None:
        """Another process's tick of moves: relayed here as this process's own."""
        self._deliver_events()
        for user_id, position in positions:
            if not self._remote.move(node, user_id, position):
                continue
            self._stale[user_id] = None
            if self._plain:
                encoded = encode(
                    "position_update", position, sender=user_id, ephemeral=True
                )
                for target in self._plain.values():
                    target.connection.send(encoded)
            if self._batched:
                self._batch(user_id, position)

    def node_gone(self, node: str) -> None:
        """Another process is gone: its users leave unless seen elsewhere."""
        for user_id in self._remote.users_of(node):
            self.remote_presence(node, user_id, None)

    def withdraw(self) -> None:
        """The room is being dropped: tell the other processes that this one's
        entries for the org's users are gone.

        The users within their grace period, and changes not told yet, would
        otherwise stay in the cluster's presence long after this process
        stopped serving the org.  Not part of :meth:`dispose`, which also runs
        when the daemon stops: then the entries expire with the process, so
        that clients reconnecting elsewhere do not see their users leave.
        """
        if not self._shared:
            return
        users = dict.fromkeys(self._changed_users)
        users.update(dict.fromkeys(user.user_id for user in self._presence))
        users.update(dict.fromkeys(self._by_user))
        for user_id in users:
            self._backplane.presence_changed(self.org_id, user_id, None)

    def dispose(self) -> None:
        """Cancel the room's timers (it is being dropped, or the daemon stops)."""
        self._presence.dispose()
        self._held.clear()
        self._assigned.clear()
        self._remote.clear()
        self._moves.clear()
        self._changed_users.clear()
        if self._changed_call is not None and self._changed_call.active():
            self._changed_call.cancel()
        self._changed_call = None
        self._entries.clear()
        self._stale.clear()
        if self._events_call is not None and self._events_call.active():
            self._events_call.cancel()
        self._events_call = None
        self._events.clear()
        self._event_starts.clear()
        if self._tick_call is not None and self._tick_call.active():
            self._tick_call.cancel()
        self._tick_call = None
        self._tick_positions.clear()
        if self._presence_call is not None and self._presence_call.active():
            self._presence_call.cancel()
        self._presence_call = None
        self._awaiting.clear()
        self._diffed.clear()
        self._announced.clear()
        self._diff_view = None
        self._diff_touched.clear()
        self._diff_gone.clear()
