"""The FanoutConsumer custom resource, as one pydantic model.

This module is the single source of truth for the resource's shape: the worker
validates its ``--config`` file with it, the operator validates the objects it
watches with it, and the CRD's openAPIV3Schema is generated from it (a test
fails when the chart's CRD drifts from it).

Field names are camelCase on the wire (aliases) and snake_case in Python. Every
model forbids unknown fields, so a typo in a manifest is an error that names the
field instead of a silently ignored setting. Defaults are named here once.

Secrets never appear inline: a spec names an environment variable or a mounted
file (:class:`SecretRef`) and the worker resolves it at start-up.
"""

from __future__ import annotations

import enum
import pathlib
from typing import Any, Literal

import pydantic
import pydantic.alias_generators
import yaml

API_GROUP = "fanout.dev"
API_VERSION = "v1alpha1"
KIND = "FanoutConsumer"
PLURAL = "fanoutconsumers"
SINGULAR = "fanoutconsumer"
SHORT_NAMES = ("fanout", "fc")

SQS_MAX_VISIBILITY_SECONDS = 43_200
SQS_MAX_WAIT_SECONDS = 20
SQS_MAX_RECEIVE = 10


class SpecModel(pydantic.BaseModel):
    """Base of every spec model: camelCase aliases, no unknown fields, frozen."""

    model_config = pydantic.ConfigDict(
        alias_generator=pydantic.alias_generators.to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
    )


class SecretRef(SpecModel):
    """Where a secret comes from: an environment variable or a mounted file."""

    env: str | None = pydantic.Field(None, description="Environment variable holding the secret.")
    file: str | None = pydantic.Field(None, description="Path of a mounted file holding the secret.")

    @pydantic.model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        if (self.env is None) == (self.file is None):
            raise ValueError("set exactly one of 'env' or 'file'")
        return self


class QueueSpec(SpecModel):
    """The SQS queue this consumer owns and how it is polled."""

    url: str = pydantic.Field(
        description="Queue URL; a name ending in .fifo makes it a FIFO queue.", min_length=1
    )
    region: str | None = pydantic.Field(
        None, description="AWS region; defaults to AWS_REGION / AWS_DEFAULT_REGION."
    )
    wait_time_seconds: int = pydantic.Field(
        20, ge=0, le=SQS_MAX_WAIT_SECONDS, description="Long-poll wait per ReceiveMessage."
    )
    max_messages: int = pydantic.Field(
        10, ge=1, le=SQS_MAX_RECEIVE, description="Messages asked for per ReceiveMessage."
    )
    visibility_timeout_seconds: int = pydantic.Field(
        60, ge=1, le=SQS_MAX_VISIBILITY_SECONDS, description="Visibility asked for on receive."
    )
    pollers: int = pydantic.Field(2, ge=1, le=64, description="Concurrent long-polls per replica.")
    max_in_flight: int = pydantic.Field(
        200,
        ge=1,
        le=120_000,
        description="Messages a replica holds (received, not yet settled) before it stops polling.",
    )

    @property
    def is_fifo(self) -> bool:
        return self.url.rstrip("/").endswith(".fifo")

    @property
    def name(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]


class OrderingSpec(SpecModel):
    """How events are serialised."""

    key: str = pydantic.Field(
        "conversationId",
        min_length=1,
        description="Field of the decoded event whose value serialises processing "
        "(dotted paths reach into nested objects).",
    )
    hold_limit_seconds: float = pydantic.Field(
        300.0,
        gt=0,
        description="How long a lane blocked by a failed event waits for it to come back "
        "(standard queues) before moving on.",
    )


class FilterSpec(SpecModel):
    """Which events are delivered; the others are acknowledged and counted."""

    event_types: list[str] | None = pydantic.Field(
        None, description="Glob patterns over the event type (topic template); absent = all."
    )


class RateLimitSpec(SpecModel):
    """A fleet-wide rate limit, shared by every replica."""

    requests_per_second: float = pydantic.Field(gt=0, description="Sustained requests per second.")
    burst: int = pydantic.Field(1, ge=1, description="Requests allowed at once above the rate.")


class SinkType(enum.StrEnum):
    WEBHOOK = "webhook"
    CRM = "crm"
    SIEM = "siem"


