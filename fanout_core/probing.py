"""The HTTP endpoints Kubernetes and Prometheus probe, and the listening socket under them.

The worker (``workers.running``), the front door (``fanout_ingest.serving``) and the
operator's metrics server (``fanout_operator.metrics``) each serve an aiohttp application on
a host and port from their command line. What they share lives here, once::

    listen(app, host, port)   bind (SO_REUSEADDR; IPv6 when the host has a colon) and start;
                              a Listening holds the runner to close and the URL to reach it
                              on this machine (127.0.0.1 for a wildcard host; port 0 picks)
    add_probes(app, ...)      GET /healthz  200 {"status": "ok"}: the event loop answers
                              GET /readyz   200, or 503 when not ready: {"ready": ..., **detail}
                              GET /metrics  the exposition a registry renders

Each process says what "ready" means (a :class:`Readiness` it computes on every request) and
whose registry ``/metrics`` renders; nothing here decides either. Kubernetes reads only the
status codes (the chart's and the rendered Deployment's probes); the JSON bodies are for
people. A bind that fails (the port is taken) raises ``OSError`` with nothing left open.
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Callable, Mapping

import aiohttp.web
import prometheus_client


@dataclasses.dataclass(frozen=True, slots=True)
class Readiness:
    """Whether the process takes work now, and the checks behind it (shown in the body)."""

    ready: bool
    detail: Mapping[str, bool] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, slots=True)
class Listening:
    """A started application: ``port`` it got, ``url`` to reach it locally; :meth:`close` it."""

    runner: aiohttp.web.AppRunner
    port: int
    url: str

    async def close(self) -> None:
        await self.runner.cleanup()


def add_probes(
    app: aiohttp.web.Application,
    *,
    readiness: Callable[[], Readiness] | None,
    exposition: Callable[[], bytes],
) -> None:
    """Route ``/healthz``, ``/readyz`` (unless ``readiness`` is None) and ``/metrics`` on ``app``."""

    async def healthz(request: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.json_response({"status": "ok"})

    async def metrics(request: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.Response(
            body=exposition(), headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST}
        )

    app.router.add_get("/healthz", healthz)
    if readiness is not None:
        read = readiness

        async def readyz(request: aiohttp.web.Request) -> aiohttp.web.Response:
            now = read()
            return aiohttp.web.json_response(
                {"ready": now.ready, **now.detail}, status=200 if now.ready else 503
            )

        app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)


async def listen(
    app: aiohttp.web.Application, host: str, port: int, *, shutdown_timeout: float = 60.0
) -> Listening:
    """Serve ``app`` on ``host:port`` (0: a free port); ``shutdown_timeout`` bounds how long
    :meth:`Listening.close` lets requests in progress finish."""
    runner = aiohttp.web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        await aiohttp.web.SockSite(runner, listener).start()
    except BaseException:
        listener.close()
        await runner.cleanup()
        raise
    bound = int(listener.getsockname()[1])
    local = "127.0.0.1" if host in ("0.0.0.0", "") else f"[{host}]" if ":" in host else host
    return Listening(runner, bound, f"http://{local}:{bound}")
