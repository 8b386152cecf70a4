"""Shared fixtures: a real moto server on a loopback port, reached over HTTP with aiobotocore."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiobotocore.session
import pytest

from tests.operator_harness import kube_api, kube_client, kube_namespace  # noqa: F401  (operator e2e fixtures)
from workers.simulators import aws


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
