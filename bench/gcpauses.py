#!/usr/bin/env python3
"""Run twistd with a recorder of garbage-collection pauses in its own process.

    python bench/gcpauses.py --out FILE [--garbage] -- TWISTD [twistd args ...]

Run with the Python of the virtualenv the server is installed in.  Before
twistd starts, a callback on ``gc.callbacks`` notes ``time.perf_counter()`` at
each collection's ``start`` and the duration at its ``stop``, until the reactor
begins to shut down.  The summary (per
generation: collections, objects collected, max and p50/p99/p99.9 of the pauses
in ms, wall clock; the max and p99 of their CPU time, which leaves out the time
the process waited for its core; the ten longest with their time since start; ``gc.get_freeze_count()``) is
written to ``FILE`` as JSON when the reactor begins to shut down, at exit, and on
SIGUSR1 (``FILE`` is rewritten each time).

SIGHUP times one full collection (``gc.collect()``) apart from the recorded
pauses and writes the summary with ``probe_full_ms`` and ``probe_full_cpu_ms``:
what a full collection costs at that moment, frozen objects not walked.

``--no-auto-gc`` turns automatic collection off, so that cycles pile up for
the audit.  ``--garbage`` adds an audit on SIGUSR2: unfreeze, collect everything with
``gc.DEBUG_SAVEALL`` and write the types of the objects that only cyclic
collection could free (``FILE`` with ``.garbage.json``), then freeze again if
the process had frozen objects.  Anything of a closed connection in that list
is what a frozen heap would keep forever.  The audit itself is one long pause:
it is not part of the recorded pauses.

Nothing here is part of officerouter: the bench driver's ``--gc-pauses`` starts
the server through this script (bench/README.md).
"""

from __future__ import annotations

import argparse
import atexit
import collections
import gc
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

T0 = time.perf_counter()


class Recorder:
    """Every collection's duration, by generation."""

    def __init__(self) -> None:
        self.pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self.collected = [0, 0, 0]
        self.longest: list[tuple[float, float, float, int]] = []
        #: CPU time of each pause (thread time): what the collection itself
        #: cost, without the time the process waited for its core.
        self.cpu: list[float] = []
        self._start = 0.0
        self._start_cpu = 0.0
        self.paused = False

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
            self._start_cpu = time.thread_time()
            return
        if self.paused:
            return
        now = time.perf_counter()
        ms = (now - self._start) * 1000.0
        cpu = (time.thread_time() - self._start_cpu) * 1000.0
        self.cpu.append(cpu)
        gen = info["generation"]
        self.pauses[gen].append(ms)
        self.collected[gen] += info.get("collected", 0)
        if len(self.longest) < 10 or ms > self.longest[-1][0]:
            self.longest.append((ms, cpu, now - T0, gen))
            self.longest.sort(reverse=True)
            del self.longest[10:]

    def summary(self) -> dict[str, Any]:
        def pct(values: list[float], q: float) -> float | None:
            if not values:
                return None
            ordered = sorted(values)
            return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

        every = [ms for values in self.pauses.values() for ms in values]
        return {
            "uptime_s": round(time.perf_counter() - T0, 1),
            "max_ms": round(max(every), 3) if every else None,
            "p50_ms": pct(every, 0.50),
            "p99_ms": pct(every, 0.99),
            "p999_ms": pct(every, 0.999),
            "max_cpu_ms": round(max(self.cpu), 3) if self.cpu else None,
            "p99_cpu_ms": pct(self.cpu, 0.99),
            "by_generation": {
                str(gen): {
                    "collections": len(values),
                    "collected": self.collected[gen],
                    "max_ms": round(max(values), 3) if values else None,
                    "p50_ms": pct(values, 0.50),
                    "p99_ms": pct(values, 0.99),
                    "total_ms": round(sum(values), 1),
                }
                for gen, values in self.pauses.items()
            },
            "longest": [
                {
                    "ms": round(ms, 3),
                    "cpu_ms": round(cpu, 3),
                    "at_s": round(at, 1),
                    "generation": gen,
                }
                for ms, cpu, at, gen in self.longest
            ],
            "frozen": gc.get_freeze_count(),
            "threshold": list(gc.get_threshold()),
            "tracked": len(gc.get_objects()),
        }


#: Garbage of these modules gets one reference cycle through it described.
CYCLE_ROOTS = ("officerouter.", "autobahn.", "twisted.internet.")


