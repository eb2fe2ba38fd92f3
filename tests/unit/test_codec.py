"""The message contract: decoding client frames and backend notifications, encoding."""

from __future__ import annotations

import json
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from officerouter import codes
from officerouter.catalog import BOTH, BUILTIN, MessageSpec
from officerouter.codec import (
    MAX_DEPTH,
    ContractError,
    decode_client,
    decode_notify,
    encode,
    parse_json,
)
from officerouter.messages import (
    GuestKnock,
    PositionUpdate,
    RoomUpdated,
    SpaceDeleted,
    UserBanned,
    UserUpdated,
)

VALID_PAYLOADS: dict[str, dict[str, Any]] = {
    "room_updated": {"roomId": "room-main-hall-123", "name": "Main Hall"},
    "space_deleted": {"spaceId": "space-pepito-main-456", "name": "Pepito HQ"},
    "user_updated": {"userId": "user-1", "role": "member"},
    "user_banned": {"userId": "user-1", "reason": "Blablabla"},
    "guest_knock": {"guestId": "guest-1", "name": "Visitor"},
}
PAYLOAD_CLASSES = {
    "room_updated": RoomUpdated,
    "space_deleted": SpaceDeleted,
    "user_updated": UserUpdated,
    "user_banned": UserBanned,
    "guest_knock": GuestKnock,
}
REQUIRED_FIELDS = [
    ("room_updated", "roomId"),
    ("room_updated", "name"),
    ("space_deleted", "spaceId"),
    ("space_deleted", "name"),
    ("user_updated", "userId"),
    ("user_updated", "role"),
    ("user_banned", "userId"),
    ("user_banned", "reason"),
    ("guest_knock", "guestId"),
]
BACKEND_TYPES = sorted(VALID_PAYLOADS)


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else json.dumps(value).encode()


def client(value: Any) -> Any:
    """Decode a client frame given as plain data (or raw bytes)."""
    return decode_client(_bytes(value), BUILTIN)


def notify_body(type_: str, payload: Any = ..., **envelope: Any) -> dict[str, Any]:
    """A notification body; direct routing with one target unless told otherwise.

    ``...`` for a field (or the payload) leaves it out.
    """
    body: dict[str, Any] = {
        "orgId": "org-a",
        "routing": "direct",
        "type": type_,
        "payload": VALID_PAYLOADS.get(type_, ...) if payload is ... else payload,
        "targets": ["user-1"],
    }
    body.update(envelope)
    return {k: v for k, v in body.items() if v is not ...}


def notify(value: Any) -> Any:
    """Decode a notification body given as plain data (or raw bytes)."""
    return decode_notify(_bytes(value), BUILTIN)


def contract_error(decode: Any, value: Any) -> ContractError:
    """The ContractError decoding ``value`` raises."""
    with pytest.raises(ContractError) as info:
        decode(value)
    return info.value


def position(**payload: Any) -> dict[str, Any]:
    """A client position_update frame."""
    return {"type": "position_update", "payload": payload}


# ---------------------------------------------------------------- valid messages


@pytest.mark.parametrize("type_", BACKEND_TYPES)
def test_each_backend_type_decodes_with_direct_routing(type_):
    """Every backend type's valid payload decodes into its class with direct routing."""
    result = notify(notify_body(type_))
    assert result.org_id == "org-a"
    assert result.routing == "direct"
    assert result.type == type_
    assert result.targets == ("user-1",)
    assert result.payload == PAYLOAD_CLASSES[type_](**VALID_PAYLOADS[type_])


@pytest.mark.parametrize("type_", ["room_updated", "space_deleted", "user_updated"])
def test_broadcast_types_decode_without_targets(type_):
    """A type allowing broadcast decodes with no targets at all."""
    result = notify(notify_body(type_, routing="broadcast", targets=...))
    assert result.routing == "broadcast"
    assert result.targets == ()


