"""A closed connection is freed by reference counting, without the cyclic collector.

The daemon freezes what survives a full collection (officerouter.gctune), and a
frozen reference cycle is never collected: a connection that closed inside a
cycle would stay in memory for good.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

import pytest_twisted

from tests.loopback import Router, sleep

pytestmark = pytest.mark.e2e

ORG = "org-a"


@pytest.fixture
def no_automatic_collection() -> Iterator[None]:
    """Only reference counting frees objects during the test."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.mark.usefixtures("no_automatic_collection")
@pytest.mark.parametrize("ending", ["close", "abort"])
@pytest_twisted.ensureDeferred
async def test_a_closed_connection_leaves_no_cycle(router: Router, token, ending):
    """After a close handshake or an aborted TCP connection, the server's protocol
    is gone with no garbage collection at all."""
    client = await router.connect(token("alice", ORG))
    bob = await router.connect(token("bob", ORG))
    client.send_json({"type": "position_update", "payload": {"x": 1, "y": 2}})
    await bob.next_of("position_update")
    (protocol,) = (
        p
        for p in router.factory.live
        if p.transport.getPeer().port == client.transport.getHost().port
    )
    protocol_ref = weakref.ref(protocol)
    del protocol
    if ending == "close":
        client.sendClose()
    else:
        client.transport.abortConnection()
    await router.until(lambda: len(router.connections.open) == 1)
    # That wakes this test from inside the server's connectionLost: let it return.
    await sleep(0)
    # tests/loopback.py follows each connection through closures it put on the
    # protocol (ServerConnections._watch): that cycle is the test's own.  It
    # also keeps the HTTP channel, and so the TCP transport, in one of its own;
    # bench/soak.py --gc-audit checks those without it.
    protocol = protocol_ref()
    if protocol is not None:
        vars(protocol).pop("makeConnection", None)
        vars(protocol).pop("connectionLost", None)
    del protocol
    assert protocol_ref() is None
