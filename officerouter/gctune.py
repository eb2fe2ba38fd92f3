"""How the daemon uses Python's cyclic garbage collector: short pauses with many connections.

A full (generation 2) collection walks every tracked object.  With 10 000
connections that was 80-250 ms with the event loop stopped (docs/benchmarks.md),
and CPython runs one whenever the long-lived objects grew by a quarter.  Objects
moved to the permanent generation (``gc.freeze()``) are never walked again, so
the policy is:

* after start-up, collect once and freeze what is left (modules, classes, the
  settings: everything that lives as long as the process);
* after every full collection, freeze what survived it.  Each full collection
  then walks only what was allocated since the previous one, and the next comes
  when that grew by a quarter of the last survivors, so the walks stay short
  however many connections are open;
* the collector's thresholds are left as they are unless configured.

A frozen object is never collected by the cyclic collector, only by reference
counting.  That is sound because a closed connection, a finished request and a
delivered message leave no reference cycle: reference counting frees them the
moment they are dropped (``bench/soak.py --gc-audit`` checks it, and
``tests/e2e/test_gc.py`` for a connection).  A cycle created elsewhere (an
external effect handler, say) after surviving a full collection would stay in
memory; ``--gc-full-interval`` unfreezes and collects everything now and then
for such a deployment, at the price of one long pause each time.
``--no-gc-freeze`` turns the policy off (docs/configuration.md).
"""

from __future__ import annotations

import gc
from typing import Any

from twisted.application import service
from twisted.internet.interfaces import IDelayedCall, IReactorTime


class GcPolicy(service.Service):
    """Freeze what outlives full collections; optionally collect everything now and then.

    :param clock: schedules the periodic full collection.
    :param full_interval: seconds between full collections of everything,
        frozen objects included; 0 for never.
    :param threshold: ``gc.set_threshold`` arguments while started, or ``None``
        to leave the collector's.
    """

    def __init__(
        self,
        clock: IReactorTime,
        *,
        full_interval: float = 0.0,
        threshold: tuple[int, ...] | None = None,
    ) -> None:
        self._clock = clock
        self._full_interval = full_interval
        self._threshold = threshold
        self._saved_threshold: tuple[int, ...] | None = None
        self._call: IDelayedCall | None = None

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
        self._schedule()

    def stopService(self) -> None:
        """Stop freezing; what is frozen is handed back to the collector."""
        if not self.running:
            return
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        gc.callbacks.remove(self._after_collection)
        gc.unfreeze()
        if self._saved_threshold is not None:
            gc.set_threshold(*self._saved_threshold)
            self._saved_threshold = None

    def collect_everything(self) -> None:
        """Unfreeze, collect every generation, freeze again: one long pause."""
        self._call = None
        gc.unfreeze()
        gc.collect()
        self._schedule()

    def _schedule(self) -> None:
        if self._full_interval > 0:
            self._call = self._clock.callLater(
                self._full_interval, self.collect_everything
            )

    def _after_collection(self, phase: str, info: dict[str, Any]) -> None:
        # After a full collection every younger generation is empty and the
        # oldest holds only what was just found reachable: freezing it takes
        # no garbage along.
        if phase == "stop" and info["generation"] == 2:
            gc.freeze()
