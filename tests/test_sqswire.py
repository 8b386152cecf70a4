"""workers.sqswire: the three hot SQS calls on the wire answer as aiobotocore's client does.

Every test puts the worker's client (``workers.sqs.client``: the wire client) beside an
aiobotocore client configured as the worker configures it, on the same requests: the same
replies on moto and LocalStack, the same errors (code, message, HTTP status, ``SqsError``
kind), the same refreshed credentials, the same retries. The answers no backend can be made
to give (a 500, throttling, an expired token) come from a real loopback HTTP server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import pathlib
import socket
import struct
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import aiobotocore.session
import pytest
from aiohttp import web

from fanout_core import awserrors
from fanout_lab import harness
from fanout_lab.simulators import aws
from tests import raw_http, sqs_backends
from workers import messages
from workers import sqs as seam

REGION = "us-east-1"
WORKER = "worker"  # workers.sqs.client(): the wire for the three calls
BOTOCORE = "aiobotocore"  # aiobotocore's client, as the worker configures it
CLIENTS = (WORKER, BOTOCORE)


@contextlib.asynccontextmanager
async def open_client(which: str) -> AsyncIterator[Any]:
    if which == WORKER:
        async with seam.client(region=REGION, max_connections=4) as client:
            yield client
        return
    session = aiobotocore.session.get_session()
    config = seam.config(session, max_connections=4)
    async with session.create_client("sqs", region_name=REGION, config=config) as client:
        yield client


async def outcome(operation: Callable[..., Awaitable[dict[str, Any]]], **kwargs: Any) -> tuple[Any, ...]:
    """What one call came to, as the worker reads it (``workers.sqs.call``)."""
    try:
        reply = await seam.call(operation, **kwargs)
    except seam.SqsError as error:
        cause = error.__cause__
        status = (getattr(cause, "response", None) or {}).get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return ("error", error.kind, error.code, str(error), status, type(cause).__name__)
    return ("ok", {key: value for key, value in reply.items() if key != "ResponseMetadata"})


RECEIVE = {
    "MaxNumberOfMessages": 10,
    "WaitTimeSeconds": 1,
    "VisibilityTimeout": 30,
    "MessageSystemAttributeNames": ["All"],
    "MessageAttributeNames": ["All"],
}  # what workers.polling asks for


async def receive_all(client: Any, url: str, count: int) -> dict[str, dict[str, Any]]:
    """The next ``count`` messages of ``url`` by id (a few receives at most)."""
    found: dict[str, dict[str, Any]] = {}
    for _ in range(10):
        reply = await client.receive_message(QueueUrl=url, **RECEIVE)
        found.update({message["MessageId"]: message for message in reply.get("Messages", [])})
        if len(found) >= count:
            break
    assert len(found) == count
    return found


@pytest.mark.parametrize("fifo", [False, True], ids=["standard", "fifo"])
async def test_the_three_calls_round_trip_and_read_as_aiobotocore_reads_them(
    sqs_backend: sqs_backends.SqsBackend, fifo: bool
) -> None:
    name = f"wire-{uuid.uuid4().hex[:8]}" + (".fifo" if fifo else "")
    url = await harness.make_queue(sqs_backend.sqs, name, fifo=fifo)
    for index in range(3):
        extra: dict[str, Any] = (
            {"MessageGroupId": f"g{index}", "MessageDeduplicationId": f"d{index}"} if fifo else {}
        )
        await sqs_backend.sqs.send_message(
            QueueUrl=url,
            MessageBody=json.dumps({"n": index, "text": "é ✓"}),
            MessageAttributes={
                "kind": {"DataType": "String", "StringValue": "conversation"},
                "count": {"DataType": "Number", "StringValue": str(index)},
                "raw": {"DataType": "Binary", "BinaryValue": bytes([0, index, 255])},
            },
            MessageSystemAttributes={
                "AWSTraceHeader": {
                    "DataType": "String",
                    "StringValue": f"Root=1-5759e988-bd862e3fe1be46a99427210{index};Sampled=1",
                }
            },
            **extra,
        )
    async with open_client(WORKER) as worker, open_client(BOTOCORE) as botocore:
        wired = await receive_all(worker, url, 3)
        back = await worker.change_message_visibility_batch(
            QueueUrl=url,
            Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0}
                for i, m in enumerate(wired.values())
            ],
        )
        assert sorted(entry["Id"] for entry in back["Successful"]) == ["0", "1", "2"]
        assert not back.get("Failed")
        assert back["ResponseMetadata"]["HTTPStatusCode"] == 200
        again = await receive_all(botocore, url, 3)

        assert wired.keys() == again.keys()
        for message_id, wire_message in wired.items():
            other = again[message_id]
            assert wire_message.keys() == other.keys()
            for key in ("Body", "MD5OfBody", "MessageAttributes", "MD5OfMessageAttributes"):
                assert wire_message[key] == other[key], key
            system, other_system = dict(wire_message["Attributes"]), dict(other["Attributes"])
            assert int(other_system.pop("ApproximateReceiveCount")) == (
                int(system.pop("ApproximateReceiveCount")) + 1
            )
            assert system == other_system
            parsed, other_parsed = messages.parse(wire_message), messages.parse(other)
            assert parsed.attributes == other_parsed.attributes
            assert (parsed.sent_timestamp_ms, parsed.trace_header) == (
                other_parsed.sent_timestamp_ms,
                other_parsed.trace_header,
            )
            assert (parsed.group_id, parsed.sequence_number) == (
                other_parsed.group_id,
                other_parsed.sequence_number,
            )
            assert parsed.attributes["raw"].binary_value is not None
            assert parsed.trace_header is not None and parsed.trace_header.startswith("Root=1-")
            assert (parsed.group_id is not None, parsed.sequence_number is not None) == (fifo, fifo)

        deleted = await worker.delete_message_batch(
            QueueUrl=url,
            Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(again.values())
            ],
        )
        assert sorted(entry["Id"] for entry in deleted["Successful"]) == ["0", "1", "2"]
        assert not deleted.get("Failed")
        empty = await worker.receive_message(QueueUrl=url, **{**RECEIVE, "WaitTimeSeconds": 0})
        assert not empty.get("Messages")
    assert await aws.queue_counts(sqs_backend.sqs, url) == (0, 0)


async def test_failing_requests_fail_alike_through_both_clients(sqs_backend: sqs_backends.SqsBackend) -> None:
    url = await harness.make_queue(sqs_backend.sqs, f"wire-errors-{uuid.uuid4().hex[:8]}")
    missing = url.rsplit("/", 1)[0] + "/fanout-absent-queue"
    await sqs_backend.sqs.send_message(QueueUrl=url, MessageBody="stale")
    [stale] = (await sqs_backend.sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1))["Messages"]
    await sqs_backend.sqs.delete_message(QueueUrl=url, ReceiptHandle=stale["ReceiptHandle"])
    handles = {"garbage": "not-a-receipt-handle", "deleted": stale["ReceiptHandle"]}
    requests: list[tuple[str, dict[str, Any]]] = [
        ("receive_message", {"QueueUrl": missing, "WaitTimeSeconds": 0}),
        ("delete_message_batch", {"QueueUrl": missing, "Entries": [{"Id": "0", "ReceiptHandle": "h"}]}),
        (
            "change_message_visibility_batch",
            {"QueueUrl": missing, "Entries": [{"Id": "0", "ReceiptHandle": "h", "VisibilityTimeout": 5}]},
        ),
        *[
            ("delete_message_batch", {"QueueUrl": url, "Entries": [{"Id": "0", "ReceiptHandle": handle}]})
            for handle in handles.values()
        ],
        *[
            (
                "change_message_visibility_batch",
                {"QueueUrl": url, "Entries": [{"Id": "0", "ReceiptHandle": handle, "VisibilityTimeout": 5}]},
            )
            for handle in handles.values()
        ],
        ("delete_message_batch", {"QueueUrl": url, "Entries": []}),
        ("delete_message_batch", {"QueueUrl": url, "Entries": [{"Id": "x", "ReceiptHandle": "h"}] * 2}),
        (
            "delete_message_batch",
            {"QueueUrl": url, "Entries": [{"Id": str(i), "ReceiptHandle": "h"} for i in range(11)]},
        ),
        ("receive_message", {"QueueUrl": url, "WaitTimeSeconds": 21}),
    ]
    seen: list[tuple[Any, ...]] = []
    async with open_client(WORKER) as worker, open_client(BOTOCORE) as botocore:
        for operation, kwargs in requests:
            wired = await outcome(getattr(worker, operation), **kwargs)
            expected = await outcome(getattr(botocore, operation), **kwargs)
            assert wired == expected, (operation, kwargs)
            seen.append(wired)
    not_found = seen[:3]
    assert {(found[0], found[1], found[2]) for found in not_found} == {
        ("error", awserrors.Kind.NOT_FOUND, "AWS.SimpleQueueService.NonExistentQueue")
    }
    assert all(found[0] == "error" for found in seen[7:])  # empty, duplicate ids, too many, bad wait


def credential_process(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, key: str) -> pathlib.Path:
    """A ``credential_process`` profile whose credentials expire in 5 minutes (inside botocore's
    mandatory refresh window, so every signature asks for them again): the key is read from the
    file returned, which a test rewrites to rotate it."""
    key_file = tmp_path / "key"
    key_file.write_text(key, encoding="utf-8")
    script = tmp_path / "credentials.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import datetime, json, pathlib
            expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=5)
            print(json.dumps({{
                "Version": 1,
                "AccessKeyId": pathlib.Path({str(key_file)!r}).read_text(),
                "SecretAccessKey": "secret",
                "SessionToken": "token",
                "Expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
            }}))
            """
        ),
        encoding="utf-8",
    )
    config = tmp_path / "config"
    config.write_text(f"[default]\ncredential_process = {sys.executable} {script}\n", encoding="utf-8")
    (tmp_path / "credentials").write_text("", encoding="utf-8")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return key_file


