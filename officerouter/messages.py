"""The message contract as attrs classes: envelopes, one payload class per type.

Attribute names are the wire names (``orgId``, ``roomId``), so the converter in
:mod:`officerouter.codec` needs no renaming.  Every limit of docs/protocol.md is a
validator here.
"""

from __future__ import annotations

from typing import Any, Final, Literal

import attrs

from officerouter.codes import ERROR_CODES

ROLES: Final = ("owner", "admin", "member", "guest", "pending_guest")
Role = Literal["owner", "admin", "member", "guest", "pending_guest"]
ADMITTED_ROLES: Final = frozenset({"owner", "admin", "member", "guest"})
KNOCK_RECEIVER_ROLES: Final = frozenset({"owner", "admin"})
Routing = Literal["broadcast", "direct"]
#: Says "one of the roles" to the schema, for fields the router writes itself.
_ROLE_FIELD: Final = {"json_schema": {"enum": list(ROLES)}}

MAX_ID_LENGTH: Final = 128
MAX_NAME_LENGTH: Final = 200
MAX_REASON_LENGTH: Final = 1000
MAX_TARGETS: Final = 1000
MAX_COORDINATE: Final = 1e9
#: The longest token accepted, at the handshake or in ``refresh_token``.
MAX_TOKEN_BYTES: Final = 8192


#: The most notifications one ``POST /internal/notify`` may carry as an array.
MAX_BATCH: Final = 100

#: White space as ``str.strip`` and ``str.isspace`` know it, as a regular
#: expression character class that means the same in ECMA-262 and Python.
_WHITE_SPACE: Final = (
    "\\t-\\r\\x1c- \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000"
)
#: A string that is not only white space (what "not blank" means).
NOT_BLANK_PATTERN: Final = f"[^{_WHITE_SPACE}]"


# Validators are small frozen classes rather than closures, so that
# officerouter.schema can read their limits: each says what it checks, once, as
# JSON Schema (``json_schema``), and checks it (``__call__``).


@attrs.frozen
class Text:
    """A string of at most ``max_length`` code points, not blank unless allowed."""

    max_length: int
    allow_empty: bool = False

    def __call__(self, _: Any, attribute: attrs.Attribute[Any], value: str) -> None:
        if not self.allow_empty and not value.strip():
            raise ValueError(f"{attribute.name} must not be empty")
        if len(value) > self.max_length:
            raise ValueError(
                f"{attribute.name} is longer than {self.max_length} characters"
            )

    def json_schema(self) -> dict[str, Any]:
        """The same rule as JSON Schema."""
        if self.allow_empty:
            return {"maxLength": self.max_length}
        return {
            "minLength": 1,
            "maxLength": self.max_length,
            "pattern": NOT_BLANK_PATTERN,
        }


@attrs.frozen
class Bounded:
    """A finite number within ``±limit`` (``text``: the limit as the reason says it)."""

    limit: float
    text: str

    def __call__(self, _: Any, attribute: attrs.Attribute[Any], value: float) -> None:
        # One comparison rejects NaN, infinities and integers too large for a
        # float (math.isfinite raises OverflowError on those).
        if not abs(value) <= self.limit:
            raise ValueError(
                f"{attribute.name} must be a finite number within ±{self.text}"
            )

    def json_schema(self) -> dict[str, Any]:
        """The same rule as JSON Schema."""
        return {"minimum": -self.limit, "maximum": self.limit}


@attrs.frozen
class OneOf:
    """One of a few strings."""

    values: tuple[str, ...]

    def __call__(self, _: Any, attribute: attrs.Attribute[Any], value: str) -> None:
        if value not in self.values:
            raise ValueError(
                f"{attribute.name} must be one of {', '.join(self.values)}"
            )

    def json_schema(self) -> dict[str, Any]:
        """The same rule as JSON Schema."""
        return {"enum": list(self.values)}


def _text(max_length: int, *, allow_empty: bool = False) -> Any:
    return Text(max_length, allow_empty)


def _optional_text(max_length: int) -> Any:
    return attrs.validators.optional(_text(max_length))


_coordinate = Bounded(MAX_COORDINATE, "1e9")
_role = OneOf(ROLES)


Id = str
_id = _text(MAX_ID_LENGTH)


# ---------------------------------------------------------------- envelopes


