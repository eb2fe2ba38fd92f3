"""The Redis backplane: every process pointing at one Redis serves the same orgs.

Per org, under the key prefix (``--redis-prefix``), with the org id in braces:

- ``{org}:meta`` (epoch, last seq) and ``{org}:stream`` (the numbered messages,
  ``MAXLEN`` bounded, entry id ``<seq>-0``), both expiring ``--history-seconds``
  after the last message: one Lua script (``lua/publish.lua``) numbers, appends
  and publishes, so that one ``seq`` is one stored message, everywhere;
- ``{org}:channel``: what every serving process subscribes to, once per process;
- ``{org}:pres`` (each process's presence entry per user) and ``{org}:count``
  (connections per user and of the audience, for ``delivered`` and the per-user
  cap); ``{org}:bans`` and ``{org}:roles`` (ban memory, held roles).

Per process: ``node:<id>``, a liveness key refreshed every
:data:`HEARTBEAT_INTERVAL` and expiring after ``heartbeat_timeout``, and
``node:<id>:orgs``.  A process that finds another's key gone removes its
presence (``lua/reap.lua``).

Delivery follows the sequence: a message whose ``seq`` is not the next one is
held while the gap is read from the stream; if the stream no longer has it, the
org's connections are closed with 1012 so that they recover.  PUB/SUB is never
trusted to be complete.  docs/cluster.md has the whole design and failure table.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Callable, Sequence
from importlib.resources import files
from typing import Any, Final

import attrs
import orjson
import txredisapi

from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from officerouter.backplane import (
    IdempotencyConflict,
    Numbered,
    Once,
    OrgFeed,
    Outgoing,
    Published,
    RemoteEntry,
    StreamState,
    merge_entries,
)
from officerouter.config import RedisTarget
from officerouter.effects import Action, CloseUser, SetRole
from officerouter.history import HistoryBounds
from officerouter.messages import PositionUpdate, PresenceUser
from officerouter.redis_client import RedisLink, RedisUnavailable

log = Logger()

#: Seconds between two refreshes of a process's liveness key.
HEARTBEAT_INTERVAL: Final = 2.0
NODE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
#: Presence keys outlive their last write by this much (a safety net: entries
#: are removed by their process, or reaped when it dies).
PRESENCE_TTL: Final = 86400
#: The stream kept for gap filling is never shorter than this, whatever
#: ``--history-size`` says (recovery itself keeps to ``--history-size``).
MIN_STREAM_LENGTH: Final = 100

_SCRIPTS: Final = ("publish", "attach", "presence", "positions", "reap", "rewind")


#: Scripts that start with ``lua/stream.lua`` (Redis has no ``require``).
_WITH_STREAM: Final = frozenset({"publish", "attach"})


def _load_scripts() -> dict[str, str]:
    package = files("officerouter") / "lua"
    prelude = (package / "stream.lua").read_text("utf-8")
    return {
        name: (prelude if name in _WITH_STREAM else "")
        + (package / f"{name}.lua").read_text("utf-8")
        for name in _SCRIPTS
    }


# ---------------------------------------------------------------- wire formats


def encode_actions(actions: Sequence[Action]) -> list[list[Any]]:
    """Actions as they travel in a record header."""
    encoded: list[list[Any]] = []
    for action in actions:
        if isinstance(action, SetRole):
            encoded.append(["r", action.user_id, action.role])
        else:
            encoded.append(
                ["c", action.user_id, action.code, action.reason, action.ban]
            )
    return encoded


def decode_actions(raw: Any) -> tuple[Action, ...]:
    """The actions of a record header (written by :func:`encode_actions`)."""
    actions: list[Action] = []
    for item in raw or ():
        if item[0] == "r":
            actions.append(SetRole(item[1], item[2]))
        else:
            actions.append(CloseUser(item[1], item[2], item[3], ban=bool(item[4])))
    return tuple(actions)


def header_tail(message: Outgoing) -> bytes:
    """The record header after ``"at"``: type, sender, targets, actions."""
    header: dict[str, Any] = {"y": message.type}
    if message.sender is not None:
        header["f"] = message.sender
    if message.targets is not None:
        header["t"] = list(message.targets)
    if message.actions:
        header["x"] = encode_actions(message.actions)
    if message.exclude is not None:
        header["c"] = message.exclude
    # orjson writes '{...}': the script adds its own opening part.
    return b"," + orjson.dumps(header)[1:]


def parse_record(record: bytes) -> Numbered:
    """A numbered record, as published and as kept in the stream.

    :raises ValueError: for a record this version cannot read.
    """
    if not record.startswith(b"N"):
        raise ValueError("not a numbered record")
    header, newline, data = record[1:].partition(b"\n")
    if not newline:
        raise ValueError("a record without a frame")
    fields = orjson.loads(header)
    targets = fields.get("t")
    return Numbered(
        epoch=fields["e"],
        seq=int(fields["s"]),
        at=float(fields["at"]),
        type=fields["y"],
        data=data,
        targets=tuple(targets) if targets is not None else None,
        sender=fields.get("f"),
        actions=decode_actions(fields.get("x")),
        exclude=fields.get("c"),
    )


def entry_text(entry: RemoteEntry) -> bytes:
    """A presence entry as ``presence.lua`` keeps it: ``conns|role|position``."""
    position = entry.position
    pos = (
        orjson.dumps([position.x, position.y, position.roomId])
        if position is not None
        else b"null"
    )
    return b"%d|%s|%s" % (entry.connections, entry.role.encode(), pos)


def parse_entry(text: bytes) -> RemoteEntry:
    """The inverse of :func:`entry_text`."""
    connections, role, pos = text.split(b"|", 2)
    raw = orjson.loads(pos)
    position = (
        PositionUpdate(x=raw[0], y=raw[1], roomId=raw[2]) if raw is not None else None
    )
    return RemoteEntry(int(connections), role.decode(), position)


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _pairs(flat: Sequence[Any]) -> list[tuple[Any, Any]]:
    return [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]


# ---------------------------------------------------------------- per org


@attrs.define(eq=False)
class _Org:
    """What this process knows of one org it serves."""

    room: OrgFeed
    channel: bytes
    attached: bool = False
    epoch: str = ""
    seq: int = 0
    #: Messages received before the org's state was read: replayed after it.
    early: list[bytes] = attrs.Factory(list)
    #: Numbered messages waiting for a gap before them to be filled.
    pending: dict[int, Numbered] = attrs.Factory(dict)
    filling: bool = False
    #: Which read of the stream is the current one: a reply to an older one
    #: (another epoch began meanwhile) is ignored.
    fill_token: int = 0
    #: The (node, user) entries of other processes the room was told of.
    remote: set[tuple[str, str]] = attrs.Factory(set)


class RedisBackplane:
    """Numbering, history, presence and bans in one Redis, for many processes.

    :param target: where Redis is; the backplane's :attr:`link` (started and
        stopped by the caller) connects to it.
    :param node_id: this process's name.
    :param prefix: prefix of every key and channel.
    :param bounds: the history bounds (stream length and age).
    :param clock: timers (heartbeat, reaping).
    :param heartbeat_timeout: seconds after which a silent process is gone.
    :param presence_grace: seconds a stopping process keeps its users present.
    :param ban_memory: seconds a ban is remembered.
    """

    shared = True

    def __init__(
        self,
        target: RedisTarget,
        *,
        node_id: str,
        prefix: str,
        bounds: HistoryBounds,
        clock: Any,
        heartbeat_timeout: float = 10.0,
        presence_grace: float = 5.0,
        ban_memory: float = 3600.0,
        new_epoch: Callable[[], str] = lambda: secrets.token_hex(8),
    ) -> None:
        self.node_id = node_id
        self.link = RedisLink(
            target,
            clock,
            on_message=self.on_message,
            on_state=self.link_changed,
            name=f"{prefix}:{node_id}",
        )
        self._link = self.link
        self._watchers: list[Callable[[bool], None]] = []
        self._prefix = prefix
        self._bounds = bounds
        self._clock = clock
        self._heartbeat_timeout = heartbeat_timeout
        self._presence_grace = presence_grace
        self._ban_memory = ban_memory
        self._new_epoch = new_epoch
        self._scripts = _load_scripts()
        self._hashes: dict[str, str] = {}
        self._orgs: dict[str, _Org] = {}
        self._by_channel: dict[bytes, _Org] = {}
        #: This process's own presence entries, per org and user, to write
        #: again after Redis lost them.
        self._mine: dict[str, dict[str, bytes]] = {}
        self._heartbeat = task.LoopingCall(self._beat)
        self._heartbeat.clock = clock
        self._registered = False
        self._stopping = False
        #: Gaps in delivery filled from the stream, the messages that filled
        #: them, and gaps the stream no longer held (metrics).
        self.gaps_filled = 0
        self.gap_messages = 0
        self.gaps_lost = 0

    # ------------------------------------------------------------ keys

    def _key(self, org_id: str, name: str) -> str:
        return f"{self._prefix}:{{{org_id}}}:{name}"

    def _node_key(self, node: str) -> str:
        return f"{self._prefix}:node:{node}"

    def channel(self, org_id: str) -> bytes:
        """The org's channel."""
        return self._key(org_id, "channel").encode("utf-8")

    # ------------------------------------------------------------ life

    def start(self) -> None:
        """Begin the heartbeat (the link is started by the caller)."""
        self._heartbeat.start(HEARTBEAT_INTERVAL, now=False)

    def stop(self) -> defer.Deferred[None]:
        """Leave: keep this process's users present for the grace period (so
        that clients reconnecting elsewhere do not flap), then let them expire.
        """
        self._stopping = True
        if self._heartbeat.running:
            self._heartbeat.stop()
        if not self._link.up:
            return defer.succeed(None)
        grace_ms = max(1, int(self._presence_grace * 1000))
        d = self._link.execute("PEXPIRE", self._node_key(self.node_id), grace_ms)
        return d.addBoth(lambda _: None)

    def unavailable(self) -> str | None:
        """Why the backplane cannot take work now, or ``None``."""
        if self._link.up:
            return None
        return "redis unavailable"

    def watch(self, callback: Callable[[bool], None]) -> None:
        """Call ``callback(available)`` whenever Redis goes away or comes back."""
        self._watchers.append(callback)

    def link_changed(self, up: bool) -> None:
        """The Redis link came back (or went): read every org again when back."""
        for watcher in self._watchers:
            watcher(up)
        if not up or self._stopping:
            return
        self._register()
        for org in list(self._orgs.values()):
            if org.attached:
                self._resync(org)

    # ------------------------------------------------------------ scripts

    def _script(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        digest = self._hashes.get(name)
        if digest is None:
            digest = self._hashes[name] = hashlib.sha1(
                self._scripts[name].encode("utf-8")
            ).hexdigest()

        def no_script(failure: Failure) -> Any:
            failure.trap(txredisapi.ResponseError)
            if "NOSCRIPT" not in failure.getErrorMessage():
                return failure
            return self._link.execute(
                "EVAL", self._scripts[name], len(keys), *keys, *args
            )

        return self._link.execute(
            "EVALSHA", digest, len(keys), *keys, *args
        ).addErrback(no_script)

    # ------------------------------------------------------------ attach

    def attach(self, room: OrgFeed) -> defer.Deferred[StreamState | None]:
        """Subscribe to the org, then read its state at one instant."""
        org_id = room.org_id
        if not self._link.up:
            return defer.fail(RedisUnavailable("redis unavailable"))
        org = _Org(room, self.channel(org_id))
        self._orgs[org_id] = org
        self._by_channel[org.channel] = org
        d: defer.Deferred[Any] = self._link.subscribe(org.channel)
        d.addCallback(lambda _: self._read_state(org_id))
        d.addCallback(self._attached, org)

        def failed(failure: Failure) -> Failure:
            if self._orgs.get(org_id) is org:
                self.detach(org_id)
            return failure

        result: defer.Deferred[StreamState | None] = d.addErrback(failed)
        return result

    def _read_state(self, org_id: str) -> Any:
        limit = self._bounds.size if self._bounds.seconds > 0 else 0
        return self._script(
            "attach",
            [
                self._key(org_id, "meta"),
                self._key(org_id, "stream"),
                self._key(org_id, "bans"),
                self._key(org_id, "roles"),
                self._key(org_id, "pres"),
            ],
            [
                self._new_epoch(),
                limit,
                self._stream_ttl(),
                f"{self._prefix}:node:",
            ],
        )

    def _parse_state(
        self, raw: Sequence[Any]
    ) -> tuple[StreamState, list[Any], list[Any]]:
        epoch, seq, records, bans, roles, presence, dead = raw
        numbered = []
        for record in reversed(records):
            try:
                numbered.append(parse_record(record))
            except (ValueError, KeyError, TypeError):
                log.warn("skipped an unreadable record in the stream")
        now = self._clock.seconds()
        memory = self._ban_memory
        state = StreamState(
            epoch=_text(epoch),
            seq=int(seq),
            records=numbered,
            bans={
                _text(user): float(at)
                for user, at in _pairs(bans)
                if float(at) >= now - memory
            },
            roles={_text(user): _text(role) for user, role in _pairs(roles)},
        )
        return state, _pairs(presence), list(dead)

    def _attached(self, raw: Sequence[Any], org: _Org) -> StreamState | None:
        if self._orgs.get(org.room.org_id) is not org:
            return None  # detached meanwhile
        state, presence, dead = self._parse_state(raw)
        org.epoch, org.seq = state.epoch, state.seq
        org.room.restart_stream(state)
        self._apply_presence(org, presence)
        org.attached = True
        for node in dead:
            self._reap(_text(node))
        early, org.early = org.early, []
        for message in early:
            self._dispatch(org, message)
        return state

    def _apply_presence(self, org: _Org, presence: Sequence[tuple[Any, Any]]) -> None:
        seen: set[tuple[str, str]] = set()
        for field, value in presence:
            node, _, user = bytes(field).partition(b"\0")
            key = (node.decode(), user.decode("utf-8"))
            if key[0] == self.node_id:
                continue
            seen.add(key)
            org.remote.add(key)
            org.room.remote_presence(key[0], key[1], parse_entry(value))
        for gone in org.remote - seen:
            org.remote.discard(gone)
            org.room.remote_presence(gone[0], gone[1], None)

    def detach(self, org_id: str) -> None:
        """Stop serving the org: unsubscribe, forget."""
        org = self._orgs.pop(org_id, None)
        if org is None:
            return
        self._by_channel.pop(org.channel, None)
        self._link.unsubscribe([org.channel])
        self._mine.pop(org_id, None)

    # ------------------------------------------------------------ receiving

    def on_message(self, channel: bytes, message: bytes) -> None:
        """A message published on a subscribed channel (from the link)."""
        org = self._by_channel.get(channel)
        if org is None:
            return
        if not org.attached:
            org.early.append(message)
            return
        try:
            self._dispatch(org, message)
        except Exception:
            log.failure("unexpected error handling a message from redis")

    def _dispatch(self, org: _Org, message: bytes) -> None:
        kind = message[:1]
        if kind == b"N":
            self._numbered(org, parse_record(message))
        elif kind == b"P":
            node, user, value = _split_presence(message)
            key = (node.decode(), user.decode("utf-8"))
            if key[0] == self.node_id:
                return
            if value:
                org.remote.add(key)
                org.room.remote_presence(key[0], key[1], parse_entry(value))
            elif key in org.remote:
                org.remote.discard(key)
                org.room.remote_presence(key[0], key[1], None)
        elif kind == b"Q":
            mover_raw, _, payload = message[1:].partition(b"\0")
            mover = mover_raw.decode()
            if mover == self.node_id:
                return
            moves = [
                (user, PositionUpdate(x=x, y=y, roomId=room_id))
                for user, x, y, room_id in orjson.loads(payload)
            ]
            org.room.remote_positions(mover, moves)
        elif kind == b"G":
            gone = message[1:].decode()
            if gone == self.node_id:
                # Reaped while alive (a pause longer than the heartbeat
                # timeout): write our entries again.
                self._register()
                return
            org.remote = {key for key in org.remote if key[0] != gone}
            org.room.node_gone(gone)

    def _numbered(self, org: _Org, message: Numbered) -> None:
        if message.epoch != org.epoch:
            # Redis lost the stream (restart without persistence, expiry): a new
            # epoch.  Connections must recover; what follows is read in order.
            log.warn(
                "org {org_id}: stream epoch changed; connections reconnect",
                org_id=org.room.org_id,
            )
            self._new_epoch_begins(org, message.epoch, 0)
            org.room.restart_stream(StreamState(epoch=message.epoch, seq=0))
        if message.seq <= org.seq:
            return  # already delivered (a gap fill overlapped)
        if message.seq == org.seq + 1 and not org.filling:
            org.seq = message.seq
            org.room.deliver(message)
            self._drain(org)
            return
        org.pending[message.seq] = message
        self._drain(org)
        if org.pending:
            self._fill(org, min(org.pending) - 1)

    def _new_epoch_begins(self, org: _Org, epoch: str, seq: int) -> None:
        org.epoch, org.seq = epoch, seq
        org.pending.clear()
        # A read of the old stream still under way is void.
        org.filling = False
        org.fill_token += 1

    def _drain(self, org: _Org) -> None:
        """Deliver what was held and now follows; forget what no longer can."""
        for seq in [seq for seq in org.pending if seq <= org.seq]:
            # Delivered meanwhile by a read of the stream (the subscription
            # and the commands are two connections: either may be first).
            del org.pending[seq]
        while org.seq + 1 in org.pending:
            message = org.pending.pop(org.seq + 1)
            org.seq = message.seq
            org.room.deliver(message)

    def _fill(self, org: _Org, last: int) -> None:
        """Read from the stream what lies between the last delivered and ``last``.

        What the stream no longer has is lost continuity: the org's connections
        are closed with 1012 (they recover on reconnect) and delivery goes on
        after ``last``.
        """
        if org.filling or last <= org.seq:
            return
        org.filling = True
        org.fill_token += 1
        token = org.fill_token
        org_id = org.room.org_id
        first, epoch = org.seq + 1, org.epoch
        d = self._link.execute(
            "XRANGE", self._key(org_id, "stream"), f"{first}-0", f"{last}-0"
        )

        def filled(entries: Sequence[Any]) -> None:
            if self._orgs.get(org_id) is not org or org.fill_token != token:
                return
            org.filling = False
            # A stream that began again in another epoch is not this one's gap.
            records = [
                record
                for record in (parse_record(fields[1]) for _, fields in entries)
                if record.epoch == epoch
            ]
            if len(records) == last - first + 1 and records[0].seq == first:
                self.gaps_filled += 1
                self.gap_messages += len(records)
                log.info(
                    "org {org_id}: filled a gap of {count} messages from the stream",
                    org_id=org_id,
                    count=len(records),
                )
                for record in records:
                    if record.seq == org.seq + 1:
                        org.seq = record.seq
                        org.room.deliver(record)
            else:
                self.gaps_lost += 1
                log.warn(
                    "org {org_id}: messages {first} to {last} are no longer in the "
                    "stream; connections reconnect",
                    org_id=org_id,
                    first=first,
                    last=last,
                )
                org.room.restart_stream(StreamState(epoch=epoch, seq=last))
                org.seq = last
            self._drain(org)
            if org.pending:
                self._fill(org, min(org.pending) - 1)

        def failed(failure: Failure) -> None:
            if org.fill_token == token:
                org.filling = False
            # Redis went away: the reconnect reads every org again.
            failure.trap(RedisUnavailable, txredisapi.ResponseError)

        d.addCallbacks(filled, failed)

    def _resync(self, org: _Org) -> None:
        """After a reconnect: read the org's state again, fill what was missed."""
        org_id = org.room.org_id

        def read(raw: Sequence[Any]) -> None:
            if self._orgs.get(org_id) is not org:
                return
            state, presence, dead = self._parse_state(raw)
            if state.epoch != org.epoch:
                log.warn(
                    "org {org_id}: stream epoch changed while redis was away; "
                    "connections reconnect",
                    org_id=org_id,
                )
                self._new_epoch_begins(org, state.epoch, state.seq)
                org.room.restart_stream(state)
            elif state.seq < org.seq:
                # Redis lost its last writes: the numbers after state.seq would
                # be given again.  End this epoch; reading again starts a new one.
                log.warn(
                    "org {org_id}: redis is behind what was delivered ({seq} < "
                    "{delivered}); starting a new epoch",
                    org_id=org_id,
                    seq=state.seq,
                    delivered=org.seq,
                )
                self._script(
                    "rewind",
                    [self._key(org_id, "meta"), self._key(org_id, "stream")],
                    [org.epoch, org.seq],
                ).addCallbacks(lambda _: self._resync(org), _ignore_unavailable)
                return
            else:
                # Messages published while we were not subscribed.
                self._drain(org)
                gap_end = min(org.pending) - 1 if org.pending else 0
                self._fill(org, max(state.seq, gap_end))
            self._apply_presence(org, presence)
            for node in dead:
                self._reap(_text(node))

        self._read_state(org_id).addCallbacks(read, _ignore_unavailable)

    # ------------------------------------------------------------ publishing

    def _stream_ttl(self) -> int:
        return max(60, int(self._bounds.seconds) + 1)

    def publish(
        self, org_id: str, message: Outgoing, once: Once | None = None
    ) -> defer.Deferred[Published]:
        """Run ``publish.lua``: number, append, publish; fires with the answer.

        With ``once``, the same script checks and records the idempotency key,
        so that two processes given the same retry number it once.
        """
        targets = message.targets or ()
        bans = [
            a.user_id for a in message.actions if isinstance(a, CloseUser) and a.ban
        ]
        roles = [
            value
            for a in message.actions
            if isinstance(a, SetRole)
            for value in (a.user_id, a.role)
        ]
        args: list[Any] = [
            self.channel(org_id),
            self._new_epoch(),
            repr(self._clock.seconds()),
            max(self._bounds.size, MIN_STREAM_LENGTH),
            self._stream_ttl(),
            message.head,
            message.tail,
            header_tail(message),
            max(1, int(self._ban_memory)),
            "1" if message.targets is None else "0",
            once.fingerprint if once is not None else "",
            max(1, int(once.seconds)) if once is not None else 0,
            len(targets),
            *targets,
            len(bans),
            *bans,
            len(roles) // 2,
            *roles,
        ]
        d = self._script(
            "publish",
            [
                self._key(org_id, "meta"),
                self._key(org_id, "stream"),
                self._key(org_id, "count"),
                self._key(org_id, "bans"),
                self._key(org_id, "roles"),
                f"{self._prefix}:once:{once.key}" if once is not None else "-",
            ],
            args,
        )

        def answer(result: Sequence[Any]) -> Published:
            if result[0] == b"once":
                assert once is not None
                return _replayed(once, result[1])
            return Published(
                seq=int(result[1]),
                delivered=int(result[2]),
                per_target=tuple(int(n) for n in result[3:]),
            )

        result: defer.Deferred[Published] = d.addCallback(answer)
        return result

    # ------------------------------------------------------------ presence

    def presence_changed(
        self, org_id: str, user_id: str, entry: RemoteEntry | None
    ) -> None:
        """Write this process's entry for a user and tell the other processes."""
        mine = self._mine.setdefault(org_id, {})
        text = entry_text(entry) if entry is not None else b""
        if entry is None:
            mine.pop(user_id, None)
        else:
            mine[user_id] = text
        if self._link.up:
            self._write_presence(org_id, user_id, text)

    def _write_presence(self, org_id: str, user_id: str, text: bytes) -> None:
        field = self.node_id.encode() + b"\0" + user_id.encode("utf-8")
        self._script(
            "presence",
            [
                self._key(org_id, "pres"),
                self._key(org_id, "count"),
                self._node_key(self.node_id) + ":orgs",
            ],
            [field, user_id, text, self.channel(org_id), org_id, PRESENCE_TTL],
        ).addErrback(_ignore_unavailable)

    def read_presence(self, org_id: str) -> defer.Deferred[list[PresenceUser]]:
        """Who is online in an org, from every process's entries in Redis."""
        d: defer.Deferred[Any] = self._link.execute(
            "HGETALL", self._key(org_id, "pres")
        )

        def merge(flat: Sequence[Any]) -> list[PresenceUser]:
            entries = []
            for field, value in _pairs(flat):
                _, _, user = bytes(field).partition(b"\0")
                entries.append((user.decode("utf-8"), parse_entry(value)))
            return merge_entries(entries)

        result: defer.Deferred[list[PresenceUser]] = d.addCallback(merge)
        return result

    def positions(
        self,
        org_id: str,
        moves: Sequence[tuple[str, PositionUpdate]],
        entries: Sequence[tuple[str, RemoteEntry]],
    ) -> None:
        """Publish one tick of this process's moves in an org."""
        if not moves or not self._link.up:
            return
        payload = orjson.dumps([[user, p.x, p.y, p.roomId] for user, p in moves])
        message = b"Q" + self.node_id.encode() + b"\0" + payload
        args: list[Any] = [self.channel(org_id), message]
        mine = self._mine.setdefault(org_id, {})
        node = self.node_id.encode() + b"\0"
        for user, entry in entries:
            text = entry_text(entry)
            mine[user] = text
            args.extend((node + user.encode("utf-8"), text))
        self._script("positions", [self._key(org_id, "pres")], args).addErrback(
            _ignore_unavailable
        )

    # ------------------------------------------------------------ liveness

    def _register(self) -> None:
        """(Re)write this process's liveness key and every entry it holds."""
        if not self._link.up:
            return
        self._registered = True
        timeout_ms = int(self._heartbeat_timeout * 1000)
        self._link.execute(
            "SET", self._node_key(self.node_id), "1", "PX", timeout_ms
        ).addErrback(_ignore_unavailable)
        for org_id, users in self._mine.items():
            for user_id, text in users.items():
                self._write_presence(org_id, user_id, text)

    def _beat(self) -> None:
        if not self._link.up or self._stopping:
            return
        if not self._registered:
            self._register()
            return
        timeout_ms = int(self._heartbeat_timeout * 1000)

        def refreshed(result: Any) -> None:
            if result is None:
                # Our key had expired (a pause longer than the timeout), and
                # others may have reaped us: write everything again.
                log.warn(
                    "node {node} was presumed dead; registering again",
                    node=self.node_id,
                )
                self._register()

        self._link.execute(
            "SET", self._node_key(self.node_id), "1", "PX", timeout_ms, "XX"
        ).addCallbacks(refreshed, _ignore_unavailable)
        self._check_nodes()

    def _check_nodes(self) -> None:
        nodes = {node for org in self._orgs.values() for node, _ in org.remote}
        for node in nodes:

            def checked(exists: Any, node: str = node) -> None:
                if not int(exists):
                    self._reap(node)

            self._link.execute("EXISTS", self._node_key(node)).addCallbacks(
                checked, _ignore_unavailable
            )

    def _reap(self, node: str) -> None:
        if node == self.node_id:
            return
        log.info("node {node} is gone; removing its presence", node=node)
        self._script(
            "reap",
            [self._node_key(node), self._node_key(node) + ":orgs"],
            [node, f"{self._prefix}:"],
        ).addErrback(_ignore_unavailable)


def _replayed(once: Once, recorded: bytes) -> Published:
    """The answer recorded for an idempotency key (``publish.lua``).

    :raises IdempotencyConflict: when it was recorded for another request.
    """
    fingerprint, seq, counts = recorded.decode("ascii").split("|")
    if fingerprint != once.fingerprint:
        raise IdempotencyConflict(once.key)
    delivered, *per_target = (int(n) for n in counts.split(","))
    return Published(
        seq=int(seq), delivered=delivered, per_target=tuple(per_target), replayed=True
    )


def _split_presence(message: bytes) -> tuple[bytes, bytes, bytes]:
    # "P" entry \0 node \0 user: neither the entry (JSON escapes NUL) nor the
    # node id (NODE_ID) holds a NUL; the user id, whatever it is, comes last.
    value, _, field = message[1:].partition(b"\0")
    node, _, user = field.partition(b"\0")
    return node, user, value


def _ignore_unavailable(failure: Failure) -> None:
    if failure.check(RedisUnavailable):
        return
    log.failure("redis command failed", failure)
