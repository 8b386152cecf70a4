"""A consumer's AWS topology: what its spec asks for (:class:`Desired`), what AWS holds (:class:`Observed`).

``findings`` compares the two; ``provisioning`` creates or adopts what :class:`Desired`
describes and ``inspecting`` fills :class:`Observed` in. Both ends of that are I/O; this
module is the pure middle they share, so the operator, ``fanout validate --aws`` and the demo
mean the same thing by "the consumer's topology"::

    SNS topic ──subscription (filter policy, scope, raw delivery)──► queue ──redrive──► dead-letter queue
                                               queue policy: exactly that topic may send
                                               SSE-KMS key policy: SNS may use the key
    idempotency table (store: dynamodb): key ``id`` (S, HASH), TTL attribute ``expiration``

Names come from the spec: the queue from ``spec.queue.url``; the dead-letter queue from
``spec.deadLetter.queueUrl`` or, absent, ``<queue>-dlq`` (``<queue>-dlq.fifo``) beside it; the
table from ``spec.idempotency.table``. ARNs need the region and partition, which the caller
knows from its client (:class:`Place`).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any, Generic, TypeVar

from fanout_core import filterpolicies, policies, spec

DEAD_LETTER_SUFFIX = "-dlq"
OWNER_TAG = "fanout.dev/owner"
"""Tag on what the operator created: ``<namespace>/<name>`` of the FanoutConsumer."""
TABLE_KEY = "id"
TABLE_TTL_ATTRIBUTE = "expiration"

_SQS_HOST = re.compile(r"^(?:sqs\.)?(?P<region>[a-z]{2}(?:-[a-z]+)+-\d)\.(?:queue\.)?amazonaws\.com", re.I)


@dataclasses.dataclass(frozen=True)
class Place:
    """Where ARNs point: the region and partition of the caller's clients."""

    region: str
    partition: str = "aws"


@dataclasses.dataclass(frozen=True)
class QueueTarget:
    """One SQS queue by URL, with the parts of its ARN the URL gives."""

    url: str
    account: str | None
    name: str
    region: str

    @classmethod
    def from_url(cls, url: str, fallback_region: str) -> QueueTarget:
        parsed = urllib.parse.urlsplit(url)
        parts = [part for part in parsed.path.split("/") if part]
        name = parts[-1] if parts else url.rstrip("/").rsplit("/", 1)[-1]
        account = parts[-2] if len(parts) >= 2 and parts[-2].isdigit() else None
        host = _SQS_HOST.match(parsed.hostname or "")
        return cls(url=url, account=account, name=name, region=host["region"] if host else fallback_region)

    @property
    def fifo(self) -> bool:
        return self.name.endswith(".fifo")

    def arn(self, place: Place) -> str | None:
        if self.account is None:
            return None
        return f"arn:{place.partition}:sqs:{self.region}:{self.account}:{self.name}"


def dead_letter_url(queue: spec.QueueSpec, dead_letter: spec.DeadLetterSpec) -> str:
    """The dead-letter queue's URL: the spec's, else ``<queue>-dlq`` beside the queue."""
    if dead_letter.queue_url:
        return dead_letter.queue_url
    base, _, name = queue.url.rstrip("/").rpartition("/")
    stem = name.removesuffix(".fifo")
    return f"{base}/{stem}{DEAD_LETTER_SUFFIX}{'.fifo' if queue.is_fifo else ''}"


def max_receive_count(consumer: spec.FanoutConsumerSpec) -> int:
    """The redrive policy's ``maxReceiveCount`` the operator sets."""
    configured = consumer.topology.dead_letter.max_receive_count
    if configured is not None:
        return configured
    return consumer.retry.max_attempts + spec.REDRIVE_HEADROOM_RECEIVES


