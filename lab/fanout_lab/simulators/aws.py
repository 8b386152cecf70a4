"""An embedded AWS endpoint: moto's server in a child process on a free loopback port.

Used by the test fixtures, ``fanout demo`` and the benchmarks. A child process keeps
moto's CPU off the worker's event loop and its state away from the caller's; it is
reached over real HTTP exactly as AWS is, through the standard ``AWS_*`` variables
(:meth:`MotoServer.environment`).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from types import TracebackType
from typing import Any

DEFAULT_REGION = "us-east-1"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class MotoServer:
    """``with MotoServer() as aws: aws.endpoint_url`` — started and stopped with the block."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def environment(self, region: str = DEFAULT_REGION) -> dict[str, str]:
        """The standard AWS variables that point every SDK client at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_REGION": region,
            "AWS_DEFAULT_REGION": region,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing",
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def start(self, timeout: float = 30.0) -> None:
        command = [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)]
        env = {**os.environ, "MOTO_PORT": str(self.port)}
        self._process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"moto server exited with {self._process.returncode}")
            with (
                contextlib.suppress(urllib.error.URLError, OSError),
                urllib.request.urlopen(f"{self.endpoint_url}/moto-api/", timeout=1),
            ):
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto server did not answer on {self.endpoint_url} within {timeout}s")

    def reset(self) -> None:
        """Forget every resource (between tests)."""
        request = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10):
            pass

    def stop(self) -> None:
        if self._process is None:
            return
        stop_process(self._process)
        self._process = None

    @property
    def pid(self) -> int | None:
        """The server process's id while it runs (benchmarks read its CPU time from /proc)."""
        return None if self._process is None else self._process.pid

    def __enter__(self) -> MotoServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def stop_process(process: subprocess.Popen[Any], *, timeout: float = 10.0) -> int:
    """SIGTERM a child server (if it still runs), give it ``timeout`` seconds to exit, then
    SIGKILL it; its exit code. Every child the lab starts (moto, LocalStack, the benchmarks'
    and the operator tests' processes) stops this way."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


async def create_queue(sqs: Any, name: str, *, fifo: bool = False, visibility: int = 30) -> str:
    """Create a queue (FIFO when asked; its name must then end in ``.fifo``) and return its URL."""
    attributes = {"VisibilityTimeout": str(visibility)}
    if fifo:
        attributes["FifoQueue"] = "true"
    reply = await sqs.create_queue(QueueName=name, Attributes=attributes)
    return str(reply["QueueUrl"])


async def queue_counts(sqs: Any, url: str) -> tuple[int, int]:
    """(visible, in flight), as SQS approximates them."""
    reply = await sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )
    attributes = reply["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]), int(
        attributes["ApproximateNumberOfMessagesNotVisible"]
    )


@contextlib.contextmanager
def environment(variables: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the block and restore the old values after it."""
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
