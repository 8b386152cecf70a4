"""How deep a consumer's SQS queue is: GetQueueAttributes through aiobotocore.

``autoscaling`` calls :meth:`SqsDepthReader.depth` once per poll. Endpoint, region and
credentials come from the standard AWS variables (and IRSA's web identity in EKS), never from
flags: the same rule the worker follows. A queue's ``spec.queue.region`` picks the client's
region; one client per region is kept open for the reader's lifetime.

botocore's exceptions are translated where they enter, into this tree, so the scaling loop can
say *why* it is degraded without knowing botocore::

    QueueError
    ├── QueueUnreachable   endpoint down, DNS, timeouts, throttled API
    ├── QueueAccessDenied  no / wrong / expired credentials, missing IAM permission
    └── QueueNotFound      the URL names no queue
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Protocol

import aiobotocore.config
import aiobotocore.session
import botocore.exceptions

ATTRIBUTES = (
    "ApproximateNumberOfMessages",
    "ApproximateNumberOfMessagesNotVisible",
    "ApproximateNumberOfMessagesDelayed",
)
_DENIED_CODES = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "InvalidClientTokenId",
        "UnrecognizedClientException",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "ExpiredTokenException",
        "MissingAuthenticationToken",
        "InvalidSecurity",
        "KMS.AccessDeniedException",
    }
)
_NOT_FOUND_CODES = frozenset(
    {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist", "NonExistentQueue"}
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


@dataclasses.dataclass(frozen=True)
class Depth:
    visible: int
    in_flight: int
    delayed: int


class DepthReader(Protocol):
    async def depth(self, queue_url: str, region: str | None) -> Depth: ...


def _translate(error: Exception, queue_url: str) -> QueueError:
    if isinstance(error, botocore.exceptions.ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        message = str(error.response.get("Error", {}).get("Message", "")) or code
        if code in _NOT_FOUND_CODES:
            return QueueNotFound(f"{queue_url}: no such queue ({code})")
        if code in _DENIED_CODES or "AccessDenied" in code:
            return QueueAccessDenied(f"{queue_url}: {code}: {message}")
        return QueueUnreachable(f"{queue_url}: {code}: {message}")
    if isinstance(
        error, botocore.exceptions.NoCredentialsError | botocore.exceptions.PartialCredentialsError
    ):
        return QueueAccessDenied(f"{queue_url}: no AWS credentials: {error}")
    if isinstance(error, botocore.exceptions.NoRegionError):
        return QueueUnreachable(f"{queue_url}: no AWS region (set spec.queue.region or AWS_REGION)")
    return QueueUnreachable(f"{queue_url}: {type(error).__name__}: {error}")


class SqsDepthReader:
    """``async with SqsDepthReader() as reader: await reader.depth(url, region)``."""

    def __init__(self, *, connect_timeout: float = 5.0, read_timeout: float = 10.0) -> None:
        self._session = aiobotocore.session.get_session()
        self._config = aiobotocore.config.AioConfig(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            # The scaling loop has its own backoff; one retry covers a dropped connection.
            retries={"max_attempts": 2, "mode": "standard"},
        )
        self._stack = contextlib.AsyncExitStack()
        self._clients: dict[str | None, Any] = {}

    async def __aenter__(self) -> SqsDepthReader:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._clients.clear()
        await self._stack.aclose()

    async def _client(self, region: str | None) -> Any:
        if region not in self._clients:
            creator = self._session.create_client("sqs", region_name=region, config=self._config)
            self._clients[region] = await self._stack.enter_async_context(creator)
        return self._clients[region]

    async def depth(self, queue_url: str, region: str | None) -> Depth:
        try:
            client = await self._client(region)
            reply = await client.get_queue_attributes(QueueUrl=queue_url, AttributeNames=list(ATTRIBUTES))
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
            raise _translate(error, queue_url) from error
        except OSError as error:
            raise QueueUnreachable(f"{queue_url}: {error}") from error
        attributes = reply.get("Attributes", {})
        try:
            return Depth(
                visible=int(attributes.get("ApproximateNumberOfMessages", 0)),
                in_flight=int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0)),
                delayed=int(attributes.get("ApproximateNumberOfMessagesDelayed", 0)),
            )
        except (TypeError, ValueError) as error:
            raise QueueUnreachable(f"{queue_url}: unreadable attributes {attributes!r}") from error
