"""The loop under the operator's per-consumer daemons: run a round, sleep what it asks, repeat.

``handlers`` runs the scaling loop (``autoscaling``) and the drift resync (``resyncing``) each in
a kopf daemon per FanoutConsumer through :func:`run`; kopf cancels the daemon when the resource
is deleted, the operator stops, or a peer takes over.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

logger = logging.getLogger(__name__)

# After a round that blew up: long enough not to spin, short enough to notice a fix.
ERROR_RETRY_SECONDS = 60.0


async def run(
    round_: Callable[[], Awaitable[float]],
    *,
    what: str = "round",
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
) -> None:
    """Run ``round_`` forever, sleeping the seconds each returns; cancellation ends it.

    An unexpected error in a round is logged and retried after a minute rather than ending the
    loop: a dead scaling loop would freeze the fleet at whatever size it had.
    """
    while True:
        try:
            delay = await round_()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("%s failed", what)
            delay = ERROR_RETRY_SECONDS
        await sleep(delay)
