"""The front door under Genesys webhook load: requests per CPU-second and request → 202 latency.

Two HTTP servers, each a child process measured from ``/proc``, take the same signed
Genesys events:

* ``fanout-ingest --config FILE`` — the gateway (deduplication in memory, micro-batched
  ``PublishBatch``, metrics): what ships;
* a naive handler (below, ``naive`` subcommand) — the usual Lambda-style code as an aiohttp
  handler: verify the signature, parse, one ``sns.publish`` per request (with the same message
  attributes), then 202.

Each runs against two SNS endpoints, so that what the servers cost shows apart from what SNS
costs: the moto server (a topic with no subscription: moto delivers to SQS inside the publish
call, and its queue scans would measure moto), and a no-op endpoint (``null-sns`` subcommand,
its own process) that answers every ``Publish``/``PublishBatch`` at once and keeps connections
open, as SNS does — moto's spends about a millisecond of CPU per event and closes every
connection, so each call also pays a new TCP connection.

This process is the Genesys side: an open-loop sender (a fixed request rate, whatever the
answers take; whole signed requests made before the clock starts, keep-alive connections, on
uvloop, answers read only as far as the status: ~0.15 ms of CPU per request, where aiohttp's
client took ~0.4 ms — CPU the servers and moto no longer lose to it) at 1x, 3x and 10x the seeds'
incident rate (60 events/s for 50,000 interactions a day), one event per request, every step
with events never sent before (the gateway would answer repeats from its idempotency store).
It prints, per rate and endpoint: requests per CPU-second of each server and their ratio,
p50/p99 from request to 202, any answer that was not 202, the SNS endpoint's CPU per event,
the sender's own share of a core, and the machine's load average (the servers share its cores
with this sender, the SNS endpoint and whatever else runs).

Run: ``.venv/bin/python bench/ingest.py [--seconds S]`` (about two minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import json
import os
import pathlib
import random
import re
import signal
import sys
import tempfile
import time
import typing
import urllib.parse
import urllib.request
import uuid

import aiobotocore.session
import uvloop
from aiohttp import web

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import _common

from fanout_ingest import attributes, classifying, config, signatures
from fanout_lab.simulators import aws, genesys

INCIDENT_RATE = 60.0
"""Events per second in an incident at 50,000 interactions a day (the seeds' figure)."""
MULTIPLES = (1, 3, 10)
SECRET = b"bench-secret"


# ------------------------------------------------------------------------ the naive handler
async def _serve_naive(port: int, topic_arn: str) -> None:
    session = aiobotocore.session.get_session()
    schemes = config.default_schemes()
    async with session.create_client("sns") as sns:

        async def handle(request: web.Request) -> web.Response:
            body = await request.read()
            if not signatures.verify(body, request.headers, schemes, [SECRET]):
                return web.json_response({"error": "signature"}, status=401)
            try:
                [event] = classifying.classify(body, ordering_key="conversationId", max_events=1)
            except (classifying.NotAnEvent, ValueError):
                return web.json_response({"error": "not_an_event"}, status=400)
            traceparent = attributes.traceparent_for(request.headers.get("traceparent"), random.getrandbits)
            message_attributes = attributes.message_attributes(
                event, source="genesys", traceparent=traceparent
            )
            try:
                await sns.publish(
                    TopicArn=topic_arn, Message=event.text, MessageAttributes=message_attributes
                )
            except Exception:
                return web.json_response(
                    {"error": "publish_failed"}, status=503, headers={"Retry-After": "5"}
                )
            return web.json_response({"accepted": 1}, status=202)

        app = web.Application()
        app.router.add_post("/events", handle)
        await _serve_until_sigterm(app, port)


# --------------------------------------------------------------------- a no-op SNS endpoint
_BATCH_ID = re.compile(rb"PublishBatchRequestEntries\.member\.\d+\.Id=([^&]*)")
_NAMESPACE = "http://sns.amazonaws.com/doc/2010-03-31/"


async def _serve_null_sns(port: int) -> None:
    """Answers Publish and PublishBatch at once, every entry successful, with keep-alive: what
    the servers cost when SNS costs nothing (moto's SNS spends about a millisecond of CPU per
    event and closes every connection)."""

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        if b"Action=PublishBatch" in body:
            members = "".join(
                f"<member><Id>{entry.decode()}</Id><MessageId>{uuid.uuid4()}</MessageId></member>"
                for entry in _BATCH_ID.findall(body)
            )
            text = (
                f'<PublishBatchResponse xmlns="{_NAMESPACE}"><PublishBatchResult>'
                f"<Successful>{members}</Successful><Failed/></PublishBatchResult>"
                "<ResponseMetadata><RequestId>null</RequestId></ResponseMetadata></PublishBatchResponse>"
            )
        else:
            text = (
                f'<PublishResponse xmlns="{_NAMESPACE}"><PublishResult><MessageId>{uuid.uuid4()}'
                "</MessageId></PublishResult><ResponseMetadata><RequestId>null</RequestId>"
                "</ResponseMetadata></PublishResponse>"
            )
        return web.Response(text=text, content_type="text/xml")

    app = web.Application(client_max_size=4 * 1024 * 1024)
    app.router.add_post("/", handle)
    await _serve_until_sigterm(app, port)


async def _serve_until_sigterm(app: web.Application, port: int) -> None:
    """Serve ``app`` on loopback, say ``ready`` on stdout (the parent waits for it), stop on SIGTERM."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=2048).start()
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()


# ------------------------------------------------------------------------------ the servers
class Server(_common.Child):
    def __init__(
        self, name: str, command: list[str], port: int, *, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.url = f"http://127.0.0.1:{port}/events"
        super().__init__(command, env=env, log_name=f"ingest-{name.replace(' ', '-')}")

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until ``/readyz`` answers 200 (the gateway; the naive server says "ready" instead)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}; see {self.log_path}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(self.url.replace("/events", "/readyz"), timeout=1),
            ):
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready within {timeout}s; see {self.log_path}")


def _sns_env(sns_url: str | None) -> dict[str, str] | None:
    return None if sns_url is None else {"AWS_ENDPOINT_URL_SNS": sns_url}


def gateway(topic_arn: str, secret_path: pathlib.Path, *, sns_url: str | None = None) -> Server:
    manifest = {
        "apiVersion": "fanout.dev/v1alpha1",
        "kind": "FanoutIngest",
        "metadata": {"name": "bench"},
        "spec": {
            "topic": {"arn": topic_arn},
            "sources": [{"name": "genesys", "secrets": [{"file": str(secret_path)}]}],
            "logLevel": "WARNING",
        },
    }
    port = aws.free_port()
    path = pathlib.Path(tempfile.gettempdir()) / f"fanout-bench-ingest-{os.getpid()}-{port}.json"
    path.write_text(json.dumps(manifest))
    command = [sys.executable, "-m", "fanout_ingest", "--config", str(path), "--http-port", str(port)]
    command += ["--http-host", "127.0.0.1", "--drain-seconds", "0"]
    server = Server("gateway", command, port, env=_sns_env(sns_url))
    server.wait_ready()
    return server


def naive(topic_arn: str, *, sns_url: str | None = None) -> Server:
    port = aws.free_port()
    command = [
        sys.executable,
        str(pathlib.Path(__file__)),
        "naive",
        "--port",
        str(port),
        "--topic",
        topic_arn,
    ]
    server = Server("naive", command, port, env=_sns_env(sns_url))
    server.read_line()
    return server


class NullSns(_common.Child):
    """The no-op SNS endpoint in its own process."""

    def __init__(self) -> None:
        port = aws.free_port()
        self.url = f"http://127.0.0.1:{port}"
        super().__init__(
            [sys.executable, str(pathlib.Path(__file__)), "null-sns", "--port", str(port)],
            log_name="null-sns",
        )
        self.read_line()


# ------------------------------------------------------------------------------- the load
class Step:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.other: dict[int, int] = {}
        self.late = 0.0
        """Seconds from the last request sent to the last answer: the backlog the server built."""


class _Exchange(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection of the sender: a request written, its status read.

    Requests are bytes made before the clock starts and answers are read only as far as the
    status line and ``Content-Length`` (aiohttp's servers send one), so that the sender, which
    shares the machine's two cores with the servers and the SNS endpoint, costs a fraction of
    what a full HTTP client costs per request (aiohttp's client: ~0.4 ms of CPU).
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._buffer = bytearray()
        self._status = 0
        self._body_left = -1
        self._answer: asyncio.Future[int] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = typing.cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._body_left < 0:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status_line, *headers = bytes(self._buffer[:end]).decode("latin-1").split("\r\n")
            self._status = int(status_line.split(" ", 2)[1])
            self._body_left = 0
            for header in headers:
                name, _, value = header.partition(":")
                if name.strip().lower() == "content-length":
                    self._body_left = int(value)
            del self._buffer[: end + 4]
        if len(self._buffer) >= self._body_left:
            del self._buffer[: self._body_left]
            self._body_left = -1
            if self._answer is not None and not self._answer.done():
                self._answer.set_result(self._status)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(ConnectionError("connection closed"))

    async def exchange(self, request: bytes) -> int:
        assert self.transport is not None
        self._answer = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self._answer


def _requests(url: str, bodies: list[bytes]) -> list[bytes]:
    """Each body as a whole signed HTTP/1.1 request, as a Genesys webhook integration sends it."""
    address = urllib.parse.urlsplit(url)
    base64 = config.DigestEncoding.BASE64
    return [
        (
            f"POST {address.path} HTTP/1.1\r\nHost: {address.netloc}\r\n"
            "Content-Type: application/json\r\n"
            f"{config.HUB_SIGNATURE_HEADER}: {signatures.sign(SECRET, body, base64)}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode("latin-1")
        + body
        for body in bodies
    ]


CONNECTIONS = 400
"""At most this many connections to a server at once; a request that finds none idle waits for
one, its wait counted in its latency (as aiohttp's client pool did)."""


async def _load(url: str, requests: list[bytes], rate: float) -> Step:
    """Open loop: request i (made by :func:`_requests`) leaves at i / rate, whatever earlier
    answers took, on a connection idle then (a new one while fewer than CONNECTIONS are open;
    else it waits for one). Every request gets 15 s to be answered, wait included."""
    step = Step()
    address = urllib.parse.urlsplit(url)
    host, port = address.hostname or "127.0.0.1", address.port or 80
    loop = asyncio.get_running_loop()
    idle: asyncio.Queue[_Exchange] = asyncio.Queue()
    opened: list[_Exchange] = []
    usable = 0

    async def one(request: bytes) -> None:
        nonlocal usable
        started = time.perf_counter()
        connection: _Exchange | None = None
        try:
            async with asyncio.timeout(15):
                if idle.empty() and usable < CONNECTIONS:
                    usable += 1  # counted before the connect yields
                    connection = _Exchange()
                    opened.append(connection)
                    made = connection
                    await loop.create_connection(lambda: made, host, port)
                else:
                    connection = await idle.get()
                status = await connection.exchange(request)
        except (OSError, TimeoutError):
            step.other[0] = step.other.get(0, 0) + 1
            if connection is not None:  # its answer may still come: never reused
                usable -= 1
                if connection.transport is not None:
                    connection.transport.close()
            return
        seconds = time.perf_counter() - started
        if connection.closed:
            usable -= 1
        else:
            idle.put_nowait(connection)
        if status == 202:
            step.latencies.append(seconds)
        else:
            step.other[status] = step.other.get(status, 0) + 1

    started = time.perf_counter()
    tasks = []
    for index, request in enumerate(requests):
        delay = started + index / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(request)))
    sent = time.perf_counter()
    await asyncio.gather(*tasks)
    step.late = time.perf_counter() - sent
    for connection in opened:
        if connection.transport is not None:
            connection.transport.close()
    return step


