"""The registry: one room per org, admission, and the way to the backplane.  Sans-IO.

The :class:`OrgRegistry` creates a room on first use and attaches it to the
backplane (with several processes, that reads the org's shared state before the
first connection is admitted); when its last session leaves, the room keeps its
history until that expires and is then dropped (one timer per idle room, no
sweep).  Bans are checked here; caps are checked by the adapter with the counts
this module gives.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping

import attrs

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from officerouter import codes
from officerouter.auth import Identity
from officerouter.backplane import Backplane, LocalBackplane, Once, Published
from officerouter.catalog import MessageSpec
from officerouter.effects import CloseUser
from officerouter.history import (
    DEFAULT_BOUNDS,
    HistoryBounds,
    HistoryStore,
    MemoryStore,
    Stream,
    new_epoch,
)
from officerouter.messages import ClientMessage, Notification, PresenceUser
from officerouter.rooms import (
    Connection,
    OrgRoom,
    RefusedError,
    Session,
    prepare,
)
from officerouter.tally import Tally

log = Logger()


class OrgRegistry:
    """One :class:`OrgRoom` per org, created on first use.

    A room whose last session left keeps its history (and epoch) for
    ``history.seconds`` after its last activity, then is dropped: one timer per
    such room, no sweep of all rooms.

    :param catalog: message type -> spec.
    :param clock: the reactor's time and timers (a ``Clock`` in tests).
    :param auto_knock: see :class:`OrgRoom`.
    :param ban_memory: how long, in seconds, a ban refuses tokens issued before it.
    :param presence_grace: see :class:`OrgRoom`.
    :param history: how much history each room keeps.
    :param store: where history outlives the process (default: nowhere).
    :param backplane: numbering and state shared with other processes (default:
        one process, nothing shared).
    :param outage_close: seconds the backplane may be unavailable before every
        connection is closed with 1012, to reconnect to a healthy process.
    :param new_id: makes connection ids (tests pass a counter).
    :param new_epoch: makes epochs.
    """

    def __init__(
        self,
        catalog: Mapping[str, MessageSpec],
        *,
        clock: IReactorTime,
        auto_knock: bool = False,
        ban_memory: float = 3600.0,
        presence_grace: float = 5.0,
        position_tick: float = 0.05,
        history: HistoryBounds = DEFAULT_BOUNDS,
        store: HistoryStore | None = None,
        backplane: Backplane | None = None,
        outage_close: float = 30.0,
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
        new_epoch: Callable[[], str] = new_epoch,
    ) -> None:
        self.catalog = catalog
        self._clock = clock
        self._auto_knock = auto_knock
        self._ban_memory = ban_memory
        self._presence_grace = presence_grace
        self._position_tick = position_tick
        self._history = history
        self._store: HistoryStore = store if store is not None else MemoryStore()
        self.backplane: Backplane = backplane or LocalBackplane(
            "local", now=clock.seconds
        )
        self.backplane.watch(self.backplane_changed)
        self._outage_close = outage_close
        self._outage_call: IDelayedCall | None = None
        self._new_id = new_id
        self._new_epoch = new_epoch
        self._rooms: dict[str, OrgRoom] = {}
        # Rooms being attached to the backplane: not yet open to connections.
        self._attaching: dict[str, defer.Deferred[None]] = {}
        # Exactly the rooms without a session, each with its expiry timer.
        self._expiry: dict[str, IDelayedCall | None] = {}
        self._connections = 0
        self._bans: dict[str, dict[str, float]] = {}
        self._stopped = False
        #: What the rooms count for the metrics (read at scrape time).
        self.tally = Tally()

    # ------------------------------------------------------------ counts

    @property
    def node_id(self) -> str:
        """This process's name."""
        return self.backplane.node_id

    @property
    def room_count(self) -> int:
        """How many rooms have live connections."""
        return len(self._rooms) - len(self._expiry)

    @property
    def history_room_count(self) -> int:
        """How many rooms have no connection and are kept for their history."""
        return len(self._expiry)

    @property
    def connection_count(self) -> int:
        """How many sessions exist across all rooms."""
        return self._connections

    def org_connection_count(self, org_id: str) -> int:
        """How many live connections an org has on this process."""
        room = self._rooms.get(org_id)
        return len(room) if room is not None else 0

    def user_connection_count(self, org_id: str, user_id: str) -> int:
        """How many live connections a user has in an org, on every process."""
        room = self._rooms.get(org_id)
        return room.cluster_connection_count_of(user_id) if room is not None else 0

    def room(self, org_id: str) -> OrgRoom | None:
        """The org's room if it exists, live or kept for history (never creates one)."""
        return self._rooms.get(org_id)

    def rooms(self) -> list[OrgRoom]:
        """Every room of this process, live or kept for its history (a snapshot)."""
        return list(self._rooms.values())

    def presence(self, org_id: str) -> list[PresenceUser]:
        """The org's online users as this process sees them (none without a room)."""
        room = self._rooms.get(org_id)
        return room.presence() if room is not None else []

    def presence_of(self, org_id: str) -> defer.Deferred[list[PresenceUser]]:
        """The org's online users on every process (what the backend asks)."""
        room = self._rooms.get(org_id)
        if room is not None and org_id not in self._attaching:
            return defer.succeed(room.presence())
        return self.backplane.read_presence(org_id)

    def unavailable(self) -> str | None:
        """Why nothing can be numbered now (the backplane is away), or ``None``."""
        return self.backplane.unavailable()

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Open the history store and bring back the streams it kept.

        Each comes back as a room without connections, so that notifications
        arriving before its clients reconnect are numbered and kept.
        """
        for stored in self._store.open(self._history, self._clock.seconds()):
            stream = Stream.restored(
                stored, self._history, self._store, self._clock.seconds
            )
            room = self._add_room(stored.org_id, stream)
            self._attach(room)
            self._expiry[room.org_id] = None
            self._schedule_expiry(room)

    def stop(self) -> defer.Deferred[None]:
        """Cancel every timer and close the store (after the connections are gone).

        From now on nothing is numbered: connections are refused and
        notifications delivered to nobody, so that what the store wrote last is
        where every stream ended.
        """
        self._stopped = True
        self._end_outage()
        now = self._clock.seconds()
        for org_id, room in self._rooms.items():
            if org_id not in self._expiry:
                room.stream.touch(now)
            room.dispose()
        for call in self._expiry.values():
            if call is not None and call.active():
                call.cancel()
        self._expiry = dict.fromkeys(self._expiry)
        return self._store.close()

    def backplane_changed(self, up: bool) -> None:
        """The backplane went away or came back.

        While it is away nothing can be numbered (notify answers 503, handshakes
        are refused); connections stay, unless it is away longer than
        ``outage_close``: then they are closed with 1012 to find a healthy
        process.
        """
        if up:
            self._end_outage()
        elif self._outage_call is None and not self._stopped:
            self._outage_call = self._clock.callLater(
                self._outage_close, self._outage_too_long
            )

    def _end_outage(self) -> None:
        if self._outage_call is not None and self._outage_call.active():
            self._outage_call.cancel()
        self._outage_call = None

    def _outage_too_long(self) -> None:
        self._outage_call = None
        log.warn(
            "backplane unavailable for {seconds} s: closing {count} connections",
            seconds=self._outage_close,
            count=self._connections,
        )
        self.close_all(codes.CLOSE_SERVICE_RESTART, codes.REASON_BACKPLANE_DOWN)

    # ------------------------------------------------------------ admission

    def _org_bans(self, org_id: str) -> dict[str, float]:
        bans = self._bans.setdefault(org_id, {})
        cutoff = self._clock.seconds() - self._ban_memory
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

    def prepare(self, org_id: str) -> defer.Deferred[None]:
        """Make the org's room ready for a connection (created and attached).

        With one process this fires at once; with several it first reads the
        org's shared state (stream, bans, presence elsewhere).  Fails with
        :class:`RefusedError` (503) when that cannot be done now.
        """
        if self._stopped:
            return defer.fail(RefusedError(503, codes.REASON_SHUTDOWN))
        room = self._rooms.get(org_id)
        if room is None:
            reason = self.backplane.unavailable()
            if reason is not None:
                return defer.fail(RefusedError(503, codes.REASON_UNAVAILABLE))
            room = self._create_room(org_id)
            self._attach(room)
        pending = self._attaching.get(org_id)
        if pending is None:
            return defer.succeed(None)
        waiter: defer.Deferred[None] = defer.Deferred()
        pending.addBoth(_chain, waiter)
        return waiter

    def _attach(self, room: OrgRoom) -> None:
        org_id = room.org_id
        attached: defer.Deferred[None] = defer.Deferred()
        self._attaching[org_id] = attached

        def done(_: object) -> None:
            if self._attaching.get(org_id) is attached:
                del self._attaching[org_id]
            attached.callback(None)

        def failed(failure: object) -> None:
            if self._attaching.get(org_id) is attached:
                del self._attaching[org_id]
            log.warn(
                "org {org_id}: could not read its shared state: {error}",
                org_id=org_id,
                error=getattr(failure, "getErrorMessage", str)(),
            )
            if self._rooms.get(org_id) is room and not len(room):
                self._drop(room)
            attached.errback(RefusedError(503, codes.REASON_UNAVAILABLE))
            # Each waiter got the failure (``_chain`` passes it on to the next);
            # what is left at the end of the chain is handled, not an error to
            # be logged as unhandled when the Deferred is collected.
            attached.addErrback(lambda _: None)

        self.backplane.attach(room).addCallbacks(done, failed)

    def abandon(self, org_id: str) -> None:
        """A handshake that prepared the org's room was refused after all (a
        cap, a ban): a room left without a session is kept for its history."""
        room = self._rooms.get(org_id)
        if room is not None and not len(room) and org_id not in self._expiry:
            self._idle(room)

    def connect(
        self,
        identity: Identity,
        connection: Connection,
        *,
        since: str | None = None,
        batch_positions: bool = False,
        presence_diff: bool = False,
    ) -> Session:
        """Admit a verified connection to its org's room (created if needed).

        :param since: the ``<epoch>.<seq>`` a reconnecting client last saw.
        :param batch_positions: take positions as one ``positions`` frame per tick.
        :param presence_diff: take presence as ``presence_state``, then one
            ``presence_diff`` frame per tick.
        :raises RefusedError: when the identity may not connect.
        """
        if self._stopped:
            raise RefusedError(503, codes.REASON_SHUTDOWN)
        self.check_admission(identity)
        org_id = identity.org_id
        room = self._rooms.get(org_id)
        if room is None:
            self.prepare(org_id).addErrback(lambda _: None)
            room = self._rooms.get(org_id)
        if room is None or org_id in self._attaching:
            # Only with several processes: prepare() was not waited for.
            raise RefusedError(503, codes.REASON_UNAVAILABLE)
        self._wake(org_id)
        try:
            session = room.join(
                identity,
                connection,
                self._new_id(),
                since=since,
                batch_positions=batch_positions,
                presence_diff=presence_diff,
            )
        except BaseException:
            if not len(room):
                self._idle(room)
            raise
        self._connections += 1
        return session

    def disconnect(self, session: Session) -> None:
        """Remove a session; a room left without any is kept for its history.

        Idempotent.
        """
        room = self._rooms.get(session.org_id)
        if room is None or not room.leave(session):
            return
        self._connections -= 1
        if not len(room):
            self._idle(room)

    # ------------------------------------------------------------ rooms

    def _create_room(self, org_id: str) -> OrgRoom:
        now = self._clock.seconds()
        epoch = self._new_epoch()
        self._store.begin(org_id, epoch, now)
        stream = Stream(org_id, epoch, self._history, self._store, self._clock.seconds)
        return self._add_room(org_id, stream)

    def _add_room(self, org_id: str, stream: Stream) -> OrgRoom:
        room = OrgRoom(
            org_id,
            self.catalog,
            bans=self._org_bans(org_id),
            clock=self._clock,
            stream=stream,
            presence_grace=self._presence_grace,
            auto_knock=self._auto_knock,
            position_tick=self._position_tick,
            # A role change is held as long as a replay could reach past it.
            role_memory=self._history.seconds,
            backplane=self.backplane,
            tally=self.tally,
        )
        self._rooms[org_id] = room
        return room

    def _wake(self, org_id: str) -> None:
        if org_id in self._expiry:
            call = self._expiry.pop(org_id)
            if call is not None and call.active():
                call.cancel()

    def _idle(self, room: OrgRoom) -> None:
        room.stream.touch(self._clock.seconds())
        self._expiry[room.org_id] = None
        self._schedule_expiry(room)

    def _schedule_expiry(self, room: OrgRoom) -> None:
        delay = room.stream.retained_until() - self._clock.seconds()
        if delay <= 0:
            self._drop(room)
        else:
            self._expiry[room.org_id] = self._clock.callLater(
                delay, self._expire, room.org_id
            )

    def _expire(self, org_id: str) -> None:
        room = self._rooms.get(org_id)
        if room is None or org_id not in self._expiry:
            return
        # Messages may have arrived since the timer was set: check again, and
        # either drop the room or wait for its newest activity to expire.
        self._schedule_expiry(room)

    def _drop(self, room: OrgRoom) -> None:
        org_id = room.org_id
        del self._rooms[org_id]
        self._wake(org_id)
        room.withdraw()
        room.dispose()
        self.backplane.detach(org_id)
        self._store.forget(org_id)
        if not self._bans.get(org_id):
            self._bans.pop(org_id, None)

    # ------------------------------------------------------------ routing

    def receive(self, session: Session, message: ClientMessage) -> int:
        """Hand a validated client message to its session's room."""
        room = self._rooms[session.org_id]
        return room.receive(session, message)

    def refresh_role(self, session: Session, role: str) -> None:
        """Give the user of a session whose token was refreshed the token's role.

        Applied to the user's sessions on this process only; with several
        processes the others keep the role their own tokens carry.
        """
        room = self._rooms.get(session.org_id)
        if room is not None and session.role != role:
            room.refresh_role(session.user_id, role)

    def publish(
        self, notification: Notification, once: Once | None = None
    ) -> defer.Deferred[Published]:
        """Number, keep and route a backend notification, its effect included.

        One process: an org with a room (live, or kept for its history) numbers
        and keeps it; an org without one delivers to nobody and keeps nothing,
        though a ban still takes effect.  Several processes: every notification
        is numbered and kept in the shared stream, whichever process has the
        org's connections.

        With ``once`` (an ``Idempotency-Key``), a retry within the key's window
        answers what the first answered and does nothing else.

        :raises ContractError: (at once) when the payload cannot be encoded.
        """
        if self._stopped:
            return defer.succeed(Published(seq=None, delivered=0))
        org_id = notification.org_id
        room = self._rooms.get(org_id)
        if room is not None and org_id not in self._attaching:
            return room.publish(notification, once)
        outgoing = prepare(self.catalog, _EmptyRoom(org_id), notification)
        bans = [a for a in outgoing.actions if isinstance(a, CloseUser) and a.ban]
        if bans:
            org_bans = self._org_bans(org_id)
            for action in bans:
                org_bans[action.user_id] = self._clock.seconds()
        return self.backplane.publish(org_id, outgoing, once)

    def notify(self, notification: Notification) -> int:
        """:meth:`publish` for one process, where it is done on return: how many
        connections it reached."""
        answers: list[Published] = []
        self.publish(notification).addCallback(answers.append)
        return answers[0].delivered if answers else 0

    def close_all(self, code: int, reason: str) -> None:
        """Close every connection of every room (shutdown)."""
        for room in list(self._rooms.values()):
            room.close_all(code, reason)


def _chain(result: object, waiter: defer.Deferred[None]) -> object:
    if isinstance(result, BaseException) or hasattr(result, "getErrorMessage"):
        waiter.errback(result)  # type: ignore[arg-type]
    else:
        waiter.callback(None)
    return result


@attrs.frozen
class _EmptyRoom:
    org_id: str

    def user_ids(self) -> frozenset[str]:
        return frozenset()

    def role_of(self, user_id: str) -> str | None:
        return None
