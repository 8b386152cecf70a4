"""How deep a consumer's SQS queue is: GetQueueAttributes through aiobotocore.

``autoscaling`` calls :meth:`SqsDepthReader.depth` once per poll. Endpoint, region and
credentials come from the standard AWS variables (and IRSA's web identity in EKS), never from
flags: the same rule the worker follows. A queue's ``spec.queue.region`` picks the client's
region; one client per region is kept open for the reader's lifetime.

botocore's exceptions are translated where they enter, into this tree, so the scaling loop can
say *why* it is degraded without knowing botocore::

    QueueError
    ├── QueueUnreachable          endpoint down, DNS, timeouts, throttled API, a refused request
    ├── QueueAccessDenied         no credentials at all, missing IAM permission
    ├── QueueCredentialsRejected  ExpiredToken, RequestExpired, InvalidClientTokenId, ...
    └── QueueNotFound             the URL names no queue

What an AWS error means is read once, for the whole project, by
``fanout_core.awsclients.failure_of``; this module only maps its kinds onto the tree. A credential
the service does not accept (expired above all) is a credential problem, never "denied" and
never "no such queue": the reader drops its client, so the next one re-reads the credentials
(an IRSA or Pod Identity token, a rotated file), and retries once at once; if they are still
refused the round is degraded and retried with the scaling loop's backoff.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Protocol

import aiobotocore.config
import aiobotocore.session

from fanout_core import awsclients, awserrors

ATTRIBUTES = (
    "ApproximateNumberOfMessages",
    "ApproximateNumberOfMessagesNotVisible",
    "ApproximateNumberOfMessagesDelayed",
)


class QueueError(Exception):
    """The queue's depth could not be read."""

    reason = "QueueError"


class QueueUnreachable(QueueError):
    reason = "QueueUnreachable"


class QueueAccessDenied(QueueError):
    reason = "QueueAccessDenied"


class QueueNotFound(QueueError):
    reason = "QueueNotFound"


class QueueCredentialsRejected(QueueError):
    reason = "QueueCredentialsRejected"


@dataclasses.dataclass(frozen=True)
class Depth:
    visible: int
    in_flight: int
    delayed: int


class DepthReader(Protocol):
    async def depth(self, queue_url: str, region: str | None) -> Depth: ...


def _translate(error: BaseException, queue_url: str) -> QueueError:
    failure = awsclients.failure_of(error)
    code, message = failure.code, failure.detail or failure.code
    if failure.kind is awserrors.Kind.NOT_FOUND:
        return QueueNotFound(f"{queue_url}: no such queue ({code})")
    if failure.kind is awserrors.Kind.CREDENTIALS:
        if not failure.answered:  # none found: nothing to re-read until someone provides them
            return QueueAccessDenied(f"{queue_url}: no AWS credentials: {failure.detail}")
        return QueueCredentialsRejected(f"{queue_url}: AWS credentials not accepted ({code}: {message})")
    if failure.kind is awserrors.Kind.DENIED:
        return QueueAccessDenied(f"{queue_url}: {code}: {message}")
    if code == "NoRegionError":
        return QueueUnreachable(f"{queue_url}: no AWS region (set spec.queue.region or AWS_REGION)")
    return QueueUnreachable(f"{queue_url}: {code}: {message}")


class SqsDepthReader:
    """``async with SqsDepthReader() as reader: await reader.depth(url, region)``."""

    def __init__(self, *, connect_timeout: float = 5.0, read_timeout: float = 10.0) -> None:
        self._config = aiobotocore.config.AioConfig(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            # The scaling loop has its own backoff; one retry covers a dropped connection.
            retries={"max_attempts": 2, "mode": "standard"},
        )
        # Per region: the client and what closes it (so one can be dropped on its own).
        self._clients: dict[str | None, tuple[Any, contextlib.AsyncExitStack]] = {}

    async def __aenter__(self) -> SqsDepthReader:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        for region in list(self._clients):
            await self._drop(region)

    async def _client(self, region: str | None) -> Any:
        if region not in self._clients:
            # A session of its own reads the credentials afresh (env, files, web identity).
            creator = aiobotocore.session.get_session().create_client(
                "sqs", region_name=region, config=self._config
            )
            stack = contextlib.AsyncExitStack()
            client = await stack.enter_async_context(creator)
            self._clients[region] = (client, stack)
        return self._clients[region][0]

    async def _drop(self, region: str | None) -> None:
        _, stack = self._clients.pop(region, (None, None))
        if stack is not None:
            with contextlib.suppress(Exception):
                await stack.aclose()

    async def _read(self, queue_url: str, region: str | None) -> dict[str, Any]:
        try:
            client = await self._client(region)
            reply: dict[str, Any] = await client.get_queue_attributes(
                QueueUrl=queue_url, AttributeNames=list(ATTRIBUTES)
            )
        except awsclients.ERRORS as error:
            raise _translate(error, queue_url) from error
        return reply

    async def depth(self, queue_url: str, region: str | None) -> Depth:
        try:
            reply = await self._read(queue_url, region)
        except QueueCredentialsRejected:
            await self._drop(region)  # the next client re-reads the credentials
            reply = await self._read(queue_url, region)
        attributes = reply.get("Attributes", {})
        try:
            return Depth(
                visible=int(attributes.get("ApproximateNumberOfMessages", 0)),
                in_flight=int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0)),
                delayed=int(attributes.get("ApproximateNumberOfMessagesDelayed", 0)),
            )
        except (TypeError, ValueError) as error:
            raise QueueUnreachable(f"{queue_url}: unreadable attributes {attributes!r}") from error