class CrmSinkSpec(SpecModel):
    """Salesforce-style upsert by external id."""

    object_name: str = pydantic.Field("Genesys_Conversation__c", description="sObject to upsert.")
    external_id_field: str = pydantic.Field(
        "Conversation_Id__c", description="External id field matched against the ordering key."
    )
    api_version: str = pydantic.Field("v60.0", pattern=r"^v\d+\.\d+$")
    field_mapping: dict[str, str] = pydantic.Field(
        default_factory=lambda: {
            "Last_Event__c": "eventType",
            "Last_Event_Time__c": "eventTime",
        },
        description="CRM field → event field (dotted path into the payload, or eventType / "
        "eventTime / orderingKey).",
    )
    token: SecretRef | None = pydantic.Field(None, description="Bearer token.")
    token_url: str | None = pydantic.Field(
        None, description="OAuth token endpoint used to refresh an expired session (401)."
    )
    client_id: SecretRef | None = None
    client_secret: SecretRef | None = None
    slow_down_at_usage: float = pydantic.Field(
        0.8,
        gt=0,
        le=1,
        description="Share of the daily API limit (Sforce-Limit-Info) where the sink slows down.",
    )


class SiemSinkSpec(SpecModel):
    """Splunk HTTP Event Collector."""

    token: SecretRef | None = pydantic.Field(None, description="HEC token.")
    index: str | None = None
    source: str = "genesys-cloud"
    sourcetype: str = "genesys:event"
    host: str | None = None
    max_batch_events: int = pydantic.Field(100, ge=1, le=10_000)
    max_batch_bytes: int = pydantic.Field(512 * 1024, ge=1024, le=900 * 1024)
    linger_seconds: float = pydantic.Field(0.2, ge=0, le=10)


class SinkSpec(SpecModel):
    """The downstream API and how hard it may be driven."""

    type: SinkType = pydantic.Field(description="webhook | crm | siem")
    url: str = pydantic.Field(min_length=1, description="Base URL of the downstream API.")
    rate_limit: RateLimitSpec | None = pydantic.Field(
        None, description="Fleet-wide rate limit; absent = only the concurrency limit applies."
    )
    max_concurrency: int = pydantic.Field(32, ge=1, le=10_000)
    timeout_seconds: float = pydantic.Field(10.0, gt=0, le=900)
    signing_secret: SecretRef | None = pydantic.Field(
        None, description="Webhook: HMAC-SHA256 key for X-Fanout-Signature."
    )
    headers: dict[str, str] = pydantic.Field(
        default_factory=dict, description="Extra non-secret request headers."
    )
    secret_headers: dict[str, SecretRef] = pydantic.Field(
        default_factory=dict,
        description="Webhook: request headers whose values come from secrets (e.g. Authorization); "
        "re-read before every probe after the downstream refused our credential.",
    )
    circuit_failure_threshold: int = pydantic.Field(
        5, ge=1, description="Consecutive failures that open the circuit."
    )
    circuit_open_seconds: float = pydantic.Field(
        1.0,
        gt=0,
        description="How long an open circuit waits before its first probe; while the downstream "
        "stays down, each replica probes again sooner (at most 4 a second and a quarter of its "
        "share of rateLimit), so it finds the downstream back within a fraction of a second.",
    )
    crm: CrmSinkSpec | None = None
    siem: SiemSinkSpec | None = None


class RetrySpec(SpecModel):
    """Exponential backoff with jitter, then dead-lettering."""

    base_delay_seconds: float = pydantic.Field(2.0, ge=0, le=SQS_MAX_VISIBILITY_SECONDS)
    max_delay_seconds: float = pydantic.Field(900.0, ge=0, le=SQS_MAX_VISIBILITY_SECONDS)
    max_attempts: int = pydantic.Field(5, ge=1, le=1000)

    @pydantic.model_validator(mode="after")
    def _ordered(self) -> RetrySpec:
        if self.max_delay_seconds < self.base_delay_seconds:
            raise ValueError("maxDelaySeconds must be >= baseDelaySeconds")
        return self


class DeadLetterSpec(SpecModel):
    """Where poison and exhausted messages go, with their reason."""

    queue_url: str | None = pydantic.Field(
        None, description="Dead-letter queue; absent = left to the source queue's redrive policy."
    )


