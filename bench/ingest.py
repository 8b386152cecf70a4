"""The front door under Genesys webhook load: requests per CPU-second and request → 202 latency.

Two HTTP servers, each a child process measured from ``/proc``, take the same signed
Genesys events against the same moto SNS topic:

* ``fanout-ingest --config FILE`` — the gateway (micro-batched ``PublishBatch``, metrics);
* a naive handler (below, ``naive`` subcommand) — the usual Lambda-style code as an aiohttp
  handler: verify the signature, parse, one ``sns.publish`` per request (with the same message
  attributes), then 202.

This process is the Genesys side: an open-loop sender (a fixed request rate, whatever the
answers take) at 1x, 3x and 10x the seeds' incident rate (60 events/s for 50,000
interactions a day), one event per request, alternating the two servers at each rate. It
prints, per rate: requests per CPU-second of each server and their ratio, p50/p99 from
request to 202, and any answer that was not 202. The topic has no subscription: moto delivers
to SQS inside the publish call, and its queue scans would measure moto, not the servers.

Run: ``.venv/bin/python bench/ingest.py [--seconds S]`` (about a minute).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pathlib
import random
import signal
import sys
import tempfile
import time
import urllib.request

import aiobotocore.session
import aiohttp
from aiohttp import web

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import _common

from fanout_ingest import attributes, classifying, config, signatures
from fanout_lab.simulators import aws, genesys, webhooks

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
    def __init__(self, name: str, command: list[str], port: int) -> None:
        self.name = name
        self.url = f"http://127.0.0.1:{port}/events"
        super().__init__(command, log_name=f"ingest-{name}")

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


def gateway(topic_arn: str, secret_path: pathlib.Path) -> Server:
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
    path = pathlib.Path(tempfile.gettempdir()) / f"fanout-bench-ingest-{os.getpid()}.json"
    path.write_text(json.dumps(manifest))
    port = aws.free_port()
    command = [sys.executable, "-m", "fanout_ingest", "--config", str(path), "--http-port", str(port)]
    return Server("gateway", [*command, "--http-host", "127.0.0.1", "--drain-seconds", "0"], port)


def naive(topic_arn: str) -> Server:
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
    server = Server("naive", command, port)
    server.read_line()
    return server


# ------------------------------------------------------------------------------- the load
class Step:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.other: dict[int, int] = {}


async def _load(url: str, bodies: list[bytes], rate: float, seconds: float) -> Step:
    """Open loop: request i leaves at i / rate, whatever earlier answers took."""
    step = Step()
    sender = webhooks.Sender(url, SECRET, connections=400)
    async with sender:

        async def one(body: bytes) -> None:
            try:
                answer = await sender.post_body(body)
            except (aiohttp.ClientError, TimeoutError):
                step.other[0] = step.other.get(0, 0) + 1
                return
            if answer.status == 202:
                step.latencies.append(answer.seconds)
            else:
                step.other[answer.status] = step.other.get(answer.status, 0) + 1

        count = int(rate * seconds)
        started = time.perf_counter()
        tasks = []
        for index in range(count):
            delay = started + index / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(bodies[index % len(bodies)])))
        await asyncio.gather(*tasks)
    return step


def _percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def _measure(server: Server, bodies: list[bytes], rate: float, seconds: float) -> tuple[float, Step]:
    await _load(server.url, bodies[:50], 50, 1.0)  # warm the connections and the code
    before = server.cpu_seconds()
    step = await _load(server.url, bodies, rate, seconds)
    cpu = server.cpu_seconds() - before
    return len(step.latencies) / cpu if cpu > 0 else float("inf"), step


async def _topic() -> str:
    session = aiobotocore.session.get_session()
    async with session.create_client("sns") as sns:
        return str((await sns.create_topic(Name="bench-ingest"))["TopicArn"])


def _bodies(count: int) -> list[bytes]:
    generator = genesys.Generator(11)
    return [json.dumps(event.detail).encode() for event in generator.day(count // 10 + 1)][:count]


async def run(seconds: float) -> None:
    topic_arn = await _topic()
    secret_path = pathlib.Path(tempfile.gettempdir()) / f"fanout-bench-ingest-secret-{os.getpid()}"
    secret_path.write_bytes(SECRET)
    bodies = _bodies(int(INCIDENT_RATE * max(MULTIPLES) * seconds))
    print(f"bench/ingest.py: {seconds:.0f} s per step, one Genesys event (~1 KB) per signed request")
    with gateway(topic_arn, secret_path) as door, naive(topic_arn) as plain:
        door.wait_ready()
        for multiple in MULTIPLES:
            rate = INCIDENT_RATE * multiple
            results = {}
            for server in (door, plain):
                results[server.name] = await _measure(server, bodies, rate, seconds)
            print(f"\n{multiple}x incident rate = {rate:.0f} requests/s")
            for name, (per_cpu, step) in results.items():
                p50 = _percentile(step.latencies, 0.5) * 1000
                p99 = _percentile(step.latencies, 0.99) * 1000
                other = f", not 202: {step.other}" if step.other else ""
                print(
                    _common.figure_line(
                        f"{name}: requests per CPU-second, p50 / p99 ms",
                        f"{per_cpu:7.0f}  {p50:5.1f} / {p99:5.1f}{other}",
                    )
                )
            ratio = results["gateway"][0] / results["naive"][0]
            target = "≥ 3 at 10x" if multiple == 10 else None
            print(_common.ratio_line("gateway / naive, requests per CPU-second", ratio, target=target))
            if multiple == 10:
                p99 = _percentile(results["gateway"][1].latencies, 0.99) * 1000
                print(_common.ratio_line("gateway p99 request → 202, ms", p99, target="< 50"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command")
    parser.add_argument("--seconds", type=float, default=6.0, help="seconds of load per step")
    naive_command = commands.add_parser("naive")
    naive_command.add_argument("--port", type=int, required=True)
    naive_command.add_argument("--topic", required=True)
    args = parser.parse_args()
    if args.command == "naive":
        asyncio.run(_serve_naive(args.port, args.topic))
        return
    with _common.aws_endpoint():
        asyncio.run(run(args.seconds))


if __name__ == "__main__":
    main()
