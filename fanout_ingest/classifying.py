"""Request bodies → events: what a webhook carried, described the way the workers will see it.

``serving`` hands :func:`classify` the raw bytes of an authentic request. A body is

* one event — a JSON object: a Genesys notification (``topicName``, ``eventBody``,
  ``metadata``: webhooks, Event Streams), an EventBridge-shaped event (``detail-type``,
  ``detail``), an Open Messaging message, or any other JSON object;
* or a batch — a JSON array of such objects (1 to ``limits.maxEventsPerRequest``).

Anything else is :class:`NotAnEvent` (HTTP 400: Genesys must not retry what can never be
read): not UTF-8, not JSON, ``NaN``, nested too deeply, an empty array, an array holding a
non-object, an EventBridge event whose ``detail`` is not an object. Only what publishing
needs is derived — the event id, type, category and ordering key, by the same functions
the workers use (``fanout_core.keying``) — and the event is published as received: a single
event's text is never re-encoded, unknown fields are kept. Pure: no I/O; a reason never
quotes the body (payloads carry phone numbers and names).
"""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Mapping
from typing import Any

from fanout_core import keying


class Category(enum.StrEnum):
    """The ``eventCategory`` attribute SNS subscription filter policies match on."""

    CONVERSATION = "conversation"
    QUEUE = "queue"
    AGENT = "agent"
    OTHER = "other"


class NotAnEvent(Exception):
    """The body is not an event or a batch of events; ``reason`` never quotes it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclasses.dataclass(frozen=True, slots=True)
class InboundEvent:
    """One event to publish, with what the subscriptions and the workers key on."""

    text: str
    """The event's JSON text, as received for a single event."""
    size: int
    """UTF-8 bytes of :attr:`text`."""
    event_id: keying.EventId
    event_type: str
    category: Category
    conversation_id: str | None
    ordering_key: str | None
    """The workers' ordering key (``publishing.orderingKey``): the FIFO message group."""


def classify(body: bytes, *, ordering_key: str, max_events: int) -> list[InboundEvent]:
    """The events in ``body``; raises :class:`NotAnEvent` when there are none to publish."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise NotAnEvent(f"body is not UTF-8 (byte {error.start})") from None
    try:
        document = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise NotAnEvent("JSON nested too deeply") from None
    except json.JSONDecodeError as error:
        raise NotAnEvent(f"body is not JSON ({error.msg} at char {error.pos})") from None
    except ValueError:
        raise NotAnEvent("body is not JSON (invalid number)") from None
    if isinstance(document, dict):
        return [describe(document, text, len(body), ordering_key=ordering_key)]
    if not isinstance(document, list):
        raise NotAnEvent("body is neither a JSON object (an event) nor an array (a batch)")
    if not document:
        raise NotAnEvent("empty batch")
    if len(document) > max_events:
        raise NotAnEvent(f"batch of {len(document)} events; at most {max_events} per request")
    described = []
    for index, item in enumerate(document):
        if not isinstance(item, dict):
            raise NotAnEvent(f"batch item {index} is not a JSON object")
        item_text = json.dumps(item, ensure_ascii=False, separators=(",", ":"))
        described.append(
            describe(item, item_text, len(item_text.encode("utf-8")), ordering_key=ordering_key, index=index)
        )
    return described


def describe(
    event: Mapping[str, Any], text: str, size: int, *, ordering_key: str, index: int | None = None
) -> InboundEvent:
    """Key one event object exactly as ``workers.envelopes.decode`` will."""
    eventbridge: Mapping[str, Any] | None = None
    payload: Mapping[str, Any] = event
    if keying.is_eventbridge(event):
        detail = event["detail"]
        if not isinstance(detail, dict):
            where = "" if index is None else f" (batch item {index})"
            raise NotAnEvent(f"EventBridge event whose detail is not an object{where}")
        eventbridge, payload = event, detail
    topic = keying.str_field(payload, "topicName")
    event_type = keying.event_type_of(eventbridge, payload, topic)
    return InboundEvent(
        text=text,
        size=size,
        event_id=keying.event_id_of(payload),
        event_type=event_type,
        category=category_of(topic or event_type),
        conversation_id=keying.ordering_key_of(keying.DEFAULT_ORDERING_KEY, payload, eventbridge, topic),
        ordering_key=keying.ordering_key_of(ordering_key, payload, eventbridge, topic),
    )


def category_of(topic: str) -> Category:
    """``conversation`` for conversation events and transcripts, ``queue`` for queue
    snapshots, ``agent`` for user (agent) topics, else ``other``."""
    if topic.startswith(("v2.detail.events.conversation.", "v2.conversations.")):
        return Category.CONVERSATION
    if topic.startswith("v2.routing.queues."):
        return Category.QUEUE
    if topic.startswith("v2.users."):
        return Category.AGENT
    return Category.OTHER


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
