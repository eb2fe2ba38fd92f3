"""What a stopping daemon waits for: connections and requests still in flight."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from twisted.internet.defer import Deferred, succeed

T = TypeVar("T")


class InFlight(Generic[T]):
    """A set of things in flight, and a way to wait until none is left."""

    def __init__(self) -> None:
        self._items: set[T] = set()
        self._waiting: list[Deferred[None]] = []

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[T]:
        """The things in flight now (a snapshot)."""
        return iter(list(self._items))

    def add(self, item: T) -> None:
        """Count ``item`` as in flight."""
        self._items.add(item)

    def discard(self, item: T) -> None:
        """``item`` is done (idempotent); wake the waiters when none is left."""
        self._items.discard(item)
        if not self._items:
            waiting, self._waiting = self._waiting, []
            for d in waiting:
                d.callback(None)

    def when_idle(self) -> Deferred[None]:
        """Fire once nothing is in flight."""
        if not self._items:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiting.append(d)
        return d
