"""Fakes for the sans-IO core: a connection that records, identities, a registry,
and a backplane that the test drives in place of the cluster's other processes."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, TypeVar

import attrs

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from officerouter.auth import Identity
from officerouter.backplane import (
    Numbered,
    Once,
    OrgFeed,
    Outgoing,
    Published,
    RemoteEntry,
    StreamState,
)
from officerouter.catalog import BUILTIN, MessageSpec
from officerouter.codec import Burst, Encoded
from officerouter.messages import (
    Notification,
    PositionUpdate,
    PresenceUser,
    UserBanned,
    UserUpdated,
)
from officerouter.registry import OrgRegistry

T = TypeVar("T")

#: Frames the presence feature adds around routed traffic.  Routing tests look
#: past them; the presence tests own them.
PRESENCE_TYPES: Final = frozenset(
    {
        "presence",
        "user_joined",
        "user_left",
        "user_role_changed",
        "presence_state",
        "presence_diff",
    }
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


def result_of(d: defer.Deferred[T]) -> T:
    """The result of a Deferred that has already fired (trial's ``successResultOf``)."""
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    if isinstance(results[0], Failure):
        raise AssertionError(f"the Deferred failed: {results[0]}")
    return results[0]  # type: ignore[no-any-return]


def failure_of(d: defer.Deferred[Any]) -> Failure:
    """The failure of a Deferred that has already failed (trial's ``failureResultOf``)."""
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    assert isinstance(results[0], Failure), f"the Deferred succeeded: {results[0]!r}"
    return results[0]


class FakeBackplane:
    """A shared :class:`officerouter.backplane.Backplane` driven by the test, which
    plays the cluster's other processes.

    :meth:`publish` numbers with a counter per org (continuing from the state an
    org was attached with) and answers at once, but holds the numbered message
    until the test calls :meth:`deliver`; :meth:`from_elsewhere` numbers a
    message as another process would.  ``presence_changed``, ``positions``,
    ``publish``, ``read_presence`` and ``detach`` are recorded.

    :param clock: the time written into numbered messages.
    """

    shared = True

    def __init__(self, clock: Clock, node_id: str = "node-a") -> None:
        self.node_id = node_id
        self._clock = clock
        #: Why the backplane cannot take work, or ``None`` (see :meth:`set_up`).
        self.down: str | None = None
        #: Leave attaches pending until :meth:`finish_attach`/:meth:`fail_attach`.
        self.hold_attach = False
        #: When set, :meth:`publish` fails with it (nothing is numbered).
        self.refuse: Exception | None = None
        #: The state an org is attached with (default: epoch ``shared``, seq 0).
        self.states: dict[str, StreamState] = {}
        #: What :meth:`read_presence` answers, per org.
        self.remote_users: dict[str, list[PresenceUser]] = {}
        self.rooms: dict[str, OrgFeed] = {}
        self.attaching: dict[
            str, tuple[OrgFeed, defer.Deferred[StreamState | None]]
        ] = {}
        self.detached: list[str] = []
        self.seqs: dict[str, int] = {}
        self.epochs: dict[str, str] = {}
        #: What this process published: (org, message).
        self.published: list[tuple[str, Outgoing]] = []
        #: Numbered messages not yet delivered: (org, message).
        self.undelivered: list[tuple[str, Numbered]] = []
        self.presence_calls: list[tuple[str, str, RemoteEntry | None]] = []
        self.position_calls: list[
            tuple[str, list[tuple[str, PositionUpdate]], list[tuple[str, RemoteEntry]]]
        ] = []
        self.presence_reads: list[str] = []
        self._watchers: list[Callable[[bool], None]] = []

    # ------------------------------------------------------------ the protocol

    def unavailable(self) -> str | None:
        return self.down

    def watch(self, callback: Callable[[bool], None]) -> None:
        self._watchers.append(callback)

    def attach(self, room: OrgFeed) -> defer.Deferred[StreamState | None]:
        d: defer.Deferred[StreamState | None] = defer.Deferred()
        self.attaching[room.org_id] = (room, d)
        if not self.hold_attach:
            self.finish_attach(room.org_id)
        return d

    def detach(self, org_id: str) -> None:
        self.rooms.pop(org_id, None)
        self.detached.append(org_id)

    def publish(
        self, org_id: str, message: Outgoing, once: Once | None = None
    ) -> defer.Deferred[Published]:
        if self.refuse is not None:
            return defer.fail(self.refuse)
        self.published.append((org_id, message))
        numbered = self.from_elsewhere(org_id, message)
        return defer.succeed(Published(seq=numbered.seq, delivered=0))

    def presence_changed(
        self, org_id: str, user_id: str, entry: RemoteEntry | None
    ) -> None:
        self.presence_calls.append((org_id, user_id, entry))

    def read_presence(self, org_id: str) -> defer.Deferred[list[PresenceUser]]:
        self.presence_reads.append(org_id)
        return defer.succeed(list(self.remote_users.get(org_id, [])))

    def positions(
        self,
        org_id: str,
        moves: Sequence[tuple[str, PositionUpdate]],
        entries: Sequence[tuple[str, RemoteEntry]],
    ) -> None:
        self.position_calls.append((org_id, list(moves), list(entries)))

    # ------------------------------------------------------------ the test's hands

    def finish_attach(self, org_id: str) -> StreamState:
        """Complete an org's attach as a real backplane does: the room restarts
        from the org's state, then the attach fires with it."""
        room, d = self.attaching.pop(org_id)
        state = self.states.get(org_id, StreamState(epoch="shared", seq=0))
        self.seqs[org_id] = state.seq
        self.epochs[org_id] = state.epoch
        self.rooms[org_id] = room
        room.restart_stream(state)
        d.callback(state)
        return state

    def fail_attach(self, org_id: str, error: Exception) -> None:
        """Fail an org's pending attach (its shared state could not be read)."""
        _, d = self.attaching.pop(org_id)
        d.errback(error)

    def set_up(self, up: bool) -> None:
        """The backplane goes away or comes back: every watcher is told."""
        self.down = None if up else "backplane down"
        for watcher in self._watchers:
            watcher(up)

    def from_elsewhere(self, org_id: str, message: Outgoing) -> Numbered:
        """Number a message as the shared stream does (another process
        published it); it waits for :meth:`deliver` like this process's own."""
        seq = self.seqs[org_id] = self.seqs.get(org_id, 0) + 1
        numbered = Numbered(
            epoch=self.epochs.get(org_id, "shared"),
            seq=seq,
            at=self._clock.seconds(),
            type=message.type,
            data=message.frame(seq),
            targets=message.targets,
            sender=message.sender,
            actions=message.actions,
            exclude=message.exclude,
        )
        self.undelivered.append((org_id, numbered))
        return numbered

    def deliver(self) -> list[int]:
        """Deliver every numbered message, in order, to the rooms attached here;
        returns what each room answered (connections written to)."""
        waiting, self.undelivered = self.undelivered, []
        return [
            self.rooms[org_id].deliver(message)
            for org_id, message in waiting
            if org_id in self.rooms
        ]


class FakeLink:
    """Stands for a :class:`officerouter.redis_client.RedisLink`: records every
    command and answers each with a Deferred the test fires."""

    def __init__(self) -> None:
        self.up = True
        #: Every command sent, with the Deferred that answers it.
        self.commands: list[tuple[tuple[Any, ...], defer.Deferred[Any]]] = []
        self.subscribed: list[bytes] = []
        self.unsubscribed: list[bytes] = []

    def execute(self, *args: Any) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.commands.append((args, d))
        return d

    def subscribe(self, channel: bytes) -> defer.Deferred[None]:
        self.subscribed.append(channel)
        return defer.succeed(None)

    def unsubscribe(self, channels: Sequence[bytes]) -> None:
        self.unsubscribed.extend(channels)

    def sent(self, command: str) -> list[tuple[Any, ...]]:
        """The arguments of every ``command`` sent so far."""
        return [args for args, _ in self.commands if args[0] == command]

    def answer(self, command: str, reply: Any) -> tuple[Any, ...]:
        """Answer the oldest unanswered ``command``; returns its arguments."""
        for args, d in self.commands:
            if args[0] == command and not d.called:
                d.callback(reply)
                return args
        raise AssertionError(f"no {command} waiting for an answer")


class RecordingFeed:
    """An :class:`officerouter.backplane.OrgFeed` that records what a backplane
    hands it, in order."""

    def __init__(self, org_id: str = "org-a") -> None:
        self.org_id = org_id
        self.events: list[tuple[Any, ...]] = []
        self.messages: list[Numbered] = []

    def number(self, message: Outgoing) -> Numbered:
        raise AssertionError("a shared backplane numbers by itself")

    def deliver(self, message: Numbered) -> int:
        self.messages.append(message)
        self.events.append(("deliver", message.epoch, message.seq))
        return 0

    def restart_stream(self, state: StreamState) -> None:
        self.events.append(("restart", state.epoch, state.seq))

    def remote_presence(
        self, node: str, user_id: str, entry: RemoteEntry | None
    ) -> None:
        self.events.append(("presence", node, user_id, entry))

    def remote_positions(
        self, node: str, positions: Sequence[tuple[str, PositionUpdate]]
    ) -> None:
        self.events.append(("positions", node, list(positions)))

    def node_gone(self, node: str) -> None:
        self.events.append(("gone", node))

    @property
    def delivered(self) -> list[int]:
        """The seq of every message delivered."""
        return [message.seq for message in self.messages]
