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
import hashlib
import json
import math
import re
from collections.abc import Mapping
from typing import Any

from workers import events

MAX_BODY_BYTES = 1024 * 1024
"""The SQS message size limit; anything larger did not come from SQS intact."""

MAX_CORRELATION_ID_CHARS = 256
"""Longer ``CorrelationId`` values are hashed: the id must fit a DynamoDB key and a header."""

DEFAULT_ORDERING_KEY = "conversationId"
UNKNOWN_EVENT_TYPE = "unknown"

_ID_TEMPLATE = "{id}"
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_TOPIC_WORD = re.compile(r"^[a-z]+$")
# Genesys topic segments that are followed by the id of the thing they name.
_ID_PARENTS = frozenset(
    {
        "conversation",
        "conversations",
        "queues",
        "users",
        "groups",
        "flows",
        "campaigns",
        "contactlists",
        "teams",
        "workitems",
    }
)
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
    ordering_key: str = DEFAULT_ORDERING_KEY,
    message_attributes: Mapping[str, str] | None = None,
) -> events.Event:
    """Decode one SQS message body; raise :class:`PoisonMessage` when it cannot be.

    ``ordering_key`` is ``spec.ordering.key`` (dotted paths reach into nested objects).
    ``message_attributes`` are the SQS message attributes (string values); SNS message
    attributes found in the body are merged under them.
    """
    try:
        return _decode(body, ordering_key, message_attributes or {})
    except RecursionError:
        raise PoisonMessage("JSON nested too deeply") from None


def _decode(body: str | bytes, ordering_key: str, sqs_attributes: Mapping[str, str]) -> events.Event:
    outer = _parse_object(_body_text(body), what="body")
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
    if _is_eventbridge(event):
        detail = event["detail"]
        if not isinstance(detail, dict):
            raise PoisonMessage("EventBridge event whose detail is not an object")
        eventbridge, payload = event, detail
        kind = (
            events.EnvelopeKind.SNS_EVENTBRIDGE
            if kind is events.EnvelopeKind.SNS
            else events.EnvelopeKind.EVENTBRIDGE
        )

    topic = _str_field(payload, "topicName")
    return events.Event(
        event_id=event_id_of(payload),
        event_type=_event_type(eventbridge, payload, topic),
        payload=payload,
        ordering_key=_ordering_key(ordering_key, payload, eventbridge, topic),
        event_time_ms=_event_time_ms(payload, eventbridge),
        topic=topic,
        envelope=kind,
        attributes=attributes,
    )


# --- bytes → JSON object -------------------------------------------------------------


def _body_text(body: str | bytes) -> str:
    if isinstance(body, str):
        # A character takes 1-4 UTF-8 bytes: only text near the limit needs encoding to tell.
        if len(body) > MAX_BODY_BYTES // 4 and len(body.encode("utf-8", "surrogatepass")) > MAX_BODY_BYTES:
            raise PoisonMessage(f"body larger than {MAX_BODY_BYTES} bytes")
        return body
    if len(body) > MAX_BODY_BYTES:
        raise PoisonMessage(f"body larger than {MAX_BODY_BYTES} bytes")
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


def _is_eventbridge(document: Mapping[str, Any]) -> bool:
    return "detail-type" in document and "detail" in document


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


def event_id_of(payload: Mapping[str, Any]) -> events.EventId:
    """The deduplication key: ``metadata.CorrelationId``, else a hash of topic + body.

    Only the payload counts, so every delivery of one event (raw, SNS, EventBridge,
    redelivered with a new envelope id) gets the same key.
    """
    metadata = payload.get("metadata")
    if isinstance(metadata, dict):
        correlation_id = metadata.get("CorrelationId")
        if isinstance(correlation_id, str) and correlation_id.strip():
            if len(correlation_id) <= MAX_CORRELATION_ID_CHARS:
                return events.EventId(correlation_id)
            return events.EventId(_digest("correlation-id", correlation_id))
    topic = payload.get("topicName")
    if isinstance(topic, str) and "eventBody" in payload:
        return events.EventId(_digest("genesys", topic, canonical_json(payload["eventBody"])))
    return events.EventId(_digest("payload", canonical_json(payload)))


