"""Shared fixtures: a real moto server on a loopback port, reached over HTTP with aiobotocore,
and ``sqs_backend``, which runs a test on moto and again on LocalStack (tests/sqs_backends.py)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiobotocore.session
import hypothesis
import pytest

from fanout_lab.simulators import aws
from tests import external_tools, sqs_backends
from tests.operator_harness import kube_api, kube_client, kube_namespace  # noqa: F401  (operator e2e fixtures)
from tests.raw_http import serve  # noqa: F401  (the sinks transport tests raw servers)

# The properties are about values, not speed: a busy 2-core machine (the suite runs on two
# processes beside moto and LocalStack) may pause any example past hypothesis' 200 ms
# deadline, which then reports a correct property as flaky. Speed goals live in bench/.
hypothesis.settings.register_profile("fanout", deadline=None)
hypothesis.settings.load_profile("fanout")


@pytest.fixture(scope="session")
def moto_server() -> Iterator[aws.MotoServer]:
    """One moto server for the session; the standard AWS variables point at it."""
    with aws.MotoServer() as server, aws.environment(server.environment()):
        # Endpoint overrides for single services would bypass the server: clear them.
        for name in ("AWS_ENDPOINT_URL_SQS", "AWS_ENDPOINT_URL_SNS", "AWS_ENDPOINT_URL_DYNAMODB"):
            os.environ.pop(name, None)
        yield server


@pytest.fixture
async def sqs(moto_server: aws.MotoServer) -> AsyncIterator[Any]:
    """An aiobotocore SQS client talking to the moto server."""
    session = aiobotocore.session.get_session()
    async with session.create_client("sqs") as client:
        yield client


@pytest.fixture
async def dynamodb(moto_server: aws.MotoServer) -> AsyncIterator[Any]:
    session = aiobotocore.session.get_session()
    async with session.create_client("dynamodb") as client:
        yield client


@pytest.fixture
async def sns(moto_server: aws.MotoServer) -> AsyncIterator[Any]:
    session = aiobotocore.session.get_session()
    async with session.create_client("sns") as client:
        yield client


@pytest.fixture(scope="session")
def localstack_server() -> Iterator[sqs_backends.LocalStackServer]:
    """One LocalStack (SQS, SNS) for the session; skips when it is not installed, fails then
    in CI or when FANOUT_REQUIRE_LOCALSTACK=1."""
    missing = sqs_backends.localstack_missing()
    if missing:
        external_tools.unavailable(missing, required=sqs_backends.localstack_required())
    with sqs_backends.LocalStackServer() as server:
        yield server


@pytest.fixture(params=sqs_backends.BACKENDS)
async def sqs_backend(
    request: pytest.FixtureRequest, moto_server: aws.MotoServer, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[sqs_backends.SqsBackend]:
    """The test once on moto, once on LocalStack: SQS and SNS (AWS_ENDPOINT_URL_SQS/_SNS) point
    at that backend for the test's duration, everything else stays on moto."""
    name: sqs_backends.BackendName = request.param
    if name == "localstack":
        server: sqs_backends.LocalStackServer = request.getfixturevalue("localstack_server")
        endpoint_url = server.endpoint_url
    else:
        endpoint_url = moto_server.endpoint_url
    for variable, value in sqs_backends.environment(endpoint_url).items():
        monkeypatch.setenv(variable, value)
    session = aiobotocore.session.get_session()
    async with session.create_client("sqs") as client:
        yield sqs_backends.SqsBackend(name=name, endpoint_url=endpoint_url, sqs=client)
