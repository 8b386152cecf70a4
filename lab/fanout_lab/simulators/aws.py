"""An embedded AWS endpoint: moto's server in a child process on a free loopback port.

Used by the test fixtures, ``fanout demo`` and the benchmarks. A child process keeps
moto's CPU off the worker's event loop and its state away from the caller's; it is
reached over real HTTP exactly as AWS is, through the standard ``AWS_*`` variables
(:meth:`MotoServer.environment`).

``MotoServer(long_queues=True)`` starts moto through this module (``python -m
fanout_lab.simulators.aws``), which first mends what makes moto slow or wrong with long
queues and concurrent clients (:func:`mend_moto`): for tests and benchmarks that queue
hundreds of messages and run several consumers at once.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
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

    def __init__(
        self, host: str = "127.0.0.1", port: int | None = None, *, long_queues: bool = False
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.long_queues = long_queues
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

    def command(self) -> list[str]:
        """How the child is started: moto's server, mended first with ``long_queues``."""
        module = __name__ if self.long_queues else "moto.server"
        return [sys.executable, "-m", module, "-H", self.host, "-p", str(self.port)]

    def start(self, timeout: float = 30.0) -> None:
        command = self.command()
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


def mend_moto() -> None:
    """Make moto keep up with long queues and concurrent clients, without changing what it answers.

    * moto scans every message of a queue, in flight included, several times per message it
      receives or sends (it even computes every queue attribute per message, to read one
      setting), and each scan asks every message ``visible``/``delayed`` through a datetime
      round trip of ~8 µs: a backlog of 900 made it hand out ~20 messages per second on two
      cores. Those two questions are answered from ``time.time()`` (the same epoch
      milliseconds) and the retention period is read directly: ~300 per second.
    * Its delete rebuilds the queue's message list without the queue's lock, so a message
      sent meanwhile was lost (9 of 900 in one run) and one deleted meanwhile came back: it
      deletes under the lock now.
    * DynamoDB's conditional writes are atomic; moto's threaded server checks and writes
      without a lock (two clients could both win one condition): item operations run one at
      a time.
    """
    from moto.dynamodb import models as dynamodb_models
    from moto.sqs import models

    def retained(self: Any, queue_name: str, message: Any) -> bool:
        retention = float(self.get_queue(queue_name).message_retention_period)
        return bool(retention + message.sent_timestamp / 1000 > time.time())

    models.Message.visible = property(lambda self: time.time() * 1000.0 > self.visible_at)  # type: ignore[method-assign,assignment]
    models.Message.delayed = property(lambda self: time.time() * 1000.0 < self.delayed_until)  # type: ignore[method-assign,assignment]
    models.SQSBackend.is_message_valid_based_on_retention_period = retained  # type: ignore[method-assign]
    unlocked_delete = models.Queue.delete_message

    def delete_message(self: Any, receipt_handle: str) -> None:
        with self._messages_lock:
            unlocked_delete(self, receipt_handle)

    models.Queue.delete_message = delete_message  # type: ignore[method-assign]
    one_at_a_time = threading.Lock()
    backend = dynamodb_models.DynamoDBBackend
    for name in ("put_item", "update_item", "delete_item", "get_item"):
        unlocked = getattr(backend, name)

        def locked(self: Any, *args: Any, _unlocked: Any = unlocked, **kwargs: Any) -> Any:
            with one_at_a_time:
                return _unlocked(self, *args, **kwargs)

        setattr(backend, name, locked)


if __name__ == "__main__":
    from moto import server

    mend_moto()
    server.main(sys.argv[1:])
