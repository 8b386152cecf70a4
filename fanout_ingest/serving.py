"""The front door's HTTP server: Genesys webhooks in, answers that drive Genesys' retries right.

``cli`` builds a :class:`Gateway` from a FanoutIngest manifest and runs it until SIGTERM.
Each source (``spec.sources[]``) is served on its own path; per ``POST``:

1. the body is read as sent (at most ``limits.maxBodyBytes``, else **413**);
2. its signature is checked over those bytes (``signatures``, with the secrets
   ``credentials`` holds now) — none valid: **401**, nothing published;
3. it is read as one event or a batch (``classifying``) — neither: **400**;
4. its events are published (``publishing``), large ones through S3 — all accepted by SNS:
   **202**; an event too large and no offload bucket: **413**; SNS or S3 failing, SNS too
   slow, too many events waiting, or the gateway draining: **503** with ``Retry-After``.

Genesys retries 5xx and timeouts and never 4xx: a 4xx goes only to requests that can never
succeed, a 202 only once every event of the request is in SNS, and a 503 only when at least
one is not (a batch that was partly published is answered 503 and retried whole: the
workers' deduplication, and on a FIFO topic SNS's, drop the repeats).

``/healthz`` (the event loop answers), ``/readyz`` (started and not draining) and
``/metrics`` (``fanout_core.probing``, as the worker serves them) share the port; the chart's
Ingress routes only the sources' paths.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import aiobotocore.config
import aiobotocore.session
import aiohttp.web
import prometheus_client

from fanout_core import awsclients, idempotency, probing
from fanout_core import spec as spec_model
from fanout_ingest import (
    attributes,
    classifying,
    config,
    credentials,
    deduplicating,
    publishing,
    signatures,
    telemetry,
)

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class _Source:
    spec: config.SourceSpec
    secrets: credentials.AcceptedSecrets


_NOTHING = deduplicating.Outcome(published=0, duplicates=0)
_NO_VALIDATION = aiobotocore.config.AioConfig(parameter_validation=False)


def resolve_region(topic: config.TopicSpec, environ: Mapping[str, str] = os.environ) -> str:
    """The topic's region: ``spec.topic.region``, else AWS_REGION / AWS_DEFAULT_REGION, else the ARN's."""
    return topic.region or environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or topic.arn_region


class Gateway:
    """A FanoutIngest's server: one per process."""

    def __init__(
        self,
        ingest: config.FanoutIngest,
        *,
        http_host: str = "0.0.0.0",  # the Service and the kubelet reach the pod's address
        http_port: int = 8080,
        drain_seconds: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ingest = ingest
        self.spec = ingest.spec
        self._http_host = http_host
        self._http_port = http_port
        self._drain_seconds = drain_seconds
        self._clock = clock
        # Trace and span ids need to be unique, not secret: the Mersenne Twister (seeded from
        # os.urandom) as OpenTelemetry's RandomIdGenerator uses it, not a syscall per id.
        self._random_bits = random.Random().getrandbits
        self._started = asyncio.Event()
        self._stopping = False
        self.telemetry = telemetry.IngestTelemetry()
        self._publisher: publishing.Publisher | None = None
        self._deduplicator: deduplicating.Deduplicator | None = None
        # Secrets are read now: a missing one is a configuration error (exit 2) before any I/O.
        self._sources = [
            _Source(
                source, credentials.AcceptedSecrets(source.secrets, field=f"spec.sources[{index}].secrets")
            )
            for index, source in enumerate(self.spec.sources)
        ]
        self.url: str | None = None

    @property
    def ready(self) -> bool:
        return self._started.is_set() and not self._stopping

    async def wait_started(self) -> None:
        await self._started.wait()

    # -- running ---------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set; then answer 503 for ``drain_seconds`` while the load
        balancer forgets this pod, finish the requests in hand, and return."""
        region = resolve_region(self.spec.topic)
        if not region:
            raise spec_model.ConfigError("spec.topic.region: no AWS region (set it, or AWS_REGION)")
        async with contextlib.AsyncExitStack() as stack:
            sns, s3, dynamodb = await self._clients(stack, region)
            self._publisher = publishing.Publisher(sns=sns, s3=s3, spec=self.spec, telemetry=self.telemetry)
            store = None
            if self.spec.idempotency.enabled:
                store = idempotency.build_store(self.spec.idempotency, dynamodb_client=dynamodb)
                stack.push_async_callback(store.aclose)
            self._deduplicator = deduplicating.Deduplicator(
                store,
                topic_name=self.spec.topic.name,
                lease_seconds=self.spec.lease_seconds,
                telemetry=self.telemetry,
            )
            listening = await self._serve()
            self._started.set()
            self.telemetry.set_ready(True)
            log.info("gateway started", extra={"url": self.url, "topic": self.spec.topic.arn})
            try:
                await stop.wait()
                self._stopping = True
                self.telemetry.set_ready(False)
                log.info("draining", extra={"drain_seconds": self._drain_seconds})
                await asyncio.sleep(self._drain_seconds)
            finally:
                # Stops listening and lets running handlers finish (each is bounded by the
                # publish timeout, and its events' calls are in flight), then the publisher.
                await listening.close()
                await self._publisher.aclose()
                await self._deduplicator.aclose(timeout=self.spec.limits.publish_timeout_seconds)
            log.info("gateway stopped")

    async def _clients(self, stack: contextlib.AsyncExitStack, region: str) -> tuple[Any, Any, Any]:
        """SNS; S3 when offloading; DynamoDB when the idempotency store is a table."""
        session = aiobotocore.session.get_session()
        aws_config = aiobotocore.config.AioConfig(
            user_agent=awsclients.user_agent(session, "fanout-ingest"),  # built once, not per call
            max_pool_connections=self.spec.publishing.max_concurrent_calls + 4,
            retries={"mode": "standard", "max_attempts": 3},
            connect_timeout=2,
            read_timeout=self.spec.limits.publish_timeout_seconds,
        )
        sns = await stack.enter_async_context(
            session.create_client("sns", region_name=region, config=aws_config.merge(_NO_VALIDATION))
        )
        publishing.tune_client(sns)
        s3 = None
        if self.spec.offload is not None:
            s3 = await stack.enter_async_context(
                session.create_client("s3", region_name=region, config=aws_config)
            )
        dynamodb = None
        idempotency_spec = self.spec.idempotency
        if idempotency_spec.enabled and idempotency_spec.store is spec_model.IdempotencyStoreType.DYNAMODB:
            dynamodb = await stack.enter_async_context(
                session.create_client("dynamodb", region_name=region, config=aws_config)
            )
        return sns, s3, dynamodb

    def _exposition(self) -> bytes:
        return prometheus_client.generate_latest(self.telemetry.metrics.registry)

    async def _serve(self) -> probing.Listening:
        app = aiohttp.web.Application(client_max_size=self.spec.limits.max_body_bytes)
        for source in self._sources:
            app.router.add_post(source.spec.path, self._handler(source))
        probing.add_probes(app, readiness=self._readiness, exposition=self._exposition)
        listening = await probing.listen(
            app,
            self._http_host,
            self._http_port,
            shutdown_timeout=self.spec.limits.publish_timeout_seconds + 1,
        )
        self.url = listening.url
        return listening

    # -- requests --------------------------------------------------------------------------

    def _handler(self, source: _Source) -> Callable[[aiohttp.web.Request], Any]:
        async def handle(request: aiohttp.web.Request) -> aiohttp.web.Response:
            started = self._clock()
            response, outcome = await self._accept(request, source)
            self.telemetry.answered(
                source.spec.name,
                response.status,
                self._clock() - started,
                outcome.published,
                outcome.duplicates,
            )
            return response

        return handle

    async def _accept(
        self, request: aiohttp.web.Request, source: _Source
    ) -> tuple[aiohttp.web.Response, deduplicating.Outcome]:
        name = source.spec.name
        if self._stopping:
            return self._unavailable(name, "draining", "the gateway is shutting down"), _NOTHING
        try:
            body = await request.read()
        except aiohttp.web.HTTPRequestEntityTooLarge:
            limit = self.spec.limits.max_body_bytes
            return self._refuse(name, 413, "too_large", f"body larger than {limit} bytes"), _NOTHING
        if not signatures.verify(body, request.headers, source.spec.signatures, source.secrets.values()):
            return self._refuse(name, 401, "signature", "missing or invalid signature"), _NOTHING
        try:
            events = classifying.classify(
                body,
                ordering_key=self.spec.publishing.ordering_key,
                max_events=self.spec.limits.max_events_per_request,
            )
        except classifying.NotAnEvent as error:
            return self._refuse(name, 400, "not_an_event", error.reason), _NOTHING
        assert self._publisher is not None and self._deduplicator is not None
        publisher = self._publisher
        traceparent = attributes.traceparent_for(request.headers.get("traceparent"), self._random_bits)

        async def publish(chosen: Sequence[classifying.InboundEvent], timeout: float) -> None:
            await publisher.publish(chosen, source=name, traceparent=traceparent, timeout=timeout)

        try:
            outcome = await self._deduplicator.publish(
                events, publish, timeout=self.spec.limits.publish_timeout_seconds
            )
        except publishing.TooLarge as error:
            return self._refuse(name, 413, "too_large", str(error)), _NOTHING
        except publishing.Saturated as error:
            return self._unavailable(name, "saturated", str(error)), _NOTHING
        except publishing.TimedOut as error:
            return self._unavailable(name, "timeout", str(error)), _NOTHING
        except publishing.PublishError as error:
            return self._unavailable(name, "publish_failed", str(error)), _NOTHING
        answer = {"accepted": len(events)}
        if outcome.duplicates:
            answer["duplicates"] = outcome.duplicates
        return aiohttp.web.json_response(answer, status=202), outcome

    def _refuse(self, source: str, status: int, reason: str, detail: str) -> aiohttp.web.Response:
        self.telemetry.refused(source, reason, status, detail=detail)
        return aiohttp.web.json_response({"error": reason, "detail": detail}, status=status)

    def _unavailable(self, source: str, reason: str, detail: str) -> aiohttp.web.Response:
        self.telemetry.refused(source, reason, 503, detail=detail)
        return aiohttp.web.json_response(
            {"error": reason, "detail": detail},
            status=503,
            headers={"Retry-After": str(self.spec.limits.retry_after_seconds)},
        )

    # -- probes ----------------------------------------------------------------------------

    def _readiness(self) -> probing.Readiness:
        sns_ok = self._publisher.sns_ok if self._publisher is not None else False
        return probing.Readiness(self.ready, {"sns": sns_ok, "stopping": self._stopping})


@contextlib.asynccontextmanager
async def running(gateway: Gateway) -> AsyncIterator[Gateway]:
    """Run ``gateway`` in a task for the block (tests, the demo, the bench)."""
    stop = asyncio.Event()
    task = asyncio.create_task(gateway.run(stop))
    started = asyncio.create_task(gateway.wait_started())
    done, _ = await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        started.cancel()
        task.result()  # raises what stopped it
    try:
        yield gateway
    finally:
        stop.set()
        await task
