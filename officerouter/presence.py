"""Who is online in an org: admitted users, their roles and last positions.  Sans-IO.

A user is present from their first admitted connection until their last one has
been gone for the grace period, so a page reload or a network blip shows nothing
to the others.  The room owns the connections and says what happened; this
tracker keeps the state and the grace timers, and calls back when a user's grace
runs out.  Pending guests are never tracked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import attrs

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from officerouter.codec import encode_fragment
from officerouter.messages import PositionUpdate, PresenceUser


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
