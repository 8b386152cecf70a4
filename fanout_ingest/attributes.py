"""What each SNS message carries besides its body: attributes, FIFO ids, its size.

``publishing`` turns every :class:`~fanout_ingest.classifying.InboundEvent` into one
``PublishBatch`` entry with :func:`entry`. The message attributes are what subscription
filter policies match on and what the workers read (docs/formats.md, "The front door"):

==================  ========  ==================================================================
``eventType``       String    the topic template (``v2.detail.events.conversation.{id}.acw``)
``eventCategory``   String    ``conversation`` | ``queue`` | ``agent`` | ``other``
``conversationId``  String    when the event has one
``eventId``         String    the payload-derived event id the workers deduplicate on
``source``          String    the gateway source that accepted it
``traceparent``     String    W3C trace context of the request, for the workers' span links
``ExtendedPayloadSize``  Number  only when the body was offloaded to S3 (its size in bytes)
==================  ========  ==================================================================

Seven at most, within SQS's ten (SNS → SQS keeps them). On a FIFO topic the entry also gets
``MessageGroupId`` = the ordering key (so a conversation's events stay in order) and
``MessageDeduplicationId`` = the event id (so a Genesys retry within SNS's five-minute window
is published once); values SNS would refuse (over 128 characters, or characters outside its
set) are replaced by their SHA-256. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from typing import TypedDict

from fanout_core import offloading
from fanout_ingest import classifying

_FIFO_ID_MAX = 128
_FIFO_ID_CHARS = re.compile(r"^[\x21-\x7e]+$")  # SNS: alphanumerics and punctuation
_NUMBER = "Number"
_STRING = "String"


class AttributeValue(TypedDict):
    DataType: str
    StringValue: str


class Entry(TypedDict, total=False):
    """One ``PublishBatchRequestEntries`` item."""

    Id: str
    Message: str
    MessageAttributes: dict[str, AttributeValue]
    MessageGroupId: str
    MessageDeduplicationId: str


def message_attributes(
    event: classifying.InboundEvent,
    *,
    source: str,
    traceparent: str | None,
    offloaded_size: int | None = None,
) -> dict[str, AttributeValue]:
    """The attributes of ``event``'s SNS message (empty values left out: SNS refuses them)."""
    values: dict[str, tuple[str, str | None]] = {
        "eventType": (_STRING, event.event_type),
        "eventCategory": (_STRING, str(event.category)),
        "conversationId": (_STRING, event.conversation_id),
        "eventId": (_STRING, event.event_id),
        "source": (_STRING, source),
        "traceparent": (_STRING, traceparent),
    }
    if offloaded_size is not None:
        values[offloading.SIZE_ATTRIBUTE] = (_NUMBER, str(offloaded_size))
    return {
        name: AttributeValue(DataType=kind, StringValue=value)
        for name, (kind, value) in values.items()
        if value
    }


def fifo_id(value: str) -> str:
    """``value`` when SNS takes it as a group or deduplication id, else its SHA-256 (hex)."""
    if len(value) <= _FIFO_ID_MAX and _FIFO_ID_CHARS.match(value):
        return value
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


def entry(
    entry_id: str,
    message: str,
    attributes: dict[str, AttributeValue],
    event: classifying.InboundEvent,
    *,
    fifo: bool,
) -> Entry:
    """A PublishBatch entry; on a FIFO topic with the message group and deduplication id."""
    made = Entry(Id=entry_id, Message=message, MessageAttributes=attributes)
    if fifo:
        made["MessageGroupId"] = fifo_id(event.ordering_key or event.event_id)
        made["MessageDeduplicationId"] = fifo_id(event.event_id)
    return made


def attributes_size(attributes: dict[str, AttributeValue]) -> int:
    """Bytes SNS counts for message attributes: name, data type and value of each."""
    return sum(
        len(name.encode()) + len(value["DataType"].encode()) + len(value["StringValue"].encode())
        for name, value in attributes.items()
    )


def message_size(message_bytes: int, attributes: dict[str, AttributeValue]) -> int:
    """What SNS checks against its 256 KiB limit: the body and the attributes."""
    return message_bytes + attributes_size(attributes)


_TRACEPARENT_PARTS = 4


def traceparent_for(incoming: str | None, random_bits: Callable[[int], int]) -> str:
    """The W3C ``traceparent`` the published messages carry: a new span in the request's
    trace when it came with a valid ``traceparent`` header, else in a new sampled trace."""
    span_id = f"{random_bits(64) or 1:016x}"
    if incoming:
        parts = incoming.strip().split("-")
        if (
            len(parts) == _TRACEPARENT_PARTS
            and parts[0] == "00"
            and _HEX32.match(parts[1])
            and parts[1] != "0" * 32
            and _HEX16.match(parts[2])
            and _HEX2.match(parts[3])
        ):
            return f"00-{parts[1]}-{span_id}-{parts[3]}"
    return f"00-{random_bits(128) or 1:032x}-{span_id}-01"


_HEX32 = re.compile(r"^[0-9a-f]{32}$")
_HEX16 = re.compile(r"^[0-9a-f]{16}$")
_HEX2 = re.compile(r"^[0-9a-f]{2}$")
