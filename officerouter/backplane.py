"""The backplane seam: what several processes must share, behind one small interface.

A room delivers to its own connections and never learns which backplane is
behind it.  The backplane numbers an org's messages and hands them back to the
room in order (:meth:`Backplane.publish` then :meth:`OrgFeed.deliver`), tells a
room about the presence of users on other processes, and carries each
process's position updates to the others, batched per tick.

Two implementations, chosen once in ``tap.py``:

- :class:`LocalBackplane` (this module): one process, nothing shared.  The room's
  own :class:`~officerouter.history.Stream` numbers, and delivery happens in the
  same call; the daemon behaves exactly as it did before clusters existed.
- :class:`~officerouter.redis_backplane.RedisBackplane`: every process that points
  at the same Redis serves the same orgs.  docs/cluster.md describes it.

Sans-IO: no reactor, no sockets here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol as TypingProtocol

import attrs

from twisted.internet import defer

from officerouter.effects import Action
from officerouter.messages import ADMITTED_ROLES, PositionUpdate, PresenceUser


class BackplaneUnavailable(Exception):
    """The backplane cannot take work now: nothing was numbered or stored."""


@attrs.frozen
class Outgoing:
    """A message ready to be numbered: its frame split where ``seq`` goes.

    The frame is ``head + str(seq) + tail``, so that whoever assigns the number
    (the room's stream, or a Lua script in Redis) writes it in without encoding
    the message again.

    :ivar targets: the users of a direct message, ``None`` for a broadcast.
    :ivar actions: what the type's effect decided, carried out by every process
        before it routes the message.
    :ivar exclude: the connection that must not get its own relayed message.
    """

    type: str
    head: bytes
    tail: bytes
    targets: tuple[str, ...] | None = None
    sender: str | None = None
    actions: tuple[Action, ...] = ()
    exclude: str | None = None

    def frame(self, seq: int) -> bytes:
        """The frame with its number written in."""
        return b"".join((self.head, str(seq).encode("ascii"), self.tail))


@attrs.frozen
class Numbered:
    """A message as its org's stream numbered it: what every process delivers."""

    epoch: str
    seq: int
    at: float
    type: str
    data: bytes
    targets: tuple[str, ...] | None = None
    sender: str | None = None
    actions: tuple[Action, ...] = ()
    exclude: str | None = None


@attrs.frozen
class Published:
    """The answer to a publish: the number given and the connections addressed.

    :ivar seq: ``None`` when nothing was numbered (an org without a room on a
        single process).
    :ivar delivered: connections the message was addressed to (docs/protocol.md).
    :ivar per_target: for a direct message, that count per target user.
    """

    seq: int | None
    delivered: int
    per_target: tuple[int, ...] = ()
    #: The answer of an earlier publish with the same idempotency key: nothing
    #: was numbered or delivered again.
    replayed: bool = False


@attrs.frozen
class Once:
    """A publish that must happen at most once: the backend's ``Idempotency-Key``.

    :ivar key: the key, as the backend sent it.
    :ivar fingerprint: what the request said (a hash of its body): the same key
        with another body is a conflict, not a retry.
    :ivar seconds: how long the key is remembered.
    """

    key: str
    fingerprint: str
    seconds: float


class IdempotencyConflict(Exception):
    """An idempotency key reused for another request; nothing was published."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


@attrs.frozen
class RemoteEntry:
    """One user's presence on another process of the cluster."""

    connections: int
    role: str
    position: PositionUpdate | None = None


@attrs.frozen
class StreamState:
    """An org's stream as the backplane has it when a process starts serving it.

    :ivar records: the newest numbered messages, oldest first (the window).
    """

    epoch: str
    seq: int
    records: Sequence[Numbered] = ()
    #: Banned users and when (shared ban memory).
    bans: Mapping[str, float] = attrs.Factory(dict)
    #: Roles the backend set for users (held for their next connection).
    roles: Mapping[str, str] = attrs.Factory(dict)


class OrgFeed(TypingProtocol):
    """What a backplane may call on a room (implemented by ``OrgRoom``)."""

    org_id: str

    def number(self, message: Outgoing) -> Numbered:
        """Number a message with the room's own stream (one process only)."""
        ...

    def connection_count_of(self, user_id: str) -> int:
        """How many connections a user has on this process."""
        ...

    def deliver(self, message: Numbered) -> int:
        """Carry out the message's actions and route it to this process's
        connections; returns how many it was written to."""
        ...

    def restart_stream(self, state: StreamState) -> None:
        """Continuity is lost (a new epoch, or a gap that cannot be filled):
        continue from ``state``; connections must reconnect and recover."""
        ...

    def remote_presence(
        self, node: str, user_id: str, entry: RemoteEntry | None
    ) -> None:
        """Another process's presence entry for a user changed (``None``: gone)."""
        ...

    def remote_positions(
        self, node: str, positions: Sequence[tuple[str, PositionUpdate]]
    ) -> None:
        """Another process's tick of position updates."""
        ...

    def node_gone(self, node: str) -> None:
        """Another process is gone: forget every entry it had."""
        ...


class Backplane(TypingProtocol):
    """Numbering, history, presence and bans shared between processes."""

    #: This process's name in logs, presence and /healthz.
    node_id: str

    #: Whether rooms must publish their presence and positions (several
    #: processes) or may keep them to themselves (one process).
    shared: bool

    def unavailable(self) -> str | None:
        """Why the backplane cannot take work now, or ``None`` when it can."""
        ...

    def watch(self, callback: Callable[[bool], None]) -> None:
        """Call ``callback(available)`` whenever the backplane goes or comes back."""
        ...

    def attach(self, room: OrgFeed) -> defer.Deferred[StreamState | None]:
        """Start serving an org on this process.

        Fires with the org's stream, bans, held roles and the presence of other
        processes already handed to the room, or ``None`` when the room numbers
        by itself (one process).
        """
        ...

    def detach(self, org_id: str) -> None:
        """Stop serving an org on this process (its room is dropped)."""
        ...

    def publish(
        self, org_id: str, message: Outgoing, once: Once | None = None
    ) -> defer.Deferred[Published]:
        """Number, keep and publish a message of an org; fires once it is stored.

        Delivery to every process's connections, this one's included, comes back
        through :meth:`OrgFeed.deliver`, in ``seq`` order.  With ``once``, a key
        seen within its window answers what it answered then (``replayed``) and
        publishes nothing; with another fingerprint it fails with
        :class:`IdempotencyConflict`.
        """
        ...

    def presence_changed(
        self, org_id: str, user_id: str, entry: RemoteEntry | None
    ) -> None:
        """This process's presence entry for a user changed (``None``: gone)."""
        ...

    def read_presence(self, org_id: str) -> defer.Deferred[list[PresenceUser]]:
        """Who is online in an org this process does not serve."""
        ...

    def positions(
        self,
        org_id: str,
        moves: Sequence[tuple[str, PositionUpdate]],
        entries: Sequence[tuple[str, RemoteEntry]],
    ) -> None:
        """This process's tick of position updates in an org, and the users'
        entries as they now are."""
        ...


class LocalBackplane:
    """One process: nothing is shared; each room numbers with its own stream and
    delivers before :meth:`publish` returns (the Deferred has fired)."""

    shared = False

    def __init__(self, node_id: str, now: Callable[[], float] = lambda: 0.0) -> None:
        self.node_id = node_id
        self._now = now
        self._rooms: dict[str, OrgFeed] = {}
        # Idempotency keys: key -> (fingerprint, answer, until), oldest first.
        self._once: dict[str, tuple[str, Published, float]] = {}

    def unavailable(self) -> str | None:
        return None

    def watch(self, callback: Callable[[bool], None]) -> None:
        pass

    def attach(self, room: OrgFeed) -> defer.Deferred[StreamState | None]:
        self._rooms[room.org_id] = room
        return defer.succeed(None)

    def detach(self, org_id: str) -> None:
        self._rooms.pop(org_id, None)

    def publish(
        self, org_id: str, message: Outgoing, once: Once | None = None
    ) -> defer.Deferred[Published]:
        """Number and deliver at once; an org without a room keeps nothing."""
        if once is not None:
            earlier = self._remembered(once)
            if earlier is not None:
                return earlier
        room = self._rooms.get(org_id)
        targets = message.targets or ()
        if room is None:
            published = Published(
                seq=None, delivered=0, per_target=tuple(0 for _ in targets)
            )
        else:
            per_target = tuple(room.connection_count_of(user) for user in targets)
            numbered = room.number(message)
            published = Published(
                seq=numbered.seq,
                delivered=room.deliver(numbered),
                per_target=per_target,
            )
        if once is not None:
            self._once[once.key] = (
                once.fingerprint,
                published,
                self._now() + once.seconds,
            )
        return defer.succeed(published)

    def _remembered(self, once: Once) -> defer.Deferred[Published] | None:
        now = self._now()
        while self._once:
            oldest = next(iter(self._once))
            if self._once[oldest][2] > now:
                break
            del self._once[oldest]
        earlier = self._once.get(once.key)
        if earlier is None:
            return None
        fingerprint, published, _ = earlier
        if fingerprint != once.fingerprint:
            return defer.fail(IdempotencyConflict(once.key))
        return defer.succeed(attrs.evolve(published, replayed=True))

    def presence_changed(
        self, org_id: str, user_id: str, entry: RemoteEntry | None
    ) -> None:
        pass

    def read_presence(self, org_id: str) -> defer.Deferred[list[PresenceUser]]:
        return defer.succeed([])

    def positions(
        self,
        org_id: str,
        moves: Sequence[tuple[str, PositionUpdate]],
        entries: Sequence[tuple[str, RemoteEntry]],
    ) -> None:
        pass


def merge_entries(
    entries: Sequence[tuple[str, RemoteEntry]],
) -> list[PresenceUser]:
    """Presence as the wire shows it, from every process's entries (user, entry)
    in the order they were written: one user entry per admitted user."""
    users: dict[str, list[RemoteEntry]] = {}
    for user_id, entry in entries:
        users.setdefault(user_id, []).append(entry)
    merged = []
    for user_id, found in users.items():
        admitted = [e for e in found if e.role in ADMITTED_ROLES]
        if not admitted:
            continue
        positions = [e.position for e in found if e.position is not None]
        merged.append(
            PresenceUser(
                userId=user_id,
                role=admitted[-1].role,
                connections=sum(e.connections for e in found),
                position=positions[-1] if positions else None,
            )
        )
    return merged