def test_issue_curl_bodies_decode():
    """The three notification bodies of the original documentation are valid."""
    bodies = [
        b'{"orgId":"org_01K2Z1R2MEJK6B41WW7428G9YC","routing":"broadcast","type":"room_updated","payload":{"roomId":"room-main-hall-123","name":"Main Hall"}}',
        b'{"orgId":"org_01K2Z1R2MEJK6B41WW7428G9YC","routing":"broadcast","type":"space_deleted","payload":{"spaceId":"space-pepito-main-456","name":"Pepito HQ"}}',
        b'{"orgId":"org_01K2Z1R2MEJK6B41WW7428G9YC","routing":"direct","type":"user_banned","targets":["user_01JZAZ78ZD9GZQXH3YKQ5WFXVP"],"payload":{"userId":"user_01JZAZ78ZD9GZQXH3YKQ5WFXVP","reason":"Blablabla"}}',
    ]
    types = [notify(body).type for body in bodies]
    assert types == ["room_updated", "space_deleted", "user_banned"]


def test_guest_knock_name_is_optional():
    """guest_knock decodes without a name, and with an explicit null one."""
    for payload in ({"guestId": "g"}, {"guestId": "g", "name": None}):
        result = notify(notify_body("guest_knock", payload))
        assert result.payload == GuestKnock(guestId="g", name=None)


def test_user_banned_reason_may_be_empty():
    """A ban needs no reason text: an empty reason is valid."""
    result = notify(notify_body("user_banned", {"userId": "u", "reason": ""}))
    assert result.payload.reason == ""


@pytest.mark.parametrize("role", ["owner", "admin", "member", "guest", "pending_guest"])
def test_user_updated_accepts_every_role(role):
    """user_updated accepts each of the five roles."""
    result = notify(notify_body("user_updated", {"userId": "u", "role": role}))
    assert result.payload.role == role


def test_position_update_decodes_from_a_client():
    """A client position_update with integers, floats and a roomId decodes."""
    result = client(position(x=1, y=-2.5, roomId="room-1"))
    assert result.type == "position_update"
    assert result.payload == PositionUpdate(x=1, y=-2.5, roomId="room-1")


def test_position_update_room_is_optional():
    """roomId may be left out of a position_update."""
    assert client(position(x=0, y=0)).payload.roomId is None


@pytest.mark.parametrize("value", [1e9, -1e9, 10**9, 0.000001])
def test_coordinates_at_the_limit_are_accepted(value):
    """Coordinates up to ±1e9 inclusive are valid."""
    assert client(position(x=value, y=value)).payload.x == value


def test_limits_inclusive_for_ids_and_names():
    """An id of 128 characters and a name of 200 are still valid."""
    payload = {"roomId": "r" * 128, "name": "n" * 200}
    assert notify(notify_body("room_updated", payload)).payload.roomId == "r" * 128
    assert notify(notify_body("room_updated", targets=["u" * 128])).targets == (
        "u" * 128,
    )


def test_reason_may_be_1000_characters():
    """A ban reason of exactly 1000 characters is valid."""
    payload = {"userId": "u", "reason": "x" * 1000}
    assert len(notify(notify_body("user_banned", payload)).payload.reason) == 1000


# ---------------------------------------------------------------- missing fields, wrong types


@pytest.mark.parametrize(("type_", "field"), REQUIRED_FIELDS)
def test_missing_payload_field_is_reported_at_its_path(type_, field):
    """Leaving out a required payload field names that field's path."""
    payload = {k: v for k, v in VALID_PAYLOADS[type_].items() if k != field}
    error = contract_error(notify, notify_body(type_, payload))
    assert error.code == codes.ERR_INVALID_MESSAGE
    assert error.errors == ((f"$.payload.{field}", "required field missing"),)


@pytest.mark.parametrize("field", ["x", "y"])
def test_missing_coordinate_is_reported(field):
    """A position_update without x or y names the missing coordinate."""
    payload = {"x": 1, "y": 2}
    del payload[field]
    error = contract_error(client, position(**payload))
    assert error.errors == ((f"$.payload.{field}", "required field missing"),)


@pytest.mark.parametrize(
    "field", ["orgId", "routing", "type", "payload"], ids=lambda f: f
)
def test_missing_envelope_field_is_reported(field):
    """Leaving out an envelope field of a notification names it."""
    body = notify_body("room_updated", routing="broadcast", targets=...)
    del body[field]
    error = contract_error(notify, body)
    assert error.code == codes.ERR_INVALID_MESSAGE
    assert (f"$.{field}", "required field missing") in error.errors


