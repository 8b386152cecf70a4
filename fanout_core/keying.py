"""What identifies, names and orders an event, derived from its payload alone.

Two programs key the same events and must agree to the byte: the worker
(``workers.envelopes`` decodes every SQS body into an event) and the front door
(``fanout_ingest`` publishes each Genesys webhook to SNS with the event id as the FIFO
deduplication id and the conversation id as the message group and the ``conversationId``
attribute). Both call the functions here, so an event published by the front door is
deduplicated and ordered by the workers under the very keys the front door used.

Everything is derived from the *payload* (for Genesys: ``topicName``, ``version``,
``eventBody``, ``metadata``), never from an envelope id, because EventBridge and SNS give a
redelivered event a new one. Pure: no I/O, no clock.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any, NewType

EventId = NewType("EventId", str)

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


def is_eventbridge(document: Mapping[str, Any]) -> bool:
    """An EventBridge event: ``detail-type`` and ``detail`` (the payload) present."""
    return "detail-type" in document and "detail" in document


def event_id_of(payload: Mapping[str, Any]) -> EventId:
    """The deduplication key: ``metadata.CorrelationId``, else a hash of topic + body.

    Only the payload counts, so every delivery of one event (raw, SNS, EventBridge,
    redelivered with a new envelope id) gets the same key.
    """
    metadata = payload.get("metadata")
    if isinstance(metadata, dict):
        correlation_id = metadata.get("CorrelationId")
        if isinstance(correlation_id, str) and correlation_id.strip():
            if len(correlation_id) <= MAX_CORRELATION_ID_CHARS:
                return EventId(correlation_id)
            return EventId(_digest("correlation-id", correlation_id))
    topic = payload.get("topicName")
    if isinstance(topic, str) and "eventBody" in payload:
        return EventId(_digest("genesys", topic, canonical_json(payload["eventBody"])))
    return EventId(_digest("payload", canonical_json(payload)))


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


def event_type_of(
    eventbridge: Mapping[str, Any] | None, payload: Mapping[str, Any], topic: str | None
) -> str:
    """EventBridge ``detail-type``; else the topic template; else the payload's own type field."""
    if eventbridge is not None:
        detail_type = str_field(eventbridge, "detail-type")
        if detail_type:
            return detail_type
    if topic:
        return topic_template(topic)
    for field in ("eventType", "type", "detail-type"):
        value = str_field(payload, field)
        if value:
            return value
    return UNKNOWN_EVENT_TYPE


def ordering_key_of(
    key: str, payload: Mapping[str, Any], eventbridge: Mapping[str, Any] | None, topic: str | None
) -> str | None:
    """The value of ``key`` (a dotted path) in ``eventBody``, the payload, then the EventBridge
    envelope; for the default key, then where Genesys puts the conversation id otherwise."""
    path = key.split(".")
    for source in (payload.get("eventBody"), payload, eventbridge):
        found = _key_value(lookup(source, path))
        if found is not None:
            return found
    if key == DEFAULT_ORDERING_KEY and topic:
        return _conversation_id_from_topic(topic, payload)
    return None


def _conversation_id_from_topic(topic: str, payload: Mapping[str, Any]) -> str | None:
    """Where Genesys puts the conversation id when ``conversationId`` is absent."""
    segments = topic.split(".")
    if len(segments) == 5 and segments[:3] == ["v2", "routing", "queues"] and segments[4] == "conversations":
        return _key_value(lookup(payload.get("eventBody"), ["id"]))
    if len(segments) >= 5 and segments[:4] == ["v2", "detail", "events", "conversation"]:
        return _key_value(segments[4])
    if len(segments) == 4 and segments[:2] == ["v2", "conversations"] and segments[3] == "transcription":
        return _key_value(segments[2])
    return None


def lookup(source: Any, path: list[str]) -> Any:
    """``source[path[0]][path[1]]...``, or None where a step is missing or not an object."""
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


def str_field(document: Mapping[str, Any], field: str) -> str | None:
    """``document[field]`` when it is a non-empty string, else None."""
    value = document.get(field)
    return value if isinstance(value, str) and value else None
