"""The three curl calls of the original documentation, run verbatim against a router."""

from __future__ import annotations

import shlex
from pathlib import Path

import attrs
import pytest

import pytest_twisted

from officerouter.config import Settings
from tests.loopback import Router, both_deployments

pytestmark = pytest.mark.e2e

README = Path(__file__).parents[2] / "README.md"
ORG = "org_01K2Z1R2MEJK6B41WW7428G9YC"
BANNED = "user_01JZAZ78ZD9GZQXH3YKQ5WFXVP"

CALLS = [
    """curl -X POST "http://localhost:8787/internal/notify" -H "Content-Type: application/json" -H "CF-Access-Client-Id: your-client-id" -H "CF-Access-Client-Secret: your-client-secret" -d '{"orgId":"org_01K2Z1R2MEJK6B41WW7428G9YC","routing":"broadcast","type":"room_updated","payload":{"roomId":"room-main-hall-123","name":"Main Hall"}}'""",
    """curl -X POST "http://localhost:8787/internal/notify" -H "Content-Type: application/json" -H "CF-Access-Client-Id: your-client-id" -H "CF-Access-Client-Secret: your-client-secret" -d '{"orgId":"org_01K2Z1R2MEJK6B41WW7428G9YC","routing":"broadcast","type":"space_deleted","payload":{"spaceId":"space-pepito-main-456","name":"Pepito HQ"}}'""",
    """curl -X POST "http://localhost:8787/internal/notify" -H "Content-Type: application/json" -H "CF-Access-Client-Id: your-client-id" -H "CF-Access-Client-Secret: your-client-secret" -d '{"orgId":"org_01K2Z1R2MEJK6B41WW7428G9YC","routing":"direct","type":"user_banned","targets":["user_01JZAZ78ZD9GZQXH3YKQ5WFXVP"],"payload":{"userId":"user_01JZAZ78ZD9GZQXH3YKQ5WFXVP","reason":"Blablabla"}}'""",
]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The service token the documentation's calls present."""
    return attrs.evolve(
        settings,
        service_client_id="your-client-id",
        service_client_secret="your-client-secret",
    )


def parse_curl(line: str) -> tuple[str, str, dict[str, str], bytes]:
    """Method, URL, headers and body of a ``curl -X ... -H ... -d ...`` line."""
    words = shlex.split(line)
    assert words[0] == "curl"
    method, url, headers, data = "GET", "", {}, b""
    rest = iter(words[1:])
    for word in rest:
        if word == "-X":
            method = next(rest)
        elif word == "-H":
            name, _, value = next(rest).partition(":")
            headers[name.strip()] = value.strip()
        elif word == "-d":
            data = next(rest).encode()
        else:
            assert not word.startswith("-"), f"unexpected option {word}"
            url = word
    return method, url, headers, data


@pytest_twisted.ensureDeferred
async def test_the_three_documented_calls_work_verbatim(router: Router, token):
    """Each documented call answers 200 and reaches the clients it names."""
    target = await router.connect(token(BANNED, ORG, "member"))
    colleague = await router.connect(token("user_01K0COLLEAGUE", ORG, "admin"))
    waiting = await router.connect(token("user_01K0WAITING", ORG, "pending_guest"))
    answers = []
    for line in CALLS:
        method, url, headers, data = parse_curl(line)
        prefix = "http://localhost:8787"
        assert url.startswith(prefix)
        result = await router.http(
            method, url.removeprefix(prefix), headers=headers, data=data
        )
        answers.append((result.code, result.json()))

    assert answers == [
        (200, {"ok": True, "delivered": 2, "seq": 1}),
        (200, {"ok": True, "delivered": 2, "seq": 2}),
        (
            200,
            {
                "ok": True,
                "delivered": 1,
                "seq": 3,
                "targets": {"user_01JZAZ78ZD9GZQXH3YKQ5WFXVP": 1},
            },
        ),
    ]
    room = {
        "type": "room_updated",
        "payload": {"roomId": "room-main-hall-123", "name": "Main Hall"},
    }
    space = {
        "type": "space_deleted",
        "payload": {"spaceId": "space-pepito-main-456", "name": "Pepito HQ"},
    }
    for client in (target, colleague):
        assert await client.next() == room
        assert await client.next() == space
    assert await target.next() == {
        "type": "user_banned",
        "payload": {"userId": BANNED, "reason": "Blablabla"},
    }
    assert await target.wait_closed() == (4003, "banned")
    await router.barrier(colleague, waiting)
    assert colleague.pending() == waiting.pending() == target.pending() == []


def test_the_readme_shows_the_three_calls():
    """The README carries the three calls exactly as the original documentation did."""
    text = README.read_text(encoding="utf-8")
    missing = [line for line in CALLS if line not in text]
    assert not missing


deployment = both_deployments
