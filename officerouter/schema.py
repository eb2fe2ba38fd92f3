"""The contract as documents: JSON Schema, OpenAPI, AsyncAPI and TypeScript.

Everything here is generated from the attrs classes of :mod:`officerouter.messages`
(field types, defaults, and the limits their validators state through
``json_schema()``) and from the catalog (which types exist, who sends them, with
which routings), so a type added through an entry point appears in every
document.  ``officerouter schema`` prints or writes them; docs/protocol.md says
where the checked-in copies are.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, Final, Literal, Union

import attrs

from officerouter import __version__
from officerouter.catalog import MessageSpec
from officerouter.messages import (
    MAX_BATCH,
    MAX_ID_LENGTH,
    MAX_TARGETS,
    BatchAnswer,
    Connected,
    ErrorAnswer,
    ErrorPayload,
    Health,
    NotifyAnswer,
    NotifyEnvelope,
    Positions,
    Presence,
    PresenceAnswer,
    PresenceDiff,
    PresenceState,
    PresenceUser,
    Text,
    TokenRefreshed,
    UserLeft,
    UserRoleChanged,
)

DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"
INT64: Final = {"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1}

#: The frames the router writes itself (not in the catalog), with their payloads.
ROUTER_FRAMES: Final[Mapping[str, type]] = {
    "connected": Connected,
    "presence": Presence,
    "user_joined": PresenceUser,
    "user_left": UserLeft,
    "user_role_changed": UserRoleChanged,
    "positions": Positions,
    "presence_state": PresenceState,
    "presence_diff": PresenceDiff,
    "token_refreshed": TokenRefreshed,
    "error": ErrorPayload,
}


def pascal(type_: str) -> str:
    """``position_update`` -> ``PositionUpdate``."""
    return "".join(part[:1].upper() + part[1:] for part in type_.split("_") if part)


# ---------------------------------------------------------------- JSON Schema


def _validator_schema(validator: Any) -> dict[str, Any]:
    """What a field validator checks, as JSON Schema keywords (what it can say)."""
    found: dict[str, Any] = {}
    if validator is None:
        return found
    inner = getattr(validator, "_validators", None)  # attrs.validators.and_
    if inner is not None:
        for one in inner:
            found.update(_validator_schema(one))
        return found
    if hasattr(validator, "json_schema"):
        found.update(validator.json_schema())
    elif hasattr(validator, "min_length"):
        found["minLength"] = validator.min_length
    elif hasattr(validator, "max_length"):
        found["maxLength"] = validator.max_length
    elif isinstance(getattr(validator, "options", None), tuple | list | frozenset):
        found["enum"] = sorted(validator.options)
    return found


def _strip_optional(validator: Any) -> Any:
    # attrs.validators.optional wraps the validator of the value that is not None.
    return getattr(validator, "validator", validator)


class _Builder:
    """JSON Schema for attrs classes, with a ``$defs`` entry per nested class."""

    def __init__(self) -> None:
        self.defs: dict[str, Any] = {}
        self._names: dict[type, str] = {}

    def ref(self, name: str) -> dict[str, Any]:
        return {"$ref": f"#/$defs/{name}"}

    def class_ref(self, cls: type) -> dict[str, Any]:
        """A ``$ref`` to the class's own definition, added on first use."""
        name = self._names.get(cls)
        if name is None:
            name = cls.__name__
            if name in self.defs:
                name = f"{cls.__module__.replace('.', '_')}_{name}"
            self._names[cls] = name
            self.defs[name] = {}  # reserved: a class may refer to itself
            self.defs[name] = self.object_of(cls)
        return self.ref(name)

    def object_of(self, cls: type, **extra: Any) -> dict[str, Any]:
        """The schema of an attrs class: its fields, exactly (no others)."""
        hints = typing.get_type_hints(cls)
        properties: dict[str, Any] = {}
        required: list[str] = []
        for field in attrs.fields(cls):
            properties[field.name] = self.field(field, hints[field.name])
            if field.default is attrs.NOTHING:
                required.append(field.name)
        schema: dict[str, Any] = {}
        doc = (cls.__doc__ or "").strip().split("\n\n")[0]
        if doc:
            schema["description"] = " ".join(doc.replace("``", "`").split())
        schema["type"] = "object"
        schema["properties"] = properties
        schema["required"] = required
        schema["additionalProperties"] = False
        schema.update(extra)
        return schema

    def field(self, field: attrs.Attribute[Any], hint: Any) -> dict[str, Any]:
        limits = _validator_schema(_strip_optional(field.validator))
        limits.update(field.metadata.get("json_schema", {}))
        args = typing.get_args(hint)
        if _is_union(hint) and type(None) in args:
            rest = [a for a in args if a is not type(None)]
            value = self.of(rest[0] if len(rest) == 1 else Union[tuple(rest)])  # noqa: UP007
            return {"anyOf": [{**value, **limits}, {"type": "null"}]}
        return {**self.of(hint), **limits}

    def of(self, hint: Any) -> dict[str, Any]:
        """The schema of a Python type as the codec reads and writes it."""
        origin = typing.get_origin(hint)
        args = typing.get_args(hint)
        if hint is Any:
            return {}
        if hint is str:
            return {"type": "string"}
        if hint is bool:
            return {"type": "boolean"}
        if hint is int:
            return dict(INT64)
        if hint is float:
            return {"type": "number"}
        if hint is type(None):
            return {"type": "null"}
        if origin is Literal:
            values = list(args)
            return {"const": values[0]} if len(values) == 1 else {"enum": values}
        if origin is list:
            return {"type": "array", "items": self.of(args[0])}
        if origin is dict:
            if args[1] is Any:
                return {"type": "object"}
            return {"type": "object", "additionalProperties": self.of(args[1])}
        if _is_union(hint):
            return {"anyOf": [self.of(a) for a in args]}
        if isinstance(hint, type) and attrs.has(hint):
            return self.class_ref(hint)
        raise TypeError(f"no JSON Schema for {hint!r}")


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (Union, types.UnionType)


