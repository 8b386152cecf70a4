"""An SQS message as the worker holds it: parsed once, where it enters, into a frozen value.

``polling`` calls :func:`parse` on every message ``ReceiveMessage`` returns; from then on
every stage reads the :class:`Message` — never the reply's dict — so what SQS sent is read
in one place, and a field the worker relies on (the receipt handle, the receive count, the
FIFO group and sequence number, the send time, the message attributes, the body) has one
meaning and one type everywhere. ``payloads`` puts what it made of an S3 pointer beside the
body (:attr:`Message.resolution`, a new value through :meth:`Message.resolved`); nothing
else ever changes a message. What becomes of a message while we hold it (held, settling,
settled) is the settler's, not the message's.

Nothing here does I/O.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from fanout_core import offloading
from workers import events


class MalformedMessage(ValueError):
    """A ``ReceiveMessage`` entry without what every SQS message has (id, receipt handle)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Attribute:
    """One message attribute as SQS carries it (``DataType`` and a string or binary value)."""

    data_type: str
    string_value: str | None = None
    binary_value: bytes | None = None

    def as_request(self) -> dict[str, str | bytes]:
        """The attribute as a ``SendMessage`` request carries it."""
        request: dict[str, str | bytes] = {"DataType": self.data_type}
        if self.string_value is not None:
            request["StringValue"] = self.string_value
        if self.binary_value is not None:
            request["BinaryValue"] = self.binary_value
        return request


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class Message:
    """One received SQS message; one per receive (a redelivery is another Message, with
    another receipt handle). Compared by identity; the receipt handle names the receive."""

    message_id: events.MessageId
    receipt_handle: events.ReceiptHandle
    body: str
    receive_count: int = 1
    """``ApproximateReceiveCount``: how often SQS handed this message out, this time included."""
    sent_timestamp_ms: int | None = None
    """``SentTimestamp``: when SQS accepted the message (epoch milliseconds)."""
    group_id: str | None = None
    """FIFO: ``MessageGroupId``."""
    sequence_number: int | None = None
    """FIFO: ``SequenceNumber``, the group's order whatever order messages arrive in."""
    trace_header: str | None = None
    """``AWSTraceHeader``: the producer's X-Ray trace context, set by SQS itself."""
    attributes: Mapping[str, Attribute] = dataclasses.field(default_factory=dict)
    """The message attributes, by name."""
    resolution: offloading.Resolution | None = None
    """What ``payloads`` made of an S3 pointer in the body (the body keeps the pointer)."""

    @property
    def redelivered(self) -> bool:
        """SQS handed this message out before."""
        return self.receive_count > 1

    def string_attribute(self, name: str) -> str | None:
        attribute = self.attributes.get(name)
        return attribute.string_value if attribute is not None else None

    def string_attributes(self) -> dict[str, str]:
        """The attributes that carry a string value (binary ones are not)."""
        return {
            name: attribute.string_value
            for name, attribute in self.attributes.items()
            if attribute.string_value is not None
        }

    def resolved(self, resolution: offloading.Resolution) -> Message:
        """This message with what its S3 pointer resolved to."""
        return dataclasses.replace(self, resolution=resolution)


def parse(reply: Mapping[str, Any]) -> Message:
    """One entry of a ``ReceiveMessage`` reply as a :class:`Message`.

    Only the id and the receipt handle are required (SQS always sends them; without them a
    message can be neither told apart nor settled: :class:`MalformedMessage`). Anything
    else that is missing or of the wrong shape is read as absent.
    """
    message_id, receipt_handle = reply.get("MessageId"), reply.get("ReceiptHandle")
    if not isinstance(message_id, str) or not message_id:
        raise MalformedMessage("a received message without a MessageId")
    if not isinstance(receipt_handle, str) or not receipt_handle:
        raise MalformedMessage(f"message {message_id} without a ReceiptHandle")
    system = reply.get("Attributes")
    if not isinstance(system, Mapping):
        system = {}
    body = reply.get("Body", "")
    trace_header = system.get("AWSTraceHeader")
    group = system.get("MessageGroupId")
    return Message(
        message_id=events.MessageId(message_id),
        receipt_handle=events.ReceiptHandle(receipt_handle),
        body=body if isinstance(body, str) else "",
        receive_count=_natural(system.get("ApproximateReceiveCount")) or 1,
        sent_timestamp_ms=_natural(system.get("SentTimestamp")),
        group_id=group if isinstance(group, str) and group else None,
        sequence_number=_natural(system.get("SequenceNumber")),
        trace_header=trace_header if isinstance(trace_header, str) else None,
        attributes=_attributes(reply.get("MessageAttributes")),
    )


def _natural(value: object) -> int | None:
    """A non-negative integer SQS sends as a string; None when absent or not one."""
    text = str(value) if isinstance(value, str | int) and not isinstance(value, bool) else ""
    return int(text) if text.isascii() and text.isdigit() else None


def _attributes(raw: object) -> dict[str, Attribute]:
    if not isinstance(raw, Mapping):
        return {}
    parsed: dict[str, Attribute] = {}
    for name, value in raw.items():
        if not isinstance(value, Mapping) or not isinstance(value.get("DataType"), str):
            continue
        string, binary = value.get("StringValue"), value.get("BinaryValue")
        attribute = Attribute(
            data_type=value["DataType"],
            string_value=string if isinstance(string, str) else None,
            binary_value=bytes(binary) if isinstance(binary, bytes | bytearray) else None,
        )
        if attribute.string_value is not None or attribute.binary_value is not None:
            parsed[str(name)] = attribute
    return parsed