@pytest.mark.parametrize("field", ["type", "payload"])
def test_missing_client_envelope_field_is_reported(field):
    """A client frame without type or payload names the missing field."""
    frame = position(x=1, y=1)
    del frame[field]
    error = contract_error(client, frame)
    assert error.errors == ((f"$.{field}", "required field missing"),)


@pytest.mark.parametrize("value", [True, False])
def test_bool_is_not_a_number(value):
    """true and false are refused where a coordinate is expected."""
    error = contract_error(client, position(x=value, y=1))
    assert error.errors == (("$.payload.x", "expected a number"),)


@pytest.mark.parametrize("value", ["1", "1.5", None, [1], {"v": 1}])
def test_coordinate_must_be_a_json_number(value):
    """A string, null, list or object is no coordinate: no coercion from "1"."""
    error = contract_error(client, position(x=1, y=value))
    assert error.errors == (("$.payload.y", "expected a number"),)


@pytest.mark.parametrize("value", [1, 1.5, True, None, ["a"], {"a": "b"}])
def test_string_field_takes_only_strings(value):
    """An id given as a number, bool, null, list or object is refused, not coerced."""
    error = contract_error(
        notify, notify_body("room_updated", {"roomId": value, "name": "n"})
    )
    assert error.errors == (("$.payload.roomId", "expected a string"),)


def test_org_id_given_as_number_is_refused():
    """orgId 123 is refused, not turned into "123"."""
    error = contract_error(notify, notify_body("room_updated", orgId=123))
    assert error.errors == (("$.orgId", "expected a string"),)


def test_client_type_must_be_a_string():
    """A client frame whose type is a number is refused at $.type."""
    error = contract_error(client, {"type": 5, "payload": {}})
    assert error.errors == (("$.type", "expected a string"),)


@pytest.mark.parametrize("payload", [[], "x", 1, None])
def test_payload_must_be_an_object(payload):
    """A payload that is not a JSON object is refused at $.payload."""
    error = contract_error(client, {"type": "position_update", "payload": payload})
    assert error.code == codes.ERR_INVALID_MESSAGE
    assert error.errors == (("$.payload", "expected an object"),)
    body = notify_body("room_updated", payload, routing="broadcast", targets=...)
    assert contract_error(notify, body).errors == (("$.payload", "expected an object"),)


@pytest.mark.parametrize("value", [[1], "a", 1, None, True])
def test_top_level_must_be_an_object(value):
    """A frame that is valid JSON but not an object is refused at $."""
    error = contract_error(client, value)
    assert error.errors == (("$", "expected an object"),)
    assert contract_error(notify, value).errors == (("$", "expected an object"),)


# ---------------------------------------------------------------- limits


@pytest.mark.parametrize("value", ["", "   ", "\t"])
def test_empty_ids_are_refused(value):
    """An empty or blank id is refused at its own path."""
    error = contract_error(
        notify, notify_body("user_updated", {"userId": value, "role": "guest"})
    )
    assert error.errors == (("$.payload.userId", "userId must not be empty"),)


def test_empty_org_id_is_refused():
    """An empty orgId is refused at $.orgId."""
    error = contract_error(notify, notify_body("room_updated", orgId=""))
    assert error.errors == (("$.orgId", "orgId must not be empty"),)


def test_empty_client_type_is_refused():
    """An empty type in a client frame is refused at $.type."""
    error = contract_error(client, {"type": "", "payload": {}})
    assert error.errors == (("$.type", "type must not be empty"),)


@pytest.mark.parametrize(
    ("type_", "field", "limit"),
    [
        ("room_updated", "roomId", 128),
        ("room_updated", "name", 200),
        ("space_deleted", "spaceId", 128),
        ("space_deleted", "name", 200),
        ("user_updated", "userId", 128),
        ("user_banned", "reason", 1000),
        ("guest_knock", "guestId", 128),
        ("guest_knock", "name", 200),
    ],
)
def test_over_long_strings_are_refused(type_, field, limit):
    """A string one character over its limit is refused at its path."""
    payload = dict(VALID_PAYLOADS[type_], **{field: "x" * (limit + 1)})
    error = contract_error(notify, notify_body(type_, payload))
    assert error.errors == (
        (f"$.payload.{field}", f"{field} is longer than {limit} characters"),
    )


