"""The schema and the codec agree: what one accepts the other accepts, and what
one refuses the other refuses, at the same paths.

Documents are generated from the JSON Schema with hypothesis-jsonschema; broken
ones are made from them by one mutation at a known place.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from officerouter import schema
from officerouter.catalog import BUILTIN
from officerouter.codec import ContractError, decode_client, decode_notify, dumps

DOCUMENT = schema.json_schema(BUILTIN)
CONTRACT = schema.contract(BUILTIN)
DEFS = DOCUMENT["$defs"]

CASES = [
    *((name, "client") for name in CONTRACT.client_frames.values()),
    *((name, "notify") for name in CONTRACT.notify_bodies),
]
IDS = [name for name, _ in CASES]

# Deterministic: the same examples on every run, so the suite never flakes.
AGREEMENT = settings(
    max_examples=30,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def definition(name: str) -> dict[str, Any]:
    """One definition as a schema of its own (its references still resolve)."""
    return {"$defs": DEFS, **DEFS[name]}


def decode(kind: str, document: Any) -> None:
    data = dumps(document)
    if kind == "client":
        decode_client(data, BUILTIN)
    else:
        decode_notify(data, BUILTIN)


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = DEFS[node["$ref"].removeprefix("#/$defs/")]
    return node


def _object_schema(node: dict[str, Any], value: Any) -> dict[str, Any] | None:
    """The object schema that describes ``value`` (through refs and null unions)."""
    node = _resolve(node)
    if "anyOf" in node:
        for option in node["anyOf"]:
            found = _object_schema(option, value)
            if found is not None:
                return found
        return None
    return node if node.get("type") == "object" and isinstance(value, dict) else None


def objects(
    node: dict[str, Any], value: Any, path: str = "$"
) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """Every object in a document: its path, the object, and its schema."""
    described = _object_schema(node, value)
    if described is None or "properties" not in described:
        return
    yield path, value, described
    for key, child in value.items():
        yield from objects(described["properties"][key], child, f"{path}.{key}")


def _wrong_value(field: dict[str, Any]) -> Any:
    """A value of the wrong JSON type for a field."""
    field = _resolve(field)
    kinds = {o.get("type") for o in field.get("anyOf", [field])}
    return "a string" if "string" not in kinds else 12


@st.composite
def broken(draw: st.DrawFn, name: str) -> tuple[dict[str, Any], str]:
    """A valid document of definition ``name`` with one field broken; and that
    field's path."""
    document = draw(from_schema(definition(name)))
    places = list(objects(DEFS[name], document))
    path, target, described = draw(st.sampled_from(places))
    properties = described["properties"]
    # type, routing and the payload object itself choose the definition:
    # breaking them is the codec's other errors (unknown type, routing), tested
    # in test_codec.py.
    fixed = {"type", "routing", "payload"} if path == "$" else set()
    present = [k for k in target if k not in fixed]
    missing = [k for k in described["required"] if k in target and k not in fixed]
    moves = ["unknown"]
    if present:
        moves.append("wrong type")
    if missing:
        moves.append("missing")
    move = draw(st.sampled_from(moves))
    if move == "unknown":
        key = draw(st.sampled_from(["extra", "from", "zz_unknown"]))
        if key in properties:
            key = "zz_unknown"
        target[key] = 1
        return document, f"{path}.{key}"
    if move == "missing":
        key = draw(st.sampled_from(missing))
        del target[key]
        return document, f"{path}.{key}"
    key = draw(st.sampled_from(present))
    target[key] = _wrong_value(properties[key])
    return document, f"{path}.{key}"


def schema_paths(name: str, document: Any) -> set[str]:
    """Where the JSON Schema says a document is wrong, as the codec writes paths."""
    validator = jsonschema.Draft202012Validator(definition(name))
    paths: set[str] = set()
    for error in validator.iter_errors(document):
        base = "$" + "".join(
            f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path
        )
        if error.validator == "additionalProperties":
            known = error.schema.get("properties", {})
            paths.update(f"{base}.{k}" for k in error.instance if k not in known)
        elif error.validator == "required":
            paths.update(
                f"{base}.{k}" for k in error.validator_value if k not in error.instance
            )
        else:
            paths.add(base)
    return paths


@pytest.mark.parametrize(("name", "kind"), CASES, ids=IDS)
def test_documents_from_the_schema_are_accepted(name, kind):
    """Every document the schema describes passes the codec."""

    @AGREEMENT
    @given(from_schema(definition(name)))
    def check(document: Any) -> None:
        decode(kind, document)

    check()


@pytest.mark.parametrize(("name", "kind"), CASES, ids=IDS)
def test_broken_documents_are_refused_at_the_same_paths(name, kind):
    """A document broken in one field is refused by the schema and by the codec,
    and both name the same fields."""

    @AGREEMENT
    @given(broken(name))
    def check(case: tuple[dict[str, Any], str]) -> None:
        document, path = case
        expected = schema_paths(name, document)
        assert path in expected
        with pytest.raises(ContractError) as refused:
            decode(kind, document)
        assert {p for p, _ in refused.value.errors} == expected

    check()


@pytest.mark.parametrize(
    ("name", "kind", "document", "path"),
    [
        pytest.param(
            "PositionUpdateClientFrame",
            "client",
            {"type": "position_update", "payload": {"x": 1e10, "y": 0}},
            "$.payload.x",
            id="out of range",
        ),
        pytest.param(
            "PositionUpdateClientFrame",
            "client",
            {
                "type": "position_update",
                "payload": {"x": 1, "y": 0, "roomId": "\u2003"},
            },
            "$.payload.roomId",
            id="blank",
        ),
        pytest.param(
            "RoomUpdatedBroadcastNotification",
            "notify",
            {
                "orgId": "o",
                "routing": "broadcast",
                "type": "room_updated",
                "payload": {"roomId": "r", "name": "n" * 201},
            },
            "$.payload.name",
            id="too long",
        ),
        pytest.param(
            "UserUpdatedDirectNotification",
            "notify",
            {
                "orgId": "o",
                "routing": "direct",
                "type": "user_updated",
                "targets": ["a", "a"],
                "payload": {"userId": "u", "role": "member"},
            },
            "$.targets",
            id="targets not unique",
        ),
        pytest.param(
            "UserUpdatedDirectNotification",
            "notify",
            {
                "orgId": "o",
                "routing": "direct",
                "type": "user_updated",
                "targets": ["a"],
                "payload": {"userId": "u", "role": "king"},
            },
            "$.payload.role",
            id="not a role",
        ),
    ],
)
def test_limits_are_refused_by_both(name, kind, document, path):
    """A limit (range, blank, length, uniqueness, enumeration) is refused by the
    schema and the codec at the same path."""
    assert schema_paths(name, document) == {path}
    with pytest.raises(ContractError) as refused:
        decode(kind, document)
    assert {p for p, _ in refused.value.errors} == {path}
