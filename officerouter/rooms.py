"""Rooms and the registry: where messages are routed.  Sans-IO.

An :class:`OrgRoom` holds the live sessions of one org and reaches each through the
:class:`Connection` seam (send an encoded message; close with a code and reason).
It knows nothing of Autobahn or sockets, so the same room serves WebSocket
connections today and a backplane later.  The :class:`OrgRegistry` creates a room on
first use and drops it the moment its last session leaves.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol as TypingProtocol

import attrs

from officerouter import codes
from officerouter.auth import Identity
from officerouter.catalog import MessageSpec
from officerouter.codec import ContractError, Encoded, encode
from officerouter.effects import Action, CloseUser, SetRole
from officerouter.messages import (
    ADMITTED_ROLES,
    KNOCK_RECEIVER_ROLES,
    ClientMessage,
    Connected,
    ErrorPayload,
    GuestKnock,
    Notification,
)


class Connection(TypingProtocol):
    """What a room needs of a connection.  Implementations never raise."""

    def send(self, message: Encoded) -> None:
        """Queue an encoded message for this connection, in order."""

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

    @property
    def admitted(self) -> bool:
        """Whether this session takes part in the org's traffic."""
        return self.role in ADMITTED_ROLES


def error_frame(error: ContractError) -> Encoded:
    """Encode the ``error`` frame that answers a client's bad input."""
    return encode("error", ErrorPayload(code=error.code, message=error.message))


class OrgRoom:
    """The live sessions of one org, and the routing of its messages.

    :param org_id: the org.
    :param catalog: message type -> spec (effects, routings).
    :param bans: the registry's ban record for this org (user id -> ban time).
    :param now: the current time, injected.
    :param auto_knock: send ``guest_knock`` to owners and admins when a pending
        guest connects.
    """

    def __init__(
        self,
        org_id: str,
        catalog: Mapping[str, MessageSpec],
        *,
        bans: dict[str, float],
        now: Callable[[], float],
        auto_knock: bool = False,
    ) -> None:
        self.org_id = org_id
        self._catalog = catalog
        self._bans = bans
        self._now = now
        self._auto_knock = auto_knock
        self._sessions: dict[str, Session] = {}
        self._by_user: dict[str, dict[str, Session]] = {}
        # Kept up to date on join, leave and role change rather than filtered per
        # message: a broadcast walks exactly its recipients.
        self._audience: dict[str, Session] = {}

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
        self, identity: Identity, connection: Connection, connection_id: str
    ) -> Session:
        """Add a verified connection; it receives ``connected`` first."""
        user_sessions = self._by_user.get(identity.user_id)
        # A second tab follows the role the room already holds for the user: a
        # user_updated may have changed it since the token was issued.
        role = self.role_of(identity.user_id) or identity.role
        session = Session(
            connection_id=connection_id,
            user_id=identity.user_id,
            role=role,
            connection=connection,
            org_id=self.org_id,
        )
        connection.send(
            encode(
                "connected",
                Connected(
                    connectionId=connection_id,
                    userId=session.user_id,
                    orgId=self.org_id,
                    role=role,
                ),
            )
        )
        self._sessions[connection_id] = session
        self._by_user.setdefault(session.user_id, {})[connection_id] = session
        if session.admitted:
            self._audience[connection_id] = session
        elif self._auto_knock and not user_sessions:
            self._knock(session)
        return session

    def leave(self, session: Session) -> None:
        """Remove a session; idempotent."""
        if self._sessions.pop(session.connection_id, None) is None:
            return
        self._audience.pop(session.connection_id, None)
        user_sessions = self._by_user[session.user_id]
        del user_sessions[session.connection_id]
        if not user_sessions:
            del self._by_user[session.user_id]

    def _knock(self, guest: Session) -> None:
        message = encode("guest_knock", GuestKnock(guestId=guest.user_id))
        for session in self._sessions.values():
            if session.role in KNOCK_RECEIVER_ROLES:
                session.connection.send(message)

    # ------------------------------------------------------------ routing

    def receive(self, session: Session, message: ClientMessage) -> int:
        """Relay a validated client message to every other admitted connection.

        :returns: how many connections it was written to.
        :raises ContractError: ``not_permitted`` when the sender may not send.
        """
        if not session.admitted:
            raise ContractError(
                codes.ERR_NOT_PERMITTED,
                [("$.type", f"a {session.role} may not send messages")],
            )
        encoded = encode(
            message.type,
            message.payload,
            sender=session.user_id,
            ephemeral=self._catalog[message.type].ephemeral,
        )
        delivered = 0
        for target in self._audience.values():
            if target is not session:
                target.connection.send(encoded)
                delivered += 1
        return delivered

    def notify(self, notification: Notification) -> int:
        """Run the type's effect, then route a backend notification.

        :returns: how many connections it was written to.
        """
        spec = self._catalog[notification.type]
        actions: Sequence[Action] = (
            spec.effect(self, notification) if spec.effect is not None else ()
        )
        for action in actions:
            if isinstance(action, SetRole):
                self._set_role(action.user_id, action.role)
        encoded = encode(notification.type, notification.payload)
        targets = self._targets(notification)
        for session in targets:
            session.connection.send(encoded)
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

    def _set_role(self, user_id: str, role: str) -> None:
        for session in self._by_user.get(user_id, {}).values():
            session.role = role
            if session.admitted:
                self._audience[session.connection_id] = session
            else:
                self._audience.pop(session.connection_id, None)

    def _close_user(self, action: CloseUser) -> None:
        if action.ban:
            self._bans[action.user_id] = self._now()
        for session in list(self._by_user.get(action.user_id, {}).values()):
            session.connection.close(action.code, action.reason)

    def close_all(self, code: int, reason: str) -> None:
        """Close every connection (shutdown)."""
        for session in list(self._sessions.values()):
            session.connection.close(code, reason)


