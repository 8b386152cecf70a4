"""The AWS clients the topology code talks through, and the one place their errors enter.

``inspecting`` (reads) and ``provisioning`` (writes) take a :class:`Clients` bundle; the
operator, ``fanout validate --aws`` and the demo open one with :func:`open_clients` from the
standard AWS variables (``AWS_ENDPOINT_URL``, ``AWS_REGION``, credentials). Tests pass
clients to moto's server the same way.

Every call goes through :func:`call`, which translates botocore's exceptions into
:class:`AwsError` with the meaning ``fanout_core.awserrors`` gives the error code, the IAM
action refused and the resource, so a caller decides on ``kind`` and a user reads which
permission is missing. :func:`failure_of` is that one reading of an exception raised by an
AWS call (botocore's, or the network's under it); the worker's SQS, DynamoDB and S3 seams
translate through it too::

    TopologyError
     ├── AwsError          a call failed: kind (denied, not_found, throttled, ...), action, resource
     └── ProvisioningError a write that cannot be done as asked (wrong account, a conflict)

The fields are named ``*_client`` on purpose: tests/test_helm_iam.py finds the AWS calls of
the code by the ``client`` in the name of the object they are made on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import aiobotocore.session
import aiohttp
import botocore.exceptions

from fanout_core import awserrors, topology


class TopologyError(Exception):
    """Base of what the topology's I/O raises."""


class AwsError(TopologyError):
    """An AWS call failed; ``kind`` says what that means (``awserrors.Kind``)."""

    def __init__(self, kind: awserrors.Kind, code: str, action: str, resource: str, detail: str = "") -> None:
        self.kind = kind
        self.code = code
        self.action = action
        self.resource = resource
        super().__init__(f"{action} on {resource} failed: {code or kind}{': ' + detail if detail else ''}")

    @property
    def retryable(self) -> bool:
        return awserrors.retryable(self.kind)

    def denied(self) -> topology.Denied:
        return topology.Denied(action=self.action, resource=self.resource, code=self.code or str(self.kind))


ERRORS = (
    botocore.exceptions.BotoCoreError,
    botocore.exceptions.ClientError,
    aiohttp.ClientError,
    OSError,
    TimeoutError,
)
"""What an AWS call may raise: catch these, read them with :func:`failure_of`."""


@dataclasses.dataclass(frozen=True, slots=True)
class Failure:
    """What a failed AWS call means: its kind, the AWS error code of a reply (may be empty) or
    else the exception's type name, the HTTP status (0: none), AWS's message, if any, and
    whether AWS answered at all (``answered``: an error reply or a failed batch entry, not a
    request that never left, such as one without credentials, or never got an answer)."""

    kind: awserrors.Kind
    code: str
    status: int = 0
    detail: str = ""
    answered: bool = False

    @property
    def retryable(self) -> bool:
        return awserrors.retryable(self.kind)


def failure_of(error: BaseException) -> Failure:
    """Read an exception an AWS call raised (one of :data:`ERRORS`): an error reply is what
    :func:`fanout_core.awserrors.classify` makes of its code and status; missing or partial
    credentials are :attr:`~awserrors.Kind.CREDENTIALS`; anything else (no reply) is
    unavailable."""
    if isinstance(error, botocore.exceptions.ClientError):
        code, status = awserrors.code_and_status(error.response)
        detail = str(error.response.get("Error", {}).get("Message", ""))
        return Failure(awserrors.classify(code, status), code, status, detail, answered=True)
    if isinstance(
        error, botocore.exceptions.NoCredentialsError | botocore.exceptions.PartialCredentialsError
    ):
        return Failure(awserrors.Kind.CREDENTIALS, type(error).__name__, detail=str(error))
    return Failure(awserrors.Kind.UNAVAILABLE, type(error).__name__, detail=str(error))


def entry_failure(entry: Mapping[str, Any]) -> Failure:
    """Read one ``Failed`` entry of a batch call's reply (SQS ``DeleteMessageBatch``,
    ``ChangeMessageVisibilityBatch``, SNS ``PublishBatch``): ``Code``, ``Message`` and
    ``SenderFault``. An entry has no HTTP status of its own; ``SenderFault`` says whose fault
    it is, so a code :func:`~fanout_core.awserrors.classify` does not know is invalid when the
    sender's (as a 4xx would be) and unavailable when AWS's (as a 5xx would be)."""
    code = str(entry.get("Code") or "Unknown")
    kind = awserrors.classify(code, 400 if entry.get("SenderFault") else 500)
    return Failure(kind, code, detail=str(entry.get("Message", "")), answered=True)


class ProvisioningError(TopologyError):
    """A write that cannot be done as the spec asks; the message says why and what to change."""


@dataclasses.dataclass(frozen=True)
class Clients:
    """One client per service the topology spans, and where their ARNs point."""

    sqs_client: Any
    sns_client: Any
    kms_client: Any
    dynamodb_client: Any
    place: topology.Place


@contextlib.asynccontextmanager
async def open_clients(region: str | None = None) -> AsyncIterator[Clients]:
    """Clients from the standard AWS configuration (``region`` overrides the default one)."""
    session = aiobotocore.session.get_session()
    async with (
        session.create_client("sqs", region_name=region) as sqs,
        session.create_client("sns", region_name=region) as sns,
        session.create_client("kms", region_name=region) as kms,
        session.create_client("dynamodb", region_name=region) as dynamodb,
    ):
        place = topology.Place(region=sqs.meta.region_name, partition=sqs.meta.partition)
        yield Clients(sqs_client=sqs, sns_client=sns, kms_client=kms, dynamodb_client=dynamodb, place=place)


def user_agent(session: aiobotocore.session.AioSession, program: str) -> str:
    """``<program>/<version>`` and the SDK's own name, versions and platform, built once: the
    value for botocore's documented ``user_agent`` option. Without a fixed value botocore
    rebuilds the header from a dozen components on every call (~3% of the worker's CPU per
    event); the fixed one lacks only the feature ids AWS counts for itself, and names which of
    the project's programs made the call (CloudTrail's ``userAgent``)."""
    try:
        version = importlib.metadata.version("fanout-consumer")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout, not installed
        version = "unknown"
    sdk = session.user_agent()
    extra = session.user_agent_extra
    if extra and sdk.endswith(" " + extra):
        sdk = sdk[: -len(extra) - 1]  # botocore appends the session's extra to a fixed agent itself
    return f"{program}/{version} {sdk}"


async def call(method: Callable[..., Awaitable[Any]], action: str, resource: str, **kwargs: Any) -> Any:
    """``await method(**kwargs)``, its failures as :class:`AwsError` naming ``action`` and ``resource``."""
    try:
        return await method(**kwargs)
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as error:
        failure = failure_of(error)
        raise AwsError(failure.kind, failure.code, action, resource, failure.detail) from error
