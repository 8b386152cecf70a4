"""Observed topology + desired topology → findings: one reason, one consequence, one fix per problem.

The operator turns a :class:`Report` into the ``TopologyReady`` condition, Warning Events and
a metric; ``fanout validate --aws`` prints it and exits 1 when it holds a finding. Every rule
is a pure function of :class:`~fanout_core.topology.Desired` and
:class:`~fanout_core.topology.Observed`, so each trap is unit-tested without AWS and again on
moto through ``inspecting``.

Severity says what the problem costs::

    error     events are lost or never arrive (SNS drops them, they expire, the pipe is cut)
    warning   events arrive, at a price: duplicates, deliveries paid for and discarded,
              dead letters without their reason, a queue anyone may write to
    unknown   we may not read it (AccessDenied): that part is unverified, the rest is checked

The reasons (stable, CamelCase, as Kubernetes condition reasons are) are :class:`Reason`;
docs/topology.md lists each with its fix.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Iterator
from typing import Any

from fanout_core import filterpolicies, policies, spec, topology

AWS_MANAGED_SQS_KEY = "alias/aws/sqs"
"""SQS's AWS managed key: its key policy admits SQS's own callers only, never SNS."""


class Severity(enum.StrEnum):
    ERROR = "error"
    WARNING = "warning"
    UNKNOWN = "unknown"


class Reason(enum.StrEnum):
    QUEUE_MISSING = "QueueMissing"
    NO_REDRIVE_POLICY = "NoRedrivePolicy"
    DEAD_LETTER_QUEUE_MISSING = "DeadLetterQueueMissing"
    DEAD_LETTER_QUEUES_DIFFER = "DeadLetterQueuesDiffer"
    REDRIVE_BEFORE_RETRIES_EXHAUSTED = "RedriveBeforeRetriesExhausted"
    DEAD_LETTER_RETENTION_TOO_SHORT = "DeadLetterRetentionTooShort"
    VISIBILITY_TIMEOUT_TOO_SHORT = "VisibilityTimeoutTooShort"
    NOT_SUBSCRIBED = "NotSubscribed"
    SUBSCRIPTION_PENDING = "SubscriptionPendingConfirmation"
    SNS_CANNOT_SEND = "SnsCannotSendToQueue"
    QUEUE_POLICY_ALLOWS_ANY_TOPIC = "QueuePolicyAllowsAnyTopic"
    FILTER_POLICY_DROPS_EVENTS = "FilterPolicyDropsEvents"
    FILTER_POLICY_MISSING = "FilterPolicyMissing"
    FILTER_POLICY_DIFFERS = "FilterPolicyDiffers"
    RAW_DELIVERY_MISMATCH = "RawDeliveryMismatch"
    FIFO_MISMATCH = "FifoMismatch"
    KMS_KEY_DENIES_SNS = "KmsKeyDeniesSns"
    AWS_MANAGED_KEY_BLOCKS_SNS = "AwsManagedKeyBlocksSns"
    IDEMPOTENCY_TABLE_MISSING = "IdempotencyTableMissing"
    IDEMPOTENCY_TABLE_KEY_SCHEMA = "IdempotencyTableKeySchema"
    IDEMPOTENCY_TABLE_TTL = "IdempotencyTableTtl"
    READ_DENIED = "ReadDenied"
    PROVISIONING_FAILED = "ProvisioningFailed"


@dataclasses.dataclass(frozen=True)
class Finding:
    reason: Reason
    severity: Severity
    resource: str
    message: str
    fix: str

    def line(self) -> str:
        return f"{self.severity} {self.reason} {self.resource}: {self.message} Fix: {self.fix}"


@dataclasses.dataclass(frozen=True)
class Report:
    """Every finding, and notes: what was not checked and why (not problems)."""

    findings: tuple[Finding, ...]
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.findings

    @property
    def worst(self) -> Severity | None:
        for severity in (Severity.ERROR, Severity.WARNING, Severity.UNKNOWN):
            if any(finding.severity is severity for finding in self.findings):
                return severity
        return None


def provisioning_failed(resource: str, error: str, *, missing_action: str | None) -> Finding:
    """A write ``provisioning`` could not make (``missing_action``: AWS refused that action)."""
    fix = "see the message; the next check tries again."
    if missing_action is not None:
        fix = (
            f"grant {missing_action} on {resource} (the provisioning policy), or turn "
            "spec.topology.manage off and build the topology yourself."
        )
    return Finding(
        Reason.PROVISIONING_FAILED, Severity.ERROR, resource, f"provisioning stopped: {error}.", fix
    )


# --- rules that need only the spec --------------------------------------------------------


def redrive_conflict(max_receive_count: int, retry: spec.RetrySpec) -> str | None:
    """Why a redrive policy's ``maxReceiveCount`` cuts ``retry.maxAttempts`` short, or None.

    SQS moves a message to the dead-letter queue on the receive after ``maxReceiveCount``;
    the worker dead-letters it itself (with the reason) when a failed attempt was receive
    number ``maxAttempts``. A count below ``maxAttempts`` means the last attempts never
    happen and the dead letter carries no reason.
    """
    if max_receive_count >= retry.max_attempts:
        return None
    lost = retry.max_attempts - max_receive_count
    return (
        f"the redrive policy moves a message to the dead-letter queue after {max_receive_count} "
        f"receives, before spec.retry.maxAttempts ({retry.max_attempts}) are used up: its last "
        f"{lost} attempt{'s' if lost > 1 else ''} never happen and the dead letter carries no reason"
    )


def required_visibility(consumer: spec.FanoutConsumerSpec) -> int:
    """The shortest ``spec.queue.visibilityTimeoutSeconds`` that covers one delivery attempt.

    The worker asks for this visibility on every receive (the queue's own default does not
    apply to it) and its heartbeat extends a held message when half of it is left. One
    attempt (``spec.sink.timeoutSeconds``) has to fit in that half, so that a heartbeat that
    fails once (throttled, a busy event loop) does not make a message visible to another
    replica while its attempt still runs: at least twice the sink timeout. The drain on
    shutdown needs nothing more, since the heartbeat runs until the last delivery ends.
    """
    return math.ceil(2 * consumer.sink.timeout_seconds)


def check_spec(consumer: spec.FanoutConsumerSpec) -> list[Finding]:
    """The rules about timing that the spec alone decides."""
    found: list[Finding] = []
    required = required_visibility(consumer)
    visibility = consumer.queue.visibility_timeout_seconds
    if visibility < required:
        found.append(
            Finding(
                Reason.VISIBILITY_TIMEOUT_TOO_SHORT,
                Severity.WARNING,
                "spec.queue.visibilityTimeoutSeconds",
                f"{visibility}s is less than twice spec.sink.timeoutSeconds "
                f"({consumer.sink.timeout_seconds:g}s): if one visibility heartbeat fails, a message "
                "becomes visible while its delivery still runs, and another replica delivers it again.",
                f"set spec.queue.visibilityTimeoutSeconds to at least {required}, or lower "
                "spec.sink.timeoutSeconds.",
            )
        )
    declared = consumer.topology.dead_letter.max_receive_count
    if declared is not None:
        conflict = redrive_conflict(declared, consumer.retry)
        if conflict:
            found.append(
                Finding(
                    Reason.REDRIVE_BEFORE_RETRIES_EXHAUSTED,
                    Severity.WARNING,
                    "spec.topology.deadLetter.maxReceiveCount",
                    conflict + ".",
                    f"set it to at least {consumer.retry.max_attempts} (or remove it: the default is "
                    f"maxAttempts + {spec.REDRIVE_HEADROOM_RECEIVES}).",
                )
            )
    return found


# --- rules that read AWS ------------------------------------------------------------------


def check(
    consumer: spec.FanoutConsumerSpec, desired: topology.Desired, observed: topology.Observed
) -> Report:
    """Everything wrong with the consumer's topology."""
    notes: list[str] = []
    found = check_spec(consumer)
    found.extend(_denied(observed))
    queue = observed.queue.value
    if observed.queue.absent:
        found.append(_queue_missing(desired))
    if queue is not None:
        found.extend(_dead_letter(desired, queue, observed))
        found.extend(_subscriptions(desired, queue, observed, notes))
        found.extend(_encryption(desired, queue, observed))
    found.extend(_table(desired, observed))
    return Report(findings=tuple(found), notes=tuple(notes))