def _envelope_field(builder: _Builder, name: str) -> dict[str, Any]:
    field = attrs.fields_dict(NotifyEnvelope)[name]
    return builder.field(field, typing.get_type_hints(NotifyEnvelope)[name])


@attrs.frozen
class Contract:
    """The contract of one catalog: JSON Schema ``$defs`` and what they mean.

    :ivar defs: every definition, by name.
    :ivar server_frames: frame type -> definition name, server to client.
    :ivar client_frames: frame type -> definition name, client to server.
    :ivar notify_bodies: definition names of the notify body variants.
    """

    defs: dict[str, Any]
    server_frames: dict[str, str]
    client_frames: dict[str, str]
    notify_bodies: list[str]


def contract(catalog: Mapping[str, MessageSpec]) -> Contract:
    """Build the definitions of every frame and notify body of ``catalog``."""
    builder = _Builder()
    payloads: dict[str, str] = {}

    def payload(type_: str, cls: type) -> dict[str, Any]:
        name = payloads.get(type_)
        if name is None:
            name = payloads[type_] = pascal(type_) + "Payload"
            builder.defs[name] = builder.object_of(cls)
        return builder.ref(name)

    def frame(type_: str, cls: type, sender: str, seq: str) -> dict[str, Any]:
        properties: dict[str, Any] = {"type": {"const": type_}}
        required = ["type"]
        if sender != "never":
            properties["from"] = {
                "description": "The sender's userId, stamped by the router."
            }
            properties["from"].update({"type": "string"})
            if sender == "always":
                required.append("from")
        if seq != "never":
            properties["seq"] = {
                "description": "The org's sequence number of this message.",
                **INT64,
                "minimum": 1,
            }
            if seq == "always":
                required.append("seq")
        properties["payload"] = payload(type_, cls)
        required.append("payload")
        return {
            "type": "object",
            "properties": properties,
            "required": required,
            "additionalProperties": False,
        }

    server: dict[str, str] = {}
    for type_, cls in ROUTER_FRAMES.items():
        name = server[type_] = pascal(type_) + "Frame"
        builder.defs[name] = frame(type_, cls, "never", "never")
    for type_, spec in catalog.items():
        relayed = spec.client_allowed and not spec.local
        if not (relayed or spec.routings):
            continue
        sender = "always" if not spec.routings else "sometimes" if relayed else "never"
        numbered_relay = relayed and not spec.ephemeral
        if spec.routings and (numbered_relay or not relayed):
            seq = "always"
        elif spec.routings or numbered_relay:
            seq = "sometimes"
        else:
            seq = "never"
        name = server[type_] = pascal(type_) + "Frame"
        builder.defs[name] = frame(type_, spec.payload, sender, seq)
    client: dict[str, str] = {}
    for type_, spec in catalog.items():
        if spec.client_allowed:
            name = pascal(type_) + ("ClientFrame" if type_ in server else "Frame")
            client[type_] = name
            builder.defs[name] = frame(type_, spec.payload, "never", "never")

    org_id = _envelope_field(builder, "orgId")
    target = {"type": "string", **Text(MAX_ID_LENGTH).json_schema()}
    bodies: list[str] = []
    for type_, spec in catalog.items():
        for routing in sorted(spec.routings):
            properties: dict[str, Any] = {
                "orgId": org_id,
                "routing": {"const": routing},
                "type": {"const": type_},
            }
            required = ["orgId", "routing", "type", "payload"]
            if routing == "direct":
                properties["targets"] = {
                    "description": "The users it goes to (their every connection).",
                    "type": "array",
                    "items": target,
                    "minItems": 1,
                    "maxItems": MAX_TARGETS,
                    "uniqueItems": True,
                }
                required.append("targets")
            properties["payload"] = payload(type_, spec.payload)
            name = f"{pascal(type_)}{pascal(routing)}Notification"
            bodies.append(name)
            builder.defs[name] = {
                "type": "object",
                "properties": properties,
                "required": required,
                "additionalProperties": False,
            }
    builder.defs["ServerFrame"] = {
        "description": "Every frame the router sends to a client.",
        "oneOf": [builder.ref(n) for n in server.values()],
    }
    builder.defs["ClientFrame"] = {
        "description": "Every frame a client may send.",
        "oneOf": [builder.ref(n) for n in client.values()],
    }
    builder.defs["NotifyBody"] = {
        "description": "One notification: the body of POST /internal/notify.",
        "oneOf": [builder.ref(n) for n in bodies],
    }
    builder.defs["NotifyBatch"] = {
        "description": "A batch of notifications, answered one by one in order.",
        "type": "array",
        "items": builder.ref("NotifyBody"),
        "minItems": 1,
        "maxItems": MAX_BATCH,
    }
    for answer in (
        NotifyAnswer,
        BatchAnswer,
        ErrorAnswer,
        PresenceAnswer,
        Health,
    ):
        builder.class_ref(answer)
    return Contract(
        defs=builder.defs,
        server_frames=server,
        client_frames=client,
        notify_bodies=bodies,
    )


