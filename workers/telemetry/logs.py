"""JSON log lines, and keeping payload values and secrets out of them.

:func:`configure_logging` makes every record in the process one JSON object per line;
:mod:`workers.telemetry.recorders` writes the state-change lines through :data:`STATE_LOGGER`
with identifiers only. Free text that may quote a downstream reply (retry and dead-letter
reasons) passes :func:`redact_payload` and :func:`scrub` first; both are bounded in time
and memory whatever they are given (a poison body nested 5,000 deep included).

A worker writes a line or more per event, so the path is kept short: :func:`emit` makes the
record without the logging module's caller lookup (the format has no file or line), the
formatter skips the scan for extras on state lines (their fields are all there is), reuses one
JSON encoder and formats the timestamp's date and time once per second.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from typing import Any, Final

from fanout_core import jsonlogs

_MAX_REASON = 300
_SCRUBBERS: Final = (
    # Authorization schemes and key=value secrets (token=..., password: ...).
    (re.compile(r"(?i)\b(bearer|basic|splunk)\s+[^\s,;\"']+"), r"\1 <redacted>"),
    (
        re.compile(
            r"(?i)\b(token|secret|password|passwd|api[_-]?key|signature|authorization)"
            r"(\"?\s*[=:]\s*\"?)[^\s,;&\"']+"
        ),
        r"\1\2<redacted>",
    ),
    # Email addresses and phone-number-like digit runs (Genesys ani/dnis are tel:+1555...).
    (re.compile(r"[\w.+-]+@[\w-]+(\.[\w-]+)+"), "<redacted>"),
    (re.compile(r"(?i)(tel:|sip:)?\+?\d[\d ()./-]{5,}\d"), "<redacted>"),
)


def scrub(text: str) -> str:
    """Make free text (a sink's reason, an error) fit for a log line.

    Reasons can quote a downstream reply, which can echo the payload: phone numbers, emails
    and credentials are replaced and the text is truncated. Identifiers the runtime logs on
    purpose (message and event ids) do not pass through here.
    """
    out = text[: _MAX_REASON * 2]
    for pattern, replacement in _SCRUBBERS:
        out = pattern.sub(replacement, out)
    if len(out) > _MAX_REASON:
        out = out[:_MAX_REASON] + "..."
    return out


_MIN_REDACTED_VALUE = 4
_MAX_REDACTED_VALUES = 2000
_MAX_NODES = 20_000
"""Payload nodes looked at to find values to redact: the walk is bounded whatever the shape."""
_MAX_EMBEDDED_JSON = 64 * 1024
"""A string that looks like JSON is parsed for its values only up to this size."""


def _payload_strings(payload: Any) -> set[str]:
    """The string (and number) leaves of a payload, JSON-in-strings included.

    Iterative and bounded: at most :data:`_MAX_NODES` nodes and :data:`_MAX_REDACTED_VALUES`
    values, embedded JSON parsed only when small, and a parse that fails for any reason
    (deep nesting raises RecursionError, not ValueError) leaves the string as it is.
    Whatever the payload's shape, this returns, and quickly.
    """
    found: set[str] = set()
    stack: list[Any] = [payload]
    visited = 0
    while stack and visited < _MAX_NODES and len(found) < _MAX_REDACTED_VALUES:
        value = stack.pop()
        visited += 1
        if isinstance(value, Mapping):
            stack.extend(value.values())
        elif isinstance(value, list | tuple):
            stack.extend(value)
        elif isinstance(value, str):
            if value[:1] in ("{", "[") and len(value) <= _MAX_EMBEDDED_JSON:
                try:
                    stack.append(json.loads(value))
                    continue
                except (ValueError, RecursionError):
                    pass
            if len(value) >= _MIN_REDACTED_VALUE:
                found.add(value)
                found.add(json.dumps(value)[1:-1])  # as quoted inside an echoed JSON document
        elif isinstance(value, int | float) and not isinstance(value, bool):
            text = str(value) if not isinstance(value, int) or value.bit_length() < 256 else ""
            if len(text) >= _MIN_REDACTED_VALUE:
                found.add(text)
    return found


def redact_payload(text: str, payload: Any) -> str:
    """Replace every payload value quoted in ``text`` (a reason echoing a downstream reply).

    Free text such as wrap-up notes has no recognisable shape, so the only sure way to keep
    it out of a log line is to know it: the values come from the payload itself. ``text`` is
    cut to what a log line keeps before anything else, so the cost is bounded too.
    """
    text = text[: _MAX_REASON * 2]
    for value in sorted(_payload_strings(payload), key=len, reverse=True):
        if value in text:
            text = text.replace(value, "<redacted>")
    return text


def redact_body(text: str, body: Any) -> str:
    """:func:`redact_payload` for a message whose event could not be decoded: the values come
    from the raw body, parsed here if it is JSON of a size SQS allows (deep nesting and
    garbage leave it a plain string, redacted as a whole)."""
    payload: Any = body
    if isinstance(body, str) and len(body) <= _MAX_BODY_JSON:
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError):
            payload = body
    return redact_payload(text, payload)


_MAX_BODY_JSON = 1024 * 1024


STATE_LOGGER = logging.getLogger("fanout.worker")
SINK_LOGGER = logging.getLogger("fanout.sink")


def emit(logger: logging.Logger, level: int, msg: str, fields: Mapping[str, Any]) -> None:
    """Log one state line with ``fields`` (the caller has checked the level).

    What ``logger.log(level, msg, extra={"fanout": fields})`` does, minus the search of the
    stack for the caller's file and line, which the JSON format never shows.
    """
    record = logger.makeRecord(logger.name, level, "", 0, msg, (), None, extra={"fanout": fields})
    logger.handle(record)


# The line format is shared with the front door (fanout_core.jsonlogs).
JsonFormatter = jsonlogs.JsonFormatter
WIRE_LOGGERS = jsonlogs.WIRE_LOGGERS
configure_logging = jsonlogs.configure_logging