def canonical_json(value: Any) -> str:
    """Sorted keys, no spaces, ASCII only: equal JSON values give equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _digest(domain: str, *parts: str) -> str:
    hasher = hashlib.sha256(domain.encode())
    for part in parts:
        # Length-prefixed, so ("ab", "c") and ("a", "bc") never collide.
        encoded = part.encode("utf-8", "surrogatepass")
        hasher.update(b"\0%d:" % len(encoded))
        hasher.update(encoded)
    return f"sha256:{hasher.hexdigest()}"


def topic_template(topic: str) -> str:
    """``v2.detail.events.conversation.<uuid>.acw`` → ``v2.detail.events.conversation.{id}.acw``.

    A segment becomes ``{id}`` when it is a UUID, or when it follows a segment naming a
    collection (``conversation``, ``queues``, ``users``...) and is not itself a plain
    lower-case word (so ``v2.users.{id}.conversations.calls`` keeps ``calls``).
    """
    segments = topic.split(".")
    templated = []
    for index, segment in enumerate(segments):
        after_parent = index > 0 and segments[index - 1] in _ID_PARENTS
        if _UUID.match(segment) or (after_parent and segment and not _TOPIC_WORD.match(segment)):
            templated.append(_ID_TEMPLATE)
        else:
            templated.append(segment)
    return ".".join(templated)


def _event_type(eventbridge: Mapping[str, Any] | None, payload: Mapping[str, Any], topic: str | None) -> str:
    if eventbridge is not None:
        detail_type = _str_field(eventbridge, "detail-type")
        if detail_type:
            return detail_type
    if topic:
        return topic_template(topic)
    for field in ("eventType", "type", "detail-type"):
        value = _str_field(payload, field)
        if value:
            return value
    return UNKNOWN_EVENT_TYPE


def _ordering_key(
    key: str, payload: Mapping[str, Any], eventbridge: Mapping[str, Any] | None, topic: str | None
) -> str | None:
    path = key.split(".")
    for source in (payload.get("eventBody"), payload, eventbridge):
        found = _key_value(_lookup(source, path))
        if found is not None:
            return found
    if key == DEFAULT_ORDERING_KEY and topic:
        return _conversation_id_from_topic(topic, payload)
    return None


def _conversation_id_from_topic(topic: str, payload: Mapping[str, Any]) -> str | None:
    """Where Genesys puts the conversation id when ``conversationId`` is absent."""
    segments = topic.split(".")
    if len(segments) == 5 and segments[:3] == ["v2", "routing", "queues"] and segments[4] == "conversations":
        return _key_value(_lookup(payload.get("eventBody"), ["id"]))
    if len(segments) >= 5 and segments[:4] == ["v2", "detail", "events", "conversation"]:
        return _key_value(segments[4])
    if len(segments) == 4 and segments[:2] == ["v2", "conversations"] and segments[3] == "transcription":
        return _key_value(segments[2])
    return None


def _lookup(source: Any, path: list[str]) -> Any:
    for part in path:
        if not isinstance(source, dict):
            return None
        source = source.get(part)
    return source


def _key_value(value: Any) -> str | None:
    """Strings and integers make ordering keys; anything else (objects, floats...) does not."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value and value != _ID_TEMPLATE:
        return value
    return None


def _event_time_ms(payload: Mapping[str, Any], eventbridge: Mapping[str, Any] | None) -> int | None:
    candidates = [_lookup(payload, ["eventBody", "eventTime"]), payload.get("timestamp")]
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


def _str_field(document: Mapping[str, Any], field: str) -> str | None:
    value = document.get(field)
    return value if isinstance(value, str) and value else None
