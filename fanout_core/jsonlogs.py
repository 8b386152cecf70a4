"""One JSON object per log line, for every process of the project (worker, front door).

:func:`configure_logging` installs :class:`JsonFormatter` on the root logger: ``ts``,
``level``, ``logger``, ``msg``, the caller's fields, and the current OpenTelemetry trace and
span ids. State lines carry their fields in ``extra={"fanout": {...}}``; other records keep
their scalar extras, while containers are dropped (a dict in ``extra`` is how a payload
would slip in). Client libraries that dump wire data are held at :data:`WIRE_LOGGERS`.

The formatter is on every path that logs, so it reuses one JSON encoder and formats the
timestamp's date and time once per second. Reads the OpenTelemetry API's current span only
(no SDK, no I/O).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping
from typing import Any, Final, TextIO

from opentelemetry import trace

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