def test_over_long_room_id_in_position_is_refused():
    """A position_update roomId over 128 characters is refused."""
    error = contract_error(client, position(x=1, y=1, roomId="r" * 129))
    assert error.errors == (
        ("$.payload.roomId", "roomId is longer than 128 characters"),
    )


def test_unknown_role_is_refused():
    """user_updated with a role outside the five is refused at $.payload.role."""
    error = contract_error(
        notify, notify_body("user_updated", {"userId": "u", "role": "superuser"})
    )
    assert [path for path, _ in error.errors] == ["$.payload.role"]


@pytest.mark.parametrize(
    "raw",
    [b"1000000001", b"-1e10", b"1e999", b"-1e999", b"9" * 400],
    ids=["over", "under", "inf", "-inf", "huge-int"],
)
def test_out_of_range_and_non_finite_coordinates_are_refused(raw):
    """Coordinates beyond ±1e9, overflowing to infinity, or huge integers are refused."""
    frame = b'{"type":"position_update","payload":{"x":' + raw + b',"y":0}}'
    error = contract_error(client, frame)
    assert error.code == codes.ERR_INVALID_MESSAGE
    assert error.errors == (("$.payload.x", "x must be a finite number within ±1e9"),)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_position_class_refuses_non_finite_values(value):
    """PositionUpdate itself refuses NaN and infinities, whoever builds it."""
    with pytest.raises(ValueError, match="finite"):
        PositionUpdate(x=value, y=0)
    with pytest.raises(ValueError, match="finite"):
        PositionUpdate(x=0, y=value)


# ---------------------------------------------------------------- unknown fields, all errors


def test_unknown_envelope_field_is_reported_with_its_path():
    """An unknown field in a client envelope is reported at $.<name>."""
    frame = dict(position(x=1, y=1), extra=1)
    error = contract_error(client, frame)
    assert error.errors == (("$.extra", "unknown field"),)


def test_unknown_payload_field_is_reported_with_its_path():
    """An unknown payload field is reported at $.payload.<name>."""
    error = contract_error(client, position(x=1, y=1, z=3))
    assert error.errors == (("$.payload.z", "unknown field"),)


def test_unknown_fields_in_notification_at_both_levels():
    """A notification reports unknown fields in the envelope and in the payload."""
    payload = dict(VALID_PAYLOADS["room_updated"], colour="red")
    error = contract_error(notify, notify_body("room_updated", payload, priority=1))
    assert set(error.errors) == {
        ("$.priority", "unknown field"),
        ("$.payload.colour", "unknown field"),
    }


def test_every_offending_client_field_is_listed_together():
    """Type errors, range errors and unknown fields of one frame are all reported."""
    frame = {
        "type": "position_update",
        "payload": {"x": True, "y": 1e10, "roomId": "", "z": 0},
        "from": "mallory",
    }
    error = contract_error(client, frame)
    assert error.code == codes.ERR_INVALID_MESSAGE
    assert set(error.errors) == {
        ("$.from", "unknown field"),
        ("$.payload.x", "expected a number"),
        ("$.payload.y", "y must be a finite number within ±1e9"),
        ("$.payload.roomId", "roomId must not be empty"),
        ("$.payload.z", "unknown field"),
    }


def test_every_offending_notification_field_is_listed_together():
    """Envelope and payload faults of one notification come back in one error."""
    body = {
        "orgId": "",
        "routing": "broadcast",
        "type": "room_updated",
        "payload": {"roomId": 7, "name": "n" * 201, "extra": True},
        "junk": 1,
    }
    error = contract_error(notify, body)
    assert error.code == codes.ERR_INVALID_MESSAGE
    assert set(error.errors) == {
        ("$.orgId", "orgId must not be empty"),
        ("$.junk", "unknown field"),
        ("$.payload.roomId", "expected a string"),
        ("$.payload.name", "name is longer than 200 characters"),
        ("$.payload.extra", "unknown field"),
    }


def test_every_target_fault_is_listed_with_payload_faults():
    """Target faults and payload faults of a direct notification are reported together."""
    body = notify_body(
        "user_banned", {"userId": "", "reason": "r"}, targets=["a", "a", " "]
    )
    error = contract_error(notify, body)
    assert set(error.errors) == {
        ("$.targets", "targets must be unique"),
        ("$.targets[2]", "must be a non-empty id"),
        ("$.payload.userId", "userId must not be empty"),
    }


