"""Every close code, error code and rejection reason the service puts on the wire.

docs/protocol.md uses the same names.
"""

from typing import Final

# WebSocket close codes (RFC 6455 section 7.4 and the private 4000-4999 range).
CLOSE_GOING_AWAY: Final = 1001
CLOSE_UNSUPPORTED_DATA: Final = 1003
CLOSE_POLICY_VIOLATION: Final = 1008
CLOSE_MESSAGE_TOO_BIG: Final = 1009
CLOSE_INTERNAL_ERROR: Final = 1011
CLOSE_SERVICE_RESTART: Final = 1012
CLOSE_TRY_AGAIN_LATER: Final = 1013
CLOSE_TOKEN_EXPIRED: Final = 4001
CLOSE_BANNED: Final = 4003
CLOSE_DISCONNECTED: Final = 4004

# Codes carried by {"type":"error","payload":{"code":...}} frames and HTTP 4xx bodies.
ERR_INVALID_JSON: Final = "invalid_json"
ERR_INVALID_MESSAGE: Final = "invalid_message"
ERR_UNKNOWN_TYPE: Final = "unknown_type"
ERR_TYPE_NOT_ALLOWED: Final = "type_not_allowed"
ERR_NOT_PERMITTED: Final = "not_permitted"
ERR_ROUTING_NOT_ALLOWED: Final = "routing_not_allowed"
ERR_RATE_LIMITED: Final = "rate_limited"
ERR_UNAUTHORIZED: Final = "unauthorized"
ERR_UNSUPPORTED_MEDIA_TYPE: Final = "unsupported_media_type"
ERR_PAYLOAD_TOO_LARGE: Final = "payload_too_large"
ERR_BAD_REQUEST: Final = "bad_request"
ERR_METHOD_NOT_ALLOWED: Final = "method_not_allowed"
ERR_INTERNAL: Final = "internal_error"
ERR_REQUEST_TIMEOUT: Final = "request_timeout"
ERR_NOT_FOUND: Final = "not_found"
ERR_UNAVAILABLE: Final = "unavailable"
ERR_IDEMPOTENCY_CONFLICT: Final = "idempotency_conflict"
ERR_REFRESH_REFUSED: Final = "refresh_refused"

# Close reasons (short, safe to show to a client).
REASON_BANNED: Final = "banned"
REASON_DISCONNECTED: Final = "disconnected by an operator"
REASON_TOKEN_EXPIRED: Final = "token expired; reconnect with a fresh token"
REASON_OTHER_IDENTITY: Final = "token is for another user or org"
REASON_BINARY: Final = "binary frames are not supported"
REASON_SHUTDOWN: Final = "server shutting down"
REASON_INTERNAL: Final = "internal error"
REASON_FLOODING: Final = "too many messages"
REASON_SLOW: Final = "client too slow; reconnect"
REASON_ORIGIN: Final = "origin not allowed"
REASON_SERVER_FULL: Final = "server at connection capacity"
REASON_ORG_FULL: Final = "too many connections for this org"
REASON_USER_FULL: Final = "too many connections for this user"
REASON_GONE: Final = "client gone"
REASON_RESYNC: Final = "stream restarted; reconnect and recover"
REASON_BACKPLANE_DOWN: Final = "backplane unavailable; reconnect"
REASON_UNAVAILABLE: Final = "service unavailable; retry"
REASON_POSITIONS_PARAM: Final = "positions must be batched, or absent"
REASON_PRESENCE_PARAM: Final = "presence must be diff, or absent"

# Keep this last: every ERR_ constant of the module, for the generated schema.
#: Every error code above.
ERROR_CODES: Final = tuple(
    value for name, value in dict(globals()).items() if name.startswith("ERR_")
)