def _denied(observed: topology.Observed) -> Iterator[Finding]:
    reads: list[topology.Read[Any]] = [
        observed.queue,
        observed.dead_letter,
        observed.declared_dead_letter,
        observed.subscriptions,
        observed.key,
        observed.table,
        *observed.topics.values(),
    ]
    key = observed.key.value
    if key is not None:
        reads.append(key.policy)
    seen: set[topology.Denied] = set()
    for read in reads:
        denied = read.denied
        if denied is None or denied in seen:
            continue
        seen.add(denied)
        yield Finding(
            Reason.READ_DENIED,
            Severity.UNKNOWN,
            denied.resource,
            f"{denied.action} was refused ({denied.code}): what depends on it is not verified.",
            f"grant {denied.action} on {denied.resource} to the identity that runs the check "
            "(the read-only topology policy).",
        )


def _queue_missing(desired: topology.Desired) -> Finding:
    return Finding(
        Reason.QUEUE_MISSING,
        Severity.ERROR,
        desired.queue.url,
        "the queue does not exist: there is nothing to consume and nothing to deliver to.",
        "create it (spec.topology.manage: true does), or correct spec.queue.url.",
    )


def _dead_letter(
    desired: topology.Desired, queue: topology.Queue, observed: topology.Observed
) -> Iterator[Finding]:
    redrive = queue.redrive()
    dead_letter_arn = desired.dead_letter.arn(_place_of(queue))
    if redrive is None:
        yield Finding(
            Reason.NO_REDRIVE_POLICY,
            Severity.ERROR,
            desired.queue.url,
            "the queue has no redrive policy: a message no worker can settle (a crash on it, an "
            "outage longer than the retention) is received again and again until it expires, lost.",
            "aws sqs set-queue-attributes --queue-url "
            f'{desired.queue.url} --attributes \'{{"RedrivePolicy": '
            f"{topology.as_json(desired.redrive_policy(dead_letter_arn or '<dead-letter queue ARN>'))}}}'",
        )
    else:
        retry = spec.RetrySpec(max_attempts=desired.max_attempts)
        conflict = redrive_conflict(redrive.max_receive_count, retry)
        if conflict:
            yield Finding(
                Reason.REDRIVE_BEFORE_RETRIES_EXHAUSTED,
                Severity.WARNING,
                desired.queue.url,
                conflict + ".",
                f"set the redrive policy's maxReceiveCount to at least {desired.max_attempts} "
                f"(the operator uses {desired.max_receive_count}).",
            )
        if desired.dead_letter_declared and dead_letter_arn and redrive.target_arn != dead_letter_arn:
            yield Finding(
                Reason.DEAD_LETTER_QUEUES_DIFFER,
                Severity.WARNING,
                desired.queue.url,
                f"the redrive policy sends to {redrive.target_arn} but the worker dead-letters to "
                f"spec.deadLetter.queueUrl ({desired.dead_letter.url}): dead letters end up in two "
                "places, and `fanout dlq` reads only the second.",
                f"point the redrive policy at {dead_letter_arn}, or spec.deadLetter.queueUrl at the "
                "redrive target.",
            )
    if observed.dead_letter.absent:
        target = redrive.target_arn if redrive else desired.dead_letter.url
        yield Finding(
            Reason.DEAD_LETTER_QUEUE_MISSING,
            Severity.ERROR,
            target,
            "the dead-letter queue does not exist: messages moved to it are lost.",
            f"create {target.rsplit(':', 1)[-1].rsplit('/', 1)[-1]} (spec.topology.manage: true does).",
        )
    if observed.declared_dead_letter.absent:
        yield Finding(
            Reason.DEAD_LETTER_QUEUE_MISSING,
            Severity.ERROR,
            desired.dead_letter.url,
            "spec.deadLetter.queueUrl does not exist: the worker cannot dead-letter, so a poison "
            "message is retried until the redrive policy moves it, without its reason.",
            "create it, or correct spec.deadLetter.queueUrl.",
        )
    for dead_letter in (observed.dead_letter.value, observed.declared_dead_letter.value):
        if dead_letter is not None:
            yield from _retention(queue, dead_letter)