def test_error_message_names_every_field():
    """ContractError.message is one line naming each path with its reason."""
    error = contract_error(client, position(x="1", y="2"))
    assert error.message == (
        "$.payload.x: expected a number; $.payload.y: expected a number"
    )
    assert "\n" not in error.message


# ---------------------------------------------------------------- JSON


@pytest.mark.parametrize(
    "data",
    [b"", b"{", b"{'type': 1}", b'{"type":"x",}', b"nul", b'{"a":1} {"b":2}'],
)
def test_invalid_json_is_refused(data):
    """Malformed JSON is invalid_json at $, for clients and the backend alike."""
    for decode in (client, notify):
        error = contract_error(decode, data)
        assert error.code == codes.ERR_INVALID_JSON
        assert [path for path, _ in error.errors] == ["$"]


@pytest.mark.parametrize(
    "data",
    [b'{"type":"\xff"}', b"\xfe\xff", b'{"a":"\xed\xa0\x80"}'],
    ids=["latin1", "bom16", "surrogate"],
)
def test_invalid_utf8_is_refused(data):
    """Bytes that are not UTF-8 are invalid_json."""
    error = contract_error(client, data)
    assert error.code == codes.ERR_INVALID_JSON
    assert error.errors == (("$", "not valid UTF-8"),)


@pytest.mark.parametrize(
    "data",
    [
        b'{"type":"position_update","type":"room_updated","payload":{}}',
        b'{"type":"position_update","payload":{"x":1,"x":2,"y":3}}',
    ],
    ids=["envelope", "payload"],
)
def test_duplicate_keys_are_refused(data):
    """A key given twice, at any depth, is invalid_json naming the key."""
    error = contract_error(client, data)
    assert error.code == codes.ERR_INVALID_JSON
    assert "duplicate key" in error.message


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_nan_and_infinity_literals_are_refused(literal):
    """The non-standard NaN and Infinity literals are invalid_json."""
    data = b'{"type":"position_update","payload":{"x":' + literal + b',"y":0}}'
    error = contract_error(client, data)
    assert error.code == codes.ERR_INVALID_JSON
    assert error.errors == (("$", f"{literal.decode()} is not valid JSON"),)


def test_depth_limit():
    """Nesting up to the limit parses; one level more is invalid_json."""
    assert parse_json(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH) == _nested(MAX_DEPTH)
    deeper = MAX_DEPTH + 1
    with pytest.raises(ContractError) as info:
        parse_json(b"[" * deeper + b"]" * deeper)
    assert info.value.code == codes.ERR_INVALID_JSON
    assert info.value.errors == (("$", f"nested deeper than {MAX_DEPTH} levels"),)


def test_depth_limit_applies_inside_a_payload():
    """A deeply nested value inside a payload is refused before structuring."""
    inner = b'{"a":' * MAX_DEPTH + b"1" + b"}" * MAX_DEPTH
    frame = b'{"type":"position_update","payload":{"x":' + inner + b',"y":1}}'
    error = contract_error(client, frame)
    assert error.code == codes.ERR_INVALID_JSON


def test_pathological_nesting_fails_cleanly():
    """Nesting far beyond the recursion limit is invalid_json, not a crash."""
    error = contract_error(client, b"[" * 200_000 + b"]" * 200_000)
    assert error.code == codes.ERR_INVALID_JSON


def _nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


# ---------------------------------------------------------------- types and routings


def test_unknown_client_type():
    """A client frame of an unknown type is unknown_type at $.type."""
    error = contract_error(client, {"type": "teleport", "payload": {}})
    assert error.code == codes.ERR_UNKNOWN_TYPE
    assert [path for path, _ in error.errors] == ["$.type"]


def test_unknown_notification_type():
    """A notification of an unknown type is unknown_type at $.type."""
    error = contract_error(notify, notify_body("teleport", {"a": 1}))
    assert error.code == codes.ERR_UNKNOWN_TYPE
    assert [path for path, _ in error.errors] == ["$.type"]


@pytest.mark.parametrize("type_", BACKEND_TYPES)
def test_client_may_not_send_backend_types(type_):
    """A client sending a backend-only type gets type_not_allowed at $.type."""
    error = contract_error(client, {"type": type_, "payload": VALID_PAYLOADS[type_]})
    assert error.code == codes.ERR_TYPE_NOT_ALLOWED
    assert [path for path, _ in error.errors] == ["$.type"]


