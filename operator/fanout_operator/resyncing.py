"""Drift repair: every child of a FanoutConsumer, compared with its spec on a timer and put back.

A ConfigMap, ServiceAccount, PodDisruptionBudget or Deployment deleted or edited by hand would
otherwise stay so until the spec changes. ``handlers`` runs :class:`Resync` in a kopf daemon per
FanoutConsumer; every ``resync_seconds`` (the operator's settings) it admits the live spec
(``guardrails``) and calls ``reconciling.reconcile``, which GETs each child by name and patches
only the fields the operator owns that drifted (``ownership``). When it created or repaired
something it reports that (``conditions.Reconciled``: a ``DriftRepaired`` Event); otherwise it
writes nothing.

Why a timer over GETs by name, not watches on the children: a watch needs ``list``/``watch`` on
every ConfigMap, ServiceAccount, Deployment and PDB of the watched namespaces — RBAC cannot
narrow those to our labels, so the operator could read every ConfigMap in the cluster — and
for hundreds of consumers it would stream every unrelated change to filter it out. GETs by name
need only the ``get`` the operator already has, cost four requests per consumer per interval,
and a deleted Deployment is also noticed by the scaling loop at its next poll. Why a daemon, not
``kopf.timer``: a timer's interval is fixed when the handler is registered, while this one comes
from the settings object (short in tests, a minute by default).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fanout_operator import (
    conditions,
    guardrails,
    kube,
    reconciling,
    rendering,
    reporting,
    settings,
    status,
)

logger = logging.getLogger(__name__)


class Resync:
    """One FanoutConsumer's drift repair; :meth:`once` is a round for ``looping.run``."""

    def __init__(
        self, *, client: kube.KubeClient, writer: reporting.StatusWriter, settings: settings.OperatorSettings
    ) -> None:
        self._client = client
        self._writer = writer
        self._settings = settings

    async def once(self, body: Mapping[str, Any]) -> float:
        interval = self._settings.resync_seconds
        owner = rendering.owner_of(body)
        try:
            consumer = guardrails.admit(
                body.get("spec"), owner.namespace, self._settings.guardrails, self._settings.workers
            )
        except guardrails.Rejected:
            return interval  # marked by the reconcile handler; nothing may be created for it
        try:
            applied = await reconciling.reconcile(
                self._client,
                owner,
                consumer,
                self._settings.workers,
                status.parse(body.get("status")).replicas,
            )
            changed = applied.created + applied.repaired
            if changed:
                logger.info("%s/%s: drift repaired: %s", owner.namespace, owner.name, applied.summary())
                outcome = conditions.Reconciled(
                    queue=consumer.queue.name,
                    selector=rendering.selector_string(owner),
                    replicas=applied.deployment_replicas,
                    repaired=changed,
                )
                await self._writer.report(
                    outcome, current=body.get("status"), generation=status.generation_of(body)
                )
        except kube.KubeError as error:
            logger.warning("%s/%s: drift not repaired: %s", owner.namespace, owner.name, error)
        return interval
