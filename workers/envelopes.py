"""Message bodies → :class:`~workers.events.Event`: the envelopes removed, the event described.

``polling`` hands every SQS body to :func:`decode`; every later stage (filtering, dedupe,
ordering, the sinks) reads only the :class:`~workers.events.Event` it returns. Nothing
here does I/O, so the whole of it is unit- and property-tested without a queue.

A body reaches the queue in one of four shapes (docs/formats.md)::

    raw           {...event...}                      a Genesys notification or any JSON object
    sns           {"Type": "Notification", "Message": "<JSON string>", "MessageAttributes": ...}
    eventbridge   {"detail-type": "<topic template>", "detail": {...Genesys notification...}}
    sns+eventbridge   an EventBridge event JSON-encoded inside an SNS ``Message``

Whatever the envelope, the *payload* is the same object (for Genesys: ``topicName``,
``version``, ``eventBody``, ``metadata``), and everything the worker keys on is derived
from the payload alone: the event id used for deduplication never comes from an envelope
id, because EventBridge and SNS give a redelivered event a new one.

Genesys adds and drops fields without notice, so only what processing needs is looked
at, unknown fields are kept, and missing optional fields are fine. What cannot be read
at all is a :class:`PoisonMessage`; its ``reason`` names the problem, never a payload
value (payloads carry phone numbers and names).
"""

from __future__ import annotations

import datetime
import json
import math
from collections.abc import Mapping
from typing import Any

from fanout_core import keying, offloading
from workers import events

MAX_BODY_BYTES = 1024 * 1024
"""The SQS message size limit; anything larger did not come from SQS intact."""

MAX_RESOLVED_BODY_BYTES = 64 * 1024 * 1024
"""An offloaded payload (fetched from S3) may be larger; ``spec.largePayloads.maxBytes`` is
checked before fetching, this bounds what the decoder will ever parse."""

_SNS_MARKERS = ("Message", "MessageId", "TopicArn")
_MAX_EPOCH_MS = 253_402_300_800_000  # 10000-01-01: beyond it, a "time" is garbage