@dataclasses.dataclass(frozen=True)
class Desired:
    """The topology ``spec`` asks for."""

    owner: str
    queue: QueueTarget
    dead_letter: QueueTarget
    dead_letter_declared: bool
    """``spec.deadLetter.queueUrl`` is set: the worker sends dead letters there itself."""
    visibility_timeout: int
    queue_retention: int
    dead_letter_retention: int
    max_receive_count: int
    max_attempts: int
    kms_key: str | None
    topic_arn: str | None
    filter_policy: filterpolicies.FilterPolicy | None
    filter_explicit: bool
    """The policy is ``spec.topology.subscription.filterPolicy``, not derived from ``spec.filter``."""
    event_types: tuple[str, ...] | None
    event_type_source: filterpolicies.EventTypeSource
    raw_message_delivery: bool
    table: str | None
    manage: bool
    deletion_policy: spec.DeletionPolicy

    @property
    def fifo(self) -> bool:
        return self.queue.fifo

    def queue_attributes(self, dead_letter_arn: str) -> dict[str, str]:
        """Attributes for ``CreateQueue`` of the source queue (the policy is set after: it needs
        the queue's ARN, which only the created queue states for certain)."""
        attributes = {
            "VisibilityTimeout": str(self.visibility_timeout),
            "MessageRetentionPeriod": str(self.queue_retention),
            "RedrivePolicy": self.redrive_policy(dead_letter_arn),
            **self._encryption(),
        }
        if self.fifo:
            attributes["FifoQueue"] = "true"
        return attributes

    def dead_letter_attributes(self) -> dict[str, str]:
        attributes = {"MessageRetentionPeriod": str(self.dead_letter_retention), **self._encryption()}
        if self.dead_letter.fifo:
            attributes["FifoQueue"] = "true"
        return attributes

    def _encryption(self) -> dict[str, str]:
        if self.kms_key:
            return {"KmsMasterKeyId": self.kms_key}
        return {"SqsManagedSseEnabled": "true"}

    def redrive_policy(self, dead_letter_arn: str) -> str:
        return json.dumps({"deadLetterTargetArn": dead_letter_arn, "maxReceiveCount": self.max_receive_count})

    def queue_policy(self, current: str | None, queue_arn: str) -> str | None:
        """The queue policy with the statement for the topic in it; ``None`` when no change is due."""
        if self.topic_arn is None:
            return None
        return policies.with_statement(current, policies.sns_send_statement(queue_arn, self.topic_arn))

    def subscription_attributes(self) -> dict[str, str]:
        """``Subscribe`` / ``SetSubscriptionAttributes`` values (an empty ``FilterPolicy`` removes one)."""
        attributes = {"RawMessageDelivery": "true" if self.raw_message_delivery else "false"}
        if self.filter_policy is not None:
            attributes["FilterPolicy"] = self.filter_policy.to_json()
            attributes["FilterPolicyScope"] = str(self.filter_policy.scope)
        return attributes

    def tags(self) -> dict[str, str]:
        return {OWNER_TAG: self.owner}


def desired(consumer: spec.FanoutConsumerSpec, *, owner: str, place: Place) -> Desired:
    """What the spec asks for, for the FanoutConsumer ``owner`` (``namespace/name``)."""
    topology = consumer.topology
    subscription = topology.subscription
    source = filterpolicies.EventTypeSource.of(subscription)
    region = consumer.queue.region or place.region
    patterns = tuple(consumer.filter.event_types) if consumer.filter.event_types else None
    policy: filterpolicies.FilterPolicy | None = None
    if subscription.filter_policy:
        policy = filterpolicies.FilterPolicy(
            document=subscription.filter_policy, scope=subscription.filter_policy_scope
        )
    elif subscription.filter_policy is None:
        policy = filterpolicies.derive(patterns, source)
    return Desired(
        owner=owner,
        queue=QueueTarget.from_url(consumer.queue.url, region),
        dead_letter=QueueTarget.from_url(dead_letter_url(consumer.queue, consumer.dead_letter), region),
        dead_letter_declared=consumer.dead_letter.queue_url is not None,
        visibility_timeout=consumer.queue.visibility_timeout_seconds,
        queue_retention=topology.queue.retention_seconds,
        dead_letter_retention=topology.dead_letter.retention_seconds,
        max_receive_count=max_receive_count(consumer),
        max_attempts=consumer.retry.max_attempts,
        kms_key=topology.queue.kms_master_key_id,
        topic_arn=topology.topic_arn,
        filter_policy=policy,
        filter_explicit=subscription.filter_policy is not None,
        event_types=patterns,
        event_type_source=source,
        raw_message_delivery=subscription.raw_message_delivery,
        table=_table(consumer),
        manage=topology.manage,
        deletion_policy=topology.deletion_policy,
    )


def _table(consumer: spec.FanoutConsumerSpec) -> str | None:
    if consumer.idempotency.store is spec.IdempotencyStoreType.DYNAMODB:
        return consumer.idempotency.table
    return None


# --- what provisioning made ----------------------------------------------------------


class Kind(enum.StrEnum):
    QUEUE = "queue"
    SUBSCRIPTION = "subscription"
    TABLE = "table"


@dataclasses.dataclass(frozen=True)
class Resource:
    """Something provisioning created: a queue (URL), a subscription (ARN) or a table (name)."""

    kind: Kind
    id: str


