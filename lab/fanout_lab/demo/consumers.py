"""The demo's three consumers: what each subscribes to, its downstream's limits, and the
FanoutConsumer manifest its workers run with — the same kind of manifest a user applies.

==========  ==========================  =======================================  ========
consumer    queue (SNS filter policy)   sink and downstream                      replicas
==========  ==========================  =======================================  ========
crm-sync    ``conversation`` events     ``crm``: Salesforce-like upsert, 403     1
                                        REQUEST_LIMIT_EXCEEDED over the limit
siem-audit  everything                  ``siem``: Splunk HEC, batched; busy      1
                                        (503, code 9) over the limit and during
                                        a short outage
dashboard   everything; the worker      ``webhook``: signed POSTs, 429 with      2
            keeps queue snapshots and   Retry-After over the limit; DynamoDB
            agent routing status        idempotency shared by the replicas
==========  ==========================  =======================================  ========

All three queues are standard queues fed by one standard topic, as docs/architecture.md draws it.
On a standard queue a worker puts what it holds back in event-time order per ordering key
— that is the order a standard queue can promise; strict order across replicas is what
FIFO queues are for (the embedded moto server does not keep a FIFO group to one consumer
while another long-polls, so the demo does not pretend it does). Every consumer polls with
one poller per replica so what arrives in order is never turned around on the way in.
The dashboard runs two replicas: they split its rate limit (each sink is told the replica
count) and share the DynamoDB idempotency table, so a redelivery is recognised whichever
replica receives it; its events of one key (an agent, a queued conversation) are seconds
apart, which two replicas keep in order as long as the webhook keeps up.

The CRM's and the SIEM's workers start late (:attr:`Plan.late_start`): their queues hold the
hour before the day when they start, so each is driven at its downstream's limit for a few
seconds. The dashboard's do not, and the backlog holds none of its events (it ran through
that hour): a backlog on a standard queue read by two replicas would hand events of one key to
both at once, and no worker can keep those in order.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from fanout_lab.demo import traffic

CRM_CLIENT_ID_ENV = "FANOUT_DEMO_CRM_CLIENT_ID"
CRM_CLIENT_SECRET_ENV = "FANOUT_DEMO_CRM_CLIENT_SECRET"
HEC_TOKEN_ENV = "FANOUT_DEMO_HEC_TOKEN"
WEBHOOK_KEY_ENV = "FANOUT_DEMO_WEBHOOK_KEY"
IDEMPOTENCY_TABLE = "fanout-demo-dashboard-idempotency"

DASHBOARD_TYPES = ("v2.routing.queues.*.conversations", "v2.users.*.routingStatus")


@dataclasses.dataclass(frozen=True)
class Plan:
    """One consumer of the demo."""

    name: str
    title: str
    queue: str
    fifo: bool
    categories: tuple[traffic.Category, ...]
    """What its SNS subscription lets through (all categories: no filter policy)."""
    keep: tuple[str, ...] | None
    """Its ``spec.filter.eventTypes``."""
    ordering_key: str
    ordered: tuple[traffic.Category, ...]
    """Categories whose events carry ``ordering_key`` (others get no order promise)."""
    replicas: int
    rate: float
    burst: int
    latency: float
    saturation_backlog: int
    """Messages waiting (visible + in flight) from which the downstream is the bottleneck."""
    late_start: bool = False
    """Its workers start at 08:00, after an upgrade: the hour before waits in its queue, and
    they catch up at the downstream's limit."""

    @property
    def dead_letter_queue(self) -> str:
        return self.queue.removesuffix(".fifo") + "-dlq" + (".fifo" if self.fifo else "")

    @property
    def filter_policy(self) -> dict[str, list[str]] | None:
        if set(self.categories) == set(traffic.Category):
            return None
        return {"eventCategory": [str(category) for category in self.categories]}


