"""JSON log lines, and keeping payload values and secrets out of them.

:func:`configure_logging` makes every record in the process one JSON object per line;
:mod:`workers.telemetry.recorders` writes the state-change lines through :data:`STATE_LOGGER`
with identifiers only. Free text that may quote a downstream reply (retry and dead-letter
reasons) passes :func:`redact_payload` and :func:`scrub` first.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import re
import sys
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


def _payload_strings(value: Any, found: set[str], depth: int = 0) -> None:
    """Collect the string (and number) leaves of a payload, JSON-in-strings included."""
    if depth > 32 or len(found) >= _MAX_REDACTED_VALUES:
        return
    if isinstance(value, Mapping):
        for item in value.values():
            _payload_strings(item, found, depth + 1)
    elif isinstance(value, list | tuple):
        for item in value:
            _payload_strings(item, found, depth + 1)
    elif isinstance(value, str):
        if value[:1] in ("{", "["):
            with contextlib.suppress(ValueError):
                _payload_strings(json.loads(value), found, depth + 1)
                return
        if len(value) >= _MIN_REDACTED_VALUE:
            found.add(value)
            found.add(json.dumps(value)[1:-1])  # as quoted inside an echoed JSON document
    elif isinstance(value, int | float) and not isinstance(value, bool):
        text = str(value)
        if len(text) >= _MIN_REDACTED_VALUE:
            found.add(text)


def redact_payload(text: str, payload: Any) -> str:
    """Replace every payload value quoted in ``text`` (a reason echoing a downstream reply).

    Free text such as wrap-up notes has no recognisable shape, so the only sure way to keep
    it out of a log line is to know it: the values come from the payload itself.
    """
    values: set[str] = set()
    _payload_strings(payload, values)
    for value in sorted(values, key=len, reverse=True):
        if value in text:
            text = text.replace(value, "<redacted>")
    return text


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
_SCALARS = (str, int, float, bool, type(None))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, the state fields, trace and span ids.

    State fields come from ``extra={"fanout": {...}}`` (this package's recorders); other
    modules' ``extra={...}`` scalars are kept too (``extra={"queue": name}``), while
    containers are dropped: a dict or list in ``extra`` is how a payload would slip in.
    """

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRIBUTES and key not in _RESERVED_FIELDS and isinstance(value, _SCALARS):
                line[key] = value
        fields = getattr(record, "fanout", None)
        if isinstance(fields, Mapping):
            line.update({k: v for k, v in fields.items() if k not in _RESERVED_FIELDS})
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
        return json.dumps(line, default=str, separators=(",", ":"))


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
