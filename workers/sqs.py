"""The SQS client seam: the calls the worker makes, and one error type for their failures.

The worker talks to SQS through an aiobotocore client created from the standard AWS
environment (``AWS_ENDPOINT_URL``/``AWS_ENDPOINT_URL_SQS``, ``AWS_REGION``, credentials
chain) — never from flags of ours —, its three calls per event (receive, delete, change
visibility) sent on the wire by ``workers.sqswire`` with that client's endpoint, region,
credentials and signer. :class:`SqsApi` names the five operations used, so any object
with them (the real client, a client for another SQS-compatible server) fits. botocore
and aiohttp exceptions are translated into :class:`SqsError` where they enter
(:func:`call`), so the rest of the worker sees one small tree::

    SqsError (kind, code: str, retryable: bool)

What an error means (``kind``: throttled, unavailable, credentials, denied, not found,
invalid) is ``fanout_core.awserrors``' reading of it, the one the operator and the ``fanout``
tool share: an expired token is retryable here as everywhere (the credential chain renews
it). Which codes mean "this receipt handle no longer works" is SQS's own, and kept here.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Protocol

import aiobotocore.config
import aiobotocore.session

from fanout_core import awsclients, awserrors, spec
from workers import sqswire

_EXPIRED_RECEIPT_CODES = frozenset(
    {
        "ReceiptHandleIsInvalid",
        "InvalidParameterValue",  # "Value ... for parameter ReceiptHandle is invalid. Reason: ..."
        "MessageNotInflight",
        "AWS.SimpleQueueService.MessageNotInflight",
        "InvalidReceiptHandle",
    }
)


class SqsApi(Protocol):
    """The SQS operations the worker uses (an aiobotocore SQS client has them all)."""

    def receive_message(self, **kwargs: Any) -> Awaitable[dict[str, Any]]: ...
    def delete_message_batch(self, **kwargs: Any) -> Awaitable[dict[str, Any]]: ...
    def change_message_visibility_batch(self, **kwargs: Any) -> Awaitable[dict[str, Any]]: ...
    def send_message(self, **kwargs: Any) -> Awaitable[dict[str, Any]]: ...
    def get_queue_attributes(self, **kwargs: Any) -> Awaitable[dict[str, Any]]: ...


class SqsError(Exception):
    """An SQS call failed; ``kind`` says what that means, ``retryable`` whether trying again
    may help without anyone changing anything."""

    def __init__(
        self, message: str, *, code: str = "", kind: awserrors.Kind = awserrors.Kind.UNAVAILABLE
    ) -> None:
        super().__init__(message)
        self.code = code
        self.kind = kind

    @property
    def retryable(self) -> bool:
        return awserrors.retryable(self.kind)


def is_expired_receipt(code: str) -> bool:
    """True for the error codes SQS gives when a receipt handle no longer works."""
    return code in _EXPIRED_RECEIPT_CODES


async def call(operation: Callable[..., Awaitable[dict[str, Any]]], **kwargs: Any) -> dict[str, Any]:
    """Await one SQS operation, translating its failures into :class:`SqsError`."""
    try:
        return await operation(**kwargs)
    except awsclients.ERRORS as error:
        failure = awsclients.failure_of(error)
        text = str(error) if failure.answered else f"{failure.code}: {error}"
        raise SqsError(text, code=failure.code, kind=failure.kind) from error


def max_receive_count(redrive_policy: object) -> int | None:
    """``maxReceiveCount`` of a queue's ``RedrivePolicy`` attribute (a JSON string), or None."""
    if not isinstance(redrive_policy, str):
        return None
    try:
        value = json.loads(redrive_policy).get("maxReceiveCount")
    except (ValueError, AttributeError):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


_URL_REGION = re.compile(
    r"^https?://(?:sqs\.)?([a-z]{2}(?:-[a-z]+)+-\d+)\.(?:queue\.)?amazonaws\.com", re.ASCII
)


def resolve_region(queue_url: str, configured: str | None, environ: Mapping[str, str] = os.environ) -> str:
    """The region to sign for: the spec's, else ``AWS_REGION``/``AWS_DEFAULT_REGION``, else the
    one an AWS queue URL names. Raises ConfigError naming the field when there is none."""
    region = configured or environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION")
    if region:
        return region
    match = _URL_REGION.match(queue_url)
    if match:
        return match.group(1)
    raise spec.ConfigError("spec.queue.region: no AWS region (set it, or AWS_REGION / AWS_DEFAULT_REGION)")


def config(session: aiobotocore.session.AioSession, *, max_connections: int) -> aiobotocore.config.AioConfig:
    """The aiobotocore client's configuration (``workers.sqswire`` keeps its timeouts and
    retries for the calls it sends itself)."""
    return aiobotocore.config.AioConfig(
        # Fixed, so botocore does not rebuild the header on every call (~3% of the CPU per event).
        user_agent=awsclients.user_agent(session, "fanout-worker"),
        max_pool_connections=max_connections,
        retries={"mode": "standard", "max_attempts": sqswire.RETRIES},
        read_timeout=sqswire.READ_TIMEOUT_SECONDS,
        connect_timeout=sqswire.CONNECT_TIMEOUT_SECONDS,
        # The worker builds every request itself, from validated values; botocore checking
        # each one again against the service model is ~3% of the CPU per SQS call.
        parameter_validation=False,
    )


@contextlib.asynccontextmanager
async def client(*, region: str, max_connections: int) -> AsyncIterator[SqsApi]:
    """The worker's SQS client, configured from the standard AWS environment: an aiobotocore
    client, with the three calls every event costs (receive, delete, change visibility) sent
    by ``workers.sqswire`` on the wire, signed and addressed as that client would."""
    session = aiobotocore.session.get_session()
    settings = config(session, max_connections=max_connections)
    async with (
        session.create_client("sqs", region_name=region, config=settings) as sqs_client,
        sqswire.open_client(
            sqs_client, session, user_agent=settings.user_agent, max_connections=max_connections
        ) as wire_client,
    ):
        yield wire_client