@attrs.frozen(kw_only=True)
class ClientEnvelope:
    """A frame a client sends: ``{"type", "payload"}`` and nothing else."""

    type: str = attrs.field(validator=_text(64))
    payload: dict[str, Any]


@attrs.frozen(kw_only=True)
class NotifyEnvelope:
    """The body of ``POST /internal/notify`` before its payload is structured."""

    orgId: Id = attrs.field(validator=_id)
    routing: Routing
    type: str = attrs.field(validator=_text(64))
    payload: dict[str, Any]
    targets: list[Id] | None = None


# ---------------------------------------------------------------- payloads


@attrs.frozen(kw_only=True)
class RoomUpdated:
    """A room was renamed or changed."""

    roomId: Id = attrs.field(validator=_id)
    name: str = attrs.field(validator=_text(MAX_NAME_LENGTH))


@attrs.frozen(kw_only=True)
class SpaceDeleted:
    """A space was deleted."""

    spaceId: Id = attrs.field(validator=_id)
    name: str = attrs.field(validator=_text(MAX_NAME_LENGTH))


@attrs.frozen(kw_only=True)
class UserUpdated:
    """A user's role changed; their live sessions take the new role."""

    userId: Id = attrs.field(validator=_id)
    role: str = attrs.field(validator=_role)


@attrs.frozen(kw_only=True)
class UserBanned:
    """A user was banned; their connections close with 4003 after delivery."""

    userId: Id = attrs.field(validator=_id)
    reason: str = attrs.field(validator=_text(MAX_REASON_LENGTH, allow_empty=True))


@attrs.frozen(kw_only=True)
class UserDisconnected:
    """An operator disconnected a user; their connections close with 4004 after
    delivery (no ban: they may reconnect)."""

    userId: Id = attrs.field(validator=_id)
    reason: str = attrs.field(validator=_text(MAX_REASON_LENGTH, allow_empty=True))


@attrs.frozen(kw_only=True)
class AdminTest:
    """A test notification, sent from the admin page (or by the backend)."""

    message: str = attrs.field(validator=_text(MAX_REASON_LENGTH))


@attrs.frozen(kw_only=True)
class GuestKnock:
    """A guest is waiting to be let in."""

    guestId: Id = attrs.field(validator=_id)
    name: str | None = attrs.field(
        default=None, validator=_optional_text(MAX_NAME_LENGTH)
    )


@attrs.frozen(kw_only=True)
class RefreshToken:
    """A client's fresh token for its connection; answered, never relayed."""

    token: str = attrs.field(validator=_text(MAX_TOKEN_BYTES))


@attrs.frozen(kw_only=True)
class PositionUpdate:
    """An avatar moved."""

    x: float = attrs.field(validator=_coordinate)
    y: float = attrs.field(validator=_coordinate)
    roomId: Id | None = attrs.field(
        default=None, validator=_optional_text(MAX_ID_LENGTH)
    )


# ---------------------------------------------------------------- validated messages


@attrs.frozen(kw_only=True)
class Notification:
    """A backend notification that passed the contract."""

    org_id: str
    routing: Routing
    type: str
    payload: Any
    targets: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class ClientMessage:
    """A client frame that passed the contract."""

    type: str
    payload: Any


@attrs.frozen(kw_only=True)
class TokenRefreshed:
    """The payload of ``token_refreshed``: the connection now lasts until ``expiresAt``.

    ``expiresAt`` is the new token's ``exp`` in whole seconds since the epoch.
    """

    expiresAt: int


@attrs.frozen(kw_only=True)
class ErrorPayload:
    """The payload of an ``error`` frame sent to one client."""

    code: str = attrs.field(metadata={"json_schema": {"enum": list(ERROR_CODES)}})
    message: str


@attrs.frozen(kw_only=True)
class Connected:
    """The payload of the first frame a new connection receives.

    ``epoch`` and ``seq`` are the org's stream position the live stream continues
    from; ``recovered`` is present only when the client asked with ``?since=``.
    """

    connectionId: str
    userId: str
    orgId: str
    role: str = attrs.field(metadata=_ROLE_FIELD)
    epoch: str
    seq: int
    recovered: bool | None = None


# ---------------------------------------------------------------- presence


