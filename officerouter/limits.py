"""Limits against abuse, as plain objects: rate limiting, outgoing buffers, origins.

Sans-IO: time comes in as a ``now`` callable or an ``IReactorTime`` (a ``Clock`` in
tests); the WebSocket adapter wires these to a connection.
"""

from __future__ import annotations

import collections
import enum
import re
from collections.abc import Callable, Iterable

import attrs

from twisted.internet.interfaces import IDelayedCall, IReactorTime


@attrs.frozen(kw_only=True)
class Limits:
    """Per-process limits; docs/configuration.md lists each with its flag."""

    max_message_bytes: int = 65536
    max_body_bytes: int = 65536
    rate: float = 20.0
    burst: int = 40
    flood_seconds: float = 5.0
    max_connections_per_user: int = 10
    max_connections_per_org: int = 10_000
    max_connections: int = 50_000
    soft_buffer_bytes: int = 256 * 1024
    hard_buffer_bytes: int = 1024 * 1024
    #: SO_SNDBUF for WebSocket sockets; 0 leaves the kernel's autotuning on.
    socket_send_buffer: int = 0


class Verdict(enum.Enum):
    """What to do with one client frame."""

    ALLOW = "allow"
    #: Drop it and tell the client (first drop of a burst).
    DROP_AND_WARN = "drop_and_warn"
    #: Drop it silently (already warned in this burst).
    DROP = "drop"
    #: The client kept flooding past the limit: close with 1008.
    CLOSE = "close"


#: Seconds between the lag probe's timers.
LAG_INTERVAL = 0.1


class LagProbe:
    """How late the event loop has been lately: the lateness of a timer due every ``interval``.

    When the process is busy (a long callback, a garbage collection, a full
    iteration of work), the timer fires late by about as long as the loop could
    not read its sockets.  :meth:`lag` is the largest lateness of the ticks
    within the last ``memory`` seconds (:meth:`lag`); about zero in a process keeping up.  The
    timer runs only while someone uses the probe (:meth:`attach`).
    """

    def __init__(
        self,
        clock: IReactorTime,
        interval: float = LAG_INTERVAL,
        memory: float = 1.0,
    ) -> None:
        self._clock = clock
        self._interval = interval
        self._memory = memory
        self._users = 0
        self._due = 0.0
        self._call: IDelayedCall | None = None
        #: (time, lateness) of recent late ticks, oldest first.
        self._late: collections.deque[tuple[float, float]] = collections.deque()
        #: Told each tick's lateness (0 when on time): the metrics' histogram.
        self.observers: list[Callable[[float], object]] = []

    def lag(self) -> float:
        """The loop's recent lateness in seconds."""
        horizon = self._clock.seconds() - self._memory
        late = self._late
        while late and late[0][0] < horizon:
            late.popleft()
        return max((lateness for _, lateness in late), default=0.0)

    def attach(self) -> None:
        """One more user: the timer runs while there is any."""
        self._users += 1
        if self._call is None:
            self._schedule()

    def detach(self) -> None:
        """One user fewer; the last one stops the timer."""
        self._users -= 1
        if self._users <= 0 and self._call is not None:
            self._users = 0
            if self._call.active():
                self._call.cancel()
            self._call = None

    def _schedule(self) -> None:
        self._due = self._clock.seconds() + self._interval
        self._call = self._clock.callLater(self._interval, self._tick)

    def _tick(self) -> None:
        now = self._clock.seconds()
        lateness = now - self._due
        if lateness > 0:
            self._late.append((now, lateness))
        for observer in self.observers:
            observer(max(lateness, 0.0))
        self._schedule()


