"""Property tests: random and mutated input never escapes the contract, nor its org."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from officerouter.catalog import BUILTIN
from officerouter.codec import ContractError, decode_client, decode_notify

from .fakes import FakeConnection, identity, make_registry

VALID_CLIENT = {
    "type": "position_update",
    "payload": {"x": 1.5, "y": -2, "roomId": "r1"},
}
VALID_NOTIFY = {
    "orgId": "org-a",
    "routing": "direct",
    "type": "user_banned",
    "targets": ["u1"],
    "payload": {"userId": "u1", "reason": "spam"},
}

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


def _mutations(base: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Valid messages with one field replaced, removed, or added at any depth."""

    def mutate(draw: st.DrawFn) -> Any:
        message = json.loads(json.dumps(base))
        target = message
        if draw(st.booleans()) and isinstance(message.get("payload"), dict):
            target = message["payload"]
        keys = [*target, "from", "extra", "orgId", "seq"]
        key = draw(st.sampled_from(keys))
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "delete":
            target.pop(key, None)
        else:
            target[key] = draw(json_values)
        return message

    return st.composite(mutate)()


def _outcome(decode: Any, data: bytes) -> tuple[Any, ContractError | None]:
    """Decode; any exception other than ContractError propagates and fails the test."""
    try:
        return decode(data, BUILTIN), None
    except ContractError as e:
        return None, e


def _frames(base: dict[str, Any]) -> st.SearchStrategy[bytes]:
    as_json = (json_values | _mutations(base)).map(lambda v: json.dumps(v).encode())
    return st.binary(max_size=200) | as_json


@settings(max_examples=200, deadline=None)
@given(_frames(VALID_CLIENT))
def test_client_frames_are_accepted_or_refused_with_a_contract_error(data):
    """Any bytes a client sends decode to a message or raise ContractError, nothing else."""
    message, error = _outcome(decode_client, data)
    if error is None:
        assert message.type == "position_update"
    else:
        assert error.errors, "a refusal names what is wrong"
        assert error.code


@settings(max_examples=200, deadline=None)
@given(_frames(VALID_NOTIFY))
def test_notify_bodies_are_accepted_or_refused_with_a_contract_error(data):
    """Any notify body decodes to a notification or raises ContractError, nothing else."""
    notification, error = _outcome(decode_notify, data)
    if error is None:
        assert notification.type in BUILTIN
    else:
        assert error.errors


ORGS = ("org-a", "org-b")
ROLES = ("owner", "member", "guest", "pending_guest")


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(ORGS),
            st.integers(min_value=0, max_value=3),
            st.sampled_from(["client", "notify"]),
            st.data(),
        ),
        min_size=1,
        max_size=25,
    )
)
def test_no_frame_ever_reaches_another_org(steps):
    """Under interleaved random traffic from two orgs, every frame stays in its org."""
    registry = make_registry()
    sessions = {}
    for org in ORGS:
        for i, role in enumerate(ROLES):
            connection = FakeConnection()
            session = registry.connect(identity(f"{org}-u{i}", org, role), connection)
            sessions[org, i] = (session, connection)
    for org, i, source, data in steps:
        # Every string an org's traffic carries is marked with that org's name.
        marker = st.text(alphabet="abcdefgh", min_size=1, max_size=8).map(
            lambda s, org=org: f"{org}:{s}"
        )
        if source == "client":
            body = data.draw(
                st.fixed_dictionaries(
                    {
                        "type": st.sampled_from([*BUILTIN, "nope"]),
                        "payload": st.fixed_dictionaries(
                            {},
                            optional={
                                "x": st.floats(),
                                "y": st.integers(),
                                "roomId": marker,
                                "name": marker,
                                "userId": marker,
                            },
                        ),
                    }
                )
            )
            session, connection = sessions[org, i]
            with contextlib.suppress(ContractError):
                registry.receive(
                    session, decode_client(json.dumps(body).encode(), BUILTIN)
                )
        else:
            body = data.draw(
                st.fixed_dictionaries(
                    {
                        "orgId": st.just(org),
                        "routing": st.sampled_from(["broadcast", "direct"]),
                        "type": st.sampled_from(list(BUILTIN)),
                        "payload": st.fixed_dictionaries(
                            {},
                            optional={
                                "roomId": marker,
                                "name": marker,
                                "spaceId": marker,
                                "guestId": marker,
                                "reason": marker,
                                "userId": st.sampled_from(
                                    [f"{org}-u{n}" for n in range(4)]
                                ),
                                "role": st.sampled_from(ROLES),
                            },
                        ),
                    },
                    optional={
                        "targets": st.lists(
                            st.sampled_from(
                                [f"{o}-u{n}" for o in ORGS for n in range(4)]
                            ),
                            min_size=1,
                            max_size=3,
                            unique=True,
                        )
                    },
                )
            )
            with contextlib.suppress(ContractError):
                registry.notify(decode_notify(json.dumps(body).encode(), BUILTIN))
    for (org, _i), (_session, connection) in sessions.items():
        other = ORGS[1 - ORGS.index(org)]
        for frame in connection.frames:
            text = json.dumps(frame)
            assert f"{other}:" not in text, f"{org} received {frame}"
            assert frame.get("from", org).startswith(org), f"{org} received {frame}"
