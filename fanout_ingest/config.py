"""The front door's configuration: a ``FanoutIngest`` manifest, as one pydantic model.

``fanout-ingest --config FILE`` reads it (YAML or JSON; the chart renders the same document
into the gateway's ConfigMap)::

    apiVersion: fanout.dev/v1alpha1
    kind: FanoutIngest
    metadata: {name: genesys-ingest}
    spec:
      topic: {arn: arn:aws:sns:us-east-1:123456789012:genesys-interactions}   # .fifo => FIFO
      sources:
        - name: genesys                  # POST /events
          secrets: [{file: /etc/fanout-ingest/genesys/current}, {file: /etc/fanout-ingest/genesys/previous}]
      offload: {bucket: genesys-large-events}
      idempotency: {store: dynamodb, table: genesys-ingest-idempotency}   # default: memory

Field names are camelCase, unknown fields are errors naming the field, defaults are named
here once, and secrets are never inline (``fanout_core.spec.SecretRef``: an environment
variable or a mounted file). A manifest that cannot be used raises
``fanout_core.spec.ConfigError`` with one line per problem.
"""

from __future__ import annotations

import enum
import pathlib
import re
from typing import Any, Literal

import pydantic

from fanout_core import offloading, spec
from fanout_ingest import batching

KIND = "FanoutIngest"
DEFAULT_PATH = "/events"
HUB_SIGNATURE_HEADER = "X-Hub-Signature-256"
FANOUT_SIGNATURE_HEADER = "X-Fanout-Signature"
DEFAULT_IDEMPOTENCY_TTL_SECONDS = 300
LEASE_MARGIN_SECONDS = 5

_TOPIC_ARN = re.compile(r"^arn:aws[a-z-]*:sns:([a-z0-9-]+):\d{12}:[A-Za-z0-9_-]{1,256}(\.fifo)?$")


class DigestEncoding(enum.StrEnum):
    HEX = "hex"
    BASE64 = "base64"


class SignatureScheme(spec.SpecModel):
    """A header carrying ``sha256=<HMAC-SHA256 of the raw body>`` in one encoding."""

    header: str = pydantic.Field(min_length=1, description="Request header holding the signature.")
    encoding: DigestEncoding = pydantic.Field(description="hex | base64 digest.")


def default_schemes() -> list[SignatureScheme]:
    """Genesys Open Messaging's header (base64), and the project's own (hex)."""
    return [
        SignatureScheme(header=HUB_SIGNATURE_HEADER, encoding=DigestEncoding.BASE64),
        SignatureScheme(header=FANOUT_SIGNATURE_HEADER, encoding=DigestEncoding.HEX),
    ]


class SourceSpec(spec.SpecModel):
    """One sender (a Genesys integration) and how its requests are authenticated."""

    name: str = pydantic.Field(
        pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$",
        description="Names the source in metrics and logs (and in the `source` attribute).",
    )
    path: str = pydantic.Field(
        DEFAULT_PATH, pattern=r"^/[A-Za-z0-9/_.-]*$", description="Path its POSTs arrive on."
    )
    secrets: list[spec.SecretRef] = pydantic.Field(
        min_length=1,
        description="Every secret accepted at once: add the new one, move the sender, drop the old.",
    )
    signatures: list[SignatureScheme] = pydantic.Field(
        default_factory=default_schemes,
        min_length=1,
        description="Headers checked; a request is authentic when any of them verifies with any secret.",
    )


class TopicSpec(spec.SpecModel):
    """The SNS topic every accepted event is published to."""

    arn: str = pydantic.Field(pattern=_TOPIC_ARN.pattern, description="Topic ARN; .fifo => FIFO.")
    region: str | None = pydantic.Field(None, description="Default: AWS_REGION, else the ARN's.")

    @property
    def is_fifo(self) -> bool:
        return self.arn.endswith(".fifo")

    @property
    def name(self) -> str:
        return self.arn.rsplit(":", 1)[-1]

    @property
    def arn_region(self) -> str:
        match = _TOPIC_ARN.match(self.arn)
        return match.group(1) if match else ""


class OffloadSpec(spec.SpecModel):
    """Where bodies too large for SNS go (the AWS extended clients' S3 pointer format)."""

    bucket: str = pydantic.Field(min_length=3, max_length=63, description="S3 bucket.")
    key_prefix: str = pydantic.Field("", max_length=512, description="Prefix of the object keys.")
    threshold_bytes: int = pydantic.Field(
        offloading.MESSAGE_LIMIT_BYTES,
        ge=1,
        le=offloading.MESSAGE_LIMIT_BYTES,
        description="Messages (body + attributes) above this size are offloaded.",
    )