def _edge(parent: Any, child: Any) -> str:
    """How ``parent`` refers to ``child``: an attribute, key, index or cell."""
    if isinstance(parent, dict):
        for key, value in parent.items():
            if value is child:
                return f"[{key!r}]"
    if isinstance(parent, (list, tuple)):
        for i, value in enumerate(parent):
            if value is child:
                return f"[{i}]"
    attrs = getattr(parent, "__dict__", None)
    if attrs is child:
        return ".__dict__"
    if isinstance(attrs, dict):
        for key, value in attrs.items():
            if value is child:
                return f".{key}"
    for name in ("__self__", "__func__", "__closure__", "cell_contents", "f_locals"):
        if getattr(parent, name, None) is child:
            return f".{name}"
    return f" -> {type(child).__qualname__}"


def shortest_cycle(root: Any, among: set[int]) -> str | None:
    """The shortest chain of references from ``root`` back to itself."""
    parents: dict[int, tuple[Any, Any]] = {}
    queue = collections.deque([root])
    while queue:
        node = queue.popleft()
        for child in gc.get_referents(node):
            if child is root:
                chain = [(node, child)]
                while node is not root:
                    before, _ = parents[id(node)]
                    chain.append((before, node))
                    node = before
                chain.reverse()
                return type(root).__qualname__ + "".join(_edge(p, c) for p, c in chain)
            if id(child) in among and id(child) not in parents:
                parents[id(child)] = (node, child)
                queue.append(child)
    return None


def audit_garbage(recorder: Recorder) -> dict[str, Any]:
    """Collect everything, frozen objects included, and name what was cyclic garbage."""
    recorder.paused = True
    frozen = gc.get_freeze_count()
    try:
        gc.unfreeze()
        gc.garbage.clear()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            # SAVEALL keeps every unreachable object in gc.garbage to be named
            # instead of freeing it.
            gc.collect()
        finally:
            gc.set_debug(0)
        kinds = collections.Counter(
            f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.garbage
        )
        found = len(gc.garbage)
        cycles = {}
        for o in gc.garbage:
            name = f"{type(o).__module__}.{type(o).__qualname__}"
            if name in cycles or not name.startswith(CYCLE_ROOTS):
                continue
            cycles[name] = shortest_cycle(o, {id(g) for g in gc.garbage})
        gc.garbage.clear()
        if frozen:
            gc.freeze()
        return {
            "frozen_before": frozen,
            "objects": found,
            "types": dict(kinds.most_common(40)),
            "cycles": cycles,
        }
    finally:
        recorder.paused = False


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--garbage", action="store_true")
    p.add_argument(
        "--no-auto-gc",
        action="store_true",
        help="gc.disable(): cycles pile up until the --garbage audit names them",
    )
    p.add_argument("argv", nargs=argparse.REMAINDER)
    a = p.parse_args()
    argv = a.argv[1:] if a.argv[:1] == ["--"] else a.argv
    if not argv:
        p.error("give the twistd command after --")
    recorder = Recorder()
    gc.callbacks.append(recorder)
    if a.no_auto_gc:
        gc.disable()

    def dump(*_: Any) -> None:
        a.out.write_text(json.dumps(recorder.summary(), indent=1) + "\n")

    def probe(*_: Any) -> None:
        # What a full collection costs now, with whatever the process holds
        # (frozen objects are not walked): timed apart from the pauses.
        summary = recorder.summary()
        recorder.paused = True
        try:
            wall, cpu = time.perf_counter(), time.thread_time()
            gc.collect()
            summary["probe_full_ms"] = round((time.perf_counter() - wall) * 1000, 3)
            summary["probe_full_cpu_ms"] = round((time.thread_time() - cpu) * 1000, 3)
        finally:
            recorder.paused = False
        a.out.write_text(json.dumps(summary, indent=1) + "\n")

    def dump_garbage(*_: Any) -> None:
        # The pause this audit causes would be kept by the collection that
        # runs it, so the pauses are written first.
        dump()
        result = audit_garbage(recorder)
        a.out.with_suffix(".garbage.json").write_text(json.dumps(result, indent=1))

    def stopping() -> None:
        # What the daemon does while it stops (close every connection, hand
        # frozen objects back) is not serving anyone: not recorded.
        dump()
        recorder.paused = True

    atexit.register(lambda: None if recorder.paused else dump())

    from twisted.internet import reactor

    def install() -> None:
        # After twistd's own set-up, which may claim signals.
        signal.signal(signal.SIGUSR1, lambda *_: reactor.callFromThread(dump))
        signal.signal(signal.SIGHUP, lambda *_: reactor.callFromThread(probe))
        if a.garbage:
            signal.signal(
                signal.SIGUSR2, lambda *_: reactor.callFromThread(dump_garbage)
            )

    reactor.callWhenRunning(install)
    reactor.addSystemEventTrigger("before", "shutdown", stopping)

    from twisted.scripts.twistd import run

    sys.argv = argv
    run()


if __name__ == "__main__":
    main()