def test_server_only_frame_types_are_unknown_to_clients():
    """A client cannot inject the server's own connected or error frames."""
    for type_ in ("connected", "error"):
        assert contract_error(client, {"type": type_, "payload": {}}).code in (
            codes.ERR_UNKNOWN_TYPE,
            codes.ERR_TYPE_NOT_ALLOWED,
        )


@pytest.mark.parametrize(
    ("type_", "routing"),
    [
        ("guest_knock", "broadcast"),
        ("user_banned", "broadcast"),
        ("position_update", "broadcast"),
        ("position_update", "direct"),
    ],
)
def test_routing_not_allowed_for_type(type_, routing):
    """A routing the type does not allow is routing_not_allowed at $.routing."""
    payload = VALID_PAYLOADS.get(type_, {"x": 1, "y": 1})
    targets = ["user-1"] if routing == "direct" else ...
    error = contract_error(
        notify, notify_body(type_, payload, routing=routing, targets=targets)
    )
    assert error.code == codes.ERR_ROUTING_NOT_ALLOWED
    assert [path for path, _ in error.errors] == ["$.routing"]


def test_unknown_routing_is_refused():
    """A routing other than broadcast or direct is refused at $.routing."""
    error = contract_error(notify, notify_body("room_updated", routing="multicast"))
    assert error.code == codes.ERR_INVALID_MESSAGE
    assert [path for path, _ in error.errors] == ["$.routing"]


# ---------------------------------------------------------------- targets


@pytest.mark.parametrize("targets", [..., None, []], ids=["absent", "null", "empty"])
def test_direct_requires_targets(targets):
    """Direct routing without a non-empty targets list is refused at $.targets."""
    error = contract_error(notify, notify_body("room_updated", targets=targets))
    assert error.code == codes.ERR_INVALID_MESSAGE
    assert error.errors == (
        ("$.targets", "required and non-empty with direct routing"),
    )


def test_direct_targets_must_be_unique():
    """A target named twice is refused."""
    error = contract_error(notify, notify_body("room_updated", targets=["a", "b", "a"]))
    assert error.errors == (("$.targets", "targets must be unique"),)


@pytest.mark.parametrize("target", ["", "  ", "x" * 129])
def test_direct_targets_must_be_ids(target):
    """An empty, blank or over-long target is refused at its index."""
    error = contract_error(notify, notify_body("room_updated", targets=["a", target]))
    assert error.errors == (("$.targets[1]", "must be a non-empty id"),)


@pytest.mark.parametrize("targets", ["user-1", {"user-1": 1}, 5, True])
def test_direct_targets_must_be_an_array(targets):
    """A string or object is not split into targets: it is refused at $.targets."""
    error = contract_error(notify, notify_body("room_updated", targets=targets))
    assert error.code == codes.ERR_INVALID_MESSAGE
    assert error.errors == (("$.targets", "expected an array"),)


def test_direct_targets_must_be_strings():
    """Each target that is not a string is refused at its index."""
    error = contract_error(notify, notify_body("room_updated", targets=["a", 1, None]))
    assert error.errors == (
        ("$.targets[1]", "expected a string"),
        ("$.targets[2]", "expected a string"),
    )


def test_direct_targets_are_capped():
    """More than 1000 targets are refused."""
    targets = [f"user-{i}" for i in range(1001)]
    error = contract_error(notify, notify_body("room_updated", targets=targets))
    assert error.errors == (("$.targets", "more than 1000 targets"),)
    assert notify(notify_body("room_updated", targets=targets[:1000])).targets == (
        tuple(targets[:1000])
    )


@pytest.mark.parametrize("targets", [["user-1"], []])
def test_broadcast_refuses_targets(targets):
    """Targets, even an empty list, are refused with broadcast routing."""
    error = contract_error(
        notify, notify_body("room_updated", routing="broadcast", targets=targets)
    )
    assert error.errors == (("$.targets", "not allowed with broadcast routing"),)


# ---------------------------------------------------------------- from