class LimitsSpec(spec.SpecModel):
    """What one request may carry, and how long the gateway waits for SNS."""

    max_body_bytes: int = pydantic.Field(
        10 * 1024 * 1024, ge=1024, le=512 * 1024 * 1024, description="Larger requests: 413."
    )
    max_events_per_request: int = pydantic.Field(100, ge=1, le=10_000)
    max_pending_events: int = pydantic.Field(
        5_000, ge=1, description="Events waiting for SNS; beyond it requests get 503 + Retry-After."
    )
    publish_timeout_seconds: float = pydantic.Field(
        5.0, gt=0, le=60, description="Longest wait for SNS before 503 (Genesys gives up at ~10 s)."
    )
    retry_after_seconds: int = pydantic.Field(5, ge=1, le=3600, description="Retry-After of a 503.")


class PublishingSpec(spec.SpecModel):
    """How events are grouped into PublishBatch calls."""

    max_concurrent_calls: int = pydantic.Field(
        8,
        ge=1,
        le=256,
        description="PublishBatch calls in flight; events arriving while all are busy fill the next batch.",
    )
    linger_milliseconds: float = pydantic.Field(
        100,
        ge=0,
        le=1000,
        description="The stall guard: the longest an event waits for PublishBatch calls in flight "
        "before it gets a call of its own. Events that find no call in flight leave at once; "
        "while calls are in flight, arrivals leave together when one comes back (ten at once "
        "when ten have gathered).",
    )
    batch_window_milliseconds: float = pydantic.Field(
        batching.DEFAULT_BATCH_WINDOW_SECONDS * 1000,
        ge=0,
        le=1000,
        description="Under load only: the longest a call is held to fill when no call is in flight. "
        "It is held only while the recent arrival rate fills a call of ten within this window "
        "(at least 10 / window: 500 events/s at 20 ms) and says the missing entries arrive before "
        "its oldest event has waited the window; below that rate events leave at once. 0: never held.",
    )
    ordering_key: str = pydantic.Field(
        "conversationId",
        min_length=1,
        description="Event field giving the conversationId attribute and the FIFO message group "
        "(the workers' spec.ordering.key).",
    )


class IdempotencySpec(spec.IdempotencySpec):
    """Which events the gateway has published, so that a retry of one (Genesys retries what it
    got no 202 for; a batch published in part is retried whole) is answered 202 without a
    second publish. The store kinds and the DynamoDB table shape are the workers'."""

    enabled: bool = pydantic.Field(True, description="Off: every request's events are published.")
    ttl_seconds: int = pydantic.Field(
        DEFAULT_IDEMPOTENCY_TTL_SECONDS,
        ge=1,
        description="How long a published event is remembered (Genesys retries within minutes; "
        "SNS FIFO topics deduplicate over five).",
    )
    lease_seconds: int | None = pydantic.Field(
        None,
        ge=1,
        description="How long one request's claim on an event makes another request for it wait; "
        "default limits.publishTimeoutSeconds + 5.",
    )


class FanoutIngestSpec(spec.SpecModel):
    """spec of a FanoutIngest: Genesys webhooks in, SNS messages out."""

    topic: TopicSpec
    sources: list[SourceSpec] = pydantic.Field(min_length=1)
    offload: OffloadSpec | None = pydantic.Field(None, description="Absent: oversized events get 413.")
    limits: LimitsSpec = pydantic.Field(default_factory=LimitsSpec)
    publishing: PublishingSpec = pydantic.Field(default_factory=PublishingSpec)
    idempotency: IdempotencySpec = pydantic.Field(default_factory=IdempotencySpec)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @property
    def lease_seconds(self) -> float:
        """How long a claim on an event lasts: the longest a request publishes, and a margin."""
        return float(
            self.idempotency.lease_seconds or self.limits.publish_timeout_seconds + LEASE_MARGIN_SECONDS
        )

    @pydantic.model_validator(mode="after")
    def _distinct(self) -> FanoutIngestSpec:
        for field in ("name", "path"):
            seen: set[str] = set()
            for source in self.sources:
                value = getattr(source, field)
                if value in seen:
                    raise ValueError(f"sources: two sources with {field} {value!r}")
                seen.add(value)
        return self


class FanoutIngest(pydantic.BaseModel):
    """A whole FanoutIngest manifest."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    api_version: Literal["fanout.dev/v1alpha1"] = pydantic.Field(alias="apiVersion")
    kind: Literal["FanoutIngest"]
    metadata: spec.Metadata = pydantic.Field(default_factory=spec.Metadata)
    spec: FanoutIngestSpec


def parse(document: Any) -> FanoutIngest:
    """Validate an already-parsed manifest; raise ConfigError naming the fields."""
    if not isinstance(document, dict):
        raise spec.ConfigError("(document): expected a FanoutIngest mapping")
    try:
        return FanoutIngest.model_validate(document)
    except pydantic.ValidationError as error:
        raise spec.ConfigError(spec.describe_validation_error(error)) from error


def load(path: str | pathlib.Path) -> FanoutIngest:
    """Read a YAML or JSON manifest file and validate it."""
    return parse(spec.read_document(path))