def json_schema(catalog: Mapping[str, MessageSpec]) -> dict[str, Any]:
    """The JSON Schema (2020-12) document: every definition under ``$defs``.

    Validate a frame against ``#/$defs/ServerFrame`` or ``#/$defs/ClientFrame``,
    a notify body against ``#/$defs/NotifyBody`` (or ``NotifyBatch``).
    """
    return {
        "$schema": DIALECT,
        "$id": "https://officerouter.invalid/officerouter.schema.json",
        "title": "officerouter wire contract",
        "description": (
            "Frames in both directions of /websocket and the bodies of the HTTP "
            "endpoints, generated by `officerouter schema` from the code."
        ),
        "$defs": contract(catalog).defs,
    }


def _rebase(value: Any, prefix: str) -> Any:
    """Copy a schema with its ``#/$defs/`` references moved under ``prefix``."""
    if isinstance(value, dict):
        return {
            k: (
                prefix + v.removeprefix("#/$defs/")
                if k == "$ref" and isinstance(v, str)
                else _rebase(v, prefix)
            )
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_rebase(v, prefix) for v in value]
    return value


# ---------------------------------------------------------------- OpenAPI

_SCHEMAS: Final = "#/components/schemas/"


def _json_content(name: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": _SCHEMAS + name}}}


def _error_response(description: str, **headers: Any) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": _json_content("ErrorAnswer"),
    }
    if headers:
        response["headers"] = headers
    return response


