"""What one demo run stands on: the AWS clients, the downstream simulators and the secrets
their sinks read, the file the workers log to, and reading a dead-letter queue at the end.

``session`` uses these; they hold no state of the run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import pathlib
import secrets
from collections.abc import AsyncIterator, Iterable
from typing import Any

import aiobotocore.session

from fanout_lab.demo import consumers, referee
from fanout_lab.simulators import crm, downstream, hec, webhook
from workers.telemetry import logs


async def read_dead_letters(sqs: Any, url: str) -> list[referee.DeadLetter]:
    """Receive and delete everything in a dead-letter queue (the end of the run)."""
    found: list[referee.DeadLetter] = []
    for _ in range(1000):
        reply = await sqs.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=0,
            VisibilityTimeout=60,
            MessageAttributeNames=["All"],
        )
        messages = reply.get("Messages", [])
        if not messages:
            break
        for message in messages:
            found.append(dead_letter(message))
        await sqs.delete_message_batch(
            QueueUrl=url,
            Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)],
        )
    return found


def dead_letter(message: dict[str, Any]) -> referee.DeadLetter:
    attributes = message.get("MessageAttributes", {})

    def attribute(name: str) -> str | None:
        value = attributes.get(name, {}).get("StringValue")
        return str(value) if value is not None else None

    sns_id: str | None = None
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        sns_id = json.loads(message.get("Body", "")).get("MessageId")
    return referee.DeadLetter(sns_id, attribute("fanout.reason-class"), attribute("fanout.reason"))


@contextlib.asynccontextmanager
async def clients() -> AsyncIterator[dict[str, Any]]:
    session = aiobotocore.session.get_session()
    async with (
        session.create_client("sns") as sns,
        session.create_client("sqs") as sqs,
        session.create_client("dynamodb") as dynamodb,
    ):
        yield {"sns": sns, "sqs": sqs, "dynamodb": dynamodb}


@contextlib.contextmanager
def worker_logs(path: pathlib.Path | None) -> Any:
    """The workers' JSON log lines go to ``path`` for the run (never onto the screen)."""
    root = logging.getLogger()
    saved_level = root.level
    handler: logging.Handler = logging.FileHandler(path, encoding="utf-8") if path else logging.NullHandler()
    handler.setFormatter(logs.JsonFormatter())
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    saved = {name: logging.getLogger(name).level for name in logs.WIRE_LOGGERS}
    for name, floor in logs.WIRE_LOGGERS.items():
        logging.getLogger(name).setLevel(max(floor, logging.INFO))
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()
        root.setLevel(saved_level)
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def simulator(plan: consumers.Plan, seed: int) -> downstream.DownstreamSimulator:
    if plan.name == "crm-sync":
        return crm.CrmSimulator(rate=plan.rate, burst=plan.burst, latency=plan.latency, seed=seed)
    if plan.name == "siem-audit":
        return hec.HecSimulator(
            token=secrets.token_hex(16), rate=plan.rate, burst=plan.burst, latency=plan.latency, seed=seed
        )
    return webhook.WebhookSimulator(
        rate=plan.rate,
        burst=plan.burst,
        latency=plan.latency,
        seed=seed,
        signing_secret=secrets.token_hex(16),
    )


def secrets_of(simulators: Iterable[downstream.DownstreamSimulator]) -> dict[str, str]:
    """The environment variables the consumers' manifests name for their sinks' secrets."""
    values: dict[str, str] = {}
    for sim in simulators:
        if isinstance(sim, crm.CrmSimulator):
            values[consumers.CRM_CLIENT_ID_ENV] = sim.client_id
            values[consumers.CRM_CLIENT_SECRET_ENV] = sim.client_secret
        elif isinstance(sim, hec.HecSimulator):
            values[consumers.HEC_TOKEN_ENV] = sim.token
        elif isinstance(sim, webhook.WebhookSimulator) and sim.signing_secret:
            values[consumers.WEBHOOK_KEY_ENV] = sim.signing_secret
    return values