class IdempotencyStoreType(enum.StrEnum):
    MEMORY = "memory"
    DYNAMODB = "dynamodb"


class IdempotencySpec(SpecModel):
    """Where completed events are remembered."""

    store: IdempotencyStoreType = IdempotencyStoreType.MEMORY
    ttl_seconds: int = pydantic.Field(86_400, ge=1)
    table: str | None = pydantic.Field(None, description="DynamoDB table (key `id`, TTL `expiration`).")
    lease_seconds: int | None = pydantic.Field(
        None,
        ge=1,
        description="How long an IN_PROGRESS claim blocks others; default = the visibility timeout.",
    )

    @pydantic.model_validator(mode="after")
    def _table_for_dynamodb(self) -> IdempotencySpec:
        if self.store is IdempotencyStoreType.DYNAMODB and not self.table:
            raise ValueError("'table' is required when store is dynamodb")
        return self


class LargePayloadSpec(SpecModel):
    """Events too large for SQS, stored in S3 by the front door or an AWS extended client."""

    delete_after_delivery: bool = pydantic.Field(
        False,
        description="Delete the S3 object once its message is done (delivered, duplicate or "
        "filtered); never after dead-lettering. Needs s3:DeleteObject on the bucket.",
    )
    max_bytes: int = pydantic.Field(
        32 * 1024 * 1024,
        ge=1,
        le=64 * 1024 * 1024,
        description="Larger offloaded payloads are not fetched: the message is dead-lettered as poison.",
    )


class ScalingSpec(SpecModel):
    """How the operator sizes the fleet."""

    min_replicas: int = pydantic.Field(0, ge=0)
    max_replicas: int = pydantic.Field(20, ge=1)
    target_backlog_per_replica: int = pydantic.Field(100, ge=1)
    activation_backlog: int = pydantic.Field(1, ge=0)
    polling_interval_seconds: float = pydantic.Field(15.0, gt=0)
    scale_down_stabilization_seconds: float = pydantic.Field(300.0, ge=0)
    cooldown_seconds: float = pydantic.Field(
        300.0, ge=0, description="Empty time (visible + in flight) before scaling to zero."
    )

    @pydantic.model_validator(mode="after")
    def _bounds(self) -> ScalingSpec:
        if self.max_replicas < self.min_replicas:
            raise ValueError("maxReplicas must be >= minReplicas")
        return self


class ShutdownSpec(SpecModel):
    """How a replica drains on SIGTERM."""

    grace_period_seconds: float = pydantic.Field(
        25.0, gt=0, le=3600, description="Time to finish in-flight events before cancelling."
    )


class WorkloadSpec(SpecModel):
    """Pod settings the operator puts on the worker Deployment."""

    image: str | None = pydantic.Field(None, description="Worker image; default = the operator's.")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    service_account_name: str | None = pydantic.Field(
        None,
        description="Service account of the workers (its IAM role comes with it: IRSA or EKS Pod Identity).",
    )
    iam_role_arn: str | None = pydantic.Field(
        None,
        pattern=r"^arn:aws[a-z-]*:iam::\d{12}:role/.+$",
        description="This consumer's own IAM role: the operator creates the service account "
        "<name>-worker for it, annotated eks.amazonaws.com/role-arn with IRSA; with EKS Pod Identity "
        "the cluster admin associates that account with the role (ignored when serviceAccountName "
        "is set).",
    )
    resources: dict[str, dict[str, str]] | None = pydantic.Field(
        None, description="Container resources (requests / limits)."
    )
    env: list[dict[str, Any]] | None = pydantic.Field(
        None, description="Extra container environment (Kubernetes EnvVar objects)."
    )
    pod_annotations: dict[str, str] | None = None
    node_selector: dict[str, str] | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class DeletionPolicy(enum.StrEnum):
    RETAIN = "Retain"
    DELETE = "Delete"


class FilterPolicyScope(enum.StrEnum):
    MESSAGE_ATTRIBUTES = "MessageAttributes"
    MESSAGE_BODY = "MessageBody"


