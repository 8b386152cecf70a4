"""The one writer of a FanoutConsumer's status, and of the Events about it.

``handlers``, ``resyncing`` and ``autoscaling`` describe what happened as a ``conditions``
outcome and hand it to the consumer's :class:`StatusWriter`; the writer computes the new status
(``conditions.apply``), posts the Events that go with it, and merge-patches the status
subresource. One writer per FanoutConsumer per process (kept in kopf's per-object memo) and a
lock, so the reconcile handler and the scaling loop never write over each other's fields.

The writer remembers the status it last wrote and builds on it: kopf's live body may lag behind
our own writes. It starts from the body's status when it has written nothing yet, and forgets
its copy when this process speaks for the consumer again after a pause (a peer may have written
meanwhile).

Events are core/v1 Events named like client-go names them (``<name>.<hex ns>``), reported by
``fanout-operator`` with this process's identity as ``reportingInstance``. A failed Event post
is logged and does not stop the status write.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from fanout_core import spec
from fanout_operator import conditions, kube, reconciling, rendering, status

logger = logging.getLogger(__name__)

EVENTS = ("v1", "events")
MAX_EVENT_MESSAGE = 1024


async def post_event(
    client: kube.KubeClient, owner: rendering.Owner, note: conditions.Note, *, now: float, instance: str
) -> None:
    """A core/v1 Event about the FanoutConsumer."""
    moment = status.rfc3339(now)
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{owner.name}.{time.time_ns():x}", "namespace": owner.namespace},
        "involvedObject": {
            "apiVersion": f"{spec.API_GROUP}/{spec.API_VERSION}",
            "kind": spec.KIND,
            "name": owner.name,
            "namespace": owner.namespace,
            "uid": owner.uid,
        },
        "reason": note.reason,
        "message": note.message[:MAX_EVENT_MESSAGE],
        "type": "Warning" if note.warning else "Normal",
        "source": {"component": rendering.MANAGER_NAME},
        "reportingComponent": rendering.MANAGER_NAME,
        "reportingInstance": instance,
        "firstTimestamp": moment,
        "lastTimestamp": moment,
        "count": 1,
    }
    await client.create(kube.collection_path(*EVENTS, owner.namespace), event)


class StatusWriter:
    """``await writer.report(outcome, current=body.get('status'), generation=...)``."""

    def __init__(
        self,
        client: kube.KubeClient,
        owner: rendering.Owner,
        *,
        instance: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._owner = owner
        self._instance = instance
        self._clock = clock
        self._lock = asyncio.Lock()
        self._last: status.FanoutConsumerStatus | None = None

    def forget(self) -> None:
        """Start again from the object's own status at the next report (after a takeover)."""
        self._last = None

    async def report(
        self,
        outcome: conditions.Outcome,
        *,
        current: Mapping[str, Any] | None,
        generation: int | None,
        now: float | None = None,
    ) -> status.FanoutConsumerStatus:
        """Write the status after ``outcome`` and post its Events; raises ``kube.KubeError``."""
        async with self._lock:
            moment = self._clock() if now is None else now
            previous = self._last if self._last is not None else status.parse(current)
            result = conditions.apply(previous, outcome, now=moment, generation=generation)
            for note in result.events:
                try:
                    await post_event(self._client, self._owner, note, now=moment, instance=self._instance)
                except kube.KubeError as error:
                    logger.warning("%s: Event %s not posted: %s", self._name(), note.reason, error)
            await self._client.merge_patch(
                reconciling.consumer_path(self._owner, "status"), status.merge_patch(result.status)
            )
            self._last = result.status
            return result.status

    def _name(self) -> str:
        return f"{self._owner.namespace}/{self._owner.name}"
