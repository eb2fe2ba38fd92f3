"""The JSON log observer: one plain JSON object per line, for a log pipeline."""

from __future__ import annotations

import io
import json
import math
import sys
from datetime import UTC, datetime
from typing import Any

import pytest

from twisted.logger import ILogObserver, Logger, LogLevel
from twisted.python import log as legacy_log
from twisted.python.failure import Failure

from officerouter import logs
from officerouter.config import default_node_id


def strict_loads(line: str) -> dict[str, Any]:
    """``json.loads`` refusing what is not JSON (NaN, Infinity) and non-objects."""

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    value = json.loads(line, parse_constant=refuse)
    assert isinstance(value, dict)
    return value


@pytest.fixture
def out() -> io.StringIO:
    """Where the observer under test writes."""
    return io.StringIO()


@pytest.fixture
def observer(out: io.StringIO, monkeypatch: pytest.MonkeyPatch) -> ILogObserver:
    """The observer twistd makes for ``--log-format json``, its stdout ``out``."""
    monkeypatch.setattr(sys, "stdout", out)
    return logs.json_observer()


@pytest.fixture
def log(observer: ILogObserver) -> Logger:
    """A logger in namespace ``officerouter.test`` publishing to ``observer`` only."""
    return Logger(namespace="officerouter.test", observer=observer)


def lines(out: io.StringIO) -> list[dict[str, Any]]:
    """Each line written, parsed; every line must be a whole JSON object."""
    text = out.getvalue()
    assert text.endswith("\n")
    raw = text[:-1].split("\n")
    assert all(line.startswith("{") for line in raw), raw
    return [strict_loads(line) for line in raw]


def test_the_factory_writes_json_lines_on_standard_output(capsys):
    """``json_observer()``, what twistd calls, writes one JSON object per line to stdout."""
    log = Logger(namespace="officerouter.test", observer=logs.json_observer())
    log.info("one {n}", n=1)
    log.warn("two")
    written = capsys.readouterr().out
    assert "\x1e" not in written
    assert [strict_loads(line)["message"] for line in written.splitlines()] == [
        "one 1",
        "two",
    ]


def test_a_line_carries_time_level_namespace_node_message_and_fields(log, out):
    """An event becomes time (ISO 8601 UTC), level, namespace, node, message and its own fields."""
    log.info(
        "refused connection from {peer}: {status} {reason}",
        peer="tcp4:127.0.0.1:5000",
        status=401,
        reason="token expired",
    )
    [line] = lines(out)
    assert line == {
        "time": line["time"],
        "level": "info",
        "namespace": "officerouter.test",
        "node": default_node_id(),
        "message": "refused connection from tcp4:127.0.0.1:5000: 401 token expired",
        "peer": "tcp4:127.0.0.1:5000",
        "status": 401,
        "reason": "token expired",
    }
    assert line["time"].endswith("Z")
    when = datetime.fromisoformat(line["time"])
    assert when.utcoffset() is not None
    assert when.utcoffset().total_seconds() == 0
    assert abs(when.timestamp() - datetime.now(UTC).timestamp()) < 60


def test_time_is_the_events_own_to_the_microsecond(observer, out):
    """``time`` is the event's ``log_time``, in UTC, with microseconds."""
    observer(
        {
            "log_time": 1795778398.325743,
            "log_level": LogLevel.warn,
            "log_namespace": "n",
            "log_format": "x",
        }
    )
    [line] = lines(out)
    assert line["time"] == "2026-11-27T11:19:58.325743Z"
    assert line["level"] == "warn"


def test_no_log_keys_and_no_record_separator(log, out):
    """Twisted's own ``log_*`` keys stay out, and no line starts with ``\\x1e``."""
    log.error("oops {what}", what="x")
    text = out.getvalue()
    assert not text.startswith("\x1e")
    [line] = lines(out)
    assert not [key for key in line if key.startswith("log_")]
    assert line["level"] == "error"


def test_a_failure_is_a_traceback_field(log, out):
    """``log.failure`` writes the message, level critical, and the traceback as a string."""
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        log.failure("unexpected error handling {what}", what="a frame")
    [line] = lines(out)
    assert line["level"] == "critical"
    assert line["message"] == "unexpected error handling a frame"
    assert line["what"] == "a frame"
    assert isinstance(line["traceback"], str)
    assert line["traceback"].startswith("Traceback")
    assert "ZeroDivisionError" in line["traceback"]
    assert "1 / 0" in line["traceback"]


def test_braces_in_field_values_are_data(log, out):
    """Braces in a field's value are written as they are, never formatted again."""
    log.info(
        "rejected a notification from {peer}: {code} {errors}",
        peer="{peer}",
        code="{0} {} }{ {{",
        errors={"$.payload": "{log_format!r:}"},
    )
    [line] = lines(out)
    assert line["message"] == (
        "rejected a notification from {peer}: {0} {} }{ {{ {'$.payload': '{log_format!r:}'}"
    )
    assert line["peer"] == "{peer}"
    assert line["code"] == "{0} {} }{ {{"
    assert line["errors"] == {"$.payload": "{log_format!r:}"}


