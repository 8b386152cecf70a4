"""The demo's contact-center day: what is published to SNS, when, and what each consumer
must end up with. Pure: a seed in, a :class:`Day` out; no I/O.

``session`` publishes :attr:`Day.publications` in order, each at its ``at`` (seconds after
publishing starts); ``referee`` judges the consumers against :attr:`Day.events` and
:attr:`Day.poison`. The day (08:00 to 20:00) is compressed into ``seconds``:

* conversations start following a business-day curve (morning ramp, lunch dip, afternoon
  peak) plus an **incident burst** (a sixth of the day's calls within a quarter hour);
* each conversation is ~10 Genesys detail events (``customer.start`` … ``acw``) with the
  event times Genesys gives; the dashboard's events come with it — a queue snapshot
  (``v2.routing.queues.{id}.conversations``) when it is queued and when an agent
  answers, and the agent's ``v2.users.{id}.routingStatus`` (INTERACTING, then IDLE);
* each event is an EventBridge partner event, published to the SNS topic with the
  ``eventCategory`` attribute (``conversation`` / ``queue`` / ``agent``);
* 5% are **delivered twice** (the same ``detail``, a new EventBridge id — what a Genesys
  redelivery looks like), a second or so later;
* in one conversation out of six, two adjacent events are **published in the wrong
  order** (``acw`` before ``user.end``…), as Genesys does;
* a few **transcripts** (``v2.conversations.{id}.transcription``) of ~300 KB, over SNS's
  256 KiB: the front door offloads them to S3, the workers resolve the pointers;
* a few **poison** bodies, which must end in every receiving consumer's dead-letter
  queue with a reason;
* with ``backlog``, that many conversations of the **hour before** (07:00-08:00), in
  :attr:`Day.backlog`: published before the day within seconds (each conversation on its
  own clock), while the CRM and SIEM workers are down — what they catch up on at 08:00
  (conversation events only: the dashboard ran through that hour and consumed its own).

Every event is sent to the front door as a signed webhook (``session``); the poison bodies,
which the front door would refuse, are published to SNS directly, as another producer would.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import json
import math
import random
from collections.abc import Iterator
from typing import Any

from fanout_core import keying
from fanout_lab.simulators import genesys
from workers import envelopes

DAY_START_MS = 1_741_939_200_000 + 8 * 3_600_000  # 2025-03-14 08:00 UTC
DAY_HOURS = 12
# Relative call volume per hour from 08:00: ramp, lunch dip, afternoon peak, evening tail.
HOURLY_VOLUME = (3, 7, 10, 9, 6, 5, 8, 10, 9, 6, 4, 2)
BURST_HOUR = 6.5  # 14:30: an incident — a sixth of the day's calls within fifteen minutes
BURST_SHARE = 1 / 6
BURST_MINUTES = 15
DUPLICATE_RATIO = 0.05
REORDER_RATIO = 1 / 6
DUPLICATE_DELAY_SECONDS = (0.2, 1.5)
REORDER_GAP_SECONDS = 0.003
TRANSCRIPT_BYTES = 300_000
TRANSCRIPT_EVERY = 50
"""One conversation in this many (at least one) ends with a transcript too large for SNS."""
BACKLOG_SECONDS = 2.0
"""The backlog's conversations start within this many seconds (the front door keeps up, so a
conversation's events are not bunched behind the others')."""
NIGHT_SEED = 7_919
"""Added to the seed for the backlog's draws."""
CONVERSATION_SPEEDUP = 60.0
"""A conversation's own clock runs this much faster than real time — far slower than the
day's (a 12-hour day in ~40 s is ~1000x): otherwise a conversation's ten events would land
within a few milliseconds, which no contact center produces."""


class Category(enum.StrEnum):
    """The ``eventCategory`` message attribute SNS filter policies match."""

    CONVERSATION = "conversation"
    QUEUE = "queue"
    AGENT = "agent"


@dataclasses.dataclass(frozen=True, slots=True)
class TrafficEvent:
    """One unique event of the day, as the referee needs it."""

    correlation_id: str
    key: str
    """Ordering key: the conversation id (conversation and queue events) or the user id."""
    event_time_ms: int
    event_type: str
    category: Category
    sequence: int
    """Position of its first publication: the order the source emitted events in."""