def _retention(queue: topology.Queue, dead_letter: topology.Queue) -> Iterator[Finding]:
    source = queue.seconds("MessageRetentionPeriod")
    kept = dead_letter.seconds("MessageRetentionPeriod")
    if source is None or kept is None:
        return
    if kept > source or kept >= spec.SQS_MAX_RETENTION_SECONDS:
        return
    yield Finding(
        Reason.DEAD_LETTER_RETENTION_TOO_SHORT,
        Severity.ERROR,
        dead_letter.url,
        f"the dead-letter queue keeps messages {_days(kept)}, the source queue {_days(source)}: a "
        "standard queue's dead letter keeps its original enqueue time, so it can expire in the "
        "dead-letter queue before anyone looks at it.",
        f"aws sqs set-queue-attributes --queue-url {dead_letter.url} --attributes "
        f"MessageRetentionPeriod={spec.SQS_MAX_RETENTION_SECONDS}",
    )


def _days(seconds: int) -> str:
    return f"{seconds / 86_400:g} days" if seconds >= 86_400 else f"{seconds}s"


def _place_of(queue: topology.Queue) -> topology.Place:
    parts = queue.arn.split(":")
    if len(parts) >= 6:
        return topology.Place(region=parts[3], partition=parts[1])
    return topology.Place(region="")