class EventTypeField(enum.StrEnum):
    """Where an event's type sits in a message body, for a filter policy on the body."""

    DETAIL_TYPE = "detail-type"  # EventBridge events: the topic template, `{id}` literal
    TOPIC_NAME = "topicName"  # Genesys notifications: the concrete topic


SQS_MAX_RETENTION_SECONDS = 1_209_600
SQS_DEFAULT_RETENTION_SECONDS = 345_600
REDRIVE_HEADROOM_RECEIVES = 2
"""Receives SQS's redrive waits beyond ``retry.maxAttempts`` by default: the worker, which
writes the reason, dead-letters first; the redrive policy is the backstop."""


class SubscriptionSpec(SpecModel):
    """The SNS subscription that feeds the queue."""

    raw_message_delivery: bool = pydantic.Field(
        True,
        description="Deliver the published message as the SQS body (attributes become SQS message "
        "attributes, at most 10) instead of inside an SNS JSON envelope. The worker decodes both.",
    )
    event_type_attribute: str | None = pydantic.Field(
        None,
        min_length=1,
        description="Message attribute the publisher sets to the event type (the topic template); "
        "the derived filter policy then filters on it (FilterPolicyScope MessageAttributes). "
        "Absent: it filters on the body field eventTypeField (FilterPolicyScope MessageBody).",
    )
    event_type_field: EventTypeField = pydantic.Field(
        EventTypeField.DETAIL_TYPE,
        description="Body field holding the event type when no attribute does: detail-type "
        "(EventBridge events) or topicName (Genesys notifications).",
    )
    filter_policy: dict[str, Any] | None = pydantic.Field(
        None,
        description="An explicit SNS filter policy, used instead of the one derived from "
        "spec.filter (for attributes the derivation does not know, e.g. eventCategory); {} = none: "
        "every event reaches the queue and spec.filter alone decides.",
    )
    filter_policy_scope: FilterPolicyScope = pydantic.Field(
        FilterPolicyScope.MESSAGE_ATTRIBUTES, description="Scope of filterPolicy."
    )


class TopologyQueueSpec(SpecModel):
    """Attributes of the queue when the operator creates it."""

    retention_seconds: int = pydantic.Field(
        SQS_DEFAULT_RETENTION_SECONDS, ge=60, le=SQS_MAX_RETENTION_SECONDS
    )
    kms_master_key_id: str | None = pydantic.Field(
        None,
        description="SSE-KMS key (id, ARN or alias) for the queue and its dead-letter queue; its key "
        "policy must let sns.amazonaws.com use it. Absent: SSE-SQS.",
    )


class TopologyDeadLetterSpec(SpecModel):
    """The dead-letter queue and the redrive policy that feeds it."""

    max_receive_count: int | None = pydantic.Field(
        None,
        ge=1,
        le=1000,
        description="RedrivePolicy maxReceiveCount; default retry.maxAttempts + 2. Below "
        "retry.maxAttempts SQS would move events before the worker has used its attempts.",
    )
    retention_seconds: int = pydantic.Field(
        SQS_MAX_RETENTION_SECONDS,
        ge=60,
        le=SQS_MAX_RETENTION_SECONDS,
        description="Retention of the dead-letter queue; must exceed the source queue's.",
    )


class TopologySpec(SpecModel):
    """The consumer's AWS topology: always verified; created or adopted when ``manage`` is on."""

    manage: bool = pydantic.Field(
        False,
        description="Create or adopt the queue, dead-letter queue, redrive and queue policies, the "
        "SNS subscription and the idempotency table. Off: only verify them.",
    )
    topic_arn: str | None = pydantic.Field(
        None,
        pattern=r"^arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]+(\.fifo)?$",
        description="The SNS topic that feeds the queue; absent: the subscriptions found are checked.",
    )
    subscription: SubscriptionSpec = pydantic.Field(default_factory=SubscriptionSpec)
    queue: TopologyQueueSpec = pydantic.Field(default_factory=TopologyQueueSpec)
    dead_letter: TopologyDeadLetterSpec = pydantic.Field(default_factory=TopologyDeadLetterSpec)
    deletion_policy: DeletionPolicy = pydantic.Field(
        DeletionPolicy.RETAIN,
        description="Retain: deleting the FanoutConsumer leaves its AWS resources. Delete: it deletes "
        "the ones the operator created (never the ones it adopted).",
    )


