"""What the benchmarks share: an embedded AWS endpoint, child processes measured from
outside, a loopback HTTP receiver in its own process; queues, manifests and the feeder that
keeps backlogs small come from the lab's harness (``fanout_lab.harness``), which the tests
share too.

Every benchmark in ``bench/`` runs as ``.venv/bin/python bench/NAME.py`` and prints ratios
measured side by side in the same run, so the machine's speed cancels out. The pieces:

* :func:`aws_endpoint` — a moto server child process, the standard ``AWS_*`` variables set;
  :func:`keep_alive_aws_endpoint` — the same moto served by waitress, which keeps
  connections alive as AWS does (:class:`KeepAliveMoto`).
* :class:`Child` — a process started here and measured through ``/proc/<pid>``: CPU seconds
  (user + system, from ``stat``), resident and peak resident memory (``status``). Measuring
  from outside treats every variant alike: the worker and a bare loop are both children.
* :class:`Receiver` — a zero-latency (or holding) HTTP receiver in ANOTHER process, so its
  CPU is never counted against the process under test. ``python bench/_common.py receiver``
  is its entry point; ``GET /stats`` says how many events it answered and holds. It answers
  any POST 200 ``{}`` (a webhook), a Salesforce upsert ``PATCH`` 201 with Salesforce's body
  and ``Sforce-Limit-Info``, and a Splunk HEC batch 200 ``{"text":"Success","code":0}``,
  counting each event of the batch.
* :func:`feed` (``harness.send_bodies``) — sends message bodies in batches of ten while
  keeping the queue's visible backlog under a bound: moto scans the whole queue for every
  message it sends or returns, so a long queue would measure moto, not us.

Linux only (``/proc``), like the containers the worker ships in.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, Self

import aiobotocore.session
from aiohttp import web

from fanout_lab import harness
from fanout_lab.simulators import aws

REPO = pathlib.Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


# --------------------------------------------------------------------------- AWS endpoint
@contextlib.contextmanager
def aws_endpoint(*, long_queues: bool = False) -> Iterator[aws.MotoServer]:
    """A moto server child process; the standard AWS variables point at it for the block.

    ``long_queues``: moto made to keep up with long backlogs (see :class:`aws.MotoServer`).
    """
    with (
        aws.MotoServer(long_queues=long_queues) as server,
        aws.environment(server.environment()),
    ):
        for name in ("AWS_ENDPOINT_URL_SQS", "AWS_ENDPOINT_URL_SNS", "AWS_ENDPOINT_URL_DYNAMODB"):
            os.environ.pop(name, None)
        yield server


@contextlib.asynccontextmanager
async def sqs_client() -> AsyncIterator[Any]:
    session = aiobotocore.session.get_session()
    async with session.create_client("sqs") as client:
        yield client


@contextlib.contextmanager
def keep_alive_aws_endpoint() -> Iterator[KeepAliveMoto]:
    """:func:`aws_endpoint`, but on :class:`KeepAliveMoto`: AWS keeps connections alive."""
    with KeepAliveMoto() as server, aws.environment(aws.MotoServer(port=server.port).environment()):
        for name in ("AWS_ENDPOINT_URL_SQS", "AWS_ENDPOINT_URL_SNS", "AWS_ENDPOINT_URL_DYNAMODB"):
            os.environ.pop(name, None)
        yield server


make_queue = harness.make_queue
queue_counts = harness.queue_counts
feed = harness.send_bodies
wait_until_empty = harness.wait_until_empty


# ------------------------------------------------------------------------ child processes
def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (any process: the moto server's too)."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the command name: state is field 3, utime 14 and stime 15 (1-based, man 5 proc).
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class Child:
    """A child process measured through ``/proc``; stopped (SIGTERM, then SIGKILL) on exit."""

    def __init__(
        self,
        command: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        log_name: str = "child",
        cwd: pathlib.Path | None = None,
    ) -> None:
        self.log_path = pathlib.Path(tempfile.gettempdir()) / f"fanout-bench-{log_name}-{os.getpid()}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            list(command),
            stdout=subprocess.PIPE,
            stderr=self._log,
            env={**os.environ, **(env or {})},
            cwd=cwd or REPO,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process so far."""
        return cpu_seconds(self.pid)

    def _status(self, name: str) -> int:
        for line in pathlib.Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1]) * 1024
        raise KeyError(name)

    def rss_bytes(self) -> int:
        return self._status("VmRSS")

    def peak_rss_bytes(self) -> int:
        return self._status("VmHWM")

    def read_line(self, timeout: float = 30.0) -> str:
        """The next line the child prints on stdout (its readiness handshake)."""
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if line:
                return line.decode().strip()
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"child {self.pid} said nothing (exit {self.process.poll()}); see {self.log_path}")

    def stop(self, timeout: float = 20.0) -> int:
        code = aws.stop_process(self.process, timeout=timeout)
        self._log.close()
        return code

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Unlimited:
    """The half of the Sink protocol a bench stand-in without a limiter of its own answers
    alike: always accepting, nothing bounds what it takes (so the worker holds up to
    ``maxInFlight``), no use for the fleet's share, nothing buffered."""

    @property
    def accepting(self) -> bool:
        return True

    async def wait_accepting(self) -> None:
        return None

    def capacity(self) -> float | None:
        return None

    def set_fleet_share(self, share: float | None) -> None:
        return None

    async def flush(self) -> None:
        return None


