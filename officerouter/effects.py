"""Side-effects: what a message type does to the room before it is routed.

An effect sees a read-only view of the room and the validated notification, and
returns actions that the room carries out.  It touches no transport, reactor or
file, so it is tested with a plain fake view.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import attrs

from officerouter import codes
from officerouter.messages import (
    Notification,
    UserBanned,
    UserDisconnected,
    UserUpdated,
)


class RoomView(Protocol):
    """What an effect may read of a room."""

    @property
    def org_id(self) -> str:
        """The org this room serves."""
        ...

    def user_ids(self) -> frozenset[str]:
        """The users with at least one live connection."""
        ...

    def role_of(self, user_id: str) -> str | None:
        """A connected user's current role, or ``None`` when not connected."""
        ...


@attrs.frozen
class SetRole:
    """Give every live session of a user a new role, before routing."""

    user_id: str
    role: str


@attrs.frozen
class CloseUser:
    """After delivery, close every connection of a user with a code and reason.

    ``ban`` also refuses the user's tokens issued before now (see docs).
    """

    user_id: str
    code: int
    reason: str
    ban: bool = False


Action = SetRole | CloseUser


class Effect(Protocol):
    """A side-effect handler registered for a message type."""

    def __call__(self, room: RoomView, message: Notification) -> Sequence[Action]:
        """Return the actions the room must carry out for this message."""
        ...


def user_updated(room: RoomView, message: Notification) -> Sequence[Action]:
    """The user's live sessions in the org take the new role from now on."""
    payload = message.payload
    assert isinstance(payload, UserUpdated)
    return [SetRole(payload.userId, payload.role)]


def user_banned(room: RoomView, message: Notification) -> Sequence[Action]:
    """After delivery, the user's connections in the org close with 4003."""
    payload = message.payload
    assert isinstance(payload, UserBanned)
    return [
        CloseUser(payload.userId, codes.CLOSE_BANNED, codes.REASON_BANNED, ban=True)
    ]


def user_disconnected(room: RoomView, message: Notification) -> Sequence[Action]:
    """After delivery, the user's connections in the org close with 4004 (no ban)."""
    payload = message.payload
    assert isinstance(payload, UserDisconnected)
    return [
        CloseUser(payload.userId, codes.CLOSE_DISCONNECTED, codes.REASON_DISCONNECTED)
    ]