@dataclasses.dataclass(frozen=True, slots=True)
class Publication:
    """One SNS publish."""

    at: float
    message: str
    group: str
    category: Category
    event: TrafficEvent | None
    """None for a poison message."""
    copy: int = 0
    """0 for the first delivery, 1 for a Genesys redelivery of the same event."""


@dataclasses.dataclass(frozen=True, slots=True)
class Poison:
    index: int
    category: Category


@dataclasses.dataclass
class Day:
    publications: list[Publication]
    events: dict[str, TrafficEvent]
    """By correlation id."""
    poison: list[Poison]
    seconds: float
    burst: tuple[float, float]
    """When the incident burst is published (seconds after the start)."""
    reordered_pairs: int
    """(earlier, later) event pairs of one key published later-first."""
    backlog: list[Publication] = dataclasses.field(default_factory=list)
    """The hour before the day (07:00-08:00), published before :attr:`publications`; ``at``
    counts from the start of that publishing (the hour in :data:`BACKLOG_SECONDS`)."""

    @property
    def backlog_events(self) -> frozenset[str]:
        """Correlation ids of the events in :attr:`backlog`."""
        return frozenset(p.event.correlation_id for p in self.backlog if p.event is not None)

    @property
    def day_events(self) -> list[TrafficEvent]:
        """The events published during the day (the backlog's left out)."""
        backlog = self.backlog_events
        return [event for event in self.events.values() if event.correlation_id not in backlog]

    def clock(self, at: float) -> str:
        """The simulated time of day at ``at`` seconds into publishing (HH:MM)."""
        minutes = 8 * 60 + at / self.seconds * DAY_HOURS * 60
        return f"{int(minutes // 60):02d}:{int(minutes % 60):02d}"


