"""Objects that the catalog tests name through fake entry points.

As another package would ship them: a message type with its payload class, and
effect handlers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from officerouter import codes
from officerouter.catalog import BOTH, MessageSpec
from officerouter.effects import Action, CloseUser, RoomView
from officerouter.messages import Notification


@attrs.frozen(kw_only=True)
class Wave:
    """Someone waved at the org."""

    userId: str = attrs.field(validator=attrs.validators.min_len(1))
    emoji: str | None = None


WAVE = MessageSpec(payload=Wave, routings=BOTH)

#: What :func:`kick_on_room_update` saw, for the tests to inspect.
SEEN: list[tuple[frozenset[str], Notification]] = []


def kick_on_room_update(room: RoomView, message: Notification) -> Sequence[Action]:
    """An effect for room_updated: closes user "kicked" after delivery."""
    SEEN.append((room.user_ids(), message))
    return [CloseUser("kicked", codes.CLOSE_POLICY_VIOLATION, "room changed")]


NOT_A_SPEC = {"payload": Wave}
NOT_CALLABLE = 42


def __getattr__(name: str) -> Any:
    if name == "EXPLODES":
        raise RuntimeError("plug-in bug at load time")
    raise AttributeError(name)
