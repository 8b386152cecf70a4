"""The one AWS error classifier, and the one reading of an AWS error (``awsclients.failure_of``):
every code we meet means the same thing everywhere, whoever reads it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import botocore.exceptions
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fanout_core import awsclients, awserrors, redriving
from fanout_ingest import publishing
from workers import sqs

Kind = awserrors.Kind


@pytest.mark.parametrize(
    ("code", "status", "kind"),
    [
        ("ExpiredToken", 400, Kind.CREDENTIALS),
        ("ExpiredTokenException", 400, Kind.CREDENTIALS),
        ("InvalidClientTokenId", 403, Kind.CREDENTIALS),
        ("UnrecognizedClientException", 400, Kind.CREDENTIALS),
        ("AccessDenied", 403, Kind.DENIED),
        ("AccessDeniedException", 400, Kind.DENIED),
        ("KMS.AccessDeniedException", 400, Kind.DENIED),
        ("AWS.SimpleQueueService.NonExistentQueue", 400, Kind.NOT_FOUND),
        ("QueueDoesNotExist", 400, Kind.NOT_FOUND),
        ("ResourceNotFoundException", 400, Kind.NOT_FOUND),
        ("NoSuchKey", 404, Kind.NOT_FOUND),
        ("ThrottlingException", 400, Kind.THROTTLED),
        ("ProvisionedThroughputExceededException", 400, Kind.THROTTLED),
        ("", 429, Kind.THROTTLED),
        ("InternalError", 500, Kind.UNAVAILABLE),
        ("Whatever", 503, Kind.UNAVAILABLE),
        ("ConnectTimeoutError", 0, Kind.UNAVAILABLE),
        ("InvalidParameterValue", 400, Kind.INVALID),
        ("ValidationException", 400, Kind.INVALID),
        ("", 403, Kind.DENIED),
        ("", 404, Kind.NOT_FOUND),
    ],
)
def test_codes(code: str, status: int, kind: Kind) -> None:
    assert awserrors.classify(code, status) is kind


def test_what_may_succeed_later() -> None:
    assert {kind for kind in Kind if awserrors.retryable(kind)} == {
        Kind.THROTTLED,
        Kind.UNAVAILABLE,
        Kind.CREDENTIALS,
    }


@given(st.text(max_size=40), st.one_of(st.none(), st.integers(0, 599)))
def test_every_code_has_exactly_one_meaning(code: str, status: int | None) -> None:
    assert awserrors.classify(code, status) in Kind


def test_code_and_status_read_a_botocore_response() -> None:
    response = {"Error": {"Code": "ExpiredToken"}, "ResponseMetadata": {"HTTPStatusCode": 400}}
    assert awserrors.code_and_status(response) == ("ExpiredToken", 400)
    assert awserrors.code_and_status(None) == ("", 0)
    assert awserrors.code_and_status({"Error": "garbage"}) == ("", 0)


# -- failure_of / entry_failure: the one reading of what an AWS call raised or refused ----------


def _reply(code: str, status: int, message: str = "m") -> botocore.exceptions.ClientError:
    response: Any = {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return botocore.exceptions.ClientError(response, "AnyOperation")


@given(st.text(max_size=40), st.integers(0, 599), st.text(max_size=20))
def test_an_error_reply_is_classified_by_its_code_and_status(code: str, status: int, message: str) -> None:
    failure = awsclients.failure_of(_reply(code, status, message))
    assert failure == awsclients.Failure(
        awserrors.classify(code, status), code, status, message, answered=True
    )


@pytest.mark.parametrize(
    "error",
    [
        botocore.exceptions.NoCredentialsError(),
        botocore.exceptions.PartialCredentialsError(provider="env", cred_var="AWS_SECRET_ACCESS_KEY"),
    ],
)
def test_missing_or_partial_credentials_are_a_credential_problem_nobody_answered(error: Exception) -> None:
    failure = awsclients.failure_of(error)
    assert failure.kind is Kind.CREDENTIALS and failure.code == type(error).__name__
    assert not failure.answered


@pytest.mark.parametrize(
    "error",
    [
        botocore.exceptions.EndpointConnectionError(endpoint_url="http://x"),
        ConnectionResetError(),
        TimeoutError(),
    ],
)
def test_no_answer_is_unavailable(error: Exception) -> None:
    failure = awsclients.failure_of(error)
    assert failure == awsclients.Failure(Kind.UNAVAILABLE, type(error).__name__, 0, str(error))


@given(st.text(max_size=40), st.booleans(), st.text(max_size=20))
def test_a_failed_batch_entry_is_classified_by_whose_fault_it_is(
    code: str, sender_fault: bool, message: str
) -> None:
    failure = awsclients.entry_failure(
        {"Id": "1", "Code": code, "SenderFault": sender_fault, "Message": message}
    )
    read_code = code or "Unknown"
    assert failure.code == read_code and failure.detail == message and failure.answered
    assert failure.kind is awserrors.classify(read_code, 400 if sender_fault else 500)


def test_a_failed_batch_entry_without_a_code_is_unknown_and_retried_when_aws_is_at_fault() -> None:
    failure = awsclients.entry_failure({"Id": "1", "SenderFault": False})
    assert failure.code == "Unknown" and failure.retryable
    assert not awsclients.entry_failure({"Id": "1", "SenderFault": True}).retryable


# -- every reader of an AWS error agrees with failure_of ------------------------------------

_EXCEPTIONS = [
    _reply("ExpiredToken", 403),
    _reply("AccessDenied", 403),
    _reply("AWS.SimpleQueueService.NonExistentQueue", 400),
    _reply("ThrottlingException", 400),
    _reply("InternalError", 500),
    botocore.exceptions.NoCredentialsError(),
    botocore.exceptions.PartialCredentialsError(provider="env", cred_var="AWS_SECRET_ACCESS_KEY"),
    botocore.exceptions.EndpointConnectionError(endpoint_url="http://127.0.0.1:9"),
    ConnectionRefusedError(),
]


def _raising(error: Exception) -> Callable[..., Awaitable[dict[str, Any]]]:
    async def operation(**kwargs: Any) -> dict[str, Any]:
        raise error

    return operation


@pytest.mark.parametrize(
    "error", _EXCEPTIONS, ids=lambda error: type(error).__name__ + str(getattr(error, "response", ""))
)
async def test_the_redrive_reads_errors_as_failure_of_does(error: Exception) -> None:
    with pytest.raises(redriving.RedriveError) as caught:
        await redriving.call("ReceiveMessage", "http://sqs/123/dlq", _raising(error))
    assert caught.value.kind is awsclients.failure_of(error).kind
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "error", _EXCEPTIONS, ids=lambda error: type(error).__name__ + str(getattr(error, "response", ""))
)
async def test_the_worker_reads_errors_as_failure_of_does(error: Exception) -> None:
    with pytest.raises(sqs.SqsError) as caught:
        await sqs.call(_raising(error))
    failure = awsclients.failure_of(error)
    assert (caught.value.kind, caught.value.code) == (failure.kind, failure.code)


@pytest.mark.parametrize(
    "error", _EXCEPTIONS, ids=lambda error: type(error).__name__ + str(getattr(error, "response", ""))
)
def test_the_front_door_reads_errors_as_failure_of_does(error: Exception) -> None:
    failure = awsclients.failure_of(error)
    assert publishing.translate(error, "SNS").code == failure.code
