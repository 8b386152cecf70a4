"""What the worker relies on SQS for, checked on each backend the tests use (moto, LocalStack).

Each test states one SQS behaviour as AWS documents it. Where a backend reads it otherwise,
that parametrization is xfail(strict) with what the backend does instead, so a worker test
that passes there is known to rest on that reading, and an upgrade that fixes the backend
shows up as an XPASS. The full list of differences is in tests/sqs_backends.py.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from fanout_lab import harness
from tests import sqs_backends


async def fifo_group_in_flight(sqs: Any, *, visibility: int = 30) -> tuple[str, dict[str, str]]:
    """A FIFO queue with m0, m1, m2 of one group, all three received: (url, body -> receipt)."""
    url = await harness.make_queue(sqs, f"lock-{uuid.uuid4().hex[:8]}.fifo", fifo=True, visibility=visibility)
    for index in range(3):
        await sqs.send_message(
            QueueUrl=url, MessageBody=f"m{index}", MessageGroupId="g", MessageDeduplicationId=f"d{index}"
        )
    got = (await sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0))["Messages"]
    assert [message["Body"] for message in got] == ["m0", "m1", "m2"]
    return url, {message["Body"]: message["ReceiptHandle"] for message in got}


async def bodies_received(sqs: Any, url: str, *, within: float) -> list[str]:
    """The bodies of the first non-empty receive within ``within`` seconds (kept in flight)."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        reply = await sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
        if reply.get("Messages") or asyncio.get_running_loop().time() > deadline:
            return [message["Body"] for message in reply.get("Messages", [])]
        await asyncio.sleep(0.2)


async def test_fifo_group_is_locked_while_a_message_of_it_is_in_flight(
    sqs_backend: sqs_backends.SqsBackend,
) -> None:
    sqs = sqs_backend.sqs
    url = await harness.make_queue(sqs, f"held-{uuid.uuid4().hex[:8]}.fifo", fifo=True)
    for index in range(2):
        await sqs.send_message(
            QueueUrl=url, MessageBody=f"m{index}", MessageGroupId="g", MessageDeduplicationId=f"d{index}"
        )
    first = await sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=1, WaitTimeSeconds=0)
    assert [message["Body"] for message in first["Messages"]] == ["m0"]
    assert await bodies_received(sqs, url, within=1) == []


@pytest.mark.parametrize(
    "sqs_backend",
    sqs_backends.params(
        localstack="LocalStack unlocks the group when m0's visibility is changed: m1 and m2, "
        "made visible, are served while m0 is still invisible"
    ),
    indirect=True,
)
async def test_fifo_group_stays_locked_while_its_head_waits_out_a_visibility_change(
    sqs_backend: sqs_backends.SqsBackend,
) -> None:
    sqs = sqs_backend.sqs
    url, receipts = await fifo_group_in_flight(sqs)
    for body, seconds in (("m1", 0), ("m2", 0), ("m0", 3)):
        await sqs.change_message_visibility(
            QueueUrl=url, ReceiptHandle=receipts[body], VisibilityTimeout=seconds
        )
    assert await bodies_received(sqs, url, within=1) == []
    assert await bodies_received(sqs, url, within=5) == ["m0", "m1", "m2"]


@pytest.mark.parametrize(
    "sqs_backend",
    sqs_backends.params(
        localstack="LocalStack serves a new message of the group (m4) with m0 while m1 and m2, handed "
        "back and received again, are still in flight with a consumer that crashed"
    ),
    indirect=True,
)
async def test_fifo_group_serves_no_new_message_while_earlier_ones_are_in_flight_after_a_crash(
    sqs_backend: sqs_backends.SqsBackend,
) -> None:
    # What a consumer did before it crashed: m0 failed (retry in 1 s), m1 and m2 went back at
    # once (LocalStack serves them again, moto keeps them for after m0). A message sent
    # afterwards must not overtake them.
    sqs = sqs_backend.sqs
    url, receipts = await fifo_group_in_flight(sqs, visibility=4)
    await sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=receipts["m0"], VisibilityTimeout=1)
    for body in ("m1", "m2"):
        await sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=receipts[body], VisibilityTimeout=0)
    await bodies_received(sqs, url, within=0.5)  # LocalStack serves m1 and m2 again here; moto nothing
    await asyncio.sleep(1.5)
    await sqs.send_message(QueueUrl=url, MessageBody="m4", MessageGroupId="g", MessageDeduplicationId="d4")
    served = await bodies_received(sqs, url, within=1)
    # m4 may come only after m1 and m2 (they are in flight, or served with it in order).
    assert "m4" not in served or served[: served.index("m4")] == ["m0", "m1", "m2"], served


@pytest.mark.parametrize(
    "sqs_backend",
    sqs_backends.params(
        moto="moto releases the group at the last pending message its scan meets, so when "
        "several expire together it serves only the tail (m2) first"
    ),
    indirect=True,
)
async def test_fifo_group_comes_back_head_first_after_its_visibility_timeout(
    sqs_backend: sqs_backends.SqsBackend,
) -> None:
    # A consumer that crashed holding m0, m1, m2: all three time out together.
    sqs = sqs_backend.sqs
    url, _ = await fifo_group_in_flight(sqs, visibility=1)
    assert (await bodies_received(sqs, url, within=5))[:1] == ["m0"]


@pytest.mark.parametrize(
    "sqs_backend",
    sqs_backends.params(moto="moto accepts any character in a message body"),
    indirect=True,
)
async def test_a_body_with_a_control_character_is_refused(sqs_backend: sqs_backends.SqsBackend) -> None:
    sqs = sqs_backend.sqs
    url = await harness.make_queue(sqs, f"chars-{uuid.uuid4().hex[:8]}")
    reply = await sqs.send_message_batch(
        QueueUrl=url,
        Entries=[{"Id": "ok", "MessageBody": "tab\tnewline\n"}, {"Id": "bad", "MessageBody": "a\x01b"}],
    )
    assert [entry["Id"] for entry in reply.get("Successful", [])] == ["ok"]
    assert [entry["Code"] for entry in reply.get("Failed", [])] == ["InvalidMessageContents"]