def _iso(epoch_ms: int) -> str:
    moment = datetime.datetime.fromtimestamp(epoch_ms / 1000, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{epoch_ms % 1000:03d}Z"


@dataclasses.dataclass(frozen=True, slots=True)
class _Draft:
    """One unique event before the day is put in publication order."""

    at: float
    tie: int
    detail: dict[str, Any]
    event_time_ms: int
    category: Category
    key: str
    night: bool
    """Of the backlog (the hour before the day), published before the day starts."""


class _Builder:
    def __init__(self, seed: int, seconds: float) -> None:
        self.rng = random.Random(seed)
        self.generator = genesys.Generator(seed)
        self.seconds = seconds
        self.day_ms = DAY_HOURS * 3_600_000
        self.tie = 0

    def at(self, event_time_ms: int, conversation_start_ms: int, *, night: bool = False) -> float:
        """When to publish an event: the day's clock for the conversation's start, the
        conversation's own (slower) clock from there on. The backlog's hour is compressed to
        ``BACKLOG_SECONDS``: it reaches the queues within seconds, each conversation's events
        still as far apart as the day's."""
        if night:  # the hour in BACKLOG_SECONDS
            started = (conversation_start_ms - DAY_START_MS + 3_600_000) / 3_600_000 * BACKLOG_SECONDS
        else:
            started = (conversation_start_ms - DAY_START_MS) / self.day_ms * self.seconds
        return started + max(0, event_time_ms - conversation_start_ms) / 1000 / CONVERSATION_SPEEDUP

    def conversation(self, start_ms: int, *, transcript: bool, night: bool) -> list[_Draft]:
        """One conversation's events (and the dashboard's around it), in its own clock's order
        but for the pair the source sometimes swaps."""
        flow = self.generator.conversation(start_ms=start_ms)
        if transcript:
            last = flow[-1]
            flow.append(
                genesys.GenesysEvent(
                    genesys.transcript(
                        last.conversation_id,
                        self.generator.uuid(),
                        size=TRANSCRIPT_BYTES,
                        event_time_ms=last.event_time_ms + 1_000,
                    )
                )
            )
        timed = [(self.at(event.event_time_ms, start_ms, night=night), event) for event in flow]
        if self.rng.random() < REORDER_RATIO:
            # Swap two adjacent late events (ends and wrap-up arrive close together).
            index = self.rng.randrange(len(timed) - 4, len(timed) - 1)
            (first_at, first), (_, second) = timed[index], timed[index + 1]
            timed[index], timed[index + 1] = (first_at, second), (first_at + REORDER_GAP_SECONDS, first)
        drafts = []
        for at, event in timed:
            self.tie += 1
            drafts.append(
                _Draft(
                    at,
                    self.tie,
                    event.detail,
                    event.event_time_ms,
                    Category.CONVERSATION,
                    event.conversation_id,
                    night,
                )
            )
        if night:
            # The dashboard ran through the hour before: its queue and agent events of then
            # were consumed then. Queued for it now, two replicas would hold events of one
            # key at once, which no worker can keep in order on a standard queue.
            return drafts
        for detail, when in self.dashboard_events(flow):
            self.tie += 1
            category = Category.AGENT if ".users." in detail["topicName"] else Category.QUEUE
            key = str(detail["eventBody"]["id"])
            at = self.at(when, start_ms, night=night)
            drafts.append(_Draft(at, self.tie, detail, when, category, key, night))
        return drafts

    def night_start_times(self, conversations: int) -> list[int]:
        """Conversations of the hour before the day (07:00-08:00): the backlog."""
        hour_before = DAY_START_MS - 3_600_000
        return sorted(hour_before + int(self.rng.random() * 3_600_000) for _ in range(conversations))

    def start_times(self, conversations: int) -> list[int]:
        burst = round(conversations * BURST_SHARE)
        starts = []
        weights = [float(volume) for volume in HOURLY_VOLUME]
        for hour in self.rng.choices(range(DAY_HOURS), weights=weights, k=conversations - burst):
            starts.append(DAY_START_MS + int((hour + self.rng.random()) * 3_600_000))
        burst_start = DAY_START_MS + int(BURST_HOUR * 3_600_000)
        for _ in range(burst):
            starts.append(burst_start + int(self.rng.random() * BURST_MINUTES * 60_000))
        return sorted(starts)

    def eventbridge(self, detail: dict[str, Any], event_time_ms: int) -> str:
        """An EventBridge partner event around ``detail`` (a new envelope id each call)."""
        return json.dumps(
            {
                "version": "0",
                "id": self.generator.uuid(),
                "detail-type": keying.topic_template(str(detail["topicName"])),
                "source": genesys.SOURCE,
                "account": "123456789012",
                "time": _iso(event_time_ms)[:19] + "Z",
                "region": "us-east-1",
                "resources": [],
                "detail": detail,
            }
        )

    def dashboard_events(self, flow: list[genesys.GenesysEvent]) -> Iterator[tuple[dict[str, Any], int]]:
        """Queue snapshots and agent routing-status changes around one conversation."""
        by_suffix = {event.suffix: event for event in flow}
        conversation_id = flow[0].conversation_id
        for suffix, state in (("acd.start", "alerting"), ("user.start", "connected")):
            event = by_suffix.get(suffix)
            if event is None or "queueId" not in event.detail["eventBody"]:
                continue
            when = event.event_time_ms + 1
            queue_id = event.detail["eventBody"]["queueId"]
            yield (
                {
                    "topicName": f"v2.routing.queues.{queue_id}.conversations",
                    "version": "2",
                    "timestamp": _iso(when),
                    "eventBody": {
                        "id": conversation_id,
                        "participants": [
                            {
                                "purpose": "customer",
                                "address": event.detail["eventBody"].get("ani"),
                                "calls": [{"state": state, "direction": "inbound", "provider": "Edge"}],
                            }
                        ],
                    },
                    "metadata": {"CorrelationId": self.generator.uuid()},
                },
                when,
            )
        start, acw = by_suffix.get("user.start"), by_suffix.get("acw")
        if start is None or acw is None:
            return
        user_id = start.detail["eventBody"]["userId"]
        idle_at = acw.event_time_ms + int(acw.detail["eventBody"].get("wrapupDurationMs", 10_000))
        for status, when in (("INTERACTING", start.event_time_ms + 1), ("IDLE", idle_at)):
            yield (
                {
                    "topicName": f"v2.users.{user_id}.routingStatus",
                    "version": "2",
                    "timestamp": _iso(when),
                    "eventBody": {
                        "id": user_id,
                        "routingStatus": {"status": status, "startTime": _iso(when)},
                    },
                    "metadata": {"CorrelationId": self.generator.uuid()},
                },
                when,
            )


def build(
    *, conversations: int, seconds: float, seed: int = 1, poison: int | None = None, backlog: int = 0
) -> Day:
    """The day's traffic: ``conversations`` conversations published over ``seconds``, after
    ``backlog`` conversations of the hour before the day queued while the consumers were down."""
    if conversations < 1 or seconds <= 0 or backlog < 0:
        raise ValueError("conversations must be >= 1, seconds > 0 and backlog >= 0")
    builder = _Builder(seed, seconds)
    night = _Builder(seed + NIGHT_SEED, seconds)  # its own draws: the day is the same with or without it
    drafts: list[_Draft] = []
    transcripts = max(1, conversations // TRANSCRIPT_EVERY)
    for number, start_ms in enumerate(builder.start_times(conversations)):
        drafts += builder.conversation(start_ms, transcript=number < transcripts, night=False)
    for start_ms in night.night_start_times(backlog):
        drafts += night.conversation(start_ms, transcript=False, night=True)

    # The backlog was published first (before the day), each part in its own clock's order.
    drafts.sort(key=lambda draft: (not draft.night, draft.at, draft.tie))
    publications: list[Publication] = []
    queued: list[Publication] = []
    traffic_events: dict[str, TrafficEvent] = {}
    for sequence, draft in enumerate(drafts):
        detail, when, category = draft.detail, draft.event_time_ms, draft.category
        record = TrafficEvent(
            correlation_id=str(detail["metadata"]["CorrelationId"]),
            key=draft.key,
            event_time_ms=when,
            event_type=keying.topic_template(str(detail["topicName"])),
            category=category,
            sequence=sequence,
        )
        traffic_events[record.correlation_id] = record
        into, source = (queued, night) if draft.night else (publications, builder)
        into.append(Publication(draft.at, source.eventbridge(detail, when), draft.key, category, record))
        if source.rng.random() < DUPLICATE_RATIO:
            later = draft.at + source.rng.uniform(*DUPLICATE_DELAY_SECONDS)
            into.append(Publication(later, source.eventbridge(detail, when), draft.key, category, record, 1))

    poison_count = poison if poison is not None else max(3, math.ceil(conversations / 50))
    bodies = poison_bodies()
    poison_list = []
    categories = list(Category)
    for index in range(poison_count):
        category = categories[index % len(categories)]
        at = seconds * (index + 0.5) / poison_count
        publications.append(Publication(at, bodies[index % len(bodies)], f"poison-{index}", category, None))
        poison_list.append(Poison(index, category))

    publications.sort(key=lambda publication: publication.at)
    queued.sort(key=lambda publication: publication.at)
    burst_at = (BURST_HOUR / DAY_HOURS) * seconds
    return Day(
        publications=publications,
        events=traffic_events,
        poison=poison_list,
        seconds=seconds,
        burst=(burst_at, burst_at + BURST_MINUTES / 60 / DAY_HOURS * seconds),
        reordered_pairs=count_reordered(traffic_events.values()),
        backlog=queued,
    )


def poison_bodies() -> list[str]:
    """The generator's poison bodies that stay poison inside an SNS envelope.

    (A body that is itself an SNS notification becomes a valid event once wrapped, so
    each candidate is checked the way the worker will see it.)
    """
    kept = []
    for body in genesys.POISON_BODIES:
        wrapped = json.dumps({"Type": "Notification", "MessageId": "m", "TopicArn": "t", "Message": body})
        try:
            envelopes.decode(wrapped)
        except envelopes.PoisonMessage:
            kept.append(body)
    return kept


def count_reordered(events: Any) -> int:
    """Pairs of one key whose event-time order and publication order disagree."""
    by_key: dict[str, list[TrafficEvent]] = {}
    for event in events:
        by_key.setdefault(event.key, []).append(event)
    pairs = 0
    for group in by_key.values():
        group.sort(key=lambda event: event.sequence)
        for index, later in enumerate(group):
            pairs += sum(1 for earlier in group[:index] if earlier.event_time_ms > later.event_time_ms)
    return pairs