class KeepAliveMoto(Child):
    """moto's application served by waitress, which keeps HTTP/1.1 connections alive.

    ``python -m moto.server`` (werkzeug) closes the connection after every answer, so each
    SQS call of a consumer under test also paid a TCP connect and close — a fifth to a third
    of a bare loop's CPU in ``bench/overhead.py``, and a cost no consumer pays against AWS,
    which keeps connections alive. Same moto, same state and answers; only the HTTP server
    differs. Enough threads for every long poll the benchmark holds open at once.
    """

    def __init__(self) -> None:
        self.port = aws.free_port()
        super().__init__(
            [sys.executable, str(pathlib.Path(__file__)), "moto", "--port", str(self.port)], log_name="moto"
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"moto exited with {self.process.returncode}; see {self.log_path}")
            with (
                contextlib.suppress(urllib.error.URLError, OSError),
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/moto-api/", timeout=1),
            ):
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto did not answer within 30 s; see {self.log_path}")


def _serve_moto(port: int) -> None:
    os.environ["MOTO_PORT"] = str(port)  # moto writes it into queue URLs
    import waitress
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    application = DomainDispatcherApplication(create_backend_app)
    waitress.serve(application, host="127.0.0.1", port=port, threads=256, connection_limit=2048, _quiet=True)


def write_manifest(spec: dict[str, Any], name: str) -> pathlib.Path:
    """A FanoutConsumer manifest file for ``fanout-worker --config``."""
    path = pathlib.Path(tempfile.gettempdir()) / f"fanout-bench-{name}-{os.getpid()}.yaml"
    return harness.write_manifest(path, harness.wrap_spec(name, spec))


