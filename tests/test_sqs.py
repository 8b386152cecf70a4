"""workers.sqs: SQS's errors enter the worker as one small tree, with the meaning the project shares.

Real calls against the moto server and against a closed port; the error replies moto cannot
be made to give (an expired token, throttling) come from the operation itself, as botocore
raises them, so what is tested is the translation in ``sqs.call``.
"""

from __future__ import annotations

from typing import Any

import aiobotocore.config
import aiobotocore.session
import botocore.exceptions
import pytest
from aiohttp import web

from fanout_core import awserrors
from fanout_lab import harness
from fanout_lab.simulators import aws
from workers import sqs as seam


async def test_a_queue_that_does_not_exist_is_not_found_and_not_retryable(
    sqs: Any, moto_server: aws.MotoServer
) -> None:
    url = f"{moto_server.environment()['AWS_ENDPOINT_URL']}/123456789012/fanout-absent-queue"
    with pytest.raises(seam.SqsError) as caught:
        await seam.call(sqs.receive_message, QueueUrl=url, WaitTimeSeconds=0)
    assert caught.value.kind is awserrors.Kind.NOT_FOUND, caught.value.code
    assert not caught.value.retryable


async def test_no_endpoint_is_unavailable_and_retryable() -> None:
    config = aiobotocore.config.AioConfig(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=1)
    endpoint = f"http://127.0.0.1:{aws.free_port()}"
    session = aiobotocore.session.get_session()
    async with session.create_client(
        "sqs",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="y",
        config=config,
    ) as client:
        with pytest.raises(seam.SqsError) as caught:
            await seam.call(client.receive_message, QueueUrl=f"{endpoint}/1/q", WaitTimeSeconds=0)
    assert caught.value.kind is awserrors.Kind.UNAVAILABLE
    assert caught.value.retryable


@pytest.mark.parametrize(
    ("code", "status", "kind"),
    [
        ("ExpiredToken", 400, awserrors.Kind.CREDENTIALS),
        ("InvalidClientTokenId", 403, awserrors.Kind.CREDENTIALS),
        ("RequestThrottled", 400, awserrors.Kind.THROTTLED),
        ("AWS.SimpleQueueService.ServiceUnavailable", 503, awserrors.Kind.UNAVAILABLE),
        ("AccessDenied", 403, awserrors.Kind.DENIED),
        ("AWS.SimpleQueueService.NonExistentQueue", 400, awserrors.Kind.NOT_FOUND),
        ("InvalidParameterValue", 400, awserrors.Kind.INVALID),
    ],
)
async def test_error_replies_mean_what_they_mean_everywhere(
    code: str, status: int, kind: awserrors.Kind
) -> None:
    async def operation(**_: Any) -> dict[str, Any]:
        raise botocore.exceptions.ClientError(
            {"Error": {"Code": code, "Message": "no"}, "ResponseMetadata": {"HTTPStatusCode": status}},
            "ReceiveMessage",
        )

    with pytest.raises(seam.SqsError) as caught:
        await seam.call(operation, QueueUrl="q")
    assert (caught.value.kind, caught.value.code) == (kind, code)
    assert caught.value.retryable is awserrors.retryable(kind)
    assert isinstance(caught.value.__cause__, botocore.exceptions.ClientError)


async def test_every_call_names_the_worker_in_a_user_agent_built_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A fixed ``user_agent`` (botocore's option) instead of the header rebuilt per call."""
    seen: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append(request.headers.get("User-Agent", ""))
        await request.read()
        return web.json_response({}, content_type="application/x-amz-json-1.0")

    app = web.Application()
    app.router.add_post("/", answer)
    async with harness.serving_app(app) as url:
        monkeypatch.setenv("AWS_ENDPOINT_URL", url)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
        async with seam.client(region="us-east-1", max_connections=2) as client:
            for _ in range(2):
                await seam.call(client.receive_message, QueueUrl=f"{url}/1/q")
    assert len(seen) == 2
    assert seen[0] == seen[1]
    assert seen[0].startswith("fanout-worker/")
    assert seen[0].count(" botocore/") == 1  # the SDK still names itself, once