class PoisonMessage(Exception):
    """A body that can never be decoded; dead-letter it with ``reason``.

    ``reason`` is short and safe to log and to put in a message attribute: it never
    quotes the body.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def decode(
    body: str | bytes,
    *,
    ordering_key: str = keying.DEFAULT_ORDERING_KEY,
    message_attributes: Mapping[str, str] | None = None,
    resolution: offloading.Resolution | None = None,
) -> events.Event:
    """Decode one SQS message body; raise :class:`PoisonMessage` when it cannot be.

    ``ordering_key`` is ``spec.ordering.key`` (dotted paths reach into nested objects).
    ``message_attributes`` are the SQS message attributes (string values); SNS message
    attributes found in the body are merged under them. ``resolution`` is what the poller
    made of an S3 pointer in the body (``fanout_core.offloading``): its rebuilt body is
    decoded instead (up to :data:`MAX_RESOLVED_BODY_BYTES`), or its failure is the reason.
    """
    try:
        if resolution is not None:
            if resolution.body is None:
                raise PoisonMessage(resolution.failure or "S3 payload pointer not resolved")
            return _decode(resolution.body, ordering_key, message_attributes or {}, MAX_RESOLVED_BODY_BYTES)
        return _decode(body, ordering_key, message_attributes or {}, MAX_BODY_BYTES)
    except RecursionError:
        raise PoisonMessage("JSON nested too deeply") from None


def _decode(
    body: str | bytes, ordering_key: str, sqs_attributes: Mapping[str, str], max_bytes: int
) -> events.Event:
    outer = _parse_object(_body_text(body, max_bytes), what="body")
    attributes: dict[str, str] = {}
    kind = events.EnvelopeKind.RAW
    event = outer
    if _is_sns(outer):
        attributes.update(_sns_attributes(outer.get("MessageAttributes")))
        message = outer.get("Message")
        if not isinstance(message, str):
            raise PoisonMessage("SNS notification without a string Message")
        event = _parse_object(message, what="SNS Message")
        kind = events.EnvelopeKind.SNS
    attributes.update(sqs_attributes)

    eventbridge: Mapping[str, Any] | None = None
    payload: Mapping[str, Any] = event
    if keying.is_eventbridge(event):
        detail = event["detail"]
        if not isinstance(detail, dict):
            raise PoisonMessage("EventBridge event whose detail is not an object")
        eventbridge, payload = event, detail
        kind = (
            events.EnvelopeKind.SNS_EVENTBRIDGE
            if kind is events.EnvelopeKind.SNS
            else events.EnvelopeKind.EVENTBRIDGE
        )

    topic = keying.str_field(payload, "topicName")
    return events.Event(
        event_id=keying.event_id_of(payload),
        event_type=keying.event_type_of(eventbridge, payload, topic),
        payload=payload,
        ordering_key=keying.ordering_key_of(ordering_key, payload, eventbridge, topic),
        event_time_ms=_event_time_ms(payload, eventbridge),
        topic=topic,
        envelope=kind,
        attributes=attributes,
    )


# --- bytes → JSON object -------------------------------------------------------------


def _body_text(body: str | bytes, max_bytes: int) -> str:
    if isinstance(body, str):
        # A character takes 1-4 UTF-8 bytes: only text near the limit needs encoding to tell.
        if len(body) > max_bytes // 4 and len(body.encode("utf-8", "surrogatepass")) > max_bytes:
            raise PoisonMessage(f"body larger than {max_bytes} bytes")
        return body
    if len(body) > max_bytes:
        raise PoisonMessage(f"body larger than {max_bytes} bytes")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise PoisonMessage(f"body is not UTF-8 (byte {error.start})") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse_object(text: str, *, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as error:
        raise PoisonMessage(f"{what} is not JSON ({error.msg} at char {error.pos})") from None
    except ValueError:  # NaN/Infinity, or an integer too long to convert
        raise PoisonMessage(f"{what} is not JSON (invalid number)") from None
    if not isinstance(value, dict):
        pointer = offloading.parse_pointer(text) if isinstance(value, list) else None
        if pointer is not None:
            raise PoisonMessage(f"{what} is an S3 payload pointer that was not resolved")
        raise PoisonMessage(f"{what} is JSON {_json_kind(value)}, not an object")
    return value


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return "number"


# --- envelopes -----------------------------------------------------------------------


def _is_sns(document: Mapping[str, Any]) -> bool:
    return document.get("Type") == "Notification" and any(key in document for key in _SNS_MARKERS)


def _sns_attributes(value: Any) -> dict[str, str]:
    """``{name: {Type, Value}}`` → ``{name: Value}``; malformed entries are skipped."""
    if not isinstance(value, dict):
        return {}
    flat: dict[str, str] = {}
    for name, attribute in value.items():
        if isinstance(attribute, dict) and isinstance(attribute.get("Value"), str):
            flat[name] = attribute["Value"]
    return flat


# --- what the payload says -----------------------------------------------------------
# The event id, type and ordering key live in fanout_core.keying: the front door derives
# the same ones when it publishes.


def _event_time_ms(payload: Mapping[str, Any], eventbridge: Mapping[str, Any] | None) -> int | None:
    candidates = [keying.lookup(payload, ["eventBody", "eventTime"]), payload.get("timestamp")]
    if eventbridge is not None:
        candidates.append(eventbridge.get("time"))
    for candidate in candidates:
        millis = epoch_ms(candidate)
        if millis is not None:
            return millis
    return None


def epoch_ms(value: Any) -> int | None:
    """Epoch milliseconds from a number (already ms) or an ISO-8601 string; None if neither."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return _plausible_ms(value)
    if not isinstance(value, str):
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return _plausible_ms(int(text)) if len(text) <= 16 else None
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    try:
        return _plausible_ms(moment.timestamp() * 1000)
    except (OverflowError, ValueError):
        return None


def _plausible_ms(value: float) -> int | None:
    if not math.isfinite(value) or not 0 <= value < _MAX_EPOCH_MS:
        return None
    return int(value)