# --- the subscription side ----------------------------------------------------------------


def _subscriptions(
    desired: topology.Desired, queue: topology.Queue, observed: topology.Observed, notes: list[str]
) -> Iterator[Finding]:
    subscriptions = observed.subscriptions.value
    if subscriptions is None:
        return
    if desired.topic_arn is not None and not any(s.topic_arn == desired.topic_arn for s in subscriptions):
        yield Finding(
            Reason.NOT_SUBSCRIBED,
            Severity.ERROR,
            desired.topic_arn,
            "the queue is not subscribed to spec.topology.topicArn: no event of the topic reaches it.",
            f"aws sns subscribe --topic-arn {desired.topic_arn} --protocol sqs --notification-endpoint "
            f"{queue.arn} --attributes '{topology.as_json(desired.subscription_attributes())}' "
            "(or spec.topology.manage: true).",
        )
    topics = {s.topic_arn for s in subscriptions}
    if desired.topic_arn is not None:
        topics.add(desired.topic_arn)
    if not topics:
        notes.append(
            "no SNS subscription delivers to the queue and spec.topology.topicArn is not set: "
            "the subscription, queue-policy and KMS checks for SNS were skipped."
        )
    for topic_arn in sorted(topics):
        yield from _queue_policy(queue, topic_arn)
        topic = observed.topics.get(topic_arn, topology.Read()).value
        if topic is not None:
            yield from _fifo(queue, topic)
    for subscription in subscriptions:
        if subscription.pending:
            yield Finding(
                Reason.SUBSCRIPTION_PENDING,
                Severity.ERROR,
                subscription.arn,
                "the subscription waits for confirmation: SNS delivers nothing until it is confirmed.",
                "confirm it from the queue owner's account (the SubscriptionConfirmation message in the "
                "queue has the SubscribeURL), or subscribe from the queue owner's account.",
            )
        yield from _raw_delivery(desired, subscription)
        yield from _filter(desired, subscription, notes)


def _queue_policy(queue: topology.Queue, topic_arn: str) -> Iterator[Finding]:
    statement = policies.sns_send_statement(queue.arn, topic_arn)
    fix = (
        f"add to the queue policy of {queue.url} the statement {topology.as_json(statement)} "
        "(spec.topology.manage: true does)."
    )
    try:
        verdict = policies.queue_allows_topic(queue.attributes.get("Policy"), topic_arn)
    except policies.PolicyUnreadable as error:
        yield Finding(
            Reason.SNS_CANNOT_SEND,
            Severity.ERROR,
            queue.url,
            f"the queue policy is unreadable ({error}).",
            fix,
        )
        return
    if not verdict.allowed:
        why = "denies" if verdict.denied_explicitly else "does not allow"
        yield Finding(
            Reason.SNS_CANNOT_SEND,
            Severity.ERROR,
            queue.url,
            f"the queue policy {why} sns.amazonaws.com to sqs:SendMessage from {topic_arn}: SNS drops "
            "every event for this queue and logs nothing.",
            fix,
        )
    elif verdict.any_source:
        yield Finding(
            Reason.QUEUE_POLICY_ALLOWS_ANY_TOPIC,
            Severity.WARNING,
            queue.url,
            "the queue policy lets SNS send without an aws:SourceArn condition: any topic, in any "
            "account, can put messages in this queue.",
            f"replace that statement with {topology.as_json(statement)}.",
        )


def _fifo(queue: topology.Queue, topic: topology.Topic) -> Iterator[Finding]:
    if topic.fifo == queue.fifo:
        return
    if queue.fifo:
        yield Finding(
            Reason.FIFO_MISMATCH,
            Severity.ERROR,
            topic.arn,
            "a standard topic feeds a FIFO queue: SNS cannot deliver to it (its messages have no "
            "group id), so no event arrives.",
            "subscribe the FIFO queue to a FIFO topic, or use a standard queue.",
        )
    else:
        yield Finding(
            Reason.FIFO_MISMATCH,
            Severity.WARNING,
            topic.arn,
            "a FIFO topic feeds a standard queue: the topic's order and deduplication stop at the "
            "queue, which may reorder and duplicate.",
            "use a FIFO queue (a name ending in .fifo) so the order holds to the worker.",
        )