def plans(day: traffic.Day) -> list[Plan]:
    """The consumers, with downstream limits sized to the day (its own events; the backlog's
    left out): the CRM's limit sits below its average demand over the nominal day, so the
    peaks saturate it and its backlog drains at the limit (the report's goodput shows how
    close to the limit the sink keeps it); the SIEM's, 10 requests per second, sits below
    what its sink sends with a backlog (a batch of at most ``maxConcurrency`` events, the
    events the runtime has in the sink at once, per ``lingerSeconds`` plus the answer's
    latency: about 12 per second; at 20 its limit never held it back); the dashboard's
    internal webhook has room to spare."""
    conversation = traffic.Category.CONVERSATION
    conversation_events = sum(1 for event in day.day_events if event.category is conversation)
    dashboard_events = sum(1 for event in day.day_events if event.category is not conversation)
    crm_rate = max(5.0, round(0.8 * conversation_events / day.seconds))
    dashboard_rate = max(10.0, round(3 * dashboard_events / day.seconds))
    every = tuple(traffic.Category)
    return [
        Plan(
            name="crm-sync",
            title="CRM",
            queue="genesys-crm",
            fifo=False,
            categories=(traffic.Category.CONVERSATION,),
            keep=("v2.detail.events.conversation.*",),
            ordering_key="conversationId",
            ordered=(traffic.Category.CONVERSATION,),
            replicas=1,
            rate=crm_rate,
            burst=10,
            latency=0.04,
            saturation_backlog=20,
            late_start=True,
        ),
        Plan(
            name="siem-audit",
            title="SIEM",
            queue="genesys-siem",
            fifo=False,
            categories=every,
            keep=None,
            ordering_key="conversationId",
            ordered=(traffic.Category.CONVERSATION, traffic.Category.QUEUE),
            replicas=1,
            rate=10.0,
            burst=10,
            latency=0.03,
            saturation_backlog=20,
            late_start=True,
        ),
        Plan(
            name="dashboard",
            title="dashboard",
            queue="genesys-dashboard",
            fifo=False,
            categories=every,
            keep=DASHBOARD_TYPES,
            ordering_key="id",
            ordered=(traffic.Category.QUEUE, traffic.Category.AGENT),
            replicas=2,
            rate=dashboard_rate,
            burst=10,
            latency=0.015,
            saturation_backlog=20,
        ),
    ]


def manifest(
    plan: Plan, *, queue_url: str, dead_letter_url: str, sink_url: str, region: str, topic_arn: str
) -> dict[str, Any]:
    """The FanoutConsumer manifest the plan's workers run; its ``spec.topology`` (``manage:
    true``) is what the demo's AWS resources are built from, as the operator builds them."""
    spec: dict[str, Any] = {
        "queue": {
            "url": queue_url,
            "region": region,
            "waitTimeSeconds": 5,
            "maxMessages": 10,
            "visibilityTimeoutSeconds": 30,
            "pollers": 1,
            "maxInFlight": 40,
        },
        "ordering": {"key": plan.ordering_key, "holdLimitSeconds": 120},
        "sink": {
            "url": sink_url,
            "rateLimit": {"requestsPerSecond": plan.rate, "burst": plan.burst},
            "timeoutSeconds": 10,
        },
        "retry": {"baseDelaySeconds": 1, "maxDelaySeconds": 8, "maxAttempts": 10},
        "deadLetter": {"queueUrl": dead_letter_url},
        "idempotency": {"store": "memory", "ttlSeconds": 3600},
        "shutdown": {"gracePeriodSeconds": 10},
        "topology": {
            "manage": True,
            "topicArn": topic_arn,
            "subscription": {
                # The referee recognises a dead letter by the SNS MessageId in its envelope.
                "rawMessageDelivery": False,
                # The CRM's queue takes conversation events only, by the category attribute the
                # publisher sets; the others take everything and their spec.filter decides.
                "filterPolicy": plan.filter_policy or {},
            },
        },
    }
    if plan.keep is not None:
        spec["filter"] = {"eventTypes": list(plan.keep)}
    sink = spec["sink"]
    if plan.name == "crm-sync":
        sink.update(
            type="crm",
            maxConcurrency=8,
            crm={
                "objectName": "Genesys_Conversation__c",
                "externalIdField": "Conversation_Id__c",
                "fieldMapping": {
                    "Last_Event__c": "eventType",
                    "Last_Event_Time__c": "eventTime",
                    "Queue_Id__c": "queueId",
                    "Media_Type__c": "mediaType",
                    "Disconnect_Type__c": "disconnectType",
                },
                "tokenUrl": f"{sink_url}/services/oauth2/token",
                "clientId": {"env": CRM_CLIENT_ID_ENV},
                "clientSecret": {"env": CRM_CLIENT_SECRET_ENV},
            },
        )
    elif plan.name == "siem-audit":
        spec["queue"]["maxInFlight"] = 200
        sink.update(
            type="siem",
            maxConcurrency=8,
            siem={
                "token": {"env": HEC_TOKEN_ENV},
                "index": "genesys_audit",
                "maxBatchEvents": 50,
                "lingerSeconds": 0.05,
            },
        )
    else:
        sink.update(
            type="webhook",
            url=f"{sink_url}/events",
            maxConcurrency=8,
            signingSecret={"env": WEBHOOK_KEY_ENV},
        )
        spec["idempotency"] = {"store": "dynamodb", "table": IDEMPOTENCY_TABLE, "ttlSeconds": 3600}
    return {
        "apiVersion": "fanout.dev/v1alpha1",
        "kind": "FanoutConsumer",
        "metadata": {"name": plan.name, "namespace": "contact-center"},
        "spec": spec,
    }