class FloodGuard:
    """A token bucket per connection, plus flood detection.

    A frame takes one token; the bucket refills at ``rate`` tokens a second up to
    ``burst``.  Frames over the limit are dropped; the first drop of a burst is
    answered with one ``rate_limited`` error, later ones silently.  A burst ends
    after one second without drops; a burst lasting ``flood_seconds`` closes the
    connection.

    Frames are charged by when they arrived, not when they are handled.  The
    adapter reports each read from the socket (:meth:`read`); the frames parsed
    from it arrived after the previous read and by this one, and a frame is
    charged at the earliest time in that span at which the bucket had a token
    for it.  When the process was too busy to read for a while, an honest
    client's frames come in one read, and the tokens it earned meanwhile pay
    for them instead of overflowing the bucket.  The span reaches back only as
    far as the event loop was late (``lag``, see :class:`LagProbe`): in a
    process that keeps up, the frames of a read are charged at the read, and a
    client silent for a while, then flooding, gets ``burst`` frames through at
    once; in one that was late by L seconds, ``burst + rate * L``.  Without
    reads reported, a frame is charged when it is checked.
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        flood_seconds: float,
        now: Callable[[], float],
        lag: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._flood_seconds = flood_seconds
        self._now = now
        self._lag = lag
        self._tokens = float(burst)
        #: When ``_tokens`` was counted: the charge time of the last frame.
        self._last = now()
        #: The span of the latest read: frames arrived after ``_since``, by
        #: ``_read_at``; ``None`` until a read is reported.
        self._read_at: float | None = None
        self._since = self._last
        self._burst_started: float | None = None
        self._last_drop = 0.0

    def read(self) -> None:
        """Bytes were read from the socket: the frames in them arrived since the last read."""
        now = self._now()
        previous = self._last if self._read_at is None else self._read_at
        self._since = max(previous, now - self._lag())
        self._read_at = now

    def check(self) -> Verdict:
        """Account for one incoming frame."""
        if self._read_at is None:
            now = since = self._now()
        else:
            now, since = self._read_at, self._since
        # The earliest the frame can be charged: not before it may have
        # arrived, nor before the frame charged last.
        at = max(since, self._last)
        tokens = min(self._burst, self._tokens + (at - self._last) * self._rate)
        if tokens < 1.0:
            # It is charged once the bucket has a token, if that is by the read.
            at += (1.0 - tokens) / self._rate
            tokens = 1.0
        if at <= now:
            self._tokens = tokens - 1.0
            self._last = at
            if self._burst_started is not None and now - self._last_drop > 1.0:
                self._burst_started = None
            return Verdict.ALLOW
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = max(self._last, now)
        if self._burst_started is not None and now - self._last_drop > 1.0:
            self._burst_started = None
        self._last_drop = now
        if self._burst_started is None:
            self._burst_started = now
            return Verdict.DROP_AND_WARN
        if now - self._burst_started >= self._flood_seconds:
            return Verdict.CLOSE
        return Verdict.DROP


class Outbox:
    """Frames waiting for a connection whose transport is not taking more.

    Below ``soft_limit`` bytes every frame is kept.  Above it, a frame with a
    supersede key (a sender's position) replaces the same key's queued frame:
    only the latest position of each user matters.  Other frames are never
    dropped; past ``hard_limit`` the caller must close the connection.
    """

    def __init__(self, soft_limit: int, hard_limit: int) -> None:
        self._soft = soft_limit
        self._hard = hard_limit
        self._frames: list[bytes | None] = []
        self._latest: dict[str, int] = {}
        self.size = 0
        self.superseded = 0

    def __bool__(self) -> bool:
        return self.size > 0

    def push(self, frame: bytes, supersede_key: str | None = None) -> bool:
        """Queue a frame.

        :returns: ``False`` when the queue is past the hard limit.
        """
        if supersede_key is not None:
            if self.size + len(frame) > self._soft:
                index = self._latest.get(supersede_key)
                if index is not None:
                    old = self._frames[index]
                    assert old is not None
                    self._frames[index] = None
                    self.size -= len(old)
                    self.superseded += 1
            self._latest[supersede_key] = len(self._frames)
        self._frames.append(frame)
        self.size += len(frame)
        return self.size <= self._hard

    def take_each(self) -> list[bytes]:
        """Everything queued, in order, one item per frame; the queue is emptied."""
        frames = [f for f in self._frames if f is not None]
        self.clear()
        return frames

    def take(self) -> bytes:
        """Everything queued, in order, as one write; the queue is emptied."""
        frames = self._frames
        if len(frames) == 1 and frames[0] is not None:
            data = frames[0]
        else:
            data = b"".join(f for f in frames if f is not None)
        self.clear()
        return data

    def clear(self) -> None:
        """Forget everything queued."""
        self._frames = []
        self._latest.clear()
        self.size = 0


class OriginPolicy:
    """An allow-list of browser origins (``https://app.example.com``, ``https://*.example.com``).

    An empty list allows every origin.  Requests without an ``Origin`` header
    (non-browser clients) are always allowed: the token is what authenticates.
    ``null`` is the opaque origin of sandboxed iframes, ``file://`` pages (which
    some browsers send as ``file://``) and privacy-sensitive redirects: any site
    can produce it, so a list admits it only when it names ``null`` itself.
    """

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(
            p.strip().lower().rstrip("/") for p in patterns if p.strip()
        )
        self._regexes = tuple(
            re.compile("^" + re.escape(p).replace(r"\*\.", r"(?:[a-z0-9-]+\.)+") + "$")
            for p in self.patterns
        )

    def allows(self, origin: str | None) -> bool:
        """Whether a handshake with this ``Origin`` header may proceed."""
        if not self._regexes or not origin:
            return True
        candidate = origin.strip().lower().rstrip("/")
        if candidate.startswith("file:"):
            candidate = "null"
        return any(r.match(candidate) for r in self._regexes)
