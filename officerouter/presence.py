"""Who is online in an org: admitted users, their roles and last positions.  Sans-IO.

A user is present from their first admitted connection until their last one has
been gone for the grace period, so a page reload or a network blip shows nothing
to the others.  The room owns the connections and says what happened; this
tracker keeps the state and the grace timers, and calls back when a user's grace
runs out.  Pending guests are never tracked.  :class:`HeldRoles` keeps the roles
the backend set for users while they have no connection, whatever their role.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import attrs

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from officerouter.backplane import RemoteEntry
from officerouter.codec import encode_fragment
from officerouter.messages import ADMITTED_ROLES, PositionUpdate, PresenceUser


@attrs.define(eq=False)
class PresentUser:
    """One online user; ``grace`` runs while they have no connection."""

    user_id: str
    role: str
    position: PositionUpdate | None = None
    grace: IDelayedCall | None = attrs.field(default=None, repr=False)

    def describe(self, connections: int) -> PresenceUser:
        """This user as the wire shows them."""
        return PresenceUser(
            userId=self.user_id,
            role=self.role,
            connections=connections,
            position=self.position,
        )

    def describe_json(self, connections: int) -> bytes:
        """:meth:`describe`, encoded as one entry of a ``presence`` snapshot.

        The room keeps these entries and re-encodes a user's only after it
        changed (``OrgRoom._snapshot``).
        """
        return encode_fragment(self.describe(connections))


class RemotePresence:
    """Who is online in an org on the cluster's other processes.

    Each process owns its entries (:class:`~officerouter.backplane.RemoteEntry`:
    connections, role, position) and tells the others of every change; this
    keeps them per user and node.  A user is online elsewhere while some node
    lists them with an admitted role (an entry with no connection is a user
    within that node's grace period).
    """

    def __init__(self) -> None:
        # user -> node -> entry; per user, the node updated last is last.
        self._users: dict[str, dict[str, RemoteEntry]] = {}

    def set(self, node: str, user_id: str, entry: RemoteEntry | None) -> None:
        """Another process's entry for a user (``None``: removed)."""
        nodes = self._users.get(user_id)
        if entry is None:
            if nodes is not None:
                nodes.pop(node, None)
                if not nodes:
                    del self._users[user_id]
            return
        if nodes is None:
            nodes = self._users[user_id] = {}
        nodes.pop(node, None)
        nodes[node] = entry

    def move(self, node: str, user_id: str, position: PositionUpdate) -> bool:
        """Another process's user moved; returns whether the user is known."""
        nodes = self._users.get(user_id)
        entry = nodes.get(node) if nodes is not None else None
        if nodes is None or entry is None:
            return False
        del nodes[node]
        nodes[node] = attrs.evolve(entry, position=position)
        return True

    def users_of(self, node: str) -> list[str]:
        """The users a node has an entry for."""
        return [user for user, nodes in self._users.items() if node in nodes]

    def online(self, user_id: str) -> bool:
        """Whether some other process lists the user with an admitted role."""
        nodes = self._users.get(user_id)
        if not nodes:
            return False
        return any(entry.role in ADMITTED_ROLES for entry in nodes.values())

    def role(self, user_id: str) -> str | None:
        """The user's role as the other processes see it (the latest update)."""
        nodes = self._users.get(user_id)
        if not nodes:
            return None
        admitted = [e.role for e in nodes.values() if e.role in ADMITTED_ROLES]
        return admitted[-1] if admitted else next(reversed(nodes.values())).role

    def connections(self, user_id: str) -> int:
        """The user's connections on the other processes."""
        return sum(e.connections for e in self._users.get(user_id, {}).values())

    def position(self, user_id: str) -> PositionUpdate | None:
        """The user's last known position on the other processes."""
        for entry in reversed(self._users.get(user_id, {}).values()):
            if entry.position is not None:
                return entry.position
        return None

    def __iter__(self) -> Iterator[str]:
        """The users online elsewhere, in the order they became known."""
        return iter([user for user in self._users if self.online(user)])

    def clear(self) -> None:
        """Forget everything (the room is dropped)."""
        self._users.clear()


class PresenceTracker:
    """The online users of one org.

    :param clock: schedules the grace periods.
    :param grace: seconds a user stays online after their last connection left.
    :param on_gone: called with a user id when their grace runs out.
    """

    def __init__(
        self, clock: IReactorTime, grace: float, on_gone: Callable[[str], None]
    ) -> None:
        self._clock = clock
        self._grace = grace
        self._on_gone = on_gone
        self._users: dict[str, PresentUser] = {}

    def __len__(self) -> int:
        return len(self._users)

    def __iter__(self) -> Iterator[PresentUser]:
        return iter(list(self._users.values()))

    def get(self, user_id: str) -> PresentUser | None:
        """The user if online (connected or within grace)."""
        return self._users.get(user_id)

    def arrive(self, user_id: str, role: str) -> bool:
        """An admitted connection of the user arrived.

        :returns: whether the user just came online (the others are told).
        """
        user = self._users.get(user_id)
        if user is not None:
            if user.grace is not None:
                if user.grace.active():
                    user.grace.cancel()
                user.grace = None
            return False
        self._users[user_id] = PresentUser(user_id, role)
        return True

    def depart(self, user_id: str) -> bool:
        """The user's last connection left: start the grace period.

        :returns: whether the user went offline at once (no grace period).
        """
        user = self._users.get(user_id)
        if user is None:
            return False
        if self._grace <= 0:
            del self._users[user_id]
            return True
        if user.grace is None:
            user.grace = self._clock.callLater(self._grace, self._expire, user_id)
        return False

    def _expire(self, user_id: str) -> None:
        user = self._users.get(user_id)
        if user is None:
            return
        user.grace = None
        del self._users[user_id]
        self._on_gone(user_id)

    def remove(self, user_id: str) -> bool:
        """Take the user offline now (demoted, banned).

        :returns: whether they were online.
        """
        user = self._users.pop(user_id, None)
        if user is None:
            return False
        if user.grace is not None and user.grace.active():
            user.grace.cancel()
        return True

    def move(self, user_id: str, position: PositionUpdate) -> None:
        """Remember the user's last position."""
        user = self._users.get(user_id)
        if user is not None:
            user.position = position

    def dispose(self) -> None:
        """Cancel every grace timer (the room is being dropped)."""
        for user in self._users.values():
            if user.grace is not None and user.grace.active():
                user.grace.cancel()
            user.grace = None
        self._users.clear()


class HeldRoles:
    """Roles the backend set for users who have no connection, kept for a while.

    A ``user_updated`` must outlive the connections it found: a member demoted
    while away (or demoted, then gone) must not come back a member with a token
    issued before the demotion, nor be replayed the broadcasts sent since; a
    pending guest let in while away comes back admitted.  Each role is kept
    ``ttl`` seconds from when it was set or its user's last connection left,
    whichever is later: with ``ttl`` the history window, a connection that could
    be replayed a message sent after the change always takes it.  Expired roles
    are dropped as new ones arrive, oldest first: no timer.

    :param now: the current time.
    :param ttl: how long a role is held (0: never).
    """

    def __init__(self, now: Callable[[], float], ttl: float) -> None:
        self._now = now
        self._ttl = ttl
        # user id -> (role, since when); in the order they were (re)held, which
        # is also the order in which they expire.
        self._roles: dict[str, tuple[str, float]] = {}

    def __len__(self) -> int:
        return len(self._roles)

    def hold(self, user_id: str, role: str) -> None:
        """Hold ``role`` for the user from now on."""
        if self._ttl <= 0:
            return
        now = self._now()
        self._roles.pop(user_id, None)
        self._roles[user_id] = (role, now)
        self._prune(now)

    def get(self, user_id: str) -> str | None:
        """The role held for the user, or ``None``."""
        held = self._roles.get(user_id)
        if held is None:
            return None
        if held[1] + self._ttl <= self._now():
            del self._roles[user_id]
            return None
        return held[0]

    def forget(self, user_id: str) -> None:
        """Stop holding the user's role (they connected, or were banned)."""
        self._roles.pop(user_id, None)

    def clear(self) -> None:
        """Forget every role (the room is being dropped)."""
        self._roles.clear()

    def _prune(self, now: float) -> None:
        roles = self._roles
        cutoff = now - self._ttl
        while roles:
            user_id, (_, since) = next(iter(roles.items()))
            if since > cutoff:
                return
            del roles[user_id]
