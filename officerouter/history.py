"""Per-org history: sequence numbers, epochs, a bounded window, and recovery.  Sans-IO.

Every message a room delivers, except ephemeral ones (positions), is numbered by
its org's :class:`Stream` and kept in a window bounded by count and age.  The
window in memory is the only read path: a reconnecting client is answered from it
in the same reactor turn in which it joins the live audience, so there is neither
gap nor duplicate.  A :class:`HistoryStore` behind the window keeps it across
restarts (write-behind); :class:`MemoryStore`, the default, keeps nothing.
docs/presence-and-recovery.md describes the guarantees.
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from itertools import islice
from typing import Any, Final
from typing import Protocol as TypingProtocol

import attrs

from twisted.internet import defer

from officerouter.backplane import Numbered, Outgoing
from officerouter.codec import Encoded, encode_numbered

MAX_EPOCH_LENGTH: Final = 64


def new_epoch() -> str:
    """A fresh epoch: 16 hex digits, never containing the ``.`` of ``since``."""
    return secrets.token_hex(8)


@attrs.frozen(kw_only=True)
class HistoryBounds:
    """How much history a room keeps, and how much a recovery may replay.

    :ivar size: the most messages kept per org (0: none).
    :ivar seconds: how long a message is kept, and how long an org's stream
        outlives its last activity (0: history is off).
    :ivar replay_bytes: a recovery needing more than this many bytes answers
        ``recovered: false`` instead (refetching is cheaper, and the replay would
        overflow the connection's buffer).
    """

    size: int = 1000
    seconds: float = 300.0
    replay_bytes: int = 512 * 1024


DEFAULT_BOUNDS: Final = HistoryBounds()


@attrs.frozen
class StreamPosition:
    """Where a client is in its org's stream: ``<epoch>.<seq>`` on the wire."""

    epoch: str
    seq: int

    @classmethod
    def parse(cls, value: str) -> StreamPosition:
        """Parse ``<epoch>.<seq>``.

        :raises ValueError: when ``value`` is not of that form.
        """
        epoch, dot, seq = value.rpartition(".")
        if (
            not dot
            or not epoch
            or len(epoch) > MAX_EPOCH_LENGTH
            or not seq.isdigit()
            or not seq.isascii()
            or len(seq) > 18
        ):
            raise ValueError("since must be <epoch>.<seq>")
        return cls(epoch, int(seq))


@attrs.frozen
class Entry:
    """One numbered message as it was sent, and who may see it.

    :ivar targets: the users a direct message was addressed to, or ``None`` for a
        message every admitted connection of the org receives.
    """

    seq: int
    at: float
    message: Encoded
    targets: tuple[str, ...] | None = None

    @classmethod
    def of(cls, message: Numbered) -> Entry:
        """The window's entry for a numbered message.

        It keeps the same bytes but not the object sent live, whose transports
        cache their own framing of it: that would double the window.
        """
        kept = Encoded(
            type=message.type, data=message.data, sender=message.sender, seq=message.seq
        )
        return cls(message.seq, message.at, kept, message.targets)

    def visible_to(self, user_id: str, admitted: bool) -> bool:
        """Whether a connection of ``user_id`` may be sent this message now."""
        if self.targets is None:
            return admitted
        return user_id in self.targets


@attrs.frozen(kw_only=True)
class StoredStream:
    """An org's stream as a store restores it at start-up."""

    org_id: str
    epoch: str
    seq: int
    active_at: float
    entries: Sequence[Entry] = ()


class HistoryStore(TypingProtocol):
    """Where streams outlive the process.  The in-memory window stays the read path.

    Every call but :meth:`open` and :meth:`close` is made on the reactor thread, in
    order, and must return at once (queue the write); a store may batch them and
    must apply them in the order given.  A networked store shared by several
    daemons implements the same calls: numbering stays with the one room that owns
    an org (the store never allocates ``seq``), writes are idempotent by
    ``(org_id, epoch, seq)``, and :meth:`open` returns the streams this daemon owns.
    """

    def open(self, bounds: HistoryBounds, now: float) -> Sequence[StoredStream]:
        """Open the store; return the streams still within ``bounds`` at ``now``."""
        ...

    def begin(self, org_id: str, epoch: str, at: float) -> None:
        """An org starts a new stream; whatever the store held for it is void."""
        ...

    def append(self, org_id: str, epoch: str, entry: Entry) -> None:
        """Keep a numbered message (and advance the stream to its ``seq``)."""
        ...

    def touch(self, org_id: str, at: float) -> None:
        """The org's stream was last active at ``at`` (its last connection left)."""
        ...

    def forget(self, org_id: str) -> None:
        """The org's stream expired; drop it and its messages."""
        ...

    def close(self) -> defer.Deferred[None]:
        """Write everything queued; fires when the store is safely closed."""
        ...


class MemoryStore:
    """The default store: the windows in memory are all there is.

    Nothing outlives the process: after a restart every org gets a new epoch.
    """

    def open(self, bounds: HistoryBounds, now: float) -> Sequence[StoredStream]:
        return ()

    def begin(self, org_id: str, epoch: str, at: float) -> None:
        pass

    def append(self, org_id: str, epoch: str, entry: Entry) -> None:
        pass

    def touch(self, org_id: str, at: float) -> None:
        pass

    def forget(self, org_id: str) -> None:
        pass

    def close(self) -> defer.Deferred[None]:
        return defer.succeed(None)


class Stream:
    """An org's numbered messages: its epoch, last ``seq`` and bounded window.

    :param org_id: the org.
    :param epoch: this stream's epoch; a new stream always gets a new one.
    :param bounds: how much to keep.
    :param store: told of every change (write-behind).
    :param now: the current time, injected.
    :param seq: the last number given (restored streams).
    :param entries: the restored window, a contiguous run ending at ``seq``.
    :param active_at: when the stream was last active (restored streams).
    """

    def __init__(
        self,
        org_id: str,
        epoch: str,
        bounds: HistoryBounds,
        store: HistoryStore,
        now: Callable[[], float],
        *,
        seq: int = 0,
        entries: Iterable[Entry] = (),
        active_at: float | None = None,
    ) -> None:
        self.org_id = org_id
        self.epoch = epoch
        self._bounds = bounds
        self._store = store
        self._now = now
        self._seq = seq
        self._entries: deque[Entry] = deque(entries, maxlen=bounds.size)
        self.active_at = now() if active_at is None else active_at

    @classmethod
    def restored(
        cls,
        stored: StoredStream,
        bounds: HistoryBounds,
        store: HistoryStore,
        now: Callable[[], float],
    ) -> Stream:
        """A stream continuing where a store left it."""
        return cls(
            stored.org_id,
            stored.epoch,
            bounds,
            store,
            now,
            seq=stored.seq,
            entries=stored.entries,
            active_at=stored.active_at,
        )

    @property
    def seq(self) -> int:
        """The number of the last message (0 before the first)."""
        return self._seq

    @property
    def position(self) -> StreamPosition:
        """Where the live stream is now."""
        return StreamPosition(self.epoch, self._seq)

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> list[Entry]:
        """The window, oldest first (a snapshot)."""
        return list(self._entries)

    def record(
        self,
        type_: str,
        payload: Any,
        *,
        targets: tuple[str, ...] | None = None,
        sender: str | None = None,
    ) -> Encoded:
        """Number, encode and keep a message; returns what to send.

        The message is encoded before anything changes: one that cannot be
        encoded raises and burns no number.

        :param targets: the users of a direct message; ``None`` for every admitted
            connection.
        """
        head, tail = encode_numbered(type_, payload, sender=sender)
        numbered = self.number(Outgoing(type_, head, tail, targets, sender))
        self.keep(numbered)
        return Encoded(type=type_, data=numbered.data, sender=sender, seq=numbered.seq)

    def number(self, message: Outgoing) -> Numbered:
        """Give a message the next number (one process numbers its own streams).

        Nothing can fail after the number is taken: the frame was encoded before.
        """
        self._seq += 1
        return Numbered(
            epoch=self.epoch,
            seq=self._seq,
            at=self._now(),
            type=message.type,
            data=message.frame(self._seq),
            targets=message.targets,
            sender=message.sender,
            actions=message.actions,
            exclude=message.exclude,
        )

    def keep(self, message: Numbered) -> None:
        """Keep a numbered message in the window (and the store), as it is sent."""
        self._seq = max(self._seq, message.seq)
        entry = Entry.of(message)
        self._entries.append(entry)
        self.active_at = max(self.active_at, message.at)
        self.trim(self._now())
        self._store.append(self.org_id, self.epoch, entry)

    def restart(self, epoch: str, seq: int, records: Iterable[Numbered] = ()) -> None:
        """Continue as the shared stream is: another epoch, or past a lost gap."""
        self.epoch = epoch
        self._seq = seq
        self._entries.clear()
        self._entries.extend(
            Entry.of(message) for message in records if message.seq <= seq
        )
        self.trim(self._now())

    def trim(self, now: float) -> None:
        """Drop what is older than the age bound (the count bound is the deque's)."""
        entries = self._entries
        cutoff = now - self._bounds.seconds
        while entries and entries[0].at <= cutoff:
            entries.popleft()

    def touch(self, now: float) -> None:
        """Mark the stream active now (its last connection left)."""
        self.active_at = now
        self._store.touch(self.org_id, now)

    def retained_until(self) -> float:
        """When a stream without connections expires."""
        return self.active_at + self._bounds.seconds

    def replay(
        self, since: StreamPosition, user_id: str, admitted: bool
    ) -> list[Encoded] | None:
        """What a client at ``since`` missed and may see now, or ``None``.

        ``None`` means the gap cannot be filled: another epoch, a position ahead
        of the stream, messages already out of the window, or more than
        ``replay_bytes`` to send.
        """
        if since.epoch != self.epoch or since.seq > self._seq:
            return None
        self.trim(self._now())
        entries = self._entries
        first = entries[0].seq if entries else self._seq + 1
        if since.seq + 1 < first:
            return None
        missed: list[Encoded] = []
        budget = self._bounds.replay_bytes
        for entry in islice(entries, since.seq + 1 - first, None):
            if entry.visible_to(user_id, admitted):
                budget -= len(entry.message.data)
                if budget < 0:
                    return None
                missed.append(entry.message)
        return missed
