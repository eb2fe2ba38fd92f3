"""Fakes for the sans-IO core: a connection that records, identities, a registry."""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from typing import Any, Final

import attrs

from twisted.internet.task import Clock

from officerouter.auth import Identity
from officerouter.catalog import BUILTIN, MessageSpec
from officerouter.codec import Burst, Encoded
from officerouter.messages import Notification, UserBanned, UserUpdated
from officerouter.registry import OrgRegistry

#: Frames the presence feature adds around routed traffic.  Routing tests look
#: past them; the presence tests own them.
PRESENCE_TYPES: Final = frozenset(
    {"presence", "user_joined", "user_left", "user_role_changed"}
)


@attrs.define(eq=False)
class FakeConnection:
    """A :class:`officerouter.rooms.Connection` that records what the room does.

    ``events`` keeps sends and closes in the order they happened.
    """

    events: list[tuple[str, Any]] = attrs.Factory(list)

    def send(self, message: Encoded) -> None:
        self.events.append(("send", message))

    def send_burst(self, burst: Burst) -> None:
        for message in burst.messages:
            self.send(message)

    def close(self, code: int, reason: str) -> None:
        self.events.append(("close", (code, reason)))

    @property
    def encoded(self) -> list[Encoded]:
        """Every message sent, as the room handed it over."""
        return [m for kind, m in self.events if kind == "send"]

    @property
    def closes(self) -> list[tuple[int, str]]:
        """Every close, as ``(code, reason)``."""
        return [c for kind, c in self.events if kind == "close"]

    @property
    def frames(self) -> list[dict[str, Any]]:
        """Every frame sent, decoded."""
        return [json.loads(m.data) for m in self.encoded]

    @property
    def welcome(self) -> dict[str, Any]:
        """The ``connected`` frame, which must be the first one."""
        first = self.frames[0]
        assert first["type"] == "connected"
        return first

    def routed(self) -> list[dict[str, Any]]:
        """The routed frames after ``connected``, presence left out.

        The stream number (``seq``, owned by the history feature) is dropped so
        that frames compare as ``{"type", "from"?, "payload"}``.
        """
        frames = self.frames
        assert frames[0]["type"] == "connected"
        return [
            {k: v for k, v in frame.items() if k != "seq"}
            for frame in frames[1:]
            if frame["type"] not in PRESENCE_TYPES
        ]

    def routed_types(self) -> list[str]:
        """The types of :meth:`routed`."""
        return [frame["type"] for frame in self.routed()]

    def routed_encoded(self) -> list[Encoded]:
        """The routed messages as handed over (for identity checks)."""
        return [
            m
            for m in self.encoded[1:]
            if json.loads(m.data)["type"] not in PRESENCE_TYPES
        ]


def role_change(user: str, role: str, routing: str = "broadcast") -> Notification:
    """A user_updated notification."""
    return Notification(
        org_id="org-a",
        routing=routing,  # type: ignore[arg-type]
        type="user_updated",
        payload=UserUpdated(userId=user, role=role),
        targets=(user,) if routing == "direct" else (),
    )


def ban(user: str, org: str = "org-a", routing: str = "direct") -> Notification:
    """A user_banned notification, addressed to the user unless ``routing`` says broadcast."""
    return Notification(
        org_id=org,
        routing=routing,  # type: ignore[arg-type]
        type="user_banned",
        payload=UserBanned(userId=user, reason="spam"),
        targets=(user,) if routing == "direct" else (),
    )


def identity(
    user: str = "user-1",
    org: str = "org-a",
    role: str = "member",
    issued_at: float | None = 0.0,
) -> Identity:
    """A verified identity, as :class:`officerouter.auth.TokenVerifier` returns."""
    return Identity(
        user_id=user, org_id=org, role=role, issued_at=issued_at, expires_at=1e12
    )


def make_registry(
    clock: Clock | None = None,
    catalog: Mapping[str, MessageSpec] = BUILTIN,
    **kwargs: Any,
) -> OrgRegistry:
    """A registry on a fake clock, with connection ids c1, c2, ..."""
    ids = itertools.count(1)
    return OrgRegistry(
        catalog,
        clock=clock if clock is not None else Clock(),
        new_id=lambda: f"c{next(ids)}",
        **kwargs,
    )
