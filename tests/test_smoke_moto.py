"""Each SQS backend the tests use (moto, LocalStack) answers over HTTP on loopback."""

from tests import sqs_backends


async def test_sqs_backend_answers_over_http(sqs_backend: sqs_backends.SqsBackend) -> None:
    sqs = sqs_backend.sqs
    created = await sqs.create_queue(QueueName="smoke")
    await sqs.send_message(QueueUrl=created["QueueUrl"], MessageBody="hello")
    got = await sqs.receive_message(QueueUrl=created["QueueUrl"], WaitTimeSeconds=1)
    assert [m["Body"] for m in got["Messages"]] == ["hello"]
    assert created["QueueUrl"].startswith(sqs_backend.endpoint_url + "/")
