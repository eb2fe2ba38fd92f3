"""The one place JSON is read and written, and the contract is enforced.

Two steps, two error paths: the envelope is structured first, then its ``type`` is
looked up in the catalog and the payload is structured with that type's class.
Every failure becomes a :class:`ContractError` listing ``(path, reason)`` pairs.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, get_origin

import attrs
import cattrs
import orjson
from cattrs import BaseConverter
from cattrs.cols import list_structure_factory
from cattrs.errors import (
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
)
from cattrs.gen import make_dict_unstructure_fn

from officerouter import codes
from officerouter.messages import (
    MAX_ID_LENGTH,
    MAX_TARGETS,
    ClientEnvelope,
    ClientMessage,
    Notification,
    NotifyEnvelope,
)

MAX_DEPTH: Final = 16
NOT_UNICODE: Final = "not valid Unicode (lone surrogate)"

converter = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)


def _exact(label: str, *types: type) -> Callable[[Any, Any], Any]:
    def hook(value: Any, _: Any) -> Any:
        # bool is an int subclass; a number field never takes true/false.
        if type(value) not in types:
            raise TypeError(f"expected {label}")
        return value

    return hook


def _int64(value: Any, _: Any) -> Any:
    # orjson writes 64-bit integers only: a larger one would be accepted here
    # and fail when the message is encoded.
    if type(value) is not int:
        raise TypeError("expected an integer")
    if not -(2**63) <= value < 2**63:
        raise ValueError("expected a 64-bit integer")
    return value


# cattrs coerces primitives by default ("1" -> 1, 1 -> "1"); the contract does not.
converter.register_structure_hook(str, _exact("a string", str))
converter.register_structure_hook(int, _int64)
converter.register_structure_hook(float, _exact("a number", float, int))
converter.register_structure_hook(bool, _exact("true or false", bool))
# The envelopes' payload, kept whole until its type's class structures it.
converter.register_structure_hook_func(
    lambda t: t == dict[str, Any], _exact("an object", dict)
)


def _is_list(type_: Any) -> bool:
    origin: Any = get_origin(type_)
    return origin is list


def _array_only(type_: Any, conv: BaseConverter) -> Callable[[Any, Any], Any]:
    # cattrs builds a list from any iterable: "user-1" would become six targets.
    inner = list_structure_factory(type_, conv)

    def hook(value: Any, cl: Any) -> Any:
        if type(value) is not list:
            raise TypeError("expected an array")
        return inner(value, cl)

    return hook


converter.register_structure_hook_factory(_is_list, _array_only)
converter.register_unstructure_hook_factory(
    attrs.has,
    lambda cl: make_dict_unstructure_fn(cl, converter, _cattrs_omit_if_default=True),
)


class ContractError(Exception):
    """Input that breaks the contract: an error code and every offending field."""

    def __init__(self, code: str, errors: Iterable[tuple[str, str]]) -> None:
        self.code = code
        self.errors = tuple(errors)
        super().__init__(code, self.errors)

    @property
    def message(self) -> str:
        """One line naming every offending field, for error frames and logs."""
        return "; ".join(f"{path}: {reason}" for path, reason in self.errors)


@attrs.define(slots=True, eq=False)
class Encoded:
    """An outgoing message, encoded once and written as the same bytes to every target.

    ``framings`` lets a transport adapter cache its own framing of ``data`` (for
    WebSocket: the frame header plus ``data``), so that too is built once.
    """

    type: str
    data: bytes
    sender: str | None = None
    #: Superseded by the sender's next message of the same type (positions): a
    #: slow connection may skip it when a newer one is queued.
    ephemeral: bool = False
    #: The org's sequence number of this message (history and recovery); ``None``
    #: for unsequenced frames (positions, presence, ``connected``, ``error``).
    seq: int | None = None
    framings: dict[str, bytes] = attrs.Factory(dict)


@attrs.define(slots=True, eq=False)
class Burst:
    """Messages that go to many connections together and in order.

    A transport adapter may frame the whole burst once (``framings``), so each
    connection costs one queued item however many messages the burst holds.
    """

    messages: tuple[Encoded, ...]
    framings: dict[str, bytes] = attrs.Factory(dict)


# ---------------------------------------------------------------- JSON


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ContractError(
                codes.ERR_INVALID_JSON, [("$", f"duplicate key {key!r}")]
            )
        result[key] = value
    return result


def _no_constants(name: str) -> Any:
    raise ContractError(codes.ERR_INVALID_JSON, [("$", f"{name} is not valid JSON")])


def _depth_exceeds(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Iterable[Any] = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


# Text decoded as strict UTF-8 holds a surrogate code point only through a
# \uD800-\uDFFF escape, and the decoder joins a proper pair into one character:
# what is left is a lone surrogate, which no UTF-8 writer (orjson) accepts.  The
# parsed value is walked for them only when the bytes hold such an escape.
_SURROGATE_ESCAPE: Final = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE: Final = re.compile("[\ud800-\udfff]")


def is_unicode(text: str) -> bool:
    """Whether ``text`` is valid Unicode: it holds no lone surrogate."""
    return text.isascii() or _SURROGATE.search(text) is None


def _path_key(key: str) -> str:
    # A lone surrogate in a path would make the error itself unwritable.
    return key.encode("utf-8", "backslashreplace").decode("utf-8")


def _surrogate_errors(value: Any, path: str = "$") -> list[tuple[str, str]]:
    """Every string and field name holding a lone surrogate, in document order.

    Recursion is bounded: the value's depth was checked first.
    """
    errors: list[tuple[str, str]] = []
    if isinstance(value, str):
        if not is_unicode(value):
            errors.append((path, NOT_UNICODE))
    elif isinstance(value, dict):
        for key, child in value.items():
            child_path = f"{path}.{_path_key(key)}"
            if not is_unicode(key):
                errors.append((child_path, "field name " + NOT_UNICODE))
            errors.extend(_surrogate_errors(child, child_path))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            errors.extend(_surrogate_errors(child, f"{path}[{i}]"))
    return errors


# One decoder for every frame and body: json.loads with options builds a new
# JSONDecoder per call (2 % of the core under position chatter, profiled).
_STRICT_DECODER = json.JSONDecoder(
    object_pairs_hook=_object_without_duplicates, parse_constant=_no_constants
)


def parse_json(data: bytes) -> Any:
    """Parse strict JSON: what passes can be checked, stored and written back.

    UTF-8 only, no duplicate keys, no NaN, nesting of at most :data:`MAX_DEPTH`,
    integers within Python's conversion limit (4300 digits), and every string and
    field name valid Unicode (no lone surrogate escape).

    :raises ContractError: with code ``invalid_json``; a string that is not valid
        Unicode is named by its path, every one of them.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ContractError(
            codes.ERR_INVALID_JSON, [("$", "not valid UTF-8")]
        ) from None
    try:
        value = _STRICT_DECODER.decode(text)
    except RecursionError:
        raise ContractError(
            codes.ERR_INVALID_JSON, [("$", f"nested deeper than {MAX_DEPTH} levels")]
        ) from None
    except json.JSONDecodeError as e:
        raise ContractError(
            codes.ERR_INVALID_JSON,
            [("$", f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}")],
        ) from None
    except ValueError:
        # The only other ValueError: an integer past Python's conversion limit.
        raise ContractError(
            codes.ERR_INVALID_JSON,
            [("$", f"an integer has more than {sys.get_int_max_str_digits()} digits")],
        ) from None
    if _depth_exceeds(value, MAX_DEPTH):
        raise ContractError(
            codes.ERR_INVALID_JSON, [("$", f"nested deeper than {MAX_DEPTH} levels")]
        )
    if _SURROGATE_ESCAPE.search(data):
        errors = _surrogate_errors(value)
        if errors:
            raise ContractError(codes.ERR_INVALID_JSON, errors)
    return value


def dumps(value: Any) -> bytes:
    """Serialise plain data (the one JSON writer)."""
    return orjson.dumps(value)


def dumps_document(value: Any) -> bytes:
    """Serialise a document for people and diffs: indented, ending with a newline."""
    return orjson.dumps(value, option=orjson.OPT_INDENT_2) + b"\n"


# ---------------------------------------------------------------- structuring


def _format(exc: BaseException, _type: Any) -> str:
    if isinstance(exc, ForbiddenExtraKeysError):
        return "\0" + "\0".join(sorted(exc.extra_fields))
    if isinstance(exc, KeyError):
        return "required field missing"
    if isinstance(exc, TypeError | ValueError):
        return str(exc) or exc.__class__.__name__
    return "invalid value"


def _errors(exc: Exception, root: str) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for line in cattrs.transform_error(exc, path=root, format_exception=_format):
        reason, _, path = line.rpartition(" @ ")
        if reason.startswith("\0"):
            pairs.extend(
                (f"{path}.{key}", "unknown field") for key in reason[1:].split("\0")
            )
        else:
            pairs.append((path, reason))
    return pairs


def _validator_errors(
    cls: type[Any], data: Mapping[str, Any], root: str, failed: list[str]
) -> list[tuple[str, str]]:
    """Check every present field that structured cleanly against its validator.

    Such a field's raw value is the structured one (the primitive hooks above
    return it unchanged), so the validator sees what ``__init__`` would.
    """
    errors: list[tuple[str, str]] = []
    for attribute in attrs.fields(cls):
        path = f"{root}.{attribute.name}"
        if (
            attribute.validator is None
            or attribute.name not in data
            or any(p == path or p.startswith((path + ".", path + "[")) for p in failed)
        ):
            continue
        try:
            attribute.validator(None, attribute, data[attribute.name])
        except Exception as e:  # a plug-in's validator may raise anything
            errors.append((path, str(e) or e.__class__.__name__))
    return errors


def structure(value: Any, cls: type[Any], root: str = "$") -> Any:
    """Structure plain data into the attrs class ``cls``.

    Unknown fields and every other offending field are reported together.

    :raises ContractError: with code ``invalid_message`` and every offending path.
    """
    if not isinstance(value, Mapping):
        raise ContractError(codes.ERR_INVALID_MESSAGE, [(root, "expected an object")])
    known = {a.name for a in attrs.fields(cls)}
    errors = [(f"{root}.{key}", "unknown field") for key in value if key not in known]
    data = {k: v for k, v in value.items() if k in known} if errors else value
    try:
        result = converter.structure(data, cls)
    except (
        ClassValidationError,
        IterableValidationError,
        ForbiddenExtraKeysError,
    ) as e:
        found = _errors(e, root)
        # attrs runs validators in __init__ and stops at the first, which cattrs
        # reports against the class ("$.payload"), and not at all when a field had
        # the wrong type.  Run each validator on its own instead, so that every
        # offending field is named by its own path.
        by_field = [pair for pair in found if pair[0] != root]
        validated = _validator_errors(cls, data, root, [p for p, _ in by_field])
        errors.extend(by_field)
        errors.extend(validated or [pair for pair in found if pair[0] == root])
    if errors:
        raise ContractError(codes.ERR_INVALID_MESSAGE, errors)
    return result


def _payload_class(catalog: Mapping[str, Any], type_: str) -> type[Any]:
    spec = catalog.get(type_)
    if spec is None:
        raise ContractError(
            codes.ERR_UNKNOWN_TYPE, [("$.type", f"unknown type {type_!r}")]
        )
    payload: type[Any] = spec.payload
    return payload


def _payload_errors(
    raw: Any,
    catalog: Mapping[str, Any],
    envelope_errors: Iterable[tuple[str, str]],
    *,
    client: bool,
) -> list[tuple[str, str]]:
    """The payload's faults, reported with the envelope's when its type can be told.

    Nothing when the envelope already faults ``$.payload`` itself (missing, not an
    object), or when the sender may not use the type at all.
    """
    if any(path == "$.payload" for path, _ in envelope_errors):
        return []
    type_ = raw.get("type") if isinstance(raw, Mapping) else None
    spec = catalog.get(type_) if isinstance(type_, str) else None
    if spec is None or (client and not spec.client_allowed):
        return []
    try:
        structure(raw.get("payload"), spec.payload, "$.payload")
    except ContractError as e:
        return list(e.errors)
    return []


def decode_client(data: bytes, catalog: Mapping[str, Any]) -> ClientMessage:
    """Validate one client frame against the contract.

    :raises ContractError: invalid JSON, unknown or client-forbidden type, bad payload.
    """
    raw = parse_json(data)
    try:
        envelope = structure(raw, ClientEnvelope)
    except ContractError as e:
        found = [*e.errors, *_payload_errors(raw, catalog, e.errors, client=True)]
        raise ContractError(e.code, found) from None
    payload_class = _payload_class(catalog, envelope.type)
    if not catalog[envelope.type].client_allowed:
        raise ContractError(
            codes.ERR_TYPE_NOT_ALLOWED,
            [("$.type", f"clients may not send {envelope.type!r}")],
        )
    payload = structure(envelope.payload, payload_class, "$.payload")
    return ClientMessage(type=envelope.type, payload=payload)


def decode_notify(data: bytes, catalog: Mapping[str, Any]) -> Notification:
    """Validate one ``/internal/notify`` body against the contract.

    :raises ContractError: every offending field, with the most specific code.
    """
    return notification_from(parse_json(data), catalog)


def notification_from(raw: Any, catalog: Mapping[str, Any]) -> Notification:
    """Validate one parsed notification (a body, or one element of a batch).

    Paths start at ``$``, the notification itself.

    :raises ContractError: every offending field, with the most specific code.
    """
    try:
        envelope = structure(raw, NotifyEnvelope)
    except ContractError as e:
        found = [*e.errors, *_payload_errors(raw, catalog, e.errors, client=False)]
        raise ContractError(e.code, found) from None
    payload_class = _payload_class(catalog, envelope.type)
    spec = catalog[envelope.type]
    errors: list[tuple[str, str]] = []
    if envelope.routing not in spec.routings:
        allowed = " or ".join(sorted(spec.routings))
        reason = (
            f"{envelope.type} may only be sent with {allowed} routing"
            if allowed
            else f"{envelope.type} is sent by clients, not the backend"
        )
        raise ContractError(codes.ERR_ROUTING_NOT_ALLOWED, [("$.routing", reason)])
    targets = envelope.targets
    if envelope.routing == "broadcast":
        if targets is not None:
            errors.append(("$.targets", "not allowed with broadcast routing"))
    elif not targets:
        errors.append(("$.targets", "required and non-empty with direct routing"))
    else:
        if len(targets) > MAX_TARGETS:
            errors.append(("$.targets", f"more than {MAX_TARGETS} targets"))
        if len(set(targets)) != len(targets):
            errors.append(("$.targets", "targets must be unique"))
        for i, target in enumerate(targets):
            if not target.strip() or len(target) > MAX_ID_LENGTH:
                errors.append((f"$.targets[{i}]", "must be a non-empty id"))
    try:
        payload = structure(envelope.payload, payload_class, "$.payload")
    except ContractError as e:
        errors.extend(e.errors)
    if errors:
        raise ContractError(codes.ERR_INVALID_MESSAGE, errors)
    return Notification(
        org_id=envelope.orgId,
        routing=envelope.routing,
        type=envelope.type,
        payload=payload,
        targets=tuple(targets or ()),
    )


# ---------------------------------------------------------------- encoding


def encode(
    type_: str,
    payload: Any,
    *,
    sender: str | None = None,
    ephemeral: bool = False,
    seq: int | None = None,
) -> Encoded:
    """Encode an outgoing frame ``{"type", "from"?, "seq"?, "payload"}`` once."""
    frame: dict[str, Any] = {"type": type_}
    if sender is not None:
        frame["from"] = sender
    if seq is not None:
        frame["seq"] = seq
    frame["payload"] = converter.unstructure(payload)
    return Encoded(
        type=type_,
        # orjson hands back a bytes object inside a ~4 KiB allocation; messages
        # outlive this call (queues, history), so keep a right-sized copy.
        data=memoryview(orjson.dumps(frame)).tobytes(),
        sender=sender,
        ephemeral=ephemeral,
        seq=seq,
    )


_SEQ_MARK: Final = b',"seq":0,"payload":'


def encode_numbered(
    type_: str, payload: Any, *, sender: str | None = None
) -> tuple[bytes, bytes]:
    """Encode a frame that is yet to be numbered, split where its ``seq`` goes.

    The frame is ``head + str(seq) + tail`` (keys in the order ``type``,
    ``from``, ``seq``, ``payload``).  The mark found is the frame's own: inside a
    JSON string a quote is escaped, so the mark cannot occur there.

    :raises ContractError: ``invalid_message`` for a payload JSON cannot carry.
    """
    data = encode(type_, payload, sender=sender, seq=0).data
    at = data.index(_SEQ_MARK) + len(b',"seq":')
    return data[:at], data[at + 1 :]


def encode_fragment(value: Any) -> bytes:
    """Encode one value (an attrs instance) as JSON, to be joined into a list later."""
    return memoryview(orjson.dumps(converter.unstructure(value))).tobytes()


def encode_list(type_: str, field: str, items: Iterable[bytes]) -> Encoded:
    """Encode ``{"type": type_, "payload": {field: [items...]}}`` from encoded items."""
    head = b'{"type":' + orjson.dumps(type_) + b',"payload":{' + orjson.dumps(field)
    # One copy of the (possibly large) list, not one per concatenation.
    return Encoded(type=type_, data=b"".join((head, b":[", b",".join(items), b"]}}")))
