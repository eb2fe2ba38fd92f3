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

import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol as TypingProtocol

import attrs

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from officerouter import codes
from officerouter.auth import Identity
from officerouter.catalog import MessageSpec
from officerouter.codec import Burst, ContractError, Encoded, encode, encode_list
from officerouter.effects import Action, CloseUser, SetRole
from officerouter.history import (
    DEFAULT_BOUNDS,
    HistoryBounds,
    HistoryStore,
    MemoryStore,
    Stream,
    StreamPosition,
    new_epoch,
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
    PresenceUser,
    UserLeft,
    UserPosition,
    UserRoleChanged,
)
from officerouter.presence import HeldRoles, PresenceTracker


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
    ) -> None:
        self.org_id = org_id
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
    ) -> Session:
        """Add a verified connection.

        It receives ``connected``; then, when admitted, the ``presence`` snapshot;
        then what it missed since ``since`` and may see now; then the live stream.
        All of it happens in this call, so nothing can slip in between.

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
            or identity.role
        )
        session = Session(
            connection_id=connection_id,
            user_id=user_id,
            role=role,
            connection=connection,
            org_id=self.org_id,
            batch_positions=batch_positions,
        )
        missed = self._missed(since, session) if since is not None else None
        # Encoded before the session exists: a snapshot that cannot be encoded
        # must leave nothing behind.
        snapshot = self._snapshot(exclude=user_id) if session.admitted else None
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
            if snapshot is not None:
                arrived = self._presence.arrive(user_id, role)
                connection.send(snapshot)
            for message in missed or ():
                connection.send(message)
            if session.admitted:
                self._admit(session)
                if arrived:
                    self._announce(
                        user_id, encode("user_joined", self._describe(user_id))
                    )
            elif self._auto_knock and not user_sessions:
                self._knock(session)
        except BaseException:
            self._undo_join(session, arrived)
            raise
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
        return True

    def _knock(self, guest: Session) -> None:
        self._deliver_events()
        receivers = tuple(
            user.user_id for user in self._presence if user.role in KNOCK_RECEIVER_ROLES
        )
        if not receivers:
            return
        message = self.stream.record(
            "guest_knock", GuestKnock(guestId=guest.user_id), targets=receivers
        )
        for user_id in receivers:
            for session in self._by_user.get(user_id, {}).values():
                session.connection.send(message)

    # ------------------------------------------------------------ presence

    def presence(self) -> list[PresenceUser]:
        """Everyone online: admitted users, connected or within their grace period."""
        return [self._describe(user.user_id) for user in self._presence]

    def _describe(self, user_id: str) -> PresenceUser:
        user = self._presence.get(user_id)
        assert user is not None
        return user.describe(self.connection_count_of(user_id))

    def _snapshot(self, exclude: str) -> Encoded:
        """Everyone online but ``exclude``, from each user's cached entry.

        Every newcomer gets one, so in a storm of N joins this is N² entries:
        entries are re-encoded only when their user changed, and a snapshot is a
        copy and a join of byte strings.
        """
        entries = self._entries
        for user_id in self._stale:
            user = self._presence.get(user_id)
            if user is None:
                entries.pop(user_id, None)
            else:
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
        send per join (see :meth:`_deliver_events`).
        """
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
        for session in self._audience.values():
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
        ephemeral = self._catalog[message.type].ephemeral
        # Encoded (or numbered) first: a message that cannot be encoded leaves
        # no position behind for every later snapshot to fail on.
        if ephemeral:
            encoded = encode(
                message.type, message.payload, sender=session.user_id, ephemeral=True
            )
        else:
            encoded = self.stream.record(
                message.type, message.payload, sender=session.user_id
            )
        recipients: Iterable[Session] = self._audience.values()
        if isinstance(message.payload, PositionUpdate):
            self._presence.move(session.user_id, message.payload)
            self._stale[session.user_id] = None
            if ephemeral and self._batched:
                recipients = self._plain.values()
                self._batch(session.user_id, message.payload)
        delivered = 0
        for target in recipients:
            if target is not session:
                target.connection.send(encoded)
                delivered += 1
        return delivered

    # ------------------------------------------------------------ audience

    def _admit(self, session: Session) -> None:
        key = session.connection_id
        if self._events:
            self._event_starts[key] = len(self._events)
        self._audience[key] = session
        (self._batched if session.batch_positions else self._plain)[key] = session

    def _dismiss(self, session: Session) -> None:
        key = session.connection_id
        self._audience.pop(key, None)
        self._plain.pop(key, None)
        self._batched.pop(key, None)

    # ------------------------------------------------------------ position batches

    def _batch(self, user_id: str, position: PositionUpdate) -> None:
        # Latest per user wins; a user moving again within the tick is sent once.
        self._tick_positions.pop(user_id, None)
        self._tick_positions[user_id] = UserPosition(
            userId=user_id, x=position.x, y=position.y, roomId=position.roomId
        )
        if self._tick_call is None:
            self._tick_call = self._clock.callLater(self._position_tick, self._tick)

    def _tick(self) -> None:
        """Send the tick's positions to every batched connection, encoded once."""
        self._tick_call = None
        self._deliver_events()
        positions = list(self._tick_positions.values())
        self._tick_positions.clear()
        if not positions or not self._batched:
            return
        encoded = encode("positions", Positions(positions=positions), ephemeral=True)
        for target in self._batched.values():
            target.connection.send(encoded)

    def notify(self, notification: Notification) -> int:
        """Run the type's effect, then number, keep and route a backend notification.

        Presence events the effect causes (a role change, an admission) follow
        the notification itself.

        :returns: how many connections it was written to.
        """
        self._deliver_events()
        spec = self._catalog[notification.type]
        actions: Sequence[Action] = (
            spec.effect(self, notification) if spec.effect is not None else ()
        )
        # Numbered and encoded before any action is applied: a notification that
        # cannot be encoded changes no role.
        encoded = self.stream.record(
            notification.type,
            notification.payload,
            targets=None
            if notification.routing == "broadcast"
            else tuple(notification.targets),
        )
        after: list[Callable[[], None]] = []
        for action in actions:
            if isinstance(action, SetRole):
                after.extend(self._set_role(action.user_id, action.role))
        targets = self._targets(notification)
        role_changes = [a for a in actions if isinstance(a, SetRole)]
        if role_changes and notification.routing == "broadcast":
            # The subject of a role change always hears of it, even when the new
            # role (pending_guest) takes them out of the broadcast audience.
            listed = {session.connection_id for session in targets}
            for action in role_changes:
                targets.extend(
                    session
                    for session in self._by_user.get(action.user_id, {}).values()
                    if session.connection_id not in listed
                )
        for session in targets:
            session.connection.send(encoded)
        for then in after:
            then()
        for action in actions:
            if isinstance(action, CloseUser):
                self._close_user(action)
        return len(targets)

    def _targets(self, notification: Notification) -> list[Session]:
        if notification.routing == "broadcast":
            return list(self._audience.values())
        targets: list[Session] = []
        for user_id in notification.targets:
            targets.extend(self._by_user.get(user_id, {}).values())
        return targets

    def _set_role(self, user_id: str, role: str) -> list[Callable[[], None]]:
        """Apply a role now; return the presence events to send after delivery."""
        sessions = self._by_user.get(user_id, {})
        self._stale[user_id] = None
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

    def _admitted(self, user_id: str) -> None:
        """A pending guest was let in: they see the floor, the floor sees them."""
        if self._presence.get(user_id) is None:
            return
        snapshot = self._snapshot(exclude=user_id)
        for session in self._by_user.get(user_id, {}).values():
            session.connection.send(snapshot)
        self._announce(user_id, encode("user_joined", self._describe(user_id)))

    def _close_user(self, action: CloseUser) -> None:
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

    def dispose(self) -> None:
        """Cancel the room's timers (it is being dropped, or the daemon stops)."""
        self._presence.dispose()
        self._held.clear()
        self._assigned.clear()
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


