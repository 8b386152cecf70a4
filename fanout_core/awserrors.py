"""What an AWS error means for the caller: one pure classifier for every AWS call we make.

The worker (SQS, DynamoDB, S3), the front door (SNS, S3), the operator (SQS depth,
topology) and the redrive all translate botocore's exceptions where they enter, through
``fanout_core.awsclients.failure_of``, which takes the error code and HTTP status off a
botocore error's ``response`` (:func:`code_and_status`) and asks :func:`classify` what they
mean, so an ``ExpiredToken`` means the same thing everywhere::

    Kind.THROTTLED      slow down, then retry            Throttling, RequestLimitExceeded, 429
    Kind.UNAVAILABLE    the service or the network       5xx, InternalError, timeouts, status 0
    Kind.CREDENTIALS    our credential is not accepted   ExpiredToken, InvalidClientTokenId, ...
    Kind.DENIED         the identity lacks a permission  AccessDenied, KMS.AccessDeniedException
    Kind.NOT_FOUND      the resource does not exist      NonExistentQueue, ResourceNotFoundException
    Kind.INVALID        the request itself is wrong      any other 4xx

:func:`retryable` says which kinds may succeed later without anyone changing anything:
throttling, unavailability and credentials (a web-identity token or a rotated key is
picked up by the credential chain on its own). Denied, not found and invalid need a fix.
No I/O and no botocore here: the callers pass strings and numbers.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any


class Kind(enum.StrEnum):
    THROTTLED = "throttled"
    UNAVAILABLE = "unavailable"
    CREDENTIALS = "credentials"
    DENIED = "denied"
    NOT_FOUND = "not_found"
    INVALID = "invalid"


_THROTTLED = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "SlowDown",
        "BandwidthLimitExceeded",
        "LimitExceededException",
        "PriorRequestNotComplete",
        "TransactionInProgressException",
        "EC2ThrottledException",
        "KMS.ThrottlingException",
    }
)
_UNAVAILABLE = frozenset(
    {
        "InternalError",
        "InternalFailure",
        "InternalServerError",
        "InternalServiceError",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "RequestTimeout",
        "RequestTimeoutException",
        "TransactionConflictException",
        "KMS.KMSInternalException",
        "AWS.SimpleQueueService.ServiceUnavailable",
    }
)
_CREDENTIALS = frozenset(
    {
        "ExpiredToken",
        "ExpiredTokenException",
        "RequestExpired",
        "TokenRefreshRequired",
        "InvalidClientTokenId",
        "UnrecognizedClientException",
        "SignatureDoesNotMatch",
        "IncompleteSignature",
        "MissingAuthenticationToken",
        "InvalidSecurity",
        "InvalidAccessKeyId",
        "InvalidToken",
    }
)
_DENIED = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "AuthorizationError",
        "AuthorizationErrorException",
        "KMS.AccessDeniedException",
        "KMS.DisabledException",
        "KMS.KMSAccessDeniedException",
        "OptInRequired",
        "AWS.SimpleQueueService.KmsAccessDenied",
    }
)
_NOT_FOUND = frozenset(
    {
        "AWS.SimpleQueueService.NonExistentQueue",
        "QueueDoesNotExist",
        "NonExistentQueue",
        "ResourceNotFoundException",
        "NotFound",
        "NotFoundException",
        "NoSuchKey",
        "NoSuchBucket",
        "NoSuchEntity",
        "KMS.NotFoundException",
    }
)


def classify(code: str, http_status: int | None = None) -> Kind:
    """The meaning of an AWS error ``code`` (with its HTTP status, when there was a reply).

    ``http_status`` None or 0 means no reply at all (connection refused, DNS, a timeout):
    :attr:`Kind.UNAVAILABLE`, whatever the code.
    """
    if code in _CREDENTIALS:
        return Kind.CREDENTIALS
    if code in _DENIED:
        return Kind.DENIED
    if code in _NOT_FOUND:
        return Kind.NOT_FOUND
    if code in _THROTTLED or http_status == 429:
        return Kind.THROTTLED
    if code in _UNAVAILABLE or not http_status or http_status >= 500:
        return Kind.UNAVAILABLE
    if http_status == 403:
        return Kind.DENIED
    if http_status == 404:
        return Kind.NOT_FOUND
    return Kind.INVALID


def retryable(kind: Kind) -> bool:
    """True for the kinds that may succeed later without a change of configuration."""
    return kind in (Kind.THROTTLED, Kind.UNAVAILABLE, Kind.CREDENTIALS)


def code_and_status(response: Mapping[str, Any] | None) -> tuple[str, int]:
    """``(code, http_status)`` of a botocore error's ``response`` dict (``("", 0)`` if absent)."""
    if not isinstance(response, Mapping):
        return "", 0
    error = response.get("Error")
    code = error.get("Code", "") if isinstance(error, Mapping) else ""
    metadata = response.get("ResponseMetadata")
    status = metadata.get("HTTPStatusCode", 0) if isinstance(metadata, Mapping) else 0
    return (code if isinstance(code, str) else str(code)), (status if isinstance(status, int) else 0)
