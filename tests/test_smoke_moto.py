from typing import Any


async def test_moto_server_answers_sqs_over_http(sqs: Any) -> None:
    created = await sqs.create_queue(QueueName="smoke")
    await sqs.send_message(QueueUrl=created["QueueUrl"], MessageBody="hello")
    got = await sqs.receive_message(QueueUrl=created["QueueUrl"], WaitTimeSeconds=1)
    assert [m["Body"] for m in got["Messages"]] == ["hello"]
    assert created["QueueUrl"].startswith("http://127.0.0.1:")