def _raw_delivery(desired: topology.Desired, subscription: topology.Subscription) -> Iterator[Finding]:
    if subscription.raw_message_delivery == desired.raw_message_delivery:
        return
    if desired.raw_message_delivery:
        effect = (
            "bodies arrive wrapped in SNS's JSON envelope: the event is encoded twice, so large ones "
            "reach SQS's size limit sooner, and the message attributes sit inside the body, where "
            "SQS-level tools (`fanout dlq` selection, consoles) do not see them."
        )
    else:
        effect = (
            "bodies arrive raw: SNS's envelope (its MessageId, TopicArn) is gone, attributes become "
            "SQS message attributes, and SNS fails delivery of any message with more than 10 of them."
        )
    state = "on" if subscription.raw_message_delivery else "off"
    want = "true" if desired.raw_message_delivery else "false"
    yield Finding(
        Reason.RAW_DELIVERY_MISMATCH,
        Severity.WARNING,
        subscription.arn,
        f"raw message delivery is {state}, spec.topology.subscription.rawMessageDelivery says {want}. "
        f"The worker decodes both, but {effect}",
        f"aws sns set-subscription-attributes --subscription-arn {subscription.arn} --attribute-name "
        f"RawMessageDelivery --attribute-value {want}, or set rawMessageDelivery: "
        f"{'false' if want == 'true' else 'true'} in the spec.",
    )


def _filter(
    desired: topology.Desired, subscription: topology.Subscription, notes: list[str]
) -> Iterator[Finding]:
    wanted = desired.filter_policy
    actual = subscription.filter_policy()
    if (wanted is None and actual is None) or (wanted and actual and wanted.same_as(actual)):
        return
    command = (
        f"aws sns set-subscription-attributes --subscription-arn {subscription.arn} --attribute-name "
        "FilterPolicy --attribute-value "
    )
    fix = f"{command}'{{}}'"
    if wanted is not None:
        fix = f"{command}'{wanted.to_json()}' (FilterPolicyScope {wanted.scope})"
    if actual is None:
        yield Finding(
            Reason.FILTER_POLICY_MISSING,
            Severity.WARNING,
            subscription.arn,
            "the subscription has no filter policy: every event of the topic is delivered and paid "
            "for, and the worker discards those spec.filter does not keep.",
            fix + ".",
        )
        return
    shown = f"({actual.scope}) {actual.to_json()}"
    if wanted is not None and filterpolicies.canonical(wanted.document) == filterpolicies.canonical(
        actual.document
    ):
        yield Finding(
            Reason.FILTER_POLICY_DROPS_EVENTS,
            Severity.ERROR,
            subscription.arn,
            f"the subscription's filter policy {actual.to_json()} is read from the {actual.scope} but "
            f"what it names is in the {wanted.scope}: nothing matches, SNS drops every event.",
            f"aws sns set-subscription-attributes --subscription-arn {subscription.arn} --attribute-name "
            f"FilterPolicyScope --attribute-value {wanted.scope}",
        )
        return
    dropped = _dropped_event_types(desired, actual)
    if dropped:
        yield Finding(
            Reason.FILTER_POLICY_DROPS_EVENTS,
            Severity.ERROR,
            subscription.arn,
            f"the subscription's filter policy {shown} drops events the consumer keeps "
            f"({dropped}): SNS discards them before the queue.",
            f"{fix}, or declare the intended policy in spec.topology.subscription.filterPolicy.",
        )
    elif wanted is None:
        notes.append(
            f"{subscription.arn}: the filter policy {shown} reads what spec.filter cannot judge; "
            "declare it in spec.topology.subscription.filterPolicy to have it checked."
        )
    else:
        source = "spec.filter implies"
        if desired.filter_explicit:
            source = "spec.topology.subscription.filterPolicy declares"
        yield Finding(
            Reason.FILTER_POLICY_DIFFERS,
            Severity.WARNING,
            subscription.arn,
            f"the subscription's filter policy {shown} is not the one {source} ({wanted.scope}) "
            f"{wanted.to_json()}: events are dropped before the queue, or paid for and discarded.",
            fix + ".",
        )


