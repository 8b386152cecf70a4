"""The consumers ``bench/overhead.py`` measures the worker against, each a child process.

A *bare loop* is what a user writes instead of running the worker: aiobotocore
``ReceiveMessage`` (the worker's arguments) → ``json.loads`` → the sink's request(s) →
``DeleteMessageBatch``, two pollers, nothing else — no deduplication, no ordering, no
limiter, no metrics, no logs. Its HTTP client is one of

* ``aiohttp`` — the cheapest asyncio client there is (the goal's baseline);
* ``httpx`` — httpx's default transport (httpcore on anyio);
* ``httpx-sinks`` — httpx on the transport the worker's sinks send through
  (:func:`workers.sinks.transport.default_transport`: our HTTP/1.1 client on httptools);
* ``httpx-aiohttp`` — httpx on the PyPI adapter ``httpx-aiohttp`` (httpx on aiohttp, which
  the sinks do not use: see ``workers/sinks/transport.py``);

and its wire is one of the sinks': ``webhook`` (one POST of the payload per event), ``crm``
(one Salesforce upsert PATCH per event, the default field mapping) or ``siem`` (one Splunk
HEC POST per receive, the events concatenated).

The *peer* is the PyPI library ``sqs-workers`` (boto3, one message at a time) with a sync
httpx client POSTing each payload: what a user picks off the shelf.

Each prints ``ready`` once it can receive and stops on SIGTERM:

    python bench/_baselines.py bare CLIENT WIRE QUEUE_URL ENDPOINT
    python bench/_baselines.py peer QUEUE_URL ENDPOINT
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import signal
import socket
import sys
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

POLLERS = 2
WAIT_SECONDS = 20
TOKEN = "bench-token"
CLIENTS = ("aiohttp", "httpx", "httpx-sinks", "httpx-aiohttp")
WIRES = ("webhook", "crm", "siem")

Send = Callable[[str, str, bytes, Mapping[str, str]], Awaitable[int]]
"""(method, url, body, headers) → HTTP status."""


# ------------------------------------------------------------------------------ the wires
def payload_of(body: str) -> dict[str, Any]:
    """The event without its EventBridge envelope (what the worker's sinks send)."""
    document: dict[str, Any] = json.loads(body)
    detail = document.get("detail")
    return detail if isinstance(detail, dict) else document


def _dumps(document: Any) -> bytes:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def webhook_request(endpoint: str, body: str) -> tuple[str, str, bytes, dict[str, str]]:
    payload = payload_of(body)
    headers = {"Content-Type": "application/json", "Idempotency-Key": payload["metadata"]["CorrelationId"]}
    return "POST", endpoint, _dumps(payload), headers


def crm_request(endpoint: str, body: str) -> tuple[str, str, bytes, dict[str, str]]:
    payload = payload_of(body)
    event = payload["eventBody"]
    moment = datetime.datetime.fromtimestamp(event["eventTime"] / 1000, tz=datetime.UTC)
    record = {
        "Last_Event__c": payload["topicName"],
        "Last_Event_Time__c": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }
    key = urllib.parse.quote(event["conversationId"], safe="")
    url = f"{endpoint}/services/data/v60.0/sobjects/Genesys_Conversation__c/Conversation_Id__c/{key}"
    headers = {
        "Authorization": f"Bearer {TOKEN}",
        "Content-Type": "application/json",
        "Idempotency-Key": payload["metadata"]["CorrelationId"],
    }
    return "PATCH", url, _dumps(record), headers


def hec_request(endpoint: str, bodies: list[str]) -> tuple[str, str, bytes, dict[str, str]]:
    host = socket.gethostname()
    parts = []
    for body in bodies:
        payload = payload_of(body)
        event = payload["eventBody"]
        document = {
            "time": round(event["eventTime"] / 1000, 3),
            "host": host,
            "source": "genesys-cloud",
            "sourcetype": "genesys:event",
            "event": payload,
            "fields": {"event_type": payload["topicName"], "event_id": payload["metadata"]["CorrelationId"]},
        }
        parts.append(_dumps(document))
    headers = {"Authorization": f"Splunk {TOKEN}", "Content-Type": "application/json"}
    return "POST", f"{endpoint}/services/collector/event", b"".join(parts), headers


# ---------------------------------------------------------------------------- the clients
@contextlib.asynccontextmanager
async def http_client(kind: str) -> AsyncIterator[Send]:
    connections = 2 * 10
    if kind == "aiohttp":
        import aiohttp

        connector = aiohttp.TCPConnector(limit=connections)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def send_aiohttp(method: str, url: str, body: bytes, headers: Mapping[str, str]) -> int:
                async with session.request(method, url, data=body, headers=headers) as reply:
                    await reply.read()
                    return reply.status

            yield send_aiohttp
        return
    import httpx

    limits = httpx.Limits(max_connections=connections)
    transport: httpx.AsyncBaseTransport | None = None
    if kind == "httpx-sinks":
        from workers.sinks import transport as sinks_transport

        transport = sinks_transport.default_transport(limits=limits)
    elif kind == "httpx-aiohttp":
        import httpx_aiohttp

        transport = httpx_aiohttp.AiohttpTransport(limits=limits)
    async with httpx.AsyncClient(limits=limits, transport=transport) as client:

        async def send_httpx(method: str, url: str, body: bytes, headers: Mapping[str, str]) -> int:
            reply = await client.request(method, url, content=body, headers=headers)
            return reply.status_code

        yield send_httpx


# ------------------------------------------------------------------------------ the loops
async def bare_loop(client: str, wire: str, queue_url: str, endpoint: str) -> None:
    import aiobotocore.config
    import aiobotocore.session

    session = aiobotocore.session.get_session()
    config = aiobotocore.config.AioConfig(max_pool_connections=POLLERS + 10)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with session.create_client("sqs", config=config) as sqs, http_client(client) as send:

        async def deliver(request: tuple[str, str, bytes, dict[str, str]]) -> None:
            status = await send(*request)
            if not 200 <= status < 300:
                raise RuntimeError(f"HTTP {status}")

        async def poll() -> None:
            while True:
                reply = await sqs.receive_message(
                    QueueUrl=queue_url,
                    MaxNumberOfMessages=10,
                    WaitTimeSeconds=WAIT_SECONDS,
                    VisibilityTimeout=60,
                    MessageSystemAttributeNames=["All"],
                    MessageAttributeNames=["All"],
                )
                messages = reply.get("Messages", [])
                if not messages:
                    continue
                if wire == "siem":
                    await deliver(hec_request(endpoint, [message["Body"] for message in messages]))
                else:
                    make = webhook_request if wire == "webhook" else crm_request
                    await asyncio.gather(*(deliver(make(endpoint, message["Body"])) for message in messages))
                await sqs.delete_message_batch(
                    QueueUrl=queue_url,
                    Entries=[
                        {"Id": str(index), "ReceiptHandle": message["ReceiptHandle"]}
                        for index, message in enumerate(messages)
                    ],
                )

        pollers = [asyncio.create_task(poll()) for _ in range(POLLERS)]
        print("ready", flush=True)
        await stop.wait()
        for task in pollers:
            task.cancel()
        await asyncio.gather(*pollers, return_exceptions=True)


def peer(queue_url: str, endpoint: str) -> None:
    """sqs-workers' raw-queue processor, one message at a time, a sync httpx POST each."""
    import httpx
    import sqs_workers

    client = httpx.Client()
    env = sqs_workers.SQSEnv()
    queue = env.queue("bench", sqs_workers.RawQueue, queue_url=queue_url)

    def deliver(message: Any) -> None:
        method, url, body, headers = webhook_request(endpoint, message.body)
        client.request(method, url, content=body, headers=headers).raise_for_status()

    queue.connect_raw_processor(deliver)
    queue.get_queue()  # resolve the queue now, not inside the first poll
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("ready", flush=True)
    queue.process_queue(wait_second=WAIT_SECONDS)


def main() -> None:
    """Without arguments (``make bench`` runs every ``bench/*.py``) nothing."""
    if len(sys.argv) == 1:
        print("bench/_baselines.py: the bare loops and the peer bench/overhead.py runs (nothing to measure)")
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    bare = commands.add_parser("bare")
    bare.add_argument("client", choices=CLIENTS)
    bare.add_argument("wire", choices=WIRES)
    bare.add_argument("queue_url")
    bare.add_argument("endpoint")
    other = commands.add_parser("peer")
    other.add_argument("queue_url")
    other.add_argument("endpoint")
    args = parser.parse_args()
    if args.command == "bare":
        asyncio.run(bare_loop(args.client, args.wire, args.queue_url, args.endpoint))
    else:
        peer(args.queue_url, args.endpoint)


if __name__ == "__main__":
    main()