class LoopbackSqs:
    """A real HTTP server standing in for SQS: ``answers`` (status, body, headers) in turn, the
    last one for ever; records what each request carried."""

    def __init__(self, *answers: tuple[int, Any, Mapping[str, str]]) -> None:
        self.answers = list(answers)
        self.requests: list[tuple[Mapping[str, str], Any]] = []
        self.on_request: Callable[[web.Request], None] | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append((request.headers, json.loads(body)))
        if self.on_request is not None:
            self.on_request(request)
        status, answer, headers = self.answers[0] if len(self.answers) == 1 else self.answers.pop(0)
        text = answer if isinstance(answer, str) else json.dumps(answer)
        return web.Response(
            status=status, text=text, headers=headers, content_type="application/x-amz-json-1.0"
        )

    @contextlib.asynccontextmanager
    async def serving(self, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
        app = web.Application()
        app.router.add_post("/", self.handle)
        async with harness.serving_app(app) as url:
            monkeypatch.delenv("AWS_ENDPOINT_URL_SQS", raising=False)
            monkeypatch.setenv("AWS_ENDPOINT_URL", url)
            yield f"{url}/123456789012/loopback"


EXPIRED = (
    400,
    {"__type": "com.amazonaws.sqs#ExpiredToken", "message": "The security token expired"},
    {"x-amzn-query-error": "ExpiredToken;Sender"},
)
OK: tuple[int, Any, Mapping[str, str]] = (200, {}, {})


@pytest.mark.parametrize("which", CLIENTS)
async def test_an_expired_credential_is_renewed_by_the_chain_before_the_next_call(
    which: str, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_file = credential_process(tmp_path, monkeypatch, "OLDKEY")
    server = LoopbackSqs(OK)

    def rotate_on_old_key(request: web.Request) -> None:
        if "Credential=OLDKEY/" in request.headers.get("Authorization", ""):
            key_file.write_text("NEWKEY", encoding="utf-8")  # a renewed web-identity token would
            server.answers.insert(0, EXPIRED)

    server.on_request = rotate_on_old_key
    async with server.serving(monkeypatch) as url, open_client(which) as client:
        with pytest.raises(seam.SqsError) as caught:
            await seam.call(client.receive_message, QueueUrl=url, WaitTimeSeconds=0)
        assert (caught.value.kind, caught.value.code) == (awserrors.Kind.CREDENTIALS, "ExpiredToken")
        await seam.call(
            client.delete_message_batch, QueueUrl=url, Entries=[{"Id": "0", "ReceiptHandle": "h"}]
        )
    keys = [
        headers["Authorization"].split("Credential=", 1)[1].split("/", 1)[0] for headers, _ in server.requests
    ]
    assert keys == ["OLDKEY", "NEWKEY"]


@pytest.mark.parametrize("which", CLIENTS)
@pytest.mark.parametrize(
    "first",
    [
        (500, "<html>Internal Server Error</html>", {}),
        (503, {"__type": "com.amazonaws.sqs#ServiceUnavailable", "message": "busy"}, {}),
        (
            400,
            {"__type": "com.amazon.coral.availability#ThrottlingException", "message": "Rate exceeded"},
            {"x-amzn-query-error": "Throttling;Sender"},
        ),
    ],
    ids=["500", "503", "throttled"],
)
async def test_a_transient_failure_is_retried_and_the_call_succeeds(
    which: str, first: tuple[int, Any, Mapping[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    message = {
        "MessageId": "m",
        "ReceiptHandle": "r",
        "Body": "b",
        "Attributes": {"ApproximateReceiveCount": "1"},
    }
    server = LoopbackSqs(first, (200, {"Messages": [message]}, {"x-amzn-RequestId": "req-2"}))
    async with server.serving(monkeypatch) as url, open_client(which) as client:
        reply = await seam.call(client.receive_message, QueueUrl=url, WaitTimeSeconds=0)
    assert reply["Messages"] == [message]
    assert (reply["ResponseMetadata"]["RetryAttempts"], reply["ResponseMetadata"]["RequestId"]) == (
        1,
        "req-2",
    )
    assert len(server.requests) == 2


@pytest.mark.parametrize(
    "answer",
    [
        (500, "<html>Internal Server Error</html>", {}),
        (400, {"__type": "com.amazonaws.sqs#RequestThrottled", "message": "slow down"}, {}),
        (
            400,
            {"__type": "com.amazonaws.sqs#QueueDoesNotExist", "message": "gone"},
            {"x-amzn-query-error": "AWS.SimpleQueueService.NonExistentQueue;Sender"},
        ),
        (403, {"__type": "com.amazonaws.sqs#AccessDenied", "message": "no"}, {}),
    ],
    ids=["500", "throttled", "not-found", "denied"],
)
async def test_a_failure_that_lasts_is_tried_as_often_and_reads_the_same(
    answer: tuple[int, Any, Mapping[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    outcomes, attempts = [], []
    for which in CLIENTS:
        server = LoopbackSqs(answer)
        async with server.serving(monkeypatch) as url, open_client(which) as client:
            outcomes.append(
                await outcome(
                    client.delete_message_batch, QueueUrl=url, Entries=[{"Id": "0", "ReceiptHandle": "h"}]
                )
            )
        attempts.append(len(server.requests))
    assert outcomes[0] == outcomes[1]
    assert attempts[0] == attempts[1]
    assert outcomes[0][0] == "error"


async def test_no_endpoint_is_unavailable_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.delenv("AWS_ENDPOINT_URL_SQS", raising=False)
    endpoint = f"http://127.0.0.1:{aws.free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    found = []
    for which in CLIENTS:
        async with open_client(which) as client:
            found.append(await outcome(client.receive_message, QueueUrl=f"{endpoint}/1/q", WaitTimeSeconds=0))
    assert found[0][:3] == found[1][:3] == ("error", awserrors.Kind.UNAVAILABLE, "EndpointConnectionError")


async def test_both_clients_send_the_same_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    server = LoopbackSqs(OK)
    async with server.serving(monkeypatch) as url:
        for which in CLIENTS:
            async with open_client(which) as client:
                await client.receive_message(QueueUrl=url, **RECEIVE)
    (wire_headers, wire_body), (botocore_headers, botocore_body) = server.requests
    assert wire_body == botocore_body
    for name in (
        "User-Agent",
        "X-Amz-Target",
        "Content-Type",
        "x-amzn-query-mode",
        "X-Amz-Security-Token",
        "Host",
    ):
        assert wire_headers.get(name) == botocore_headers.get(name), name
    signed = [
        headers["Authorization"].split("SignedHeaders=", 1)[1].split(",", 1)[0]
        for headers, _ in server.requests
    ]
    assert signed[0] == signed[1]


# -- the connection under the wire calls ---------------------------------------------------------


def _root(server: raw_http.Server) -> str:
    return server.url.removesuffix("/events")


async def test_a_kept_connection_closed_as_the_request_went_out_is_sent_again_at_once(
    serve: raw_http.Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wire calls ride our HTTP/1.1 pool when no proxy applies: a keep-alive connection the
    server closed before any byte of the answer is sent again on a new one, the same attempt
    (aiohttp, which would not resend a POST, made it a failed attempt and a retry after a pause)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.delenv("AWS_ENDPOINT_URL_SQS", raising=False)
    server = await serve(raw_http.answer_then_drop_the_second())
    monkeypatch.setenv("AWS_ENDPOINT_URL", _root(server))
    async with open_client(WORKER) as client:
        replies = [
            await client.receive_message(QueueUrl=f"{_root(server)}/1/q", WaitTimeSeconds=0) for _ in range(2)
        ]
    assert [reply["ResponseMetadata"]["RetryAttempts"] for reply in replies] == [0, 0]
    assert (len(server.requests), server.connections) == (3, 2)
    assert all(b"amz-sdk-request: attempt=1; max=4\r\n" in request for request in server.requests)
    assert all(request.startswith(b"POST / HTTP/1.1\r\n") for request in server.requests)


async def test_a_proxy_in_the_environment_carries_the_wire_calls(
    serve: raw_http.Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``HTTP_PROXY`` (as botocore reads it, ``NO_PROXY`` too) sends the wire calls through the
    proxy: the endpoint itself has nobody listening."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    for name in ("AWS_ENDPOINT_URL_SQS", "NO_PROXY", "no_proxy", "http_proxy", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    proxy = await serve(raw_http.answer_ok)
    endpoint = f"http://127.0.0.1:{aws.free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("HTTP_PROXY", _root(proxy))
    async with open_client(WORKER) as client:
        reply = await client.receive_message(QueueUrl=f"{endpoint}/1/q", WaitTimeSeconds=0)
    assert reply["ResponseMetadata"]["HTTPStatusCode"] == 200
    [request] = proxy.requests
    assert request.startswith(f"POST {endpoint} HTTP/1.1\r\n".encode())  # a proxy's request line


RESET = b"reset"


def _answering_every_request_with(answer: bytes | None) -> raw_http.Handler:
    """Each request: ``answer`` written and the connection closed (None: closed at once;
    ``RESET``: reset at once)."""

    async def handler(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: raw_http.Server
    ) -> None:
        if await raw_http.recorded_request(reader, server) is None:
            return
        if answer == RESET:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
            writer.transport.abort()
        elif answer:
            writer.write(answer)
            await writer.drain()

    return handler


@pytest.mark.parametrize(
    "answer",
    [
        None,
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{}",
        b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        RESET,
    ],
    ids=["no-answer", "body-cut-short", "chunks-cut-short", "not-http", "broken-chunk", "reset"],
)
async def test_a_connection_that_fails_mid_call_fails_alike_through_both_clients(
    answer: bytes | None, serve: raw_http.Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.delenv("AWS_ENDPOINT_URL_SQS", raising=False)
    outcomes, attempts = [], []
    for which in CLIENTS:
        server = await serve(_answering_every_request_with(answer))
        monkeypatch.setenv("AWS_ENDPOINT_URL", _root(server))
        async with open_client(which) as client:
            found = await outcome(client.receive_message, QueueUrl=f"{_root(server)}/1/q", WaitTimeSeconds=0)
        outcomes.append(found[:3] + found[4:])  # the message names the endpoint's URL
        attempts.append(len(server.requests))
    assert outcomes[0] == outcomes[1]
    assert attempts[0] == attempts[1]
    assert outcomes[0][0] == "error"


async def test_tls_trusts_the_ca_bundle_botocore_would(
    serve: raw_http.Serve, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``AWS_CA_BUNDLE`` names the certificate a private endpoint presents: trusted by both
    clients with it, refused alike (botocore's ``SSLError``) without it."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.delenv("AWS_ENDPOINT_URL_SQS", raising=False)
    server_context, _ = raw_http.certificate(tmp_path)
    server = await serve(raw_http.answer_ok, tls=server_context)
    monkeypatch.setenv("AWS_ENDPOINT_URL", _root(server))
    queue = f"{_root(server)}/1/q"
    found: dict[tuple[bool, str], tuple[Any, ...]] = {}
    for trusted in (True, False):
        if trusted:
            monkeypatch.setenv("AWS_CA_BUNDLE", str(tmp_path / "cert.pem"))
        else:
            monkeypatch.delenv("AWS_CA_BUNDLE")
        for which in CLIENTS:
            async with open_client(which) as client:
                result = await outcome(client.receive_message, QueueUrl=queue, WaitTimeSeconds=0)
            found[trusted, which] = result[:3] + result[4:]  # the message names the endpoint's URL
    assert found[True, WORKER] == found[True, BOTOCORE] == ("ok", {})
    assert found[False, WORKER] == found[False, BOTOCORE]
    assert found[False, WORKER][-1] == "SSLError"
