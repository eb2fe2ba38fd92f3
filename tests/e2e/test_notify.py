"""``POST /internal/notify`` over a real socket: every way the backend can be refused."""

from __future__ import annotations

import json
from typing import Any

import pytest

import pytest_twisted

from tests.loopback import SERVICE_ID, SERVICE_SECRET, Client, Router, both_deployments

pytestmark = pytest.mark.e2e

ORG = "org-a"
GOOD: dict[str, Any] = {
    "orgId": ORG,
    "routing": "broadcast",
    "type": "room_updated",
    "payload": {"roomId": "r1", "name": "Main Hall"},
}


def with_(**changes: Any) -> dict[str, Any]:
    """GOOD with some top-level fields changed (``None`` removes one)."""
    body = {**GOOD, **changes}
    return {k: v for k, v in body.items() if v is not None}


async def listener(router: Router, token) -> Client:
    """A member of ORG, to show that a refused notification reaches nobody."""
    return await router.connect(token("alice", ORG, "member"))


async def assert_nothing_delivered(router: Router, client: Client) -> None:
    await router.barrier(client)
    assert client.pending() == []


def assert_error_body(body: Any, code: str) -> None:
    """The JSON error shape every refusal uses."""
    assert isinstance(body, dict), body
    assert body["ok"] is False
    assert body["error"] == code
    assert isinstance(body["message"], str)
    assert body["message"]


def offending(body: dict[str, Any]) -> dict[str, str]:
    """The ``errors`` list of a 400 as ``{path: reason}``, each entry checked."""
    errors = body["errors"]
    assert isinstance(errors, list)
    assert errors
    for entry in errors:
        assert set(entry) == {"path", "reason"}
        assert isinstance(entry["reason"], str)
        assert entry["reason"]
    paths = [entry["path"] for entry in errors]
    assert len(paths) == len(set(paths)), f"a path is reported twice: {paths}"
    return {entry["path"]: entry["reason"] for entry in errors}


# ------------------------------------------------------------------ service token