class OrgRegistry:
    """One :class:`OrgRoom` per org, created on first use.

    A room whose last session left keeps its history (and epoch) for
    ``history.seconds`` after its last activity, then is dropped: one timer per
    such room, no sweep of all rooms.

    :param catalog: message type -> spec.
    :param clock: the reactor's time and timers (a ``Clock`` in tests).
    :param auto_knock: see :class:`OrgRoom`.
    :param ban_memory: how long, in seconds, a ban refuses tokens issued before it.
    :param presence_grace: see :class:`OrgRoom`.
    :param history: how much history each room keeps.
    :param store: where history outlives the process (default: nowhere).
    :param new_id: makes connection ids (tests pass a counter).
    :param new_epoch: makes epochs.
    """

    def __init__(
        self,
        catalog: Mapping[str, MessageSpec],
        *,
        clock: IReactorTime,
        auto_knock: bool = False,
        ban_memory: float = 3600.0,
        presence_grace: float = 5.0,
        position_tick: float = 0.05,
        history: HistoryBounds = DEFAULT_BOUNDS,
        store: HistoryStore | None = None,
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
        new_epoch: Callable[[], str] = new_epoch,
    ) -> None:
        self.catalog = catalog
        self._clock = clock
        self._auto_knock = auto_knock
        self._ban_memory = ban_memory
        self._presence_grace = presence_grace
        self._position_tick = position_tick
        self._history = history
        self._store: HistoryStore = store if store is not None else MemoryStore()
        self._new_id = new_id
        self._new_epoch = new_epoch
        self._rooms: dict[str, OrgRoom] = {}
        # Exactly the rooms without a session, each with its expiry timer.
        self._expiry: dict[str, IDelayedCall | None] = {}
        self._connections = 0
        self._bans: dict[str, dict[str, float]] = {}
        self._stopped = False

    # ------------------------------------------------------------ counts

    @property
    def room_count(self) -> int:
        """How many rooms have live connections."""
        return len(self._rooms) - len(self._expiry)

    @property
    def history_room_count(self) -> int:
        """How many rooms have no connection and are kept for their history."""
        return len(self._expiry)

    @property
    def connection_count(self) -> int:
        """How many sessions exist across all rooms."""
        return self._connections

    def org_connection_count(self, org_id: str) -> int:
        """How many live connections an org has."""
        room = self._rooms.get(org_id)
        return len(room) if room is not None else 0

    def user_connection_count(self, org_id: str, user_id: str) -> int:
        """How many live connections a user has in an org."""
        room = self._rooms.get(org_id)
        return room.connection_count_of(user_id) if room is not None else 0

    def room(self, org_id: str) -> OrgRoom | None:
        """The org's room if it exists, live or kept for history (never creates one)."""
        return self._rooms.get(org_id)

    def presence(self, org_id: str) -> list[PresenceUser]:
        """The org's online users (none for an org without a room)."""
        room = self._rooms.get(org_id)
        return room.presence() if room is not None else []

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Open the history store and bring back the streams it kept.

        Each comes back as a room without connections, so that notifications
        arriving before its clients reconnect are numbered and kept.
        """
        for stored in self._store.open(self._history, self._clock.seconds()):
            stream = Stream.restored(
                stored, self._history, self._store, self._clock.seconds
            )
            room = self._add_room(stored.org_id, stream)
            self._expiry[room.org_id] = None
            self._schedule_expiry(room)

    def stop(self) -> defer.Deferred[None]:
        """Cancel every timer and close the store (after the connections are gone).

        From now on nothing is numbered: connections are refused and
        notifications delivered to nobody, so that what the store wrote last is
        where every stream ended.
        """
        self._stopped = True
        now = self._clock.seconds()
        for org_id, room in self._rooms.items():
            if org_id not in self._expiry:
                room.stream.touch(now)
            room.dispose()
        for call in self._expiry.values():
            if call is not None and call.active():
                call.cancel()
        self._expiry = dict.fromkeys(self._expiry)
        return self._store.close()

    # ------------------------------------------------------------ admission

    def _org_bans(self, org_id: str) -> dict[str, float]:
        bans = self._bans.setdefault(org_id, {})
        cutoff = self._clock.seconds() - self._ban_memory
        for user_id in [u for u, at in bans.items() if at < cutoff]:
            del bans[user_id]
        return bans

    def check_admission(self, identity: Identity) -> None:
        """Refuse a verified identity that a recent ban covers.

        :raises RefusedError: 403 for a token issued before the user's ban.
        """
        bans = self._bans.get(identity.org_id)
        if not bans:
            return
        banned_at = self._org_bans(identity.org_id).get(identity.user_id)
        if banned_at is None:
            return
        if identity.issued_at is None or identity.issued_at <= banned_at:
            raise RefusedError(403, codes.REASON_BANNED)

    def connect(
        self,
        identity: Identity,
        connection: Connection,
        *,
        since: str | None = None,
        batch_positions: bool = False,
    ) -> Session:
        """Admit a verified connection to its org's room (created if needed).

        :param since: the ``<epoch>.<seq>`` a reconnecting client last saw.
        :param batch_positions: take positions as one ``positions`` frame per tick.
        :raises RefusedError: when the identity may not connect.
        """
        if self._stopped:
            raise RefusedError(503, codes.REASON_SHUTDOWN)
        self.check_admission(identity)
        org_id = identity.org_id
        room = self._rooms.get(org_id)
        if room is None:
            room = self._create_room(org_id)
        else:
            self._wake(org_id)
        try:
            session = room.join(
                identity,
                connection,
                self._new_id(),
                since=since,
                batch_positions=batch_positions,
            )
        except BaseException:
            if not len(room):
                self._idle(room)
            raise
        self._connections += 1
        return session

    def disconnect(self, session: Session) -> None:
        """Remove a session; a room left without any is kept for its history.

        Idempotent.
        """
        room = self._rooms.get(session.org_id)
        if room is None or not room.leave(session):
            return
        self._connections -= 1
        if not len(room):
            self._idle(room)

    # ------------------------------------------------------------ rooms

    def _create_room(self, org_id: str) -> OrgRoom:
        now = self._clock.seconds()
        epoch = self._new_epoch()
        self._store.begin(org_id, epoch, now)
        stream = Stream(org_id, epoch, self._history, self._store, self._clock.seconds)
        return self._add_room(org_id, stream)

    def _add_room(self, org_id: str, stream: Stream) -> OrgRoom:
        room = OrgRoom(
            org_id,
            self.catalog,
            bans=self._org_bans(org_id),
            clock=self._clock,
            stream=stream,
            presence_grace=self._presence_grace,
            auto_knock=self._auto_knock,
            position_tick=self._position_tick,
            # A role change is held as long as a replay could reach past it.
            role_memory=self._history.seconds,
        )
        self._rooms[org_id] = room
        return room

    def _wake(self, org_id: str) -> None:
        if org_id in self._expiry:
            call = self._expiry.pop(org_id)
            if call is not None and call.active():
                call.cancel()

    def _idle(self, room: OrgRoom) -> None:
        room.stream.touch(self._clock.seconds())
        self._expiry[room.org_id] = None
        self._schedule_expiry(room)

    def _schedule_expiry(self, room: OrgRoom) -> None:
        delay = room.stream.retained_until() - self._clock.seconds()
        if delay <= 0:
            self._drop(room)
        else:
            self._expiry[room.org_id] = self._clock.callLater(
                delay, self._expire, room.org_id
            )

    def _expire(self, org_id: str) -> None:
        room = self._rooms.get(org_id)
        if room is None or org_id not in self._expiry:
            return
        # Messages may have arrived since the timer was set: check again, and
        # either drop the room or wait for its newest activity to expire.
        self._schedule_expiry(room)

    def _drop(self, room: OrgRoom) -> None:
        org_id = room.org_id
        del self._rooms[org_id]
        self._wake(org_id)
        room.dispose()
        self._store.forget(org_id)
        if not self._bans.get(org_id):
            self._bans.pop(org_id, None)

    # ------------------------------------------------------------ routing

    def receive(self, session: Session, message: ClientMessage) -> int:
        """Hand a validated client message to its session's room."""
        room = self._rooms[session.org_id]
        return room.receive(session, message)

    def notify(self, notification: Notification) -> int:
        """Deliver a backend notification; an org with no room delivers to nobody.

        A room kept for its history numbers and keeps the notification for the
        clients that will reconnect.  An org with no room gets none, though a ban
        still takes effect.
        """
        if self._stopped:
            return 0
        room = self._rooms.get(notification.org_id)
        if room is None:
            spec = self.catalog[notification.type]
            if spec.effect is not None:
                self._record_bans(notification, spec)
            return 0
        return room.notify(notification)

    def _record_bans(self, notification: Notification, spec: MessageSpec) -> None:
        assert spec.effect is not None
        actions = spec.effect(_EmptyRoom(notification.org_id), notification)
        bans = [a for a in actions if isinstance(a, CloseUser) and a.ban]
        if bans:
            org_bans = self._org_bans(notification.org_id)
            for action in bans:
                org_bans[action.user_id] = self._clock.seconds()

    def close_all(self, code: int, reason: str) -> None:
        """Close every connection of every room (shutdown)."""
        for room in list(self._rooms.values()):
            room.close_all(code, reason)


@attrs.frozen
class _EmptyRoom:
    org_id: str

    def user_ids(self) -> frozenset[str]:
        return frozenset()

    def role_of(self, user_id: str) -> str | None:
        return None
