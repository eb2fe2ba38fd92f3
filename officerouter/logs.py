"""Log observer factories for ``twistd --logger``.

twistd owns the observers; these are the zero-argument factories it can call.
The JSON one writes one plain JSON object per line (docs/operations.md, "Logs"):
``time``, ``level``, ``namespace``, ``node``, ``message``, the event's own fields,
and ``traceback`` when the event carries a failure.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import IO, Any

from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    LogEvent,
    formatEvent,
    textFileLogObserver,
)
from twisted.python.failure import Failure

from officerouter.config import default_node_id

#: The keys every line starts with; an event field of the same name is written
#: with the prefix ``event_`` so that it neither hides them nor is lost.
OWN_KEYS = ("time", "level", "namespace", "node", "message", "traceback")
FIELD_PREFIX = "event_"

#: What twisted.python.log's bridge adds to an event (``log.msg``, ``log.err``):
#: the text, time, level and failure again, which the line already says.
_LEGACY_KEYS = frozenset(
    {"message", "time", "system", "isError", "format", "failure", "why", "logLevel"}
)

#: Compact JSON, as a log shipper stores it.
_SEPARATORS = (",", ":")

_node: str | None = None


def set_node(name: str | None) -> None:
    """Name this process in every JSON log line from now on.

    The one place the ``node`` field comes from; ``None`` restores the default,
    ``HOSTNAME-PID`` (:func:`~officerouter.config.default_node_id`).  It may be called before or after twistd starts logging
    (``makeService`` runs first): each line reads it as it is written.
    """
    global _node
    _node = name


def node() -> str:
    """The ``node`` of the JSON log lines: :func:`set_node`'s name, or ``HOSTNAME-PID``.

    The process id is read per call: twistd starts logging before it forks to
    daemonize.
    """
    if _node is not None:
        return _node
    return default_node_id()


def _text(value: object) -> str:
    """``value`` as text, whatever its ``__str__`` and ``__repr__`` do."""
    try:
        return str(value)
    except Exception:
        try:
            return repr(value)
        except Exception:
            return f"<unprintable {type(value).__qualname__}>"


def _jsonable(value: object) -> object:
    # json.dumps' default hook: called for what JSON has no type for.
    if isinstance(value, set | frozenset):
        return list(value)
    return _text(value)


def _encode(value: object) -> str:
    """One value as JSON; what JSON cannot hold (NaN, tuple keys, cycles) as text."""
    try:
        return json.dumps(
            value, allow_nan=False, default=_jsonable, separators=_SEPARATORS
        )
    except (TypeError, ValueError, RecursionError):
        return json.dumps(_text(value))


def _iso_time(event: LogEvent) -> str:
    try:
        moment = datetime.fromtimestamp(event["log_time"], UTC)
    except (KeyError, TypeError, ValueError, OverflowError, OSError):
        # Every published event has a log_time; a hand-made one may not.
        moment = datetime.now(UTC)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _level(event: LogEvent) -> str:
    level = event.get("log_level")
    return _text(getattr(level, "name", "info"))


def event_as_json_line(event: LogEvent) -> str:
    """One event as one line of JSON, newline included.

    Keys in order: ``time`` (ISO 8601, UTC, microseconds, ``Z``), ``level``,
    ``namespace``, ``node``, ``message`` (the rendered text), every field of the
    event whose name does not start with ``log_`` (renamed ``event_NAME`` when
    it is one of :data:`OWN_KEYS`), then ``traceback`` when the event carries a
    failure.  Values JSON cannot encode are written as their ``str``.
    """
    message = formatEvent(event)
    failure = event.get("log_failure")
    # An event from twisted.python.log: drop what its bridge added; log.err puts
    # the traceback in the text, so take it from the failure instead.
    legacy = isinstance(event.get("message"), tuple) and "isError" in event
    if legacy and failure is None and isinstance(event.get("failure"), Failure):
        failure = event["failure"]
        message = _text(event.get("why") or "Unhandled Error")
    parts = [
        ("time", _iso_time(event)),
        ("level", _level(event)),
        ("namespace", _text(event.get("log_namespace", "-"))),
        ("node", node()),
        ("message", message),
    ]
    head = [f"{json.dumps(key)}:{json.dumps(value)}" for key, value in parts]
    fields = []
    for key, value in event.items():
        if not isinstance(key, str) or key.startswith("log_"):
            continue
        if legacy and key in _LEGACY_KEYS:
            continue
        name = FIELD_PREFIX + key if key in OWN_KEYS else key
        fields.append(f"{json.dumps(name)}:{_encode(value)}")
    if isinstance(failure, Failure):
        try:
            traceback = failure.getTraceback()
        except Exception:
            traceback = _text(failure)
        fields.append(f'"traceback":{json.dumps(traceback)}')
    return "{" + ",".join(head + fields) + "}\n"


def json_lines_observer(out: IO[Any]) -> ILogObserver:
    """An observer writing :func:`event_as_json_line` lines to ``out``."""
    return FileLogObserver(out, event_as_json_line)


def json_observer() -> ILogObserver:
    """One JSON object per line on standard output (``--log-format json``)."""
    return json_lines_observer(sys.stdout)


def text_observer() -> ILogObserver:
    """Human-readable lines on standard output."""
    return textFileLogObserver(sys.stdout)