@dataclasses.dataclass(frozen=True)
class Provisioned:
    """What one :func:`provision` run found ours and what it changed (one line per change)."""

    created: tuple[Resource, ...]
    changes: tuple[str, ...]
    queue_arn: str
    dead_letter_url: str


# --- what AWS holds -------------------------------------------------------------------

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Absent:
    """The resource does not exist."""


@dataclasses.dataclass(frozen=True)
class Denied:
    """We may not read it: the call, the resource, and what AWS said."""

    action: str
    resource: str
    code: str


@dataclasses.dataclass(frozen=True)
class Read(Generic[T]):
    """What one read gave: the value, or why there is none."""

    value: T | None = None
    absent: bool = False
    denied: Denied | None = None

    @classmethod
    def of(cls, value: T) -> Read[T]:
        return cls(value=value)

    @property
    def known(self) -> bool:
        return self.value is not None


@dataclasses.dataclass(frozen=True)
class Queue:
    url: str
    attributes: Mapping[str, str]

    @property
    def arn(self) -> str:
        return self.attributes.get("QueueArn", "")

    @property
    def fifo(self) -> bool:
        return self.attributes.get("FifoQueue", "false").lower() == "true"

    def seconds(self, name: str) -> int | None:
        value = self.attributes.get(name)
        return int(value) if value is not None and value.isdigit() else None

    def redrive(self) -> Redrive | None:
        text = self.attributes.get("RedrivePolicy")
        if not text:
            return None
        try:
            document = json.loads(text)
            return Redrive(str(document["deadLetterTargetArn"]), int(document["maxReceiveCount"]))
        except (ValueError, KeyError, TypeError):
            return None


@dataclasses.dataclass(frozen=True)
class Redrive:
    target_arn: str
    max_receive_count: int


@dataclasses.dataclass(frozen=True)
class Subscription:
    arn: str
    topic_arn: str
    attributes: Mapping[str, str]

    @property
    def raw_message_delivery(self) -> bool:
        return self.attributes.get("RawMessageDelivery", "false").lower() == "true"

    @property
    def pending(self) -> bool:
        return self.attributes.get("PendingConfirmation", "false").lower() == "true"

    def filter_policy(self) -> filterpolicies.FilterPolicy | None:
        text = self.attributes.get("FilterPolicy")
        if not text:
            return None
        try:
            document = json.loads(text)
        except ValueError:
            return None
        if not isinstance(document, dict) or not document:
            return None
        scope = self.attributes.get("FilterPolicyScope") or str(spec.FilterPolicyScope.MESSAGE_ATTRIBUTES)
        return filterpolicies.FilterPolicy(document=document, scope=spec.FilterPolicyScope(scope))


@dataclasses.dataclass(frozen=True)
class Topic:
    arn: str
    attributes: Mapping[str, str]

    @property
    def fifo(self) -> bool:
        return self.attributes.get("FifoTopic", "false").lower() == "true" or self.arn.endswith(".fifo")


@dataclasses.dataclass(frozen=True)
class Key:
    """An SSE-KMS key as SNS would meet it."""

    key_id: str
    manager: str  # "AWS" (an AWS managed key: its policy cannot be changed) | "CUSTOMER"
    policy: Read[str]


@dataclasses.dataclass(frozen=True)
class Table:
    name: str
    key_schema: tuple[tuple[str, str, str], ...]  # (attribute, type, HASH|RANGE)
    ttl_attribute: str | None  # the enabled TTL attribute, None when TTL is off


@dataclasses.dataclass(frozen=True)
class Observed:
    """Everything ``inspecting`` read; each part says whether it exists and whether we could read it."""

    queue: Read[Queue]
    dead_letter: Read[Queue] = dataclasses.field(default_factory=Read)
    """The redrive policy's target (or the declared dead-letter queue when there is none)."""
    declared_dead_letter: Read[Queue] = dataclasses.field(default_factory=Read)
    subscriptions: Read[tuple[Subscription, ...]] = dataclasses.field(default_factory=Read)
    """The subscriptions delivering to the queue (from the declared topic, else any)."""
    topics: Mapping[str, Read[Topic]] = dataclasses.field(default_factory=dict)
    key: Read[Key] = dataclasses.field(default_factory=Read)
    table: Read[Table] = dataclasses.field(default_factory=Read)


def as_json(value: Any) -> str:
    """Compact JSON for a fix a user pastes."""
    return json.dumps(value, separators=(",", ":"))