class OrgRegistry:
    """One :class:`OrgRoom` per org, created on first use, dropped when empty.

    :param catalog: message type -> spec.
    :param now: the current time, injected (``reactor.seconds``).
    :param auto_knock: see :class:`OrgRoom`.
    :param ban_memory: how long, in seconds, a ban refuses tokens issued before it.
    :param new_id: makes connection ids (tests pass a counter).
    """

    def __init__(
        self,
        catalog: Mapping[str, MessageSpec],
        *,
        now: Callable[[], float],
        auto_knock: bool = False,
        ban_memory: float = 3600.0,
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
    ) -> None:
        self.catalog = catalog
        self._now = now
        self._auto_knock = auto_knock
        self._ban_memory = ban_memory
        self._new_id = new_id
        self._rooms: dict[str, OrgRoom] = {}
        self._bans: dict[str, dict[str, float]] = {}

    @property
    def room_count(self) -> int:
        """How many rooms exist."""
        return len(self._rooms)

    @property
    def connection_count(self) -> int:
        """How many sessions exist across all rooms."""
        return sum(len(room) for room in self._rooms.values())

    def org_connection_count(self, org_id: str) -> int:
        """How many live connections an org has."""
        room = self._rooms.get(org_id)
        return len(room) if room is not None else 0

    def user_connection_count(self, org_id: str, user_id: str) -> int:
        """How many live connections a user has in an org."""
        room = self._rooms.get(org_id)
        return room.connection_count_of(user_id) if room is not None else 0

    def room(self, org_id: str) -> OrgRoom | None:
        """The org's room if it exists (never creates one)."""
        return self._rooms.get(org_id)

    def _org_bans(self, org_id: str) -> dict[str, float]:
        bans = self._bans.setdefault(org_id, {})
        cutoff = self._now() - self._ban_memory
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
        self, identity: Identity, connection: Connection, *, since: str | None = None
    ) -> Session:
        """Admit a verified connection to its org's room (created if needed).

        :param since: the ``<epoch>.<seq>`` a reconnecting client last saw
            (history and recovery; not used yet).
        :raises RefusedError: when the identity may not connect.
        """
        self.check_admission(identity)
        room = self._rooms.get(identity.org_id)
        if room is None:
            room = OrgRoom(
                identity.org_id,
                self.catalog,
                bans=self._org_bans(identity.org_id),
                now=self._now,
                auto_knock=self._auto_knock,
            )
            self._rooms[identity.org_id] = room
        return room.join(identity, connection, self._new_id())

    def disconnect(self, session: Session) -> None:
        """Remove a session; drops its room when it was the last.  Idempotent."""
        room = self._rooms.get(session.org_id)
        if room is None:
            return
        room.leave(session)
        if not len(room):
            del self._rooms[session.org_id]
            if not self._bans.get(session.org_id):
                self._bans.pop(session.org_id, None)

    def receive(self, session: Session, message: ClientMessage) -> int:
        """Hand a validated client message to its session's room."""
        room = self._rooms[session.org_id]
        return room.receive(session, message)

    def notify(self, notification: Notification) -> int:
        """Deliver a backend notification; an org with no room delivers to nobody.

        A ban still takes effect for an org with no live connection.
        """
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
                org_bans[action.user_id] = self._now()

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
