"""Queue depth through the moto server over HTTP, and the error translation."""

from __future__ import annotations

from typing import Any

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
        ("InvalidClientTokenId", queues.QueueAccessDenied),
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
