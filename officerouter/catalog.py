"""The message catalog: for each type, its payload class, who may send it, and its effect.

Adding a message type is one payload class in :mod:`officerouter.messages` and one
entry in :data:`BUILTIN`; docs/protocol.md says how.  Types and effects can also be
added from other packages through the entry-point groups ``officerouter.message_types``
and ``officerouter.effects`` (read once at start-up by :func:`build_catalog`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from importlib.metadata import EntryPoint, entry_points
from types import MappingProxyType
from typing import Final

import attrs

from officerouter import effects
from officerouter.config import ConfigError
from officerouter.effects import Effect
from officerouter.messages import (
    AdminTest,
    GuestKnock,
    PositionUpdate,
    RefreshToken,
    RoomUpdated,
    SpaceDeleted,
    UserBanned,
    UserDisconnected,
    UserUpdated,
)

BROADCAST: Final = "broadcast"
DIRECT: Final = "direct"
BOTH: Final = frozenset({BROADCAST, DIRECT})

TYPES_GROUP: Final = "officerouter.message_types"
EFFECTS_GROUP: Final = "officerouter.effects"


@attrs.frozen(kw_only=True)
class MessageSpec:
    """Everything the router knows about one message type.

    :ivar payload: the attrs class its payload is structured into.
    :ivar client_allowed: whether clients may send it (it is relayed to the org).
    :ivar routings: the routings the backend may use for it (empty: clients only).
    :ivar effect: the side-effect run before routing, if any.
    :ivar ephemeral: superseded by the next one of its kind from the same sender
        (positions): never numbered or kept in history, may be dropped for a slow
        client when a newer one is queued.
    """

    payload: type
    client_allowed: bool = False
    routings: frozenset[str] = frozenset()
    effect: Effect | None = None
    ephemeral: bool = False
    local: bool = False


BUILTIN: Final[Mapping[str, MessageSpec]] = MappingProxyType(
    {
        "room_updated": MessageSpec(payload=RoomUpdated, routings=BOTH),
        "space_deleted": MessageSpec(payload=SpaceDeleted, routings=BOTH),
        "user_updated": MessageSpec(
            payload=UserUpdated, routings=BOTH, effect=effects.user_updated
        ),
        "user_banned": MessageSpec(
            payload=UserBanned, routings=frozenset({DIRECT}), effect=effects.user_banned
        ),
        "user_disconnected": MessageSpec(
            payload=UserDisconnected,
            routings=frozenset({DIRECT}),
            effect=effects.user_disconnected,
        ),
        "admin_test": MessageSpec(payload=AdminTest, routings=BOTH),
        "guest_knock": MessageSpec(payload=GuestKnock, routings=frozenset({DIRECT})),
        "position_update": MessageSpec(
            payload=PositionUpdate, client_allowed=True, ephemeral=True
        ),
        "refresh_token": MessageSpec(
            payload=RefreshToken, client_allowed=True, local=True
        ),
    }
)

ALLOWED_CLIENT_MESSAGE_TYPES: Final = frozenset(
    name for name, spec in BUILTIN.items() if spec.client_allowed
)


def _load(entry: EntryPoint, group: str) -> object:
    try:
        return entry.load()
    except Exception as e:
        raise ConfigError(
            f"entry point {entry.name} in {group}",
            f"cannot be loaded ({e.__class__.__name__}: {e}); fix or uninstall {entry.value}",
        ) from None


def build_catalog(
    types: Iterable[EntryPoint] | None = None,
    effect_entries: Iterable[EntryPoint] | None = None,
) -> Mapping[str, MessageSpec]:
    """Return the built-in catalog extended by the installed entry points.

    :param types: entry points whose object is a :class:`MessageSpec`, named by type
        (default: the installed ``officerouter.message_types`` group).
    :param effect_entries: entry points whose object is an :class:`Effect`, named by
        the type they handle (default: the installed ``officerouter.effects`` group).
    :raises ConfigError: naming the entry point that clashes or fails to load.
    """
    if types is None:
        types = entry_points(group=TYPES_GROUP)
    if effect_entries is None:
        effect_entries = entry_points(group=EFFECTS_GROUP)
    catalog = dict(BUILTIN)
    for entry in types:
        spec = _load(entry, TYPES_GROUP)
        if not isinstance(spec, MessageSpec):
            raise ConfigError(
                f"entry point {entry.name} in {TYPES_GROUP}",
                "must name a officerouter.catalog.MessageSpec",
            )
        if entry.name in catalog:
            raise ConfigError(
                f"entry point {entry.name} in {TYPES_GROUP}",
                "clashes with an existing message type; rename it",
            )
        catalog[entry.name] = spec
    for entry in effect_entries:
        effect = _load(entry, EFFECTS_GROUP)
        spec = catalog.get(entry.name)
        if spec is None:
            raise ConfigError(
                f"entry point {entry.name} in {EFFECTS_GROUP}",
                "names no known message type",
            )
        if spec.effect is not None:
            raise ConfigError(
                f"entry point {entry.name} in {EFFECTS_GROUP}",
                "clashes with the type's built-in effect; remove one of them",
            )
        if not callable(effect):
            raise ConfigError(
                f"entry point {entry.name} in {EFFECTS_GROUP}", "must name a callable"
            )
        catalog[entry.name] = attrs.evolve(spec, effect=effect)
    return MappingProxyType(catalog)