class FanoutConsumerSpec(SpecModel):
    """spec of a FanoutConsumer: one SQS queue fanned out to one downstream API."""

    queue: QueueSpec
    ordering: OrderingSpec = pydantic.Field(default_factory=OrderingSpec)
    filter: FilterSpec = pydantic.Field(default_factory=FilterSpec)
    sink: SinkSpec
    retry: RetrySpec = pydantic.Field(default_factory=RetrySpec)
    dead_letter: DeadLetterSpec = pydantic.Field(default_factory=DeadLetterSpec)
    idempotency: IdempotencySpec = pydantic.Field(default_factory=IdempotencySpec)
    large_payloads: LargePayloadSpec = pydantic.Field(default_factory=LargePayloadSpec)
    scaling: ScalingSpec = pydantic.Field(default_factory=ScalingSpec)
    shutdown: ShutdownSpec = pydantic.Field(default_factory=ShutdownSpec)
    workload: WorkloadSpec = pydantic.Field(default_factory=WorkloadSpec)
    topology: TopologySpec = pydantic.Field(default_factory=TopologySpec)
    replicas: int | None = pydantic.Field(
        None,
        ge=0,
        description="Pin the fleet at this many replicas (what `kubectl scale` sets through the "
        "scale subresource); absent = the operator autoscales. 0 pauses the consumer.",
    )


class Metadata(pydantic.BaseModel):
    """The part of ObjectMeta the worker cares about; the rest is kept, unvalidated."""

    model_config = pydantic.ConfigDict(extra="allow", frozen=True)

    name: str = "fanout-consumer"
    namespace: str | None = None


class FanoutConsumer(pydantic.BaseModel):
    """A whole FanoutConsumer manifest, as `kubectl apply` takes it."""

    model_config = pydantic.ConfigDict(extra="ignore", frozen=True)

    api_version: Literal["fanout.dev/v1alpha1"] = pydantic.Field(alias="apiVersion")
    kind: Literal["FanoutConsumer"]
    metadata: Metadata = pydantic.Field(default_factory=Metadata)
    spec: FanoutConsumerSpec


class ConfigError(Exception):
    """A manifest that cannot be used; the message names the field and the problem."""


def config_error_lines(prog: str, path: str, error: ConfigError) -> list[str]:
    """How a command reports a manifest it cannot use: the file, then one indented line per problem."""
    return [f"{prog}: invalid config {path}:", *(f"  {line}" for line in str(error).splitlines())]


def describe_validation_error(error: pydantic.ValidationError) -> str:
    """One line per problem: `spec.queue.url: Field required`."""
    lines = []
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"]) or "(document)"
        lines.append(f"{location}: {item['msg']}")
    return "\n".join(lines)


def parse_manifest(document: Any) -> FanoutConsumer:
    """Validate an already-parsed manifest; raise ConfigError naming the fields."""
    if not isinstance(document, dict):
        raise ConfigError("(document): expected a FanoutConsumer mapping")
    try:
        return FanoutConsumer.model_validate(document)
    except pydantic.ValidationError as error:
        raise ConfigError(describe_validation_error(error)) from error


def parse_spec(spec: Any) -> FanoutConsumerSpec:
    """Validate a bare spec (what the operator reads off a custom resource)."""
    try:
        return FanoutConsumerSpec.model_validate(spec)
    except pydantic.ValidationError as error:
        raise ConfigError(describe_validation_error(error)) from error


def read_document(path: str | pathlib.Path) -> Any:
    """A YAML or JSON file (JSON is YAML), parsed; ConfigError when it cannot be read."""
    try:
        text = pathlib.Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"{path}: cannot read: {error.strerror or error}") from error
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML/JSON: {error}") from error


def load_manifest(path: str | pathlib.Path) -> FanoutConsumer:
    """Read a YAML or JSON manifest file (JSON is YAML) and validate it."""
    return parse_manifest(read_document(path))


def dump_spec(spec: FanoutConsumerSpec) -> dict[str, Any]:
    """The spec as camelCase wire data, defaults included (for ConfigMaps)."""
    return spec.model_dump(mode="json", by_alias=True, exclude_none=True)