def _percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


@dataclasses.dataclass
class Measured:
    per_cpu_second: float
    step: Step
    sns_cpu_per_event: float
    cores: float
    """The server's CPU seconds per second of the step: the share of the machine it used."""
    entries_per_call: float | None
    """The gateway's events per PublishBatch call during the step (from its /metrics)."""
    sender_cores: float
    """This process's CPU seconds per second of the step: what the sender took from the machine."""


_BATCH_METRIC = "fanout_ingest_publish_batch_entries"


def _batch_totals(server: Server) -> tuple[float, float] | None:
    """(entries, calls) so far, from the gateway's /metrics; None for the naive handler."""
    if server.name != "gateway":
        return None
    with urllib.request.urlopen(server.url.replace("/events", "/metrics"), timeout=5) as reply:
        text = reply.read().decode()
    values = {
        name: float(value)
        for name, _, value in (line.partition(" ") for line in text.splitlines())
        if name in (f"{_BATCH_METRIC}_sum", f"{_BATCH_METRIC}_count")
    }
    return values.get(f"{_BATCH_METRIC}_sum", 0.0), values.get(f"{_BATCH_METRIC}_count", 0.0)


async def _measure(
    server: Server, warm_up: list[bytes], bodies: list[bytes], rate: float, sns_pid: int
) -> Measured:
    await _load(server.url, _requests(server.url, warm_up), 50)  # warm the connections and the code
    requests = _requests(server.url, bodies)  # the clocks start after the HMACs
    batches_before = _batch_totals(server)
    before, sns_before, started = server.cpu_seconds(), _common.cpu_seconds(sns_pid), time.perf_counter()
    sender_before = time.process_time()
    step = await _load(server.url, requests, rate)
    cpu, sns_cpu = server.cpu_seconds() - before, _common.cpu_seconds(sns_pid) - sns_before
    sender_cpu = time.process_time() - sender_before
    wall = time.perf_counter() - started
    accepted = len(step.latencies)
    batches_after = _batch_totals(server)
    entries_per_call = None
    if batches_before is not None and batches_after is not None:
        calls = batches_after[1] - batches_before[1]
        entries_per_call = (batches_after[0] - batches_before[0]) / calls if calls else None
    return Measured(
        per_cpu_second=accepted / cpu if cpu > 0 else float("inf"),
        step=step,
        sns_cpu_per_event=sns_cpu / accepted if accepted else float("nan"),
        cores=cpu / wall,
        entries_per_call=entries_per_call,
        sender_cores=sender_cpu / wall,
    )


