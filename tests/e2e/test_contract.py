"""The generated documents against a real router on loopback.

schemathesis exercises the HTTP endpoints from the OpenAPI document, and every
frame a client receives is checked against the JSON Schema.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode

import pytest_twisted
from twisted.internet.threads import deferToThread

from officerouter import schema
from officerouter.catalog import BUILTIN
from tests.loopback import (
    SERVICE_ID,
    SERVICE_SECRET,
    Client,
    Router,
    both_deployments,
)

pytestmark = pytest.mark.e2e

deployment = both_deployments

#: The endpoints schemathesis calls. The /websocket upgrade is left out: its
#: answers are handshakes, exercised by test_connect.py.
OPERATIONS = [
    ("/internal/notify", "POST"),
    ("/internal/presence", "GET"),
    ("/healthz", "GET"),
]
AUTH = {"CF-Access-Client-Id": SERVICE_ID, "CF-Access-Client-Secret": SERVICE_SECRET}

# Bounded and the same on every run: the suite stays fast and never flakes.
EXERCISE = settings(
    max_examples=25,
    derandomize=True,
    database=None,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)


def exercise_one(
    operation: Any, where: str, base_url: str, mode: GenerationMode
) -> list[str]:
    """Call one operation with cases generated from the OpenAPI document;
    returns what went wrong (a 5xx, or a response the document does not allow)."""
    problems: list[str] = []

    @EXERCISE
    @given(operation.as_strategy(generation_mode=mode))
    def call(case: Any) -> None:
        # The service token as explicit auth: schemathesis also probes each
        # operation without it and with a wrong one (ignored_auth).
        response = case.call(base_url=base_url, headers=dict(AUTH))
        if response.status_code >= 500:
            problems.append(f"{where}: {response.status_code}")
        try:
            case.validate_response(response, headers=dict(AUTH))
        except AssertionError as e:  # schemathesis' check failures
            problems.append(f"{where}: {e}")

    call()
    return problems


def exercise(base_url: str, mode: GenerationMode) -> list[str]:
    """Every operation of :data:`OPERATIONS`, in turn."""
    api = schemathesis.openapi.from_dict(schema.openapi(BUILTIN))
    problems: list[str] = []
    for path, method in OPERATIONS:
        if mode == GenerationMode.NEGATIVE and path == "/healthz":
            continue  # no input to get wrong
        where = f"{method} {path}"
        problems += exercise_one(api[path][method], where, base_url, mode)
    return problems


@pytest.mark.parametrize(
    "mode",
    [GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
    ids=["valid", "invalid"],
)
@pytest_twisted.ensureDeferred
async def test_the_http_endpoints_keep_to_the_openapi_document(
    router: Router, token, mode
):
    """Requests generated from docs/openapi.json, valid and invalid, never get
    a 5xx nor an answer the document does not describe."""
    await router.connect(token("alice", "org-a"))
    # Requests block: they run in a thread while the reactor serves them.
    problems = await deferToThread(exercise, router.base, mode)
    assert problems == []


async def receive(client: Client, wanted: set[str]) -> None:
    """Take frames until one of each wanted type has arrived."""
    seen: set[str] = set()
    while not wanted <= seen:
        seen.add((await client.next())["type"])


@pytest_twisted.ensureDeferred
async def test_every_frame_a_client_receives_is_in_the_schema(router: Router, token):
    """Frames of every kind the router sends (connected, presence events and
    diffs, relays, batched positions, notifications, errors, token_refreshed) validate
    against ServerFrame."""
    validator = jsonschema.Draft202012Validator(
        {**schema.json_schema(BUILTIN), "$ref": "#/$defs/ServerFrame"}
    )
    alice = await router.connect(token("alice", "org-a", "admin"), full=True)
    bob = await router.connect(
        token("bob", "org-a"), full=True, query="?positions=batched"
    )
    gus = await router.connect(token("gus", "org-a", "pending_guest"), full=True)
    dora = await router.connect(
        token("dora", "org-a"), full=True, query="?presence=diff"
    )
    bob.send_json({"type": "position_update", "payload": {"x": 1, "y": 2.5}})
    alice.send_json(
        {"type": "position_update", "payload": {"x": 3, "y": 4, "roomId": "hall"}}
    )
    alice.send_json({"type": "nope", "payload": {}})
    alice.send_json({"type": "refresh_token", "payload": {"token": token("alice")}})
    await receive(alice, {"position_update", "error", "token_refreshed"})
    await receive(bob, {"positions"})
    for routing, type_, payload in (
        ("broadcast", "room_updated", {"roomId": "r", "name": "Hall"}),
        ("direct", "guest_knock", {"guestId": "gus", "name": "Gus"}),
        ("broadcast", "user_updated", {"userId": "gus", "role": "guest"}),
        ("broadcast", "user_updated", {"userId": "bob", "role": "admin"}),
        ("broadcast", "user_updated", {"userId": "gus", "role": "pending_guest"}),
        ("direct", "admin_test", {"message": "a test from the admin page"}),
    ):
        body: dict[str, Any] = {
            "orgId": "org-a",
            "routing": routing,
            "type": type_,
            "payload": payload,
        }
        if routing == "direct":
            body["targets"] = ["alice"]
        status, answer = await router.notify(body)
        assert status == 200, answer
    await receive(
        alice,
        {
            "room_updated",
            "guest_knock",
            "admin_test",
            "user_joined",
            "user_role_changed",
            "user_left",
        },
    )
    await receive(bob, {"user_updated", "user_left"})
    await receive(gus, {"presence", "user_updated"})
    await receive(dora, {"presence_state", "presence_diff"})
    kinds = set()
    for client in (alice, bob, gus, dora):
        for raw in client.raw:
            frame = json.loads(raw)
            validator.validate(frame)
            kinds.add(frame["type"])
    assert kinds == set(schema.contract(BUILTIN).server_frames) - {
        "space_deleted",
        # These two close the connection; tests of their own cover them.
        "user_banned",
        "user_disconnected",
    }
