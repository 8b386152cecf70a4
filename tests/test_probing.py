"""The probe endpoints every process serves (fanout_core.probing), over a real socket."""

from __future__ import annotations

import socket

import aiohttp
import aiohttp.web
import prometheus_client
import pytest

from fanout_core import probing


async def test_healthz_readyz_and_metrics_answer_what_the_process_says() -> None:
    state = {"ready": False}
    registry = prometheus_client.CollectorRegistry()
    prometheus_client.Counter("probing_test_total", "a counter", registry=registry).inc(3)
    app = aiohttp.web.Application()
    probing.add_probes(
        app,
        readiness=lambda: probing.Readiness(state["ready"], {"sqs": state["ready"], "stopping": False}),
        exposition=lambda: prometheus_client.generate_latest(registry),
    )
    listening = await probing.listen(app, "0.0.0.0", 0)
    try:
        assert listening.url == f"http://127.0.0.1:{listening.port}" and listening.port > 0
        async with aiohttp.ClientSession(listening.url) as client:
            async with client.get("/healthz") as answer:
                assert answer.status == 200 and await answer.json() == {"status": "ok"}
            async with client.get("/readyz") as answer:
                assert answer.status == 503
                assert await answer.json() == {"ready": False, "sqs": False, "stopping": False}
            state["ready"] = True
            async with client.get("/readyz") as answer:
                assert answer.status == 200 and (await answer.json())["ready"] is True
            async with client.get("/metrics") as answer:
                assert answer.headers["Content-Type"] == prometheus_client.CONTENT_TYPE_LATEST
                assert "probing_test_total 3.0" in await answer.text()
    finally:
        await listening.close()


async def test_without_a_readiness_there_is_no_readyz() -> None:
    app = aiohttp.web.Application()
    probing.add_probes(app, readiness=None, exposition=lambda: b"")
    listening = await probing.listen(app, "127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession(listening.url) as client, client.get("/readyz") as answer:
            assert answer.status == 404
    finally:
        await listening.close()


async def test_a_taken_port_raises_and_the_port_is_usable_once_freed() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match="in use"):
            await probing.listen(aiohttp.web.Application(), "127.0.0.1", port)
    # the port is free again: nothing of the failed attempt holds it
    listening = await probing.listen(aiohttp.web.Application(), "127.0.0.1", port)
    await listening.close()