def test_client_supplied_from_is_refused():
    """A client frame carrying its own "from" is refused; it never survives."""
    error = contract_error(client, dict(position(x=1, y=1), **{"from": "alice"}))
    assert error.code == codes.ERR_INVALID_MESSAGE
    assert error.errors == (("$.from", "unknown field"),)


def test_from_inside_a_payload_is_refused():
    """A "from" smuggled into a payload is an unknown field."""
    error = contract_error(client, position(x=1, y=1, **{"from": "alice"}))
    assert error.errors == (("$.payload.from", "unknown field"),)


def test_backend_supplied_from_is_refused():
    """A notification carrying "from" is refused as well."""
    body = notify_body("room_updated", **{"from": "alice"})
    assert contract_error(notify, body).errors == (("$.from", "unknown field"),)


# ---------------------------------------------------------------- encoding


def test_encode_stamps_from_between_type_and_payload():
    """encode() writes {"type", "from", "payload"} when a sender is given."""
    encoded = encode("position_update", PositionUpdate(x=1, y=2.5), sender="alice")
    assert json.loads(encoded.data) == {
        "type": "position_update",
        "from": "alice",
        "payload": {"x": 1, "y": 2.5},
    }
    assert encoded.data.startswith(b'{"type":"position_update","from":"alice",')
    assert encoded.sender == "alice"
    assert encoded.type == "position_update"


def test_encode_without_sender_has_no_from():
    """A backend notification is encoded as {"type", "payload"} only."""
    encoded = encode("room_updated", RoomUpdated(roomId="r1", name="Main Hall"))
    assert json.loads(encoded.data) == {
        "type": "room_updated",
        "payload": {"roomId": "r1", "name": "Main Hall"},
    }
    assert encoded.sender is None


def test_encode_omits_none_optional_fields():
    """Optional fields left as None do not appear in the frame."""
    knock = json.loads(encode("guest_knock", GuestKnock(guestId="g")).data)
    assert knock["payload"] == {"guestId": "g"}
    pos = json.loads(encode("position_update", PositionUpdate(x=0, y=0)).data)
    assert pos["payload"] == {"x": 0, "y": 0}


def test_decoded_payload_passes_through_unchanged():
    """What a client sent comes out the same: numbers keep their kind, roomId stays a string."""
    frame = position(x=3, y=-0.25, roomId="42")
    message = client(frame)
    out = json.loads(encode(message.type, message.payload, sender="bob").data)
    assert out == {
        "type": "position_update",
        "from": "bob",
        "payload": frame["payload"],
    }
    assert isinstance(out["payload"]["x"], int)
    assert out["payload"]["roomId"] == "42"


def test_encoded_notification_carries_no_org_or_targets():
    """Encoding a decoded notification echoes neither orgId nor targets."""
    message = notify(notify_body("user_banned"))
    out = json.loads(encode(message.type, message.payload).data)
    assert out == {"type": "user_banned", "payload": VALID_PAYLOADS["user_banned"]}


def test_encode_keeps_unicode():
    """Non-ASCII names are encoded as UTF-8 and decode back the same."""
    message = notify(
        notify_body("room_updated", {"roomId": "r", "name": "Sala ñ 会议"})
    )
    out = json.loads(encode(message.type, message.payload).data.decode("utf-8"))
    assert out["payload"]["name"] == "Sala ñ 会议"


@given(
    x=st.floats(min_value=-1e9, max_value=1e9, allow_nan=False),
    y=st.integers(min_value=-(10**9), max_value=10**9),
    room=st.none() | st.text(min_size=1, max_size=128).filter(str.strip),
)
def test_position_round_trip(x, y, room):
    """Any valid position decodes and re-encodes to the same payload."""
    payload: dict[str, Any] = {"x": x, "y": y}
    if room is not None:
        payload["roomId"] = room
    message = client({"type": "position_update", "payload": payload})
    out = json.loads(encode(message.type, message.payload, sender="u").data)
    assert out["payload"] == payload


# ---------------------------------------------------------------- not valid Unicode

SURROGATE = "not valid Unicode (lone surrogate)"


