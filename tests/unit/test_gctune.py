"""The garbage-collection policy: what it freezes, when, and that it undoes itself."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from twisted.internet.task import Clock

from officerouter.gctune import SWEEP_INTERVAL, GcPolicy


class Node:
    """A weak-referenceable object that can be put in a cycle."""

    other: object = None


@pytest.fixture(autouse=True)
def collector() -> Iterator[None]:
    """Leave the process's collector as the test found it."""
    threshold = gc.get_threshold()
    callbacks = list(gc.callbacks)
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()
        gc.set_threshold(*threshold)
        gc.callbacks[:] = callbacks


def tracked(obj: object) -> bool:
    """Whether ``obj`` is in a generation the collector walks (not frozen)."""
    return any(o is obj for o in gc.get_objects())


def cycle() -> weakref.ref[Node]:
    """A two-object reference cycle nothing else refers to."""
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


def test_start_freezes_what_start_up_left():
    """Objects alive when the policy starts are frozen: no collection walks them again."""
    kept = [Node()]
    assert tracked(kept)
    policy = GcPolicy(Clock())
    policy.startService()
    assert not tracked(kept)
    assert gc.get_freeze_count() > 0
    policy.stopService()


def test_start_collects_garbage_before_freezing():
    """Cyclic garbage present at start is collected, not frozen."""
    gone = cycle()
    policy = GcPolicy(Clock())
    policy.startService()
    assert gone() is None
    policy.stopService()


def test_survivors_of_a_full_collection_are_frozen():
    """After every full collection, what survived it is frozen; garbage is collected."""
    policy = GcPolicy(Clock())
    policy.startService()
    kept = [Node()]
    gone = cycle()
    assert tracked(kept)
    gc.collect()
    assert not tracked(kept)
    assert gone() is None
    policy.stopService()


def test_younger_collections_freeze_nothing():
    """A collection of generations 0 and 1 leaves what survived it to the collector."""
    policy = GcPolicy(Clock())
    policy.startService()
    kept = [Node()]
    gc.collect(1)
    assert tracked(kept)
    policy.stopService()


def test_a_frozen_cycle_waits_for_the_periodic_full_collection():
    """A cycle frozen alive and dropped later is freed by the --gc-full-interval pass."""
    clock = Clock()
    held = cycle()
    node = held()
    policy = GcPolicy(clock, full_interval=600)
    policy.startService()
    del node
    gc.collect()
    assert held() is not None, "frozen: out of the collector's reach"
    clock.pump([SWEEP_INTERVAL] * int(599 / SWEEP_INTERVAL))
    assert held() is not None, "sweeps leave frozen objects alone"
    clock.advance(1)
    assert held() is None
    assert 1200 in [call.getTime() for call in clock.getDelayedCalls()]
    policy.stopService()
    assert clock.getDelayedCalls() == []


def test_no_periodic_collection_of_frozen_objects_by_default():
    """Without --gc-full-interval only the sweep is scheduled."""
    clock = Clock()
    policy = GcPolicy(clock)
    policy.startService()
    assert [call.getTime() for call in clock.getDelayedCalls()] == [SWEEP_INTERVAL]
    policy.stopService()


def test_a_sweep_collects_and_freezes_what_reached_the_oldest_generation():
    """Objects promoted by a younger collection are collected or frozen at the next sweep."""
    clock = Clock()
    policy = GcPolicy(clock)
    policy.startService()
    gc.disable()  # only the collections this test asks for
    kept = [Node()]
    held = [cycle()]
    gone = held[0]
    node = gone()
    gc.collect(0)
    gc.collect(1)
    del node, held  # garbage now, in the oldest generation
    assert tracked(kept)
    assert gone() is not None
    clock.advance(SWEEP_INTERVAL)
    assert not tracked(kept)
    assert gone() is None
    policy.stopService()


def test_a_sweep_with_nothing_new_collects_nothing():
    """No younger collection since the last full one: the sweep does not collect."""
    clock = Clock()
    policy = GcPolicy(clock)
    policy.startService()
    seen: list[int] = []
    gc.disable()  # only the collections this test asks for
    gc.collect()
    gc.callbacks.append(
        lambda phase, info: seen.append(info["generation"]) if phase == "stop" else None
    )
    gc.collect(0)
    clock.advance(SWEEP_INTERVAL)
    assert seen == [0]
    gc.collect(1)
    clock.advance(SWEEP_INTERVAL)
    assert seen == [0, 1, 2]
    policy.stopService()


def test_stop_restores_the_collector():
    """Stopping unfreezes everything, removes the callback and restores the thresholds."""
    before = gc.get_threshold()
    callbacks = list(gc.callbacks)
    policy = GcPolicy(Clock(), threshold=(5000, 20, 20))
    policy.startService()
    assert gc.get_threshold() == (5000, 20, 20)
    policy.stopService()
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
    assert gc.callbacks == callbacks
    kept = [Node()]
    gc.collect()
    assert tracked(kept)