class WorkerProcess(Child):
    """``fanout-worker --config FILE`` as a child; ready once ``/readyz`` answers 200."""

    def __init__(
        self,
        manifest: pathlib.Path,
        *,
        env: dict[str, str] | None = None,
        name: str,
        source: pathlib.Path | None = None,
    ) -> None:
        """``source``: a checkout whose ``workers`` to run instead of this one's (``-m`` puts
        the working directory first on the path), for A/B comparisons."""
        self.http_port = aws.free_port()
        super().__init__(
            [
                sys.executable,
                "-m",
                "workers",
                "--config",
                str(manifest),
                "--http-port",
                str(self.http_port),
                "--http-host",
                "127.0.0.1",
            ],
            env=env,
            log_name=name,
            cwd=source,
        )

    def wait_ready(self, timeout: float = 30.0, *, probe: str = "readyz") -> None:
        """Until ``/readyz`` answers 200 (``probe="healthz"``: until the worker is up and
        serving, its pollers started — readiness also waits for the first receive to return,
        which on an empty queue takes a whole long poll)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode}; see {self.log_path}")
            url = f"http://127.0.0.1:{self.http_port}/{probe}"
            with (
                contextlib.suppress(urllib.error.URLError, OSError),
                urllib.request.urlopen(url, timeout=1) as reply,
            ):
                if reply.status == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"worker not ready within {timeout}s; see {self.log_path}")


# ------------------------------------------------------------------------------ receiver
class Receiver(Child):
    """The HTTP receiver in its own process. ``hold=True`` answers nothing until released."""

    def __init__(self, *, hold: bool = False, latency: float = 0.0) -> None:
        self.port = aws.free_port()
        command = [sys.executable, str(pathlib.Path(__file__)), "receiver", "--port", str(self.port)]
        if hold:
            command.append("--hold")
        if latency:
            command += ["--latency", str(latency)]
        super().__init__(command, log_name="receiver")
        if self.read_line() != "ready":
            raise RuntimeError(f"receiver did not start; see {self.log_path}")

    @property
    def url(self) -> str:
        """Where a webhook posts."""
        return f"http://127.0.0.1:{self.port}/events"

    @property
    def base_url(self) -> str:
        """The root a crm (Salesforce upsert PATCH) or siem (Splunk HEC) sink appends its path to."""
        return f"http://127.0.0.1:{self.port}"

    def _call(self, path: str, method: str = "GET") -> dict[str, Any]:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method=method)
        with urllib.request.urlopen(request, timeout=10) as reply:
            result: dict[str, Any] = json.loads(reply.read())
            return result

    def stats(self) -> dict[str, Any]:
        """``{"answered": n, "held": m}``."""
        return self._call("/stats")

    def release(self) -> None:
        """Answer every held request (200) and stop holding."""
        self._call("/release", method="POST")


HEC_PATH = "/services/collector/event"
_HEC_OK = '{"text":"Success","code":0}'
_SALESFORCE_PATH = "/services/data/"
_UPSERT_OK = '{"id":"a0B5f000001bench","success":true,"errors":[],"created":true}'
_SALESFORCE_HEADERS = {"Sforce-Limit-Info": "api-usage=25/100000"}


def _hec_events(body: bytes) -> int:
    """How many event objects a HEC batch holds (concatenated JSON objects)."""
    decoder, text, position, count = json.JSONDecoder(), body.decode(), 0, 0
    while position < len(text):
        _, position = decoder.raw_decode(text, position)
        count += 1
        while position < len(text) and text[position].isspace():
            position += 1
    return count


async def _serve_receiver(port: int, hold: bool, latency: float) -> None:
    answered = 0
    released = asyncio.Event()
    if not hold:
        released.set()
    held = 0

    async def receive(request: web.Request) -> web.Response:
        nonlocal answered, held
        body = await request.read()
        if not released.is_set():
            held += 1
            await released.wait()
            held -= 1
        if latency:
            await asyncio.sleep(latency)
        if request.path.endswith(HEC_PATH):
            answered += _hec_events(body)
            return web.Response(text=_HEC_OK, content_type="application/json")
        answered += 1
        if request.method == "PATCH" and request.path.startswith(_SALESFORCE_PATH):
            return web.Response(
                status=201, text=_UPSERT_OK, content_type="application/json", headers=_SALESFORCE_HEADERS
            )
        return web.Response(text="{}", content_type="application/json")

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"answered": answered, "held": held})

    async def release(request: web.Request) -> web.Response:
        released.set()
        return web.json_response({"released": True})

    app = web.Application()
    app.router.add_get("/stats", stats)
    app.router.add_post("/release", release)
    app.router.add_post("/{tail:.*}", receive)
    app.router.add_patch("/{tail:.*}", receive)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=2048).start()
    print("ready", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()


# -------------------------------------------------------------------------------- output
def ratio_line(label: str, value: float, *, target: str | None = None) -> str:
    suffix = f"   (target {target})" if target else ""
    return f"  {label:<58} {value:>10.3f}{suffix}"


def figure_line(label: str, value: str) -> str:
    return f"  {label:<58} {value:>10}"


def mib(value: float) -> str:
    return f"{value / (1024 * 1024):.1f} MiB"


def main(argv: Sequence[str] | None = None) -> None:
    """Helper processes; without arguments (``make bench`` runs every ``bench/*.py``) nothing."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if not arguments:
        print("bench/_common.py: shared helpers of the other benchmarks (nothing to measure)")
        return
    parser = argparse.ArgumentParser(description="bench helper processes")
    commands = parser.add_subparsers(dest="command", required=True)
    receiver = commands.add_parser("receiver")
    receiver.add_argument("--port", type=int, required=True)
    receiver.add_argument("--hold", action="store_true")
    receiver.add_argument("--latency", type=float, default=0.0)
    moto = commands.add_parser("moto")
    moto.add_argument("--port", type=int, required=True)
    args = parser.parse_args(arguments)
    if args.command == "receiver":
        asyncio.run(_serve_receiver(args.port, args.hold, args.latency))
    elif args.command == "moto":
        _serve_moto(args.port)


if __name__ == "__main__":
    main()