async def _topic() -> str:
    session = aiobotocore.session.get_session()
    async with session.create_client("sns") as sns:
        return str((await sns.create_topic(Name="bench-ingest"))["TopicArn"])


_seeds = itertools.count(11)


def _bodies(count: int) -> list[bytes]:
    """``count`` events no step has sent before (a new generator seed each time)."""
    generator = genesys.Generator(next(_seeds))
    return [json.dumps(event.detail).encode() for event in generator.day(count // 10 + 1)][:count]


def _print_step(label: str, sns: str, rate: float, results: dict[str, Measured]) -> None:
    print(f"  SNS = {sns}")
    for name, result in results.items():
        p50 = _percentile(result.step.latencies, 0.5) * 1000
        p99 = _percentile(result.step.latencies, 0.99) * 1000
        other = f", not 202: {result.step.other}" if result.step.other else ""
        print(
            _common.figure_line(
                f"  {name}: requests per CPU-second, p50 / p99 ms",
                f"{result.per_cpu_second:7.0f}  {p50:6.1f} / {p99:6.1f}{other}",
            )
        )
        needs = rate / result.per_cpu_second
        print(
            f"      {1000 / result.per_cpu_second:.2f} ms CPU per request: needs {needs:.2f} of a core at"
            f" this rate, used {result.cores:.2f}; last answer {result.step.late:.2f} s after the last"
            f" request; SNS CPU per event {result.sns_cpu_per_event * 1000:.2f} ms; the sender used"
            f" {result.sender_cores:.2f} of a core"
            + ("" if result.entries_per_call is None else f"; {result.entries_per_call:.1f} events per call")
        )
    ratio = results["gateway"].per_cpu_second / results["naive"].per_cpu_second
    print(_common.ratio_line(f"  gateway / naive, requests per CPU-second ({label})", ratio))


def _load_average() -> str:
    return " ".join(f"{value:.1f}" for value in os.getloadavg())


def _cpu_available(seconds: float = 1.0) -> float:
    """The share of a core a busy process gets here now (1.0 on an idle machine): what the
    servers, the sender and the SNS endpoint share."""
    started, cpu = time.perf_counter(), time.process_time()
    while time.perf_counter() - started < seconds:
        pass
    return (time.process_time() - cpu) / (time.perf_counter() - started)


def _machine() -> str:
    return f"load average {_load_average()}, a busy process gets {_cpu_available():.2f} of a core"


async def run(seconds: float, moto_pid: int) -> None:
    topic_arn = await _topic()
    secret_path = pathlib.Path(tempfile.gettempdir()) / f"fanout-bench-ingest-secret-{os.getpid()}"
    secret_path.write_bytes(SECRET)
    print(f"bench/ingest.py: {seconds:.0f} s per step, one Genesys event (~1 KB) per signed request")
    print(f"before: {_machine()} ({os.cpu_count()} CPUs)")
    with (
        NullSns() as null,
        gateway(topic_arn, secret_path) as door,
        naive(topic_arn) as plain,
        gateway(topic_arn, secret_path, sns_url=null.url) as null_door,
        naive(topic_arn, sns_url=null.url) as null_plain,
    ):
        endpoints = (("moto", moto_pid, door, plain), ("a no-op endpoint", null.pid, null_door, null_plain))
        for multiple in MULTIPLES:
            rate = INCIDENT_RATE * multiple
            bodies = _bodies(int(rate * seconds))
            print(f"\n{multiple}x incident rate = {rate:.0f} requests/s")
            ratios, gateway_p99 = {}, {}
            for sns, sns_pid, *servers in endpoints:
                results = {
                    server.name: await _measure(server, _bodies(50), bodies, rate, sns_pid)
                    for server in servers
                }
                _print_step(f"{multiple}x, {sns}", sns, rate, results)
                ratios[sns] = results["gateway"].per_cpu_second / results["naive"].per_cpu_second
                gateway_p99[sns] = _percentile(results["gateway"].step.latencies, 0.99) * 1000
            if multiple == max(MULTIPLES):
                print(
                    _common.ratio_line(
                        "gateway / naive, requests per CPU-second, moto", ratios["moto"], target="≥ 3"
                    )
                )
                for sns, p99 in gateway_p99.items():
                    print(_common.ratio_line(f"gateway p99 request → 202, ms, {sns}", p99, target="< 50"))
    print(f"\nafter: {_machine()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds of load per step")
    naive_command = commands.add_parser("naive")
    naive_command.add_argument("--port", type=int, required=True)
    naive_command.add_argument("--topic", required=True)
    null_command = commands.add_parser("null-sns")
    null_command.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    if args.command == "naive":
        asyncio.run(_serve_naive(args.port, args.topic))
        return
    if args.command == "null-sns":
        asyncio.run(_serve_null_sns(args.port))
        return
    with _common.aws_endpoint() as moto:
        assert moto.pid is not None
        # The sender on uvloop too: the less CPU it takes, the less it competes with the servers.
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(run(args.seconds, moto.pid))


if __name__ == "__main__":
    main()