@attrs.frozen(kw_only=True)
class PresenceUser:
    """One online user: a ``presence`` snapshot entry, and the ``user_joined`` payload.

    ``connections`` is 0 while the user is within the reconnection grace period.
    """

    userId: str
    role: str = attrs.field(metadata=_ROLE_FIELD)
    connections: int
    position: PositionUpdate | None


@attrs.frozen(kw_only=True)
class UserPosition:
    """One user's latest position in a ``positions`` batch."""

    userId: str
    x: float
    y: float
    roomId: str | None = None


@attrs.frozen(kw_only=True)
class Positions:
    """The payload of ``positions``: every position update of one tick, latest per user."""

    positions: list[UserPosition]


@attrs.frozen(kw_only=True)
class Presence:
    """The payload of ``presence``: everyone else online, sent after ``connected``."""

    users: list[PresenceUser]


@attrs.frozen(kw_only=True)
class PresenceState:
    """The payload of ``presence_state`` (``?presence=diff``): everyone online,
    the connection's own user included, as user ids by role; and the last
    position of those who have one.  Empty fields are left out."""

    users: dict[str, list[str]] = attrs.Factory(dict)
    positions: dict[str, PositionUpdate] = attrs.Factory(dict)


@attrs.frozen(kw_only=True)
class PresenceDiff:
    """The payload of ``presence_diff``: one tick's changes to who is online.

    A client removes ``leaves`` first, then sets each user of ``joins`` to the
    role they are listed under (a join of a user already listed is a role
    change).  Empty fields are left out.
    """

    joins: dict[str, list[str]] = attrs.Factory(dict)
    leaves: list[str] = attrs.Factory(list)


@attrs.frozen(kw_only=True)
class UserLeft:
    """The payload of ``user_left``: a user is no longer online."""

    userId: str


@attrs.frozen(kw_only=True)
class UserRoleChanged:
    """The payload of ``user_role_changed``: an online user's role changed."""

    userId: str
    role: str = attrs.field(metadata=_ROLE_FIELD)


# ---------------------------------------------------------------- HTTP answers


@attrs.frozen(kw_only=True)
class FieldError:
    """One offending field of a refused request: its path and what is wrong."""

    path: str
    reason: str


@attrs.frozen(kw_only=True)
class ErrorAnswer:
    """The body of every HTTP error answer (4xx, 5xx)."""

    ok: Literal[False]
    error: str = attrs.field(metadata={"json_schema": {"enum": list(ERROR_CODES)}})
    message: str
    errors: list[FieldError] | None = None


@attrs.frozen(kw_only=True)
class NotifyAnswer:
    """The body of a ``200`` to one notification.

    ``seq`` is absent when nothing was numbered; ``targets`` is there for direct
    messages only: connections addressed per target user.
    """

    ok: Literal[True]
    delivered: int
    seq: int | None = None
    targets: dict[str, int] | None = None


@attrs.frozen(kw_only=True)
class NotifiedElement(NotifyAnswer):
    """One notification of a batch that was published (``status`` 200).

    ``replayed``: the answer of an earlier request with the same key.
    """

    status: Literal[200]
    replayed: bool | None = None


@attrs.frozen(kw_only=True)
class RefusedElement(ErrorAnswer):
    """One notification of a batch that was refused: the answer it would get
    alone, and the ``status`` it would get alone (400, 409, 500 or 503)."""

    status: int = attrs.field(metadata={"json_schema": {"enum": [400, 409, 500, 503]}})


@attrs.frozen(kw_only=True)
class BatchAnswer:
    """The body of a ``200`` to a batch: one answer per notification, in order.

    ``ok`` is true when every notification was published.
    """

    ok: bool
    results: list[NotifiedElement | RefusedElement]


@attrs.frozen(kw_only=True)
class PresenceAnswer:
    """The body of a ``200`` to ``GET /internal/presence``."""

    ok: Literal[True]
    orgId: str
    users: list[PresenceUser]


@attrs.frozen(kw_only=True)
class Health:
    """The body of ``GET /healthz`` (``node`` and ``backplane`` with Redis only;
    ``error`` and ``message`` while it answers 503)."""

    ok: bool
    connections: int
    rooms: int
    historyOnlyRooms: int
    node: str | None = None
    backplane: Literal["up", "down"] | None = None
    error: str | None = None
    message: str | None = None
