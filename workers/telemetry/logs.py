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
import sys
import time
from collections.abc import Mapping
from typing import Any, Final, TextIO

from opentelemetry import trace

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
_HANDLER_MARK = "_fanout_json_handler"
_RESERVED_FIELDS = frozenset({"ts", "level", "logger", "msg", "trace_id", "span_id"})


_RECORD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "fanout",
}
_SKIPPED_ATTRIBUTES = _RECORD_ATTRIBUTES | _RESERVED_FIELDS
_SCALARS = (str, int, float, bool, type(None))


def emit(logger: logging.Logger, level: int, msg: str, fields: Mapping[str, Any]) -> None:
    """Log one state line with ``fields`` (the caller has checked the level).

    What ``logger.log(level, msg, extra={"fanout": fields})`` does, minus the search of the
    stack for the caller's file and line, which the JSON format never shows.
    """
    record = logger.makeRecord(logger.name, level, "", 0, msg, (), None, extra={"fanout": fields})
    logger.handle(record)


_ENCODER = json.JSONEncoder(default=str, separators=(",", ":"))


class _Timestamps:
    """ISO 8601 UTC with milliseconds (``2025-03-14T15:09:26.123+00:00``), the date and
    time of day formatted once per second."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def format(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._prefix}.{int((created - second) * 1000):03d}+00:00"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, the state fields, trace and span ids.

    State fields come from ``extra={"fanout": {...}}`` (this package's recorders); other
    modules' ``extra={...}`` scalars are kept too (``extra={"queue": name}``), while
    containers are dropped: a dict or list in ``extra`` is how a payload would slip in.
    """

    def __init__(self) -> None:
        super().__init__()
        self._timestamps = _Timestamps()

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": self._timestamps.format(record.created),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = record.__dict__.get("fanout")
        if isinstance(fields, Mapping):
            # A recorder's state line (see emit): its fields are the only extras.
            for key, value in fields.items():
                if key not in _RESERVED_FIELDS:
                    line[key] = value
        else:
            for key, value in record.__dict__.items():
                if key not in _SKIPPED_ATTRIBUTES and isinstance(value, _SCALARS):
                    line[key] = value
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            line["trace_id"] = trace.format_trace_id(span_context.trace_id)
            line["span_id"] = trace.format_span_id(span_context.span_id)
        else:
            line["trace_id"] = None
            line["span_id"] = None
        if record.exc_info and record.exc_info[0] is not None:
            line["exc_type"] = record.exc_info[0].__name__
            line["exc"] = self.formatException(record.exc_info)
        return _ENCODER.encode(line)


# Client libraries that log whole requests and responses (message bodies, URLs with
# tokens, headers) below these levels: DEBUG on our side must not turn them on.
WIRE_LOGGERS: Final = {
    "botocore": logging.INFO,
    "aiobotocore": logging.INFO,
    "boto3": logging.INFO,
    "urllib3": logging.INFO,
    "httpx": logging.WARNING,
    "httpcore": logging.WARNING,
    "hpack": logging.WARNING,
    "aiohttp.access": logging.WARNING,
    "aiohttp.client": logging.INFO,
}


def configure_logging(level: str = "INFO", *, stream: TextIO | None = None) -> None:
    """Send every log record as a JSON line to ``stream`` (stderr); idempotent.

    Calling again changes the level (and the stream) of the one handler it installed.
    Loggers of client libraries that dump wire data are held at :data:`WIRE_LOGGERS`
    levels whatever ``level`` says: at DEBUG, botocore logs every SQS body it receives.
    """
    root = logging.getLogger()
    root.setLevel(level.upper())
    for name, floor in WIRE_LOGGERS.items():
        logging.getLogger(name).setLevel(max(floor, root.level))
    target = stream if stream is not None else sys.stderr
    for handler in root.handlers:
        if getattr(handler, _HANDLER_MARK, False) and isinstance(handler, logging.StreamHandler):
            handler.setStream(target)
            return
    handler = logging.StreamHandler(target)
    handler.setFormatter(JsonFormatter())
    setattr(handler, _HANDLER_MARK, True)
    root.addHandler(handler)
