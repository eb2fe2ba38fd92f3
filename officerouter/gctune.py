"""How the daemon uses Python's cyclic garbage collector: short pauses with many connections.

A full (generation 2) collection walks every tracked object.  With 10 000
connections that was 80-250 ms with the event loop stopped (docs/benchmarks.md),
and CPython runs one whenever the long-lived objects grew by a quarter of what
the previous one kept.  Objects moved to the permanent generation
(``gc.freeze()``) are never walked again, so the policy is:

* before the daemon listens, collect once and freeze what is left (modules,
  classes, settings: everything that lives as long as the process);
* after every full collection, freeze what survived it, so that the next one
  walks only what was allocated since;
* four times a second (``sweep_interval``), if anything reached the oldest
  generation since the last full collection, run a full collection: it walks a
  quarter second's worth of new long-lived objects (a connection storm's
  newcomers: about 30-40 us of collection per connection), never the
  connections already there.  CPython's own trigger would wait for a quarter
  of the last survivors, after start-up about 20 000 objects: 30-45 ms; a
  sweep once a second still took 33 ms in a storm of 830 connections a second.

A frozen object is never collected by the cyclic collector, only by reference
counting.  That is sound because a closed connection, a finished request and a
delivered message leave no reference cycle: reference counting frees them the
moment they are dropped (``bench/soak.py --gc-audit`` checks it, and
``tests/e2e/test_gc.py`` for a connection).  A cycle created elsewhere (an
external effect handler, say) that outlived a full collection before becoming
garbage would stay in memory; ``--gc-full-interval`` unfreezes and collects
everything now and then for such a deployment, one long pause each time.
``--no-gc-freeze`` turns the policy off (docs/configuration.md).
"""

from __future__ import annotations

import gc
from typing import Any

from twisted.application import service
from twisted.internet.interfaces import IDelayedCall, IReactorTime

#: Seconds between checks for new long-lived objects to collect and freeze.
SWEEP_INTERVAL = 0.25


class GcPolicy(service.Service):
    """Freeze what outlives full collections; run those often, so each is short.

    :param clock: schedules the sweeps and the periodic full collection.
    :param sweep_interval: seconds between sweeps (a full collection if
        anything reached the oldest generation since the last one).
    :param full_interval: seconds between full collections of everything,
        frozen objects included; 0 for never.
    :param threshold: ``gc.set_threshold`` arguments while started, or ``None``
        to leave the collector's.
    """

    def __init__(
        self,
        clock: IReactorTime,
        *,
        sweep_interval: float = SWEEP_INTERVAL,
        full_interval: float = 0.0,
        threshold: tuple[int, ...] | None = None,
    ) -> None:
        self._clock = clock
        self._sweep_interval = sweep_interval
        self._full_interval = full_interval
        self._threshold = threshold
        self._saved_threshold: tuple[int, ...] | None = None
        self._sweep_call: IDelayedCall | None = None
        self._full_call: IDelayedCall | None = None

    def startService(self) -> None:
        """Freeze what start-up left, and keep freezing after each full collection."""
        if self.running:
            return
        super().startService()
        if self._threshold is not None:
            self._saved_threshold = gc.get_threshold()
            gc.set_threshold(*self._threshold)
        gc.callbacks.append(self._after_collection)
        # The callback freezes the survivors of this collection.
        gc.collect()
        self._sweep_call = self._clock.callLater(self._sweep_interval, self.sweep)
        if self._full_interval > 0:
            self._full_call = self._clock.callLater(
                self._full_interval, self.collect_everything
            )

    def stopService(self) -> None:
        """Stop freezing; what is frozen is handed back to the collector."""
        if not self.running:
            return
        super().stopService()
        for call in (self._sweep_call, self._full_call):
            if call is not None and call.active():
                call.cancel()
        self._sweep_call = self._full_call = None
        gc.callbacks.remove(self._after_collection)
        gc.unfreeze()
        if self._saved_threshold is not None:
            gc.set_threshold(*self._saved_threshold)
            self._saved_threshold = None

    def sweep(self) -> None:
        """A full collection if a younger one moved anything to the oldest generation."""
        self._sweep_call = self._clock.callLater(self._sweep_interval, self.sweep)
        # The third count is the collections of generation 1 since the last
        # full one: none, and the oldest generation holds nothing new.
        if gc.get_count()[2] > 0:
            gc.collect()

    def collect_everything(self) -> None:
        """Unfreeze, collect every generation, freeze again: one long pause."""
        self._full_call = self._clock.callLater(
            self._full_interval, self.collect_everything
        )
        gc.unfreeze()
        gc.collect()

    def _after_collection(self, phase: str, info: dict[str, Any]) -> None:
        # After a full collection every younger generation is empty and the
        # oldest holds only what was just found reachable: freezing it takes
        # no garbage along.
        if phase == "stop" and info["generation"] == 2:
            gc.freeze()
