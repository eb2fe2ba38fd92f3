"""Property tests: random, mutated and hostile input never escapes the contract, nor its org."""

from __future__ import annotations

import base64
import contextlib
import json
from typing import Any

import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from officerouter.auth import AuthError, TokenVerifier, load_verify_keys
from officerouter.catalog import BUILTIN
from officerouter.codec import (
    ContractError,
    converter,
    decode_client,
    decode_notify,
    dumps,
    encode,
)

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

#: Text, sometimes holding lone surrogates: json.dumps writes those as \\ud800
#: escapes, which is valid JSON but not Unicode.
texts = st.text(max_size=20) | st.text(
    st.characters(categories=["Cs"]) | st.sampled_from("a\u00e9\U0001f600"),
    min_size=1,
    max_size=6,
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | texts,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(texts.filter(lambda t: len(t) <= 10), children, max_size=4)
    ),
    max_leaves=12,
)

#: JSON text that breaks an assumption somewhere past the parser.
HOSTILE = (
    b"1" * 5000,  # past Python's integer conversion limit (4300 digits)
    b"-" + b"9" * 4301,
    b"9" * 30,  # past 64 bits
    b"[" * 3000 + b"]" * 3000,  # past the recursion limit
    b'{"a":' * 20 + b"1" + b"}" * 20,
    b'"\\ud800"',
    b'"x\\uDFFFy"',
    b'"\\udc00\\ud800"',
    b'["\\udbff"]',
    b'{"\\ud800":1}',
    b'"\\\\ud800"',  # an escaped backslash: plain text, not a surrogate
    b"1e999",
    b"NaN",
    b'"\\u0000"',
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


def _spliced(base: dict[str, Any]) -> st.SearchStrategy[bytes]:
    """Valid messages with one value, at either level, replaced by hostile JSON text."""

    def splice(draw: st.DrawFn) -> bytes:
        message = json.loads(json.dumps(base))
        target = message
        if draw(st.booleans()) and isinstance(message.get("payload"), dict):
            target = message["payload"]
        target[draw(st.sampled_from(sorted(target)))] = "<hostile>"
        fragment = draw(st.sampled_from(HOSTILE))
        return json.dumps(message).encode().replace(b'"<hostile>"', fragment)

    return st.composite(splice)()


def _outcome(decode: Any, data: bytes) -> tuple[Any, ContractError | None]:
    """Decode; any exception other than ContractError propagates and fails the test."""
    try:
        return decode(data, BUILTIN), None
    except ContractError as e:
        return None, e


def _frames(base: dict[str, Any]) -> st.SearchStrategy[bytes]:
    as_json = (json_values | _mutations(base)).map(lambda v: json.dumps(v).encode())
    return st.binary(max_size=200) | as_json | _spliced(base)


@settings(max_examples=200, deadline=None)
@given(_frames(VALID_CLIENT))
def test_client_frames_are_accepted_or_refused_with_a_contract_error(data):
    """Any bytes a client sends decode to a message or raise ContractError, nothing else."""
    message, error = _outcome(decode_client, data)
    if error is None:
        assert message.type == "position_update"
        # What passed the contract can be written back (orjson is strict).
        encode(message.type, message.payload, sender="u")
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
        encode(notification.type, notification.payload)
        dumps({"orgId": notification.org_id, "targets": notification.targets})
    else:
        assert error.errors
        # The refusal itself can be written back, whatever it quotes.
        dumps({"errors": error.errors, "message": error.message})


VALID_BROADCAST = {
    "orgId": "org-a",
    "routing": "broadcast",
    "type": "room_updated",
    "payload": {"roomId": "r1", "name": "Main Hall"},
}


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    st.lists(
        st.tuples(st.integers(min_value=0, max_value=2), _frames(VALID_CLIENT))
        | st.tuples(st.just(None), _frames(VALID_BROADCAST)),
        min_size=1,
        max_size=10,
    )
)
def test_accepted_input_never_breaks_the_org(steps):
    """Whatever clients and the backend get accepted, the org still takes newcomers and answers presence."""
    registry = make_registry()
    sessions = [
        registry.connect(identity(f"u{i}", "org-a"), FakeConnection()) for i in range(3)
    ]
    for i, data in steps:
        with contextlib.suppress(ContractError):
            if i is None:
                registry.notify(decode_notify(data, BUILTIN))
            else:
                registry.receive(sessions[i], decode_client(data, BUILTIN))
    newcomer = FakeConnection()
    registry.connect(identity("newcomer", "org-a"), newcomer)
    assert [frame["type"] for frame in newcomer.frames] == ["connected", "presence"]
    dumps(converter.unstructure(registry.presence("org-a")))
    assert registry.connection_count == 4


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


# ---------------------------------------------------------------- tokens


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


#: JOSE headers: objects whose alg and kid may be of any type, or anything else.
headers = (
    st.fixed_dictionaries(
        {},
        optional={
            "alg": st.sampled_from(["RS256", "EdDSA", "none"]) | json_values,
            "kid": json_values,
            "typ": json_values,
            "crit": json_values,
        },
    ).map(lambda h: json.dumps(h).encode())
    | json_values.map(lambda v: json.dumps(v).encode())
    | st.sampled_from(HOSTILE)
    | st.binary(max_size=40)
)


@settings(max_examples=300, deadline=None)
@given(header=headers, payload=json_values | st.sampled_from(HOSTILE))
def test_any_token_header_is_refused_with_an_auth_error(ed25519_keys, header, payload):
    """A token with any header and payload, and no valid signature, raises AuthError only."""
    if not isinstance(payload, bytes):
        payload = json.dumps(payload).encode()
    verifier = TokenVerifier(load_verify_keys(ed25519_keys[1]), lambda: 0.0)
    token = f"{_b64(header)}.{_b64(payload)}.{_b64(b'signature')}"
    with pytest.raises(AuthError):
        verifier.verify(token)


@settings(max_examples=100, deadline=None)
@given(
    claims=st.fixed_dictionaries(
        {"exp": st.just(2**31)},
        optional={
            "sub": st.just("user-1") | texts | json_values,
            "orgId": st.just("org-a") | texts | json_values,
            "role": st.sampled_from(["member", "owner"]) | json_values,
            "iat": json_values,
            "nbf": json_values,
        },
    ),
    # PyJWT signs string key ids only; other types are in the unsigned suite.
    kid=st.none() | texts,
)
def test_signed_claims_give_a_writable_identity_or_an_auth_error(
    ed25519_keys, claims, kid
):
    """A validly signed token of any claims yields an identity that can be written back, or AuthError."""
    headers = {} if kid is None else {"kid": kid}
    token = jwt.encode(claims, ed25519_keys[0], algorithm="EdDSA", headers=headers)
    verifier = TokenVerifier(load_verify_keys(ed25519_keys[1]), lambda: 0.0)
    try:
        identity_ = verifier.verify(token)
    except AuthError:
        return
    dumps([identity_.user_id, identity_.org_id, identity_.role])