class Opaque:
    """A value JSON cannot encode."""

    def __repr__(self) -> str:
        return "<Opaque 7>"


class Broken:
    """A value whose ``str`` and ``repr`` both raise."""

    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def test_values_json_cannot_encode_are_written_as_text(log, out):
    """Objects, bytes, NaN, odd keys and cycles are written as text; the line stays JSON."""
    cycle: list[Any] = []
    cycle.append(cycle)
    log.info(
        "odd values",
        obj=Opaque(),
        nested={"inner": [1, Opaque()]},
        raw=b"\xff\x00",
        nan=math.nan,
        inf=-math.inf,
        tuple_keys={(1, 2): "a"},
        cycle=cycle,
        some={3},
        broken=Broken(),
        fine=[1, 2.5, None, True, "s"],
    )
    [line] = lines(out)
    assert line["obj"] == "<Opaque 7>"
    assert line["nested"] == {"inner": [1, "<Opaque 7>"]}
    assert line["raw"] == repr(b"\xff\x00")
    assert line["nan"] == "nan"
    assert line["inf"] == "-inf"
    assert line["tuple_keys"] == "{(1, 2): 'a'}"
    assert line["cycle"] == "[[...]]"
    assert line["some"] == [3]
    assert line["broken"] == "<unprintable Broken>"
    assert line["fine"] == [1, 2.5, None, True, "s"]


def test_unicode_and_newlines_round_trip_on_one_line(log, out):
    """Non-ASCII text, line and paragraph separators survive, and an event stays one line."""
    name = "Zoë ☃ 🎉 \u2028 \u00a0 終"
    log.info("hello {name}\nsecond line", name=name)
    assert out.getvalue().count("\n") == 1
    [line] = lines(out)
    assert line["name"] == name
    assert line["message"] == f"hello {name}\nsecond line"


def test_a_format_that_cannot_render_still_writes_a_line(log, out):
    """A format naming a missing field writes what formatEvent says, not an exception."""
    log.info("missing {nothing}")
    [line] = lines(out)
    assert line["message"].startswith("Unable to format event")
    assert "'nothing'" in line["message"]


def test_fields_named_like_the_lines_own_keys_keep_their_value(observer, out):
    """A field called ``message`` (or time, level...) is written as ``event_message``."""
    observer(
        {
            "log_format": "refused a request from {peer}: {status} {message}",
            "log_level": LogLevel.info,
            "log_namespace": "officerouter.web",
            "log_time": 1795778398.0,
            "peer": "127.0.0.1:5",
            "status": 413,
            "message": "the body is too large",
            "time": "noon",
            "level": 3,
            "node": "n",
            "namespace": "ns",
            "traceback": "tb",
        }
    )
    [line] = lines(out)
    assert line == {
        "time": "2026-11-27T11:19:58.000000Z",
        "level": "info",
        "namespace": "officerouter.web",
        "node": logs.node(),
        "message": "refused a request from 127.0.0.1:5: 413 the body is too large",
        "peer": "127.0.0.1:5",
        "status": 413,
        "event_message": "the body is too large",
        "event_time": "noon",
        "event_level": 3,
        "event_node": "n",
        "event_namespace": "ns",
        "event_traceback": "tb",
    }


def test_the_node_name_comes_from_set_node(log, out):
    """``set_node`` names the process on every line; ``None`` goes back to host:pid."""
    try:
        logs.set_node("router-eu-1")
        log.info("a")
    finally:
        logs.set_node(None)
    log.info("b")
    first, second = lines(out)
    assert first["node"] == "router-eu-1"
    assert second["node"] == default_node_id()
    assert logs.node() == second["node"]


def test_legacy_events_are_written_without_their_bookkeeping(observer, out):
    """A ``twisted.python.log.msg`` event: its text, level and fields, no message tuple."""
    publisher = legacy_log.LogPublisher(publishPublisher=observer)
    publisher.msg("OfficeSite starting on 8787")
    publisher.msg("detail", isError=1, peer="p")
    started, failed = lines(out)
    assert started["message"] == "OfficeSite starting on 8787"
    assert started["level"] == "info"
    assert started["namespace"] == "log_legacy"
    assert started.keys() == {"time", "level", "namespace", "node", "message"}
    assert failed["level"] == "critical"
    assert failed["peer"] == "p"


def test_a_legacy_failure_is_a_traceback_field(observer, out):
    """``twisted.python.log.err``: the reason as message, the traceback as a field."""
    publisher = legacy_log.LogPublisher(publishPublisher=observer)
    try:
        raise KeyError("k")
    except KeyError:
        publisher.msg(failure=Failure(), isError=1, why="Unhandled Error in a call")
    [line] = lines(out)
    assert line["message"] == "Unhandled Error in a call"
    assert line["level"] == "critical"
    assert "KeyError" in line["traceback"]
    assert "failure" not in line
    assert "why" not in line
