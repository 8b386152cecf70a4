"""Keeping the worker's long-running loops alive, and saying when they cannot be.

``running`` (pollers, the dispatcher) and ``settling`` (the delete and visibility batchers,
the heartbeat) run their loops through :func:`supervise`. A loop that returns is done; one
that raises is logged, counted (``fanout_task_restarts_total``) and restarted after an
exponential backoff (:func:`workers.retrying.exponential_delay`: 1 s, 2 s, 4 s ... 30 s),
so a loop that fails at once does not spin. After :data:`UNHEALTHY_AFTER` crashes in a row
:class:`Health` reports the task unhealthy — ``/readyz`` answers 503 — until a restart has
run :data:`STABLE_SECONDS` without crashing.

Cancellation is never caught: the runtime's shutdown cancels these tasks on purpose.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from workers import retrying

log = logging.getLogger(__name__)

UNHEALTHY_AFTER = 3
STABLE_SECONDS = 30.0
RESTART_BASE_SECONDS = 1.0
RESTART_CAP_SECONDS = 30.0


class Health:
    """Which supervised tasks are crashing; ``healthy`` when none is."""

    def __init__(self, on_change: Callable[[bool], None] | None = None) -> None:
        self._crashing: set[str] = set()
        self._on_change = on_change

    @property
    def healthy(self) -> bool:
        return not self._crashing

    @property
    def crashing(self) -> frozenset[str]:
        return frozenset(self._crashing)

    def mark(self, name: str, *, crashing: bool) -> None:
        before = self.healthy
        if crashing:
            self._crashing.add(name)
        else:
            self._crashing.discard(name)
        if self._on_change is not None and before != self.healthy:
            self._on_change(self.healthy)


async def supervise(
    name: str,
    run: Callable[[], Awaitable[None]],
    *,
    health: Health,
    on_restart: Callable[[str], None] | None = None,
    stable_seconds: float = STABLE_SECONDS,
) -> None:
    """Run ``run`` until it returns; restart it with backoff whenever it raises."""
    crashes = 0
    while True:
        attempt = asyncio.ensure_future(run())
        try:
            if crashes:
                done, _ = await asyncio.wait({attempt}, timeout=stable_seconds)
                if not done:  # it has run long enough: call it well again
                    crashes = 0
                    health.mark(name, crashing=False)
            await attempt
            return
        except asyncio.CancelledError:
            attempt.cancel()
            raise
        except Exception:
            crashes += 1
            log.exception("%s crashed; restarting", name, extra={"task": name, "crashes": crashes})
            if on_restart is not None:
                on_restart(name)
            if crashes >= UNHEALTHY_AFTER:
                health.mark(name, crashing=True)
            await asyncio.sleep(
                retrying.exponential_delay(crashes, base=RESTART_BASE_SECONDS, cap=RESTART_CAP_SECONDS)
            )