_RETRY_AFTER: Final = {
    "description": "Seconds to wait before retrying.",
    "schema": {"type": "string"},
}
_ALLOW: Final = {
    "description": "The methods this path serves.",
    "schema": {"type": "string"},
}


def openapi(catalog: Mapping[str, MessageSpec]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the HTTP endpoints."""
    schemas = _rebase(contract(catalog).defs, _SCHEMAS)
    timeout = _error_response(
        "The request did not arrive whole within --http-timeout seconds "
        "(`request_timeout`); the connection is closed."
    )
    too_large = _error_response(
        "The body is larger than --max-body-bytes (`payload_too_large`); the "
        "connection is closed."
    )
    unauthorized = _error_response(
        "The service-token headers are missing or wrong (`unauthorized`)."
    )
    internal = _error_response("A bug, logged with a traceback (`internal_error`).")
    not_allowed = _error_response(
        "A method this path does not serve (`method_not_allowed`).", Allow=_ALLOW
    )
    unavailable = _error_response(
        "With --redis: Redis is unreachable (`unavailable`); nothing was "
        "numbered or delivered. Retry.",
        **{"Retry-After": _RETRY_AFTER},
    )
    replayed = {
        "description": "`true` when this is the answer of an earlier request "
        "with the same Idempotency-Key (for a batch: of every element).",
        "schema": {"const": "true"},
    }
    notify = {
        "summary": "Push one notification, or a batch, to an org",
        "description": (
            "The backend's authoritative events. A JSON object is one "
            "notification; a JSON array of 1 to "
            f"{MAX_BATCH} is a batch, each element validated, published and "
            "answered on its own, in order (docs/protocol.md)."
        ),
        "operationId": "notify",
        "security": [{"clientId": [], "clientSecret": []}],
        "parameters": [
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "description": (
                    "Makes a retry safe: within --idempotency-seconds the same "
                    "key and body answers the first answer and does nothing "
                    "again; another body is a 409. For a batch, each element "
                    "counts as its own request under the key."
                ),
                "schema": {
                    "type": "string",
                    "pattern": "^[\\x21-\\x7e]{1,255}$",
                },
            }
        ],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "oneOf": [
                            {"$ref": _SCHEMAS + "NotifyBody"},
                            {
                                "description": (
                                    "A batch: each element should be a "
                                    "NotifyBody (see NotifyBatch); one that is "
                                    "not is answered in `results` with its "
                                    "400, and the others are published."
                                ),
                                "type": "array",
                                "items": {
                                    "anyOf": [
                                        {"$ref": _SCHEMAS + "NotifyBody"},
                                        {"description": "anything else"},
                                    ]
                                },
                                "minItems": 1,
                                "maxItems": MAX_BATCH,
                            },
                        ]
                    }
                }
            },
        },
        "responses": {
            "200": {
                "description": (
                    "Published (one notification: NotifyAnswer), or a batch "
                    "answered element by element (BatchAnswer)."
                ),
                "headers": {"Idempotent-Replayed": replayed},
                "content": {
                    "application/json": {
                        "schema": {
                            "oneOf": [
                                {"$ref": _SCHEMAS + "NotifyAnswer"},
                                {"$ref": _SCHEMAS + "BatchAnswer"},
                            ]
                        }
                    }
                },
            },
            "400": _error_response(
                "The body breaks the contract (`invalid_json`, `invalid_message`, "
                "`unknown_type`, `routing_not_allowed`; `errors` lists every "
                "offending path), or the Idempotency-Key is malformed "
                "(`bad_request`)."
            ),
            "401": unauthorized,
            "405": not_allowed,
            "408": timeout,
            "409": _error_response(
                "The Idempotency-Key was used for another body within its "
                "window (`idempotency_conflict`); nothing was published."
            ),
            "413": too_large,
            "415": _error_response(
                "Content-Type is not application/json (`unsupported_media_type`)."
            ),
            "500": internal,
            "503": unavailable,
        },
    }
    presence = {
        "summary": "Who is online in an org",
        "operationId": "presence",
        "security": [{"clientId": [], "clientSecret": []}],
        "parameters": [
            {
                "name": "orgId",
                "in": "query",
                "required": True,
                "schema": {"type": "string", **Text(MAX_ID_LENGTH).json_schema()},
            }
        ],
        "responses": {
            "200": {
                "description": "The admitted users online, on every process.",
                "content": _json_content("PresenceAnswer"),
            },
            "400": _error_response(
                "orgId missing, blank, too long or not UTF-8 (`bad_request`)."
            ),
            "401": unauthorized,
            "405": not_allowed,
            "408": timeout,
            "500": internal,
            "503": unavailable,
        },
    }
    health = {
        "summary": "Liveness and counts",
        "operationId": "health",
        "responses": {
            "200": {"description": "Serving.", "content": _json_content("Health")},
            "405": not_allowed,
            "408": timeout,
            "503": {
                "description": "With --redis: Redis is unreachable.",
                "headers": {"Retry-After": _RETRY_AFTER},
                "content": _json_content("Health"),
            },
        },
    }
    refusal = {
        "description": (
            "The handshake is refused before the upgrade; the reason phrase says "
            "why and the body is empty (docs/protocol.md, Refused handshakes)."
        )
    }
    websocket = {
        "summary": "Open the real-time connection (WebSocket upgrade)",
        "description": (
            "An RFC 6455 handshake; the frames are described by "
            "docs/asyncapi.json. The client's JWT travels in "
            "Sec-WebSocket-Protocol, alone or after `bearer`."
        ),
        "operationId": "websocket",
        "parameters": [
            {
                "name": "Sec-WebSocket-Protocol",
                "in": "header",
                "required": True,
                "description": "`<jwt>` or `bearer, <jwt>`.",
                "schema": {"type": "string"},
            },
            {
                "name": "since",
                "in": "query",
                "required": False,
                "description": "`<epoch>.<seq>` of an earlier connection: recovery.",
                "schema": {"type": "string"},
            },
            {
                "name": "positions",
                "in": "query",
                "required": False,
                "description": "`batched`: one `positions` frame per tick.",
                "schema": {"enum": ["batched", ""]},
            },
            {
                "name": "presence",
                "in": "query",
                "required": False,
                "description": "`diff`: `presence_state`, then one `presence_diff` "
                "frame per tick.",
                "schema": {"enum": ["diff", ""]},
            },
        ],
        "responses": {
            "101": {"description": "Switching Protocols: the WebSocket is open."},
            "400": {
                **refusal,
                "description": "Not a valid handshake, or a bad `positions` or "
                "`presence`.",
            },
            "401": {**refusal, "description": "No token, or a token refused."},
            "403": {**refusal, "description": "Origin not allowed, or banned."},
            "408": timeout,
            "426": {**refusal, "description": "A plain GET without the upgrade."},
            "429": {**refusal, "description": "Too many connections (org, user)."},
            "500": {**refusal, "description": "A bug."},
            "503": {
                **refusal,
                "description": "Stopping, at capacity, or Redis unreachable.",
            },
        },
    }
    return {
        "openapi": "3.1.0",
        "jsonSchemaDialect": DIALECT,
        "info": {
            "title": "officerouter HTTP endpoints",
            "version": __version__,
            "description": (
                "Generated by `officerouter schema --openapi` from the code; "
                "docs/protocol.md is the prose."
            ),
        },
        "servers": [{"url": "http://localhost:8787"}],
        "paths": {
            "/internal/notify": {"post": notify},
            "/internal/presence": {"get": presence},
            "/healthz": {"get": health},
            "/websocket": {"get": websocket},
        },
        "components": {
            "securitySchemes": {
                "clientId": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "CF-Access-Client-Id",
                },
                "clientSecret": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "CF-Access-Client-Secret",
                },
            },
            "schemas": schemas,
        },
    }


# ---------------------------------------------------------------- AsyncAPI


def asyncapi(catalog: Mapping[str, MessageSpec]) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the WebSocket channel (the router's view)."""
    built = contract(catalog)
    schemas = _rebase(built.defs, _SCHEMAS)
    messages: dict[str, Any] = {}
    for type_, name in [*built.server_frames.items(), *built.client_frames.items()]:
        messages[name] = {
            "name": type_,
            "title": name,
            "payload": {
                "schemaFormat": "application/schema+json;version=draft-2020-12",
                "schema": {"$ref": _SCHEMAS + name},
            },
        }

    def refs(names: Iterable[str]) -> list[dict[str, str]]:
        return [{"$ref": f"#/channels/websocket/messages/{n}"} for n in names]

    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "officerouter WebSocket",
            "version": __version__,
            "description": (
                "Generated by `officerouter schema --asyncapi` from the code. One "
                "JSON object per text message; docs/protocol.md is the prose."
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "local": {"host": "localhost:8787", "protocol": "ws"},
        },
        "channels": {
            "websocket": {
                "address": "/websocket",
                "messages": {
                    name: {"$ref": f"#/components/messages/{name}"} for name in messages
                },
                "bindings": {
                    "ws": {
                        "method": "GET",
                        "query": {
                            "type": "object",
                            "properties": {
                                "since": {"type": "string"},
                                "positions": {"enum": ["batched", ""]},
                                "presence": {"enum": ["diff", ""]},
                            },
                        },
                        "headers": {
                            "type": "object",
                            "properties": {
                                "Sec-WebSocket-Protocol": {"type": "string"}
                            },
                            "required": ["Sec-WebSocket-Protocol"],
                        },
                    }
                },
            }
        },
        "operations": {
            "sendServerFrames": {
                "action": "send",
                "summary": "Frames the router sends to a client.",
                "channel": {"$ref": "#/channels/websocket"},
                "messages": refs(built.server_frames.values()),
            },
            "receiveClientFrames": {
                "action": "receive",
                "summary": "Frames a client may send.",
                "channel": {"$ref": "#/channels/websocket"},
                "messages": refs(built.client_frames.values()),
            },
        },
        "components": {"messages": messages, "schemas": schemas},
    }


