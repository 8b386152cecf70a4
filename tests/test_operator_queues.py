"""Queue depth through the moto server over HTTP, and the error translation."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp.web
import botocore.exceptions
import pytest

from fanout_lab.simulators import aws
from fanout_operator import queues


async def test_depth_counts_visible_in_flight_and_delayed(sqs: Any) -> None:
    url = (await sqs.create_queue(QueueName="depth-counts"))["QueueUrl"]
    for index in range(5):
        await sqs.send_message(QueueUrl=url, MessageBody=f"m{index}")
    await sqs.send_message(QueueUrl=url, MessageBody="later", DelaySeconds=600)
    await sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=2, VisibilityTimeout=600)
    async with queues.SqsDepthReader() as reader:
        depth = await reader.depth(url, "us-east-1")
    assert depth == queues.Depth(visible=3, in_flight=2, delayed=1)


async def test_missing_queue_is_not_found(sqs: Any) -> None:
    url = (await sqs.create_queue(QueueName="exists"))["QueueUrl"]
    async with queues.SqsDepthReader() as reader:
        with pytest.raises(queues.QueueNotFound):
            await reader.depth(url.replace("exists", "does-not-exist"), None)


async def test_dead_endpoint_is_unreachable(
    moto_server: aws.MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{aws.free_port()}")
    async with queues.SqsDepthReader(connect_timeout=1, read_timeout=1) as reader:
        with pytest.raises(queues.QueueUnreachable):
            await reader.depth("http://127.0.0.1/123456789012/q", "us-east-1")


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        # A key the service does not accept: re-read the credentials (fanout_core.awserrors).
        ("InvalidClientTokenId", queues.QueueCredentialsRejected),
        ("AccessDenied", queues.QueueAccessDenied),
        ("AWS.SimpleQueueService.NonExistentQueue", queues.QueueNotFound),
        ("RequestThrottled", queues.QueueUnreachable),
    ],
)
def test_client_errors_are_translated(code: str, expected: type[queues.QueueError]) -> None:
    error = botocore.exceptions.ClientError({"Error": {"Code": code, "Message": "m"}}, "GetQueueAttributes")
    translated = queues._translate(error, "url")
    assert type(translated) is expected
    assert translated.reason == expected.__name__


def test_missing_credentials_are_access_denied() -> None:
    assert isinstance(
        queues._translate(botocore.exceptions.NoCredentialsError(), "u"), queues.QueueAccessDenied
    )


@pytest.mark.parametrize("code", ["ExpiredToken", "ExpiredTokenException", "RequestExpired"])
def test_expired_credentials_are_a_credential_problem_never_denied_or_missing(code: str) -> None:
    response = {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": 403}}
    error = botocore.exceptions.ClientError(response, "GetQueueAttributes")  # type: ignore[arg-type]
    translated = queues._translate(error, "url")
    assert type(translated) is queues.QueueCredentialsRejected
    assert not isinstance(translated, queues.QueueNotFound | queues.QueueAccessDenied)


class RotatingCredentialsSqs:
    """A loopback SQS endpoint that says ExpiredToken to one access key and answers the next.

    On the first request signed with the old key it "rotates" the credentials file, as a
    refreshed web-identity token or a rotated secret would; a client that re-reads its
    credentials then gets an answer.
    """

    def __init__(self, credentials_file: pathlib.Path) -> None:
        self.credentials_file = credentials_file
        self.keys_seen: list[str] = []
        self.expire_every_key = False

    def write_credentials(self, key: str) -> None:
        self.credentials_file.write_text(
            f"[default]\naws_access_key_id = {key}\naws_secret_access_key = secret\n", encoding="utf-8"
        )

    async def handle(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        authorization = request.headers.get("Authorization", "")
        key = authorization.split("Credential=", 1)[-1].split("/", 1)[0]
        self.keys_seen.append(key)
        if key == "OLDKEY" or self.expire_every_key:
            self.write_credentials("NEWKEY")
            body = {"__type": "com.amazonaws.sqs#ExpiredToken", "message": "The security token expired"}
            headers = {"x-amzn-query-error": "ExpiredToken;Sender"}
            return aiohttp.web.json_response(
                body, status=400, headers=headers, content_type="application/x-amz-json-1.0"
            )
        attributes = {
            "ApproximateNumberOfMessages": "7",
            "ApproximateNumberOfMessagesNotVisible": "0",
            "ApproximateNumberOfMessagesDelayed": "0",
        }
        return aiohttp.web.json_response(
            {"Attributes": attributes}, content_type="application/x-amz-json-1.0"
        )


@pytest.fixture
async def rotating_sqs(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[RotatingCredentialsSqs, str]]:
    endpoint = RotatingCredentialsSqs(tmp_path / "credentials")
    endpoint.write_credentials("OLDKEY")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(endpoint.credentials_file))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    app = aiohttp.web.Application()
    app.router.add_post("/", endpoint.handle)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    port = aws.free_port()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    try:
        yield endpoint, f"http://127.0.0.1:{port}/123456789012/rotating"
    finally:
        await runner.cleanup()


async def test_expired_credentials_are_re_read_and_the_read_retried(
    rotating_sqs: tuple[RotatingCredentialsSqs, str],
) -> None:
    endpoint, url = rotating_sqs
    async with queues.SqsDepthReader() as reader:
        depth = await reader.depth(url, "us-east-1")
    assert depth.visible == 7
    assert endpoint.keys_seen == ["OLDKEY", "NEWKEY"]


async def test_credentials_that_stay_expired_are_reported_as_expired(
    rotating_sqs: tuple[RotatingCredentialsSqs, str],
) -> None:
    endpoint, url = rotating_sqs
    endpoint.expire_every_key = True
    async with queues.SqsDepthReader() as reader:
        with pytest.raises(queues.QueueCredentialsRejected) as caught:
            await reader.depth(url, "us-east-1")
    assert caught.value.reason == "QueueCredentialsRejected"
    assert endpoint.keys_seen == ["OLDKEY", "NEWKEY"]  # one fresh try, then the loop's backoff