@pytest.mark.parametrize(
    ("client_id", "secret"),
    [
        pytest.param(None, None, id="neither"),
        pytest.param(SERVICE_ID, None, id="id only"),
        pytest.param(None, SERVICE_SECRET, id="secret only"),
        pytest.param(SERVICE_ID, "wrong-secret", id="right id wrong secret"),
        pytest.param("wrong-id", SERVICE_SECRET, id="wrong id right secret"),
        pytest.param(SERVICE_SECRET, SERVICE_ID, id="swapped"),
        pytest.param("", "", id="empty"),
        pytest.param(SERVICE_ID, SERVICE_SECRET[:-1], id="secret prefix"),
        pytest.param(SERVICE_ID, SERVICE_SECRET + "x", id="secret extended"),
        pytest.param(SERVICE_ID.upper(), SERVICE_SECRET, id="id case"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_wrong_service_token_is_401(router: Router, token, client_id, secret):
    """Unless both CF-Access headers match, the answer is 401 and nothing is delivered."""
    client = await listener(router, token)
    status, body = await router.notify(GOOD, client_id=client_id, secret=secret)
    assert status == 401
    assert_error_body(body, "unauthorized")
    await assert_nothing_delivered(router, client)


@pytest_twisted.ensureDeferred
async def test_service_token_is_checked_before_the_body(router: Router):
    """An unauthenticated caller learns nothing about its body: 401, not 400 or 415."""
    for kwargs in (
        {"content_type": "text/plain"},
        {"content_type": "application/json"},
    ):
        status, body = await router.notify(b"{not json", secret="wrong", **kwargs)
        assert status == 401
        assert "errors" not in body


# ------------------------------------------------------------------ HTTP


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
@pytest_twisted.ensureDeferred
async def test_other_methods_are_405_with_allow(router: Router, method):
    """Anything but POST gets 405 with an Allow header naming POST."""
    result = await router.http(
        method,
        "/internal/notify",
        headers={
            "CF-Access-Client-Id": SERVICE_ID,
            "CF-Access-Client-Secret": SERVICE_SECRET,
            "Content-Type": "application/json",
        },
        data=None if method in ("GET", "DELETE") else json.dumps(GOOD).encode(),
    )
    assert result.code == 405
    assert result.headers.getRawHeaders(b"allow") == [b"POST"]
    assert_error_body(result.json(), "method_not_allowed")


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
@pytest_twisted.ensureDeferred
async def test_healthz_answers_only_get_and_head(router: Router, method):
    """/healthz serves GET and HEAD; other methods get 405 with Allow."""
    head = await router.http("HEAD", "/healthz")
    assert (head.code, head.content) == (200, b"")
    result = await router.http(method, "/healthz", data=b"{}")
    assert result.code == 405
    assert result.headers.getRawHeaders(b"allow") == [b"GET, HEAD"]


@pytest.mark.parametrize(
    "content_type",
    [
        pytest.param(None, id="missing"),
        pytest.param("text/plain", id="text"),
        pytest.param("application/x-www-form-urlencoded", id="form"),
        pytest.param("application/jsonp", id="lookalike"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_content_type_not_json_is_415(router: Router, token, content_type):
    """A body that is not declared JSON gets 415 and is not delivered."""
    client = await listener(router, token)
    status, body = await router.notify(GOOD, content_type=content_type)
    assert status == 415
    assert_error_body(body, "unsupported_media_type")
    await assert_nothing_delivered(router, client)


@pytest.mark.parametrize(
    "content_type", ["application/json; charset=utf-8", "Application/JSON"]
)
@pytest_twisted.ensureDeferred
async def test_json_content_type_with_parameters_is_accepted(
    router: Router, token, content_type
):
    """``application/json`` is recognised with parameters and in any case."""
    client = await listener(router, token)
    status, body = await router.notify(GOOD, content_type=content_type)
    assert (status, body) == (200, {"ok": True, "delivered": 1, "seq": 1})
    assert await client.next() == {"type": "room_updated", "payload": GOOD["payload"]}


@pytest.mark.parametrize("router_options", [{"max_body_bytes": 1024}])
@pytest_twisted.ensureDeferred
async def test_body_over_the_limit_is_413(router: Router, token):
    """A body over max_body_bytes gets 413; one just under it is delivered."""
    client = await listener(router, token)
    name = "n" * 100
    fits = with_(payload={"roomId": "r1", "name": name})
    assert len(json.dumps(fits)) < 1024
    assert await router.notify(fits) == (200, {"ok": True, "delivered": 1, "seq": 1})
    assert (await client.next())["payload"]["name"] == name

    too_big = json.dumps(with_(payload={"roomId": "r1", "name": "n" * 2000}))
    status, body = await router.notify(too_big.encode())
    assert status == 413
    assert_error_body(body, "payload_too_large")
    await assert_nothing_delivered(router, client)


@pytest_twisted.ensureDeferred
async def test_success_answers_json(router: Router, token):
    """A 200 is JSON ``{"ok": true, "delivered": N, "seq": S}`` and not cacheable."""
    await listener(router, token)
    result = await router.http(
        "POST",
        "/internal/notify",
        headers={
            "CF-Access-Client-Id": SERVICE_ID,
            "CF-Access-Client-Secret": SERVICE_SECRET,
            "Content-Type": "application/json",
        },
        data=json.dumps(GOOD).encode(),
    )
    assert result.code == 200
    assert result.headers.getRawHeaders(b"content-type") == [b"application/json"]
    assert result.json() == {"ok": True, "delivered": 1, "seq": 1}


# ------------------------------------------------------------------ the contract


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"{not json", id="syntax"),
        pytest.param(b'{"orgId":"a","orgId":"b"}', id="duplicate key"),
        pytest.param(
            b'{"orgId":"org-a","routing":"broadcast","type":"room_updated",'
            b'"payload":{"roomId":"r","name":NaN}}',
            id="NaN",
        ),
        pytest.param(b'{"orgId":"\xff"}', id="not UTF-8"),
        pytest.param(b"[" * 200 + b"]" * 200, id="too deep"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_json_is_400(router: Router, token, data):
    """A body that is not strict JSON gets 400 ``invalid_json`` naming ``$``."""
    client = await listener(router, token)
    status, body = await router.notify(data)
    assert status == 400
    assert_error_body(body, "invalid_json")
    assert set(offending(body)) == {"$"}
    await assert_nothing_delivered(router, client)


@pytest_twisted.ensureDeferred
async def test_400_lists_every_offending_field(router: Router, token):
    """A body breaking the contract in many places gets one 400 naming each place."""
    client = await listener(router, token)
    status, body = await router.notify(
        {
            "orgId": "",
            "routing": "sideways",
            "type": "room_updated",
            "payload": {"roomId": 7, "name": "", "colour": "red"},
            "priority": "high",
        }
    )
    assert status == 400
    assert_error_body(body, "invalid_message")
    errors = offending(body)
    assert set(errors) == {
        "$.orgId",
        "$.routing",
        "$.priority",
        "$.payload.roomId",
        "$.payload.name",
        "$.payload.colour",
    }
    assert errors["$.priority"] == errors["$.payload.colour"] == "unknown field"
    await assert_nothing_delivered(router, client)


@pytest_twisted.ensureDeferred
async def test_400_names_every_missing_field(router: Router):
    """An empty object gets a 400 naming each required field."""
    status, body = await router.notify({})
    assert status == 400
    assert_error_body(body, "invalid_message")
    assert set(offending(body)) == {"$.orgId", "$.routing", "$.type", "$.payload"}


@pytest.mark.parametrize(
    ("body", "code", "paths"),
    [
        pytest.param([], "invalid_message", {"$"}, id="empty array"),
        pytest.param("text", "invalid_message", {"$"}, id="string"),
        pytest.param(
            with_(type="room_created"), "unknown_type", {"$.type"}, id="unknown type"
        ),
        pytest.param(
            with_(payload={"roomId": "r1", "name": "n", "colour": "red"}),
            "invalid_message",
            {"$.payload.colour"},
            id="unknown payload field",
        ),
        pytest.param(
            with_(payload={"roomId": "r1"}),
            "invalid_message",
            {"$.payload.name"},
            id="missing payload field",
        ),
        pytest.param(
            with_(payload={"roomId": 1, "name": "n"}),
            "invalid_message",
            {"$.payload.roomId"},
            id="number for a string",
        ),
        pytest.param(
            with_(payload="r1"), "invalid_message", {"$.payload"}, id="payload string"
        ),
        pytest.param(with_(orgId=42), "invalid_message", {"$.orgId"}, id="orgId type"),
        pytest.param(
            with_(orgId="o" * 500), "invalid_message", {"$.orgId"}, id="orgId length"
        ),
        pytest.param(
            with_(routing="direct"),
            "invalid_message",
            {"$.targets"},
            id="direct without targets",
        ),
        pytest.param(
            with_(routing="direct", targets=[]),
            "invalid_message",
            {"$.targets"},
            id="direct with no targets",
        ),
        pytest.param(
            with_(routing="direct", targets=["u1", "u1"]),
            "invalid_message",
            {"$.targets"},
            id="duplicate targets",
        ),
        pytest.param(
            with_(routing="direct", targets="u1"),
            "invalid_message",
            {"$.targets"},
            id="targets not an array",
        ),
        pytest.param(
            with_(routing="direct", targets=["u1", ""]),
            "invalid_message",
            {"$.targets[1]"},
            id="empty target",
        ),
        pytest.param(
            with_(targets=["u1"]),
            "invalid_message",
            {"$.targets"},
            id="broadcast with targets",
        ),
        pytest.param(
            with_(
                type="user_banned",
                payload={"userId": "u1", "reason": "spam"},
            ),
            "routing_not_allowed",
            {"$.routing"},
            id="ban by broadcast",
        ),
        pytest.param(
            with_(type="guest_knock", payload={"guestId": "g1"}),
            "routing_not_allowed",
            {"$.routing"},
            id="knock by broadcast",
        ),
        pytest.param(
            with_(type="position_update", payload={"x": 1, "y": 2}),
            "routing_not_allowed",
            {"$.routing"},
            id="client-only type",
        ),
        pytest.param(
            with_(
                type="user_updated",
                payload={"userId": "u1", "role": "superuser"},
            ),
            "invalid_message",
            {"$.payload.role"},
            id="unknown role",
        ),
    ],
)
@pytest_twisted.ensureDeferred
async def test_contract_violations_are_400(router: Router, token, body, code, paths):
    """Each contract violation gets 400 with its code and the offending paths."""
    client = await listener(router, token)
    status, answer = await router.notify(body)
    assert status == 400, answer
    assert_error_body(answer, code)
    assert set(offending(answer)) == paths
    await assert_nothing_delivered(router, client)


deployment = both_deployments


async def post_once(
    router: Router, body: dict[str, Any], key: str | None
) -> tuple[int, Any, list[bytes] | None]:
    """POST a notification with an ``Idempotency-Key``: status, answer, and the
    ``Idempotent-Replayed`` header."""
    result = await router.notify_result(body, idempotency_key=key)
    return (
        result.code,
        result.json(),
        result.headers.getRawHeaders(b"idempotent-replayed"),
    )


@pytest_twisted.ensureDeferred
async def test_direct_message_is_answered_per_target(router: Router, token):
    """A direct message's answer counts the connections of each target, so the
    backend knows whom to reach another way."""
    await router.connect(token("alice", "org-a"))
    await router.connect(token("alice", "org-a"))
    await router.connect(token("bob", "org-a"))
    status, body = await router.notify(
        with_(routing="direct", targets=["alice", "bob", "nobody"])
    )
    assert status == 200
    assert body["delivered"] == 3
    assert body["targets"] == {"alice": 2, "bob": 1, "nobody": 0}
    status, body = await router.notify(GOOD)
    assert "targets" not in body


@pytest_twisted.ensureDeferred
async def test_a_retry_with_the_same_key_is_answered_once(router: Router, token):
    """A retry with the same Idempotency-Key and body gets the first answer
    (same seq) and delivers nothing again; the header says it was replayed."""
    client = await listener(router, token)
    first = await post_once(router, GOOD, "retry-1")
    assert first[0] == 200
    assert first[2] is None
    assert (await client.next())["type"] == "room_updated"
    again = await post_once(router, GOOD, "retry-1")
    assert again[:2] == first[:2]
    assert again[2] == [b"true"]
    other = await post_once(router, GOOD, "retry-2")
    assert other[1]["seq"] == first[1]["seq"] + 1
    assert (await client.next())["type"] == "room_updated"
    assert client.seqs == [first[1]["seq"], other[1]["seq"]]
    await router.barrier(client)
    assert client.pending() == []


@pytest_twisted.ensureDeferred
async def test_a_key_reused_for_another_body_is_409(router: Router, token):
    """The same Idempotency-Key with another body is a 409 naming the key, and
    nothing is published."""
    client = await listener(router, token)
    first = await post_once(router, GOOD, "ban-eve")
    assert first[0] == 200
    assert (await client.next())["type"] == "room_updated"
    status, body, _ = await post_once(
        router, with_(payload={"roomId": "r2", "name": "Other"}), "ban-eve"
    )
    assert status == 409
    assert body["error"] == "idempotency_conflict"
    assert "ban-eve" in body["message"]
    await router.barrier(client)
    assert client.pending() == []


@pytest.mark.parametrize("key", ["", "has space", "x" * 256, "é"])
@pytest_twisted.ensureDeferred
async def test_a_malformed_key_is_400(router: Router, key):
    """An Idempotency-Key that is empty, too long or not printable ASCII is a
    400 naming the header; nothing is published."""
    headers = {
        "CF-Access-Client-Id": SERVICE_ID,
        "CF-Access-Client-Secret": SERVICE_SECRET,
        "Content-Type": "application/json",
    }
    result = await router.http(
        "POST",
        "/internal/notify",
        headers={**headers, "Idempotency-Key": key},
        data=json.dumps(GOOD).encode(),
    )
    assert result.code == 400
    assert result.json()["errors"][0]["path"] == "Idempotency-Key"