@pytest.mark.parametrize(
    ("data", "path"),
    [
        (
            rb'{"type":"position_update","payload":{"x":1,"y":1,"roomId":"\ud800"}}',
            "$.payload.roomId",
        ),
        (
            rb'{"type":"position_update","payload":{"x":1,"y":1,"roomId":"a\uDFFFb"}}',
            "$.payload.roomId",
        ),
        (rb'{"type":"\ud800","payload":{}}', "$.type"),
        (
            rb'{"type":"position_update","payload":{"x":["\udc00\ud800"]}}',
            "$.payload.x[0]",
        ),
        (rb'"\ud800x"', "$"),
    ],
    ids=["high", "low-uppercase", "type", "reversed-pair-in-array", "top-level"],
)
def test_lone_surrogate_in_a_client_frame_is_refused_at_its_path(data, path):
    """A string holding an unpaired surrogate escape is invalid_json naming its path."""
    error = contract_error(client, data)
    assert error.code == codes.ERR_INVALID_JSON
    assert error.errors == ((path, SURROGATE),)


def test_lone_surrogate_in_a_notification_is_refused_at_every_path():
    """Every string and field name of a notification that is not valid Unicode is listed."""
    body = (
        rb'{"orgId":"org-a","routing":"direct","type":"room_updated",'
        rb'"targets":["u1","\udbff"],'
        rb'"payload":{"roomId":"r","name":"\ud800","\udc01x":1}}'
    )
    error = contract_error(notify, body)
    assert error.code == codes.ERR_INVALID_JSON
    assert error.errors == (
        ("$.targets[1]", SURROGATE),
        ("$.payload.name", SURROGATE),
        ("$.payload.\\udc01x", "field name " + SURROGATE),
    )
    # The error itself can be written back: orjson refuses surrogates.
    encode("error", {"message": error.message})


def test_surrogate_pairs_and_escaped_backslashes_are_accepted():
    """A proper surrogate pair is one character, and an escaped backslash is not an escape."""
    # json.dumps writes the backslash escaped and the emoji as a surrogate pair.
    message = notify(
        notify_body("room_updated", {"roomId": "\\ud800", "name": "\U0001f600"})
    )
    assert message.payload == RoomUpdated(roomId="\\ud800", name="\U0001f600")
    raw = rb'{"type":"position_update","payload":{"x":1,"y":1,"roomId":"\ud83d\ude00"}}'
    assert client(raw).payload.roomId == "\U0001f600"


@pytest.mark.parametrize("where", ["client", "notify"])
def test_integer_literal_past_the_conversion_limit_is_invalid_json(where):
    """An integer of more than 4300 digits is invalid_json, not an escaping ValueError."""
    digits = b"1" * 5000
    if where == "client":
        error = contract_error(
            client, b'{"type":"position_update","payload":{"x":' + digits + b',"y":0}}'
        )
    else:
        error = contract_error(
            notify,
            b'{"orgId":"org-a","routing":"broadcast","type":"room_updated",'
            b'"payload":{"roomId":' + digits + b',"name":"n"}}',
        )
    assert error.code == codes.ERR_INVALID_JSON
    assert [path for path, _ in error.errors] == ["$"]
    assert "digits" in error.message


@attrs.frozen(kw_only=True)
class Counter:
    """A plug-in's payload with an integer field."""

    n: int


COUNTER_CATALOG = {**BUILTIN, "counter": MessageSpec(payload=Counter, routings=BOTH)}


def counter_body(n: int) -> bytes:
    """A broadcast ``counter`` notification carrying ``n``."""
    return json.dumps(
        {"orgId": "o", "routing": "broadcast", "type": "counter", "payload": {"n": n}}
    ).encode()


@pytest.mark.parametrize("n", [2**63, -(2**63) - 1, 10**100])
def test_integer_fields_refuse_what_cannot_be_written_back(n):
    """An integer field refuses a value beyond 64 bits, which the encoder cannot write."""
    with pytest.raises(ContractError) as info:
        decode_notify(counter_body(n), COUNTER_CATALOG)
    assert info.value.code == codes.ERR_INVALID_MESSAGE
    assert info.value.errors == (("$.payload.n", "expected a 64-bit integer"),)


@pytest.mark.parametrize("n", [2**63 - 1, -(2**63), 0])
def test_integer_fields_take_64_bit_integers(n):
    """Every 64-bit integer is accepted and encoded back unchanged."""
    message = decode_notify(counter_body(n), COUNTER_CATALOG)
    assert json.loads(encode(message.type, message.payload).data)["payload"] == {"n": n}
