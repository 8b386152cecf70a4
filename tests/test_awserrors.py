"""The one AWS error classifier: every code we meet means the same thing everywhere."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fanout_core import awserrors

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