# ---------------------------------------------------------------- TypeScript


def _ts_string(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return str(value)


def _ts_comment(text: str) -> str:
    return text.replace("*/", "*\\/")


def _ts_type(schema: Mapping[str, Any], indent: str) -> str:
    """The TypeScript type of the JSON Schema subset :func:`contract` emits."""
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    if "const" in schema:
        return _ts_string(schema["const"])
    if "enum" in schema:
        return " | ".join(_ts_string(v) for v in schema["enum"])
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return " | ".join(_ts_type(s, indent) for s in schema[key])
    kind = schema.get("type")
    if kind == "string":
        return "string"
    if kind in ("number", "integer"):
        return "number"
    if kind == "boolean":
        return "boolean"
    if kind == "null":
        return "null"
    if kind == "array":
        item = _ts_type(schema.get("items", {}), indent)
        return f"({item})[]" if " " in item else f"{item}[]"
    if kind == "object":
        if "properties" in schema:
            return _ts_object(schema, indent)
        values = schema.get("additionalProperties")
        if isinstance(values, Mapping):
            return f"Record<string, {_ts_type(values, indent)}>"
        return "Record<string, unknown>"
    return "unknown"


def _ts_object(schema: Mapping[str, Any], indent: str) -> str:
    required = set(schema.get("required", ()))
    lines = ["{"]
    for name, value in schema["properties"].items():
        if "description" in value:
            lines.append(f"{indent}  /** {_ts_comment(value['description'])} */")
        optional = "" if name in required else "?"
        key = name if name.isidentifier() else _ts_string(name)
        lines.append(f"{indent}  {key}{optional}: {_ts_type(value, indent + '  ')};")
    lines.append(indent + "}")
    return "\n".join(lines)


def typescript(catalog: Mapping[str, MessageSpec]) -> str:
    """TypeScript declarations of every definition (``clients/js/frames.d.ts``)."""
    defs = contract(catalog).defs
    out = [
        "// Generated by `officerouter schema --typescript`; do not edit.",
        "// Regenerate: officerouter schema --typescript > clients/js/frames.d.ts",
        "",
    ]
    for name, schema in defs.items():
        if "description" in schema:
            out.append(f"/** {_ts_comment(schema['description'])} */")
        if schema.get("type") == "object" and "properties" in schema:
            out.append(f"export interface {name} {_ts_object(schema, '')}")
        else:
            out.append(f"export type {name} = {_ts_type(schema, '')};")
        out.append("")
    return "\n".join(out)
