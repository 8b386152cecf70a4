"""Synthetic Genesys Cloud CX interaction events, in every envelope the worker accepts.

Used by the tests, ``fanout demo`` and the benchmarks to make traffic shaped like the
real thing (docs/formats.md): conversations of ~10 detail events with epoch-millisecond
``eventTime``, a ``CorrelationId`` per event, phone numbers in ``ani``/``dnis``; wrapped
raw, in EventBridge (a NEW envelope id per put, as Genesys redeliveries get), in SNS
(raw delivery off: the event JSON-encoded into ``Message``), or EventBridge-in-SNS.
All ids are random UUIDs from a seeded generator: runs are repeatable.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import random
import uuid
from collections.abc import Iterator
from typing import Any

from workers import events

ORG_ID = "7c1f3b2a-5d4e-4f60-9a8b-1c2d3e4f5a6b"
SOURCE = f"aws.partner/genesys.com/cloud/{ORG_ID}/cx-interactions"

# The detail-event suffixes of one typical voice interaction, in the order they happen.
CONVERSATION_FLOW = (
    "customer.start",
    "flow.outcome",
    "acd.start",
    "attributes",
    "acd.end",
    "user.start",
    "contact",
    "customer.end",
    "user.end",
    "acw",
)

POISON_BODIES = (
    "not json at all",
    '{"truncated": ',
    "[1, 2, 3]",
    '{"Type": "Notification", "MessageId": "x", "TopicArn": "arn:aws:sns:us-east-1:1:t", '
    '"Message": "{broken"}',
    '{"version": "0", "id": "x", "detail-type": "v2.detail.events.conversation.{id}.acw", '
    '"source": "aws.partner/genesys.com/cloud/x", "detail": "not an object"}',
)


@dataclasses.dataclass(frozen=True)
class GenesysEvent:
    """One Genesys notification: ``{topicName, version, eventBody, metadata}``."""

    detail: dict[str, Any]

    @property
    def topic(self) -> str:
        return str(self.detail["topicName"])

    @property
    def conversation_id(self) -> str:
        return str(self.detail["eventBody"]["conversationId"])

    @property
    def correlation_id(self) -> str:
        return str(self.detail["metadata"]["CorrelationId"])

    @property
    def event_time_ms(self) -> int:
        return int(self.detail["eventBody"]["eventTime"])

    @property
    def suffix(self) -> str:
        return self.topic.split(f"{self.conversation_id}.", 1)[1]

    @property
    def template(self) -> str:
        return f"v2.detail.events.conversation.{{id}}.{self.suffix}"


class Generator:
    """Seeded source of conversations and envelopes."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = random.Random(seed)

    def uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def phone(self) -> str:
        return f"tel:+1317555{self.rng.randrange(10_000):04d}"

    def conversation(self, *, start_ms: int, length: int = len(CONVERSATION_FLOW)) -> list[GenesysEvent]:
        """The events of one conversation, ``length`` of them, event times increasing."""
        conversation_id = self.uuid()
        participant, agent, queue = self.uuid(), self.uuid(), self.uuid()
        ani, dnis = self.phone(), "tel:+18005550199"
        flow = [CONVERSATION_FLOW[index % len(CONVERSATION_FLOW)] for index in range(length)]
        made = []
        event_time = start_ms
        for suffix in flow:
            event_time += self.rng.randrange(200, 30_000)
            body: dict[str, Any] = {
                "eventTime": event_time,
                "conversationId": conversation_id,
                "participantId": agent if suffix.startswith(("user", "acw")) else participant,
                "sessionId": self.uuid(),
                "mediaType": "VOICE",
                "provider": "Edge",
                "direction": "INBOUND",
                "ani": ani,
                "dnis": dnis,
            }
            if suffix.startswith(("acd", "user", "acw")):
                body["queueId"] = queue
            if suffix.startswith(("user", "acw")):
                body["userId"] = agent
            if suffix.endswith(".end"):
                body["disconnectType"] = "PEER"
            if suffix == "acw":
                body.update(
                    wrapupCode=self.uuid(),
                    wrapupNotes="Customer asked for refund status",
                    wrapupDurationMs=self.rng.randrange(5_000, 60_000),
                )
            made.append(
                GenesysEvent(
                    {
                        "topicName": f"v2.detail.events.conversation.{conversation_id}.{suffix}",
                        "version": "2",
                        "eventBody": body,
                        "metadata": {"CorrelationId": self.uuid()},
                    }
                )
            )
        return made

    def day(
        self, conversations: int, *, start_ms: int = 1_741_964_966_000, length: int = 10
    ) -> Iterator[GenesysEvent]:
        """Events of many conversations, interleaved in event-time order."""
        everything = [
            event
            for _ in range(conversations)
            for event in self.conversation(start_ms=start_ms + self.rng.randrange(0, 600_000), length=length)
        ]
        yield from sorted(everything, key=lambda event: event.event_time_ms)

    # -- envelopes -------------------------------------------------------------------------

    def eventbridge(self, event: GenesysEvent) -> dict[str, Any]:
        """The EventBridge partner event (a new envelope id every time, as on redelivery)."""
        when = datetime.datetime.fromtimestamp(event.event_time_ms / 1000, tz=datetime.UTC)
        return {
            "version": "0",
            "id": self.uuid(),
            "detail-type": event.template,
            "source": SOURCE,
            "account": "123456789012",
            "time": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "region": "us-east-1",
            "resources": [],
            "detail": event.detail,
        }

    def sns(self, message: str, attributes: dict[str, str] | None = None) -> dict[str, Any]:
        """An SNS notification as SQS receives it with raw delivery off."""
        document: dict[str, Any] = {
            "Type": "Notification",
            "MessageId": self.uuid(),
            "TopicArn": "arn:aws:sns:us-east-1:123456789012:genesys-interactions",
            "Message": message,
            "Timestamp": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
            "SignatureVersion": "1",
            "Signature": "EXAMPLE==",
            "SigningCertURL": "https://sns.us-east-1.amazonaws.com/cert.pem",
            "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe",
        }
        if attributes:
            document["MessageAttributes"] = {
                name: {"Type": "String", "Value": value} for name, value in attributes.items()
            }
        return document

    def body(self, event: GenesysEvent, envelope: events.EnvelopeKind) -> str:
        """The SQS message body carrying ``event`` in ``envelope``."""
        if envelope is events.EnvelopeKind.RAW:
            return json.dumps(event.detail)
        if envelope is events.EnvelopeKind.EVENTBRIDGE:
            return json.dumps(self.eventbridge(event))
        category = {"eventCategory": "conversation"}
        if envelope is events.EnvelopeKind.SNS:
            return json.dumps(self.sns(json.dumps(event.detail), category))
        return json.dumps(self.sns(json.dumps(self.eventbridge(event)), category))

    def any_envelope(self) -> events.EnvelopeKind:
        return self.rng.choice(list(events.EnvelopeKind))

    def poison(self) -> str:
        return self.rng.choice(POISON_BODIES)


def transcript(conversation_id: str, correlation_id: str, *, size: int, event_time_ms: int) -> dict[str, Any]:
    """A ``v2.conversations.{id}.transcription`` event padded to about ``size`` bytes of JSON."""
    event: dict[str, Any] = {
        "topicName": f"v2.conversations.{conversation_id}.transcription",
        "version": "2",
        "eventBody": {
            "conversationId": conversation_id,
            "eventTime": event_time_ms,
            "transcripts": [],
        },
        "metadata": {"CorrelationId": correlation_id},
    }
    phrase = {"text": "thank you for calling, how can I help you today", "confidence": 0.93}
    line = len(json.dumps(phrase)) + 1
    event["eventBody"]["transcripts"] = [phrase] * max(1, (size - len(json.dumps(event))) // line)
    return event
