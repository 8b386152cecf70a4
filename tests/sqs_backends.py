"""Two independent SQS implementations for the tests: moto and LocalStack.

Used by tests/conftest.py (fixtures ``localstack_server`` and ``sqs_backend``). A test that
takes ``sqs_backend`` runs once on moto and once on LocalStack, with the standard AWS
variables pointing SQS and SNS at that backend for the test's duration, so an in-process
``Worker`` or a ``fanout-worker`` child reaches it exactly as it reaches AWS. A guarantee that
holds on one implementation only is a reading of that implementation, not a guarantee.

LocalStack needs Python >= 3.12 and runs from its own venv, ``.tools/localstack``
(``.ci/get-localstack``, run by ``make unit``), started without Docker on a free loopback
port, once per session, with its state, caches and ``HOME`` in a temporary directory. Without
that venv the LocalStack runs skip, naming what is missing; ``FANOUT_REQUIRE_LOCALSTACK=1``
(set by ``.ci/run``) fails them instead, so CI never silently loses the second implementation.

Where the two differ (moto 5.2, LocalStack 2026.3, checked against both servers; the ones the
worker relies on are tests in tests/test_sqs_backends.py):

- FIFO group lock after ChangeMessageVisibility: receive m0, m1, m2 of one group, set m1 and m2
  to visibility 0 and m0 to 3 s. moto keeps the group locked (the next receive is empty, and
  after 3 s it returns m0, m1, m2 in order); LocalStack serves m1 and m2 at once.
- FIFO group coming back after a visibility timeout (a consumer that crashed holding m0, m1,
  m2): LocalStack serves m0, m1, m2 in order; moto serves m2 alone first (it releases the group
  at the last pending message its scan meets, and serves from there). The same happens on moto
  whenever several messages of a group become visible together (the same ChangeMessageVisibility
  delay for all, or the head's delay shorter than the rest's). So no hand-back schedule keeps
  order on both: moto needs the later messages visible before the head, which is what LocalStack
  reads as "unlocked". A group kept in flight (the failed head retried in place) is in order on
  both until a crash; after one, moto redelivers the tail first whatever the worker does.
- Both lock a group while one of its messages is in flight with no visibility change; moto
  can hand a second concurrent long poll a locked group's next message (tests/test_worker_e2e).
- LocalStack notices an expired visibility timeout about once a second (a 2 s timeout comes
  back after 2-3 s); moto at the next receive.
- Body and attribute characters: LocalStack rejects what real SQS rejects (anything outside
  #x9 | #xA | #xD | #x20-#xD7FF | #xE000-#xFFFD | #x10000-#x10FFFF, e.g. "\\x01", "\\ufffe"):
  SendMessage fails with ``InvalidMessageContents`` (a string attribute value with
  ``InvalidParameterValue``), SendMessageBatch reports the entry in ``Failed`` with
  ``SenderFault: false``. moto accepts them. A dead-letter copy whose reason attribute quotes
  such a character is refused on LocalStack and AWS alike.
- ChangeMessageVisibility on a deleted message: moto ``ReceiptHandleIsInvalid``, LocalStack
  ``InvalidParameterValue`` ("Value ... for parameter ReceiptHandle is invalid. Reason: Message
  does not exist or is not available for visibility timeout change", as AWS words it).
- Batch limits: 11 entries is ``AWS.SimpleQueueService.TooManyEntriesInBatchRequest`` on both
  (moto checks duplicate ids first: ``BatchEntryIdsNotDistinct``); MaxNumberOfMessages 11 and
  WaitTimeSeconds 21 are ``InvalidParameterValue`` on both. Neither enforces the total batch size.
- ChangeMessageVisibility above 43200 s: moto checks the value (``InvalidParameterValue``)
  before the receipt handle, LocalStack the handle first.
- Receive counts, attribute names (``ApproximateReceiveCount``, ``SequenceNumber``,
  ``MessageGroupId``...), visibility 0 on a standard queue (the message is received again at
  once, count + 1), a stale receipt handle (deleting or changing it still works), and a
  missing queue (``AWS.SimpleQueueService.NonExistentQueue``) agree.
- Queue URLs: moto ``http://127.0.0.1:PORT/123456789012/NAME``; LocalStack (path strategy)
  ``http://127.0.0.1:PORT/queue/us-east-1/000000000000/NAME``. Take the URL CreateQueue returns.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from types import TracebackType
from typing import Any, Literal, NoReturn

import pytest

from fanout_lab.simulators import aws

ROOT = pathlib.Path(__file__).resolve().parent.parent
LOCALSTACK_VENV = ROOT / ".tools" / "localstack"
REQUIRE_VARIABLE = "FANOUT_REQUIRE_LOCALSTACK"

BackendName = Literal["moto", "localstack"]
BACKENDS: tuple[BackendName, ...] = ("moto", "localstack")


def localstack_missing() -> str | None:
    """Why LocalStack cannot run here (one line), or None when its venv is installed."""
    if not (LOCALSTACK_VENV / "bin" / "python").is_file() or not any(LOCALSTACK_VENV.glob(".installed-*")):
        return (
            f"LocalStack is not installed in {LOCALSTACK_VENV.relative_to(ROOT)} "
            "(it needs Python 3.12 or 3.13: install one, then run .ci/get-localstack)"
        )
    return None


def localstack_required() -> bool:
    return os.environ.get(REQUIRE_VARIABLE, "") not in ("", "0")


def params(**xfails: str) -> list[Any]:
    """``sqs_backend`` params, xfail(strict) on the backends named, with the reason given:
    ``@pytest.mark.parametrize("sqs_backend", params(localstack="why"), indirect=True)``."""
    return [
        pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=xfails[name]))
        if name in xfails
        else name
        for name in BACKENDS
    ]


class LocalStackServer:
    """``with LocalStackServer() as ls: ls.endpoint_url`` — LocalStack core (SQS and SNS only)
    in a child process on a free loopback port, its files in a temporary directory."""

    def __init__(
        self,
        python: pathlib.Path = LOCALSTACK_VENV / "bin" / "python",
        *,
        cache: pathlib.Path = LOCALSTACK_VENV / "cache",
        host: str = "127.0.0.1",
    ) -> None:
        self.python = python
        self.cache = cache
        self.host = host
        self.port = aws.free_port(host)
        self.directory = pathlib.Path(tempfile.mkdtemp(prefix="fanout-localstack-"))
        self.log_path = self.directory / "localstack.log"
        self.startup_seconds: float | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _environment(self) -> dict[str, str]:
        # From scratch: AWS_* variables of the caller (the moto session's) would redirect
        # LocalStack's own internal clients.
        keep = {name: os.environ[name] for name in ("PATH", "LANG", "LC_ALL") if name in os.environ}
        return {
            **keep,
            "HOME": str(self.directory),
            "XDG_CACHE_HOME": str(self.directory / "cache"),
            "TEMP": str(self.directory / "tmp"),  # LocalStack warns about TMPDIR, not TEMP
            "FILESYSTEM_ROOT": str(self.directory / "fs"),
            "SERVICES": "sqs,sns",
            "EAGER_SERVICE_LOADING": "1",
            "GATEWAY_LISTEN": f"{self.host}:{self.port}",
            "LOCALSTACK_HOST": f"{self.host}:{self.port}",
            "SQS_ENDPOINT_STRATEGY": "path",
            "SQS_DISABLE_CLOUDWATCH_METRICS": "1",
            "OVERRIDE_IN_DOCKER": "0",
            "DNS_ADDRESS": "0",
            "SKIP_SSL_CERT_DOWNLOAD": "1",
            "DISABLE_EVENTS": "1",
        }

    def start(self, timeout: float = 60.0) -> None:
        (self.directory / "tmp").mkdir(exist_ok=True)
        # The service catalog index LocalStack builds on its first request (about 4 s) is kept
        # beside its venv, so only the first session on a machine pays for it.
        cache = self.directory / "fs" / "var" / "lib" / "localstack" / "cache"
        cache.parent.mkdir(parents=True)
        self.cache.mkdir(parents=True, exist_ok=True)
        cache.symlink_to(self.cache, target_is_directory=True)
        started = time.monotonic()
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                [str(self.python), "-m", "localstack.runtime.main"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._environment(),
                cwd=self.directory,
            )
        while time.monotonic() - started < timeout:
            if self._process.poll() is not None:
                self._fail(f"LocalStack exited with {self._process.returncode}")
            if self._sqs_is_up():
                self._first_request()
                self.startup_seconds = time.monotonic() - started
                return
            time.sleep(0.1)
        self._fail(f"LocalStack did not serve SQS on {self.endpoint_url} within {timeout:.0f}s")

    def _sqs_is_up(self) -> bool:
        with contextlib.suppress(urllib.error.URLError, OSError, ValueError):
            with urllib.request.urlopen(f"{self.endpoint_url}/_localstack/health", timeout=1) as reply:
                services = json.loads(reply.read()).get("services", {})
            return bool(services.get("sqs") in ("available", "running"))
        return False

    def _first_request(self) -> None:
        """One SQS call (ListQueues; LocalStack does not check signatures), so that its one-time
        set-up is part of the start, not of the first test."""
        request = urllib.request.Request(
            self.endpoint_url,
            data=b"Action=ListQueues&Version=2012-11-05",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30):
                pass
        except (urllib.error.URLError, OSError) as error:
            self._fail(f"LocalStack answered its health check but not ListQueues ({error})")

    def _fail(self, message: str) -> NoReturn:
        log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        self.stop()
        raise RuntimeError(f"{message}; its log:\n{log[-4000:]}")

    def stop(self) -> None:
        if self._process is not None:
            aws.stop_process(self._process)
            self._process = None
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> LocalStackServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def environment(endpoint_url: str, region: str = aws.DEFAULT_REGION) -> dict[str, str]:
    """The standard AWS variables that send SQS and SNS calls to ``endpoint_url``
    (other services keep ``AWS_ENDPOINT_URL``)."""
    return {
        "AWS_ENDPOINT_URL_SQS": endpoint_url,
        "AWS_ENDPOINT_URL_SNS": endpoint_url,
        "AWS_REGION": region,
        "AWS_DEFAULT_REGION": region,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_EC2_METADATA_DISABLED": "true",
    }


@dataclasses.dataclass(frozen=True)
class SqsBackend:
    """One SQS implementation, as a test sees it: its name, endpoint and an SQS client."""

    name: BackendName
    endpoint_url: str
    sqs: Any  # an aiobotocore SQS client

    @property
    def environment(self) -> dict[str, str]:
        return environment(self.endpoint_url)
