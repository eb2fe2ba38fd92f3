"""A batch whose elements fail while being published: each answers its own status.

``NotifyResource`` served in memory by ``treq.testing.StubTreq``, over a registry
whose backplane the test makes fail.
"""

from __future__ import annotations

import json
from typing import Any

from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.web.resource import Resource

from officerouter.backplane import BackplaneUnavailable, Once, Outgoing, Published
from officerouter.config import Settings
from officerouter.web import NotifyResource
from tests.loopback import SERVICE_ID, SERVICE_SECRET
from tests.unit.fakes import FakeBackplane, make_registry, result_of


class FailingBackplane(FakeBackplane):
    """Publishes the first message, then fails each next one with ``errors``."""

    def __init__(self, clock: Clock, errors: list[Exception]) -> None:
        super().__init__(clock)
        self.errors = errors

    def publish(
        self, org_id: str, message: Outgoing, once: Once | None = None
    ) -> defer.Deferred[Published]:
        if self.published and self.errors:
            return defer.fail(self.errors.pop(0))
        return super().publish(org_id, message, once)


def room_updated(name: str) -> dict[str, Any]:
    return {
        "orgId": "org-a",
        "routing": "broadcast",
        "type": "room_updated",
        "payload": {"roomId": "r", "name": name},
    }


def post(settings: Settings, backplane: FakeBackplane, body: Any) -> tuple[int, Any]:
    """POST ``body`` to a NotifyResource whose registry uses ``backplane``."""
    registry = make_registry(Clock(), backplane=backplane)
    root = Resource()
    root.putChild(b"notify", NotifyResource(registry, settings))
    stub = StubTreq(root)
    response = result_of(
        stub.post(
            "http://router/notify",
            data=json.dumps(body).encode(),
            headers={
                "Content-Type": "application/json",
                "CF-Access-Client-Id": SERVICE_ID,
                "CF-Access-Client-Secret": SERVICE_SECRET,
            },
        )
    )
    stub.flush()
    return response.code, json.loads(result_of(response.content()))


def test_elements_failing_to_publish_answer_503_or_500(settings, log_events):
    """An element the backplane could not take answers 503 (retry it) and one
    that hit a bug 500, logged; the elements published before and after answer
    200, and the batch itself 200 with ``ok: false``."""
    errors: list[Exception] = [
        BackplaneUnavailable("redis unavailable"),
        RuntimeError("a bug"),
    ]
    backplane = FailingBackplane(Clock(), errors)
    status, answer = post(settings, backplane, [room_updated(str(i)) for i in range(4)])
    assert status == 200
    assert answer["ok"] is False
    assert [r["status"] for r in answer["results"]] == [200, 503, 500, 200]
    unavailable, bug = answer["results"][1:3]
    assert unavailable["error"] == "unavailable"
    assert "retry" in unavailable["message"]
    assert bug == {
        "ok": False,
        "error": "internal_error",
        "message": "internal error",
        "status": 500,
    }
    assert any(e.get("log_failure") for e in log_events)
    assert len(backplane.published) == 2


def test_a_batch_is_refused_whole_while_the_backplane_is_down(settings):
    """A batch arriving while nothing can be numbered is a 503, nothing published."""
    backplane = FailingBackplane(Clock(), [])
    backplane.down = "redis unavailable"
    status, answer = post(settings, backplane, [room_updated("a")])
    assert status == 503
    assert answer["error"] == "unavailable"
    assert backplane.published == []