def _dropped_event_types(desired: topology.Desired, actual: filterpolicies.FilterPolicy) -> str:
    """The event types the consumer keeps that ``actual`` certainly rejects ("" for none known)."""
    if desired.filter_explicit:
        return "" if desired.filter_policy is not None else "spec.topology.subscription.filterPolicy is {}"
    if not desired.event_types:
        return "spec.filter keeps every event"
    samples = filterpolicies.samples(desired.event_types, desired.event_type_source)
    rejected = [sample.event_type for sample in samples if filterpolicies.evaluate(actual, sample) is False]
    return ", ".join(rejected)


# --- encryption ---------------------------------------------------------------------------


def _encryption(
    desired: topology.Desired, queue: topology.Queue, observed: topology.Observed
) -> Iterator[Finding]:
    key_id = queue.attributes.get("KmsMasterKeyId")
    subscriptions = observed.subscriptions.value or ()
    if not key_id or (desired.topic_arn is None and not subscriptions):
        return
    topic_arn = desired.topic_arn or subscriptions[0].topic_arn
    key = observed.key.value
    if key_id == AWS_MANAGED_SQS_KEY or (key is not None and key.manager == "AWS"):
        yield Finding(
            Reason.AWS_MANAGED_KEY_BLOCKS_SNS,
            Severity.ERROR,
            queue.url,
            f"the queue is encrypted with an AWS managed key ({key.key_id if key else key_id}), whose "
            "key policy SNS can never use: SNS fails every delivery, silently.",
            "encrypt the queue with a customer managed key whose policy allows sns.amazonaws.com "
            "kms:GenerateDataKey and kms:Decrypt, or with SSE-SQS (SqsManagedSseEnabled=true).",
        )
        return
    policy = key.policy.value if key is not None else None
    if key is None or policy is None:
        return
    missing = policies.key_allows_sns(policy, topic_arn)
    if missing:
        yield Finding(
            Reason.KMS_KEY_DENIES_SNS,
            Severity.ERROR,
            key.key_id,
            f"the queue's KMS key does not let sns.amazonaws.com {' and '.join(missing)}: SNS fails "
            "every delivery to the queue, silently.",
            f"add to the key policy the statement {topology.as_json(policies.key_statement_for_sns())}.",
        )


# --- the idempotency table ----------------------------------------------------------------


def _table(desired: topology.Desired, observed: topology.Observed) -> Iterator[Finding]:
    if desired.table is None:
        return
    if observed.table.absent:
        yield Finding(
            Reason.IDEMPOTENCY_TABLE_MISSING,
            Severity.ERROR,
            desired.table,
            "the idempotency table does not exist: the workers cannot record what they delivered.",
            f"aws dynamodb create-table --table-name {desired.table} --billing-mode PAY_PER_REQUEST "
            f"--attribute-definitions AttributeName={topology.TABLE_KEY},AttributeType=S --key-schema "
            f"AttributeName={topology.TABLE_KEY},KeyType=HASH (or spec.topology.manage: true).",
        )
        return
    table = observed.table.value
    if table is None:
        return
    if table.key_schema != ((topology.TABLE_KEY, "S", "HASH"),):
        shown = ", ".join(f"{name} ({kind}, {role})" for name, kind, role in table.key_schema)
        yield Finding(
            Reason.IDEMPOTENCY_TABLE_KEY_SCHEMA,
            Severity.ERROR,
            table.name,
            f"the table's key is {shown}; the workers write items keyed by {topology.TABLE_KEY} "
            "(String, partition key only), so every claim fails.",
            f"create a table with partition key {topology.TABLE_KEY} (S) and no sort key, and point "
            "spec.idempotency.table at it.",
        )
    if table.ttl_attribute != topology.TABLE_TTL_ATTRIBUTE:
        state = f"on {table.ttl_attribute!r}" if table.ttl_attribute else "off"
        yield Finding(
            Reason.IDEMPOTENCY_TABLE_TTL,
            Severity.WARNING,
            table.name,
            f"time to live is {state}: the workers put the expiry in {topology.TABLE_TTL_ATTRIBUTE!r}, "
            "so expired records are never removed and the table grows for ever.",
            f"aws dynamodb update-time-to-live --table-name {table.name} --time-to-live-specification "
            f"Enabled=true,AttributeName={topology.TABLE_TTL_ATTRIBUTE}",
        )
