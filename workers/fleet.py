"""How a fleet's replicas share its rate limit: the replica count, and each one's share of the work.

``rateLimit`` in a FanoutConsumer is for the whole fleet. Two things divide it here; the
pace (:mod:`workers.pacing`) turns them into this replica's rate and corrects both from the
downstream's answers.

**The replica count** is the prior: ``rate / replicas``. The operator keeps it in the
``replicas`` key of the consumer's ConfigMap, mounted at ``FANOUT_REPLICAS_FILE`` (default
``/etc/fanout/replicas``); a replica count change is not a pod roll, so the file is re-read
while running — when its modification time changes, checked at most every
``check_interval`` seconds (a ``stat`` per check, no watch). Without the file the count is
``FANOUT_REPLICAS``; without either it is 1 but *not known* (:meth:`Replicas.known`), and
the pace starts low and climbs (a fleet whose replicas each think they are alone must not
open with a flood). Sinks call :meth:`ReplicaCount.current` before asking their limiter for
a permit and tell the limiter when the count changed. ``running`` builds one from the
environment.

**The share follows the work.** A count says how many replicas there are, not which of
them have work: a replica that is starting, draining, idle at the tail of a backlog or
just scaled in leaves its slice unused while the others queue behind theirs, and the
downstream says nothing about a limit the fleet stays under. The one thing every replica
already shares is the queue, and SQS counts what the whole fleet holds (the queue's
``ApproximateNumberOfMessagesNotVisible``). :func:`watch_share` reads it every
``SHARE_INTERVAL_SECONDS`` while this replica holds messages (never while it holds none)
and tells the sink this replica's part of it
(:func:`workers.pacing.demand_share`); the pace takes that part of the fleet's rate
(:meth:`workers.pacing.Pace.observe_share`). The replicas with work hold about the same
(``polling.budget_target``), so their parts add up to one and the fleet's rate goes where
the messages are: two GetQueueAttributes per second per replica that holds messages, no
store, no operator. The count is approximate and may be late (AWS says so of every queue
count); a share read too high costs a few throttles, which the pace answers, never a
flood (``tests/test_pacing.py`` reads 30% off and 1.5 s late).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from workers import events, pacing, sqs

log = logging.getLogger(__name__)

REPLICAS_FILE_ENV = "FANOUT_REPLICAS_FILE"
REPLICAS_ENV = "FANOUT_REPLICAS"
DEFAULT_REPLICAS_FILE = "/etc/fanout/replicas"
DEFAULT_CHECK_INTERVAL_SECONDS = 3.0
SHARE_INTERVAL_SECONDS = 0.5
"""How often a replica reads what the fleet holds."""
SAMPLE_SECONDS = 0.05
"""How often a replica looks at what it holds (averaged between reads; and while it holds
nothing, to read at once when a receive brings something)."""
SHARE_RETRY_SECONDS = 30.0
"""After a failed read, how long the replica count alone decides."""
_IN_FLIGHT = "ApproximateNumberOfMessagesNotVisible"


class Replicas(Protocol):
    """Anything that says how many replicas share the limit (>= 1)."""

    def current(self) -> int: ...

    def known(self) -> bool:
        """False when nobody said (the count is a guess of 1)."""
        ...


@dataclasses.dataclass(frozen=True, slots=True)
class FixedReplicas:
    """A count that never changes (tests, benchmarks, single processes)."""

    count: int = 1

    def current(self) -> int:
        return max(1, self.count)

    def known(self) -> bool:
        return True


class ReplicaCount:
    """The count from the operator's file, else a fallback; re-read when the file changes."""

    def __init__(
        self,
        *,
        path: str | os.PathLike[str] | None,
        fallback: int = 1,
        fallback_known: bool = True,
        check_interval: float = DEFAULT_CHECK_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._path = os.fspath(path) if path is not None else None
        self._fallback = max(1, fallback)
        self._fallback_known = fallback_known
        self._check_interval = check_interval
        self._clock = clock
        self._checked_at: float | None = None
        self._stamp: tuple[int, int, int] | None = None
        self._count = self._fallback

    @classmethod
    def from_environment(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        check_interval: float = DEFAULT_CHECK_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> ReplicaCount:
        """``FANOUT_REPLICAS_FILE`` (default /etc/fanout/replicas), else ``FANOUT_REPLICAS``."""
        env = os.environ if environ is None else environ
        fallback = _parse(env.get(REPLICAS_ENV, ""), source=REPLICAS_ENV)
        return cls(
            path=env.get(REPLICAS_FILE_ENV) or DEFAULT_REPLICAS_FILE,
            fallback=fallback or 1,
            fallback_known=fallback is not None,
            check_interval=check_interval,
            clock=clock,
        )

    @property
    def path(self) -> str | None:
        return self._path

    def current(self) -> int:
        """The count, re-reading the file when due and changed."""
        now = self._clock()
        if self._checked_at is not None and now - self._checked_at < self._check_interval:
            return self._count
        self._checked_at = now
        self._reload()
        return self._count

    def known(self) -> bool:
        """The count came from the file or ``FANOUT_REPLICAS``, not from nowhere."""
        self.current()
        return self._stamp is not None or self._fallback_known

    def _reload(self) -> None:
        if self._path is None:
            return
        try:
            status = os.stat(self._path)  # follows the ConfigMap's ..data symlink
        except OSError:
            if self._stamp is not None:
                log.warning("replicas file vanished; using the fallback", extra={"path": self._path})
            self._stamp = None
            self._count = self._fallback
            return
        stamp = (status.st_mtime_ns, status.st_ino, status.st_size)
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            with open(self._path, encoding="utf-8") as handle:
                text = handle.read(64)
        except OSError:
            return
        count = _parse(text, source=self._path)
        if count is not None and count != self._count:
            log.info("replica count changed", extra={"replicas": count, "previous": self._count})
            self._count = count


def _parse(text: str, *, source: str) -> int | None:
    """A positive integer, or None (logged) for anything else; 0 counts as 1: we run."""
    stripped = text.strip()
    if not stripped:
        return None
    try:
        value = int(stripped)
    except ValueError:
        log.warning("replica count is not an integer; ignored", extra={"source": source})
        return None
    return max(1, value)


def share_of(samples: Sequence[int], held_now: int, in_flight: int, *, away: int = 0) -> float | None:
    """This replica's share, from what it held over the interval (``samples``) and, as the
    fleet's ``in_flight`` was read, what it holds now (``held_now``: the others hold the rest).

    The average as it is: a replica's hold rises by a whole receive and falls one delivery
    at a time, so a read at the low of that cycle is as likely as one at its high. Capping
    the average at ``held_now`` took the low reads and not the high ones: the shares of a
    fleet added up to less than one, and three replicas sharing a CRM's 30 requests per
    second paced at 0.95-0.97 of it (``tests/test_fleet_e2e.py`` run alone at a load average
    under 3: goodput 0.887-0.933 in four runs; 0.933-0.960 in five without the cap)."""
    if not samples:
        return pacing.demand_share(held_now, held_now, in_flight, away=away)
    return pacing.demand_share(sum(samples) / len(samples), held_now, in_flight, away=away)


async def watch_share(
    client: sqs.SqsApi,
    queue_url: events.QueueUrl,
    *,
    held: Callable[[], int],
    tell: Callable[[float | None], None],
    away: Callable[[], int] = lambda: 0,
    interval: float = SHARE_INTERVAL_SECONDS,
) -> None:
    """Every ``interval`` seconds while this replica holds messages (the first time one
    interval after a receive brings the first ones): its share of what the fleet holds, to
    ``tell``; ``None`` when it holds nothing. ``away``: what this replica put back invisible
    for a while, in flight for SQS but held by nobody (see :func:`workers.pacing.demand_share`).

    What this replica holds is averaged over the interval (sampled every
    ``SAMPLE_SECONDS``, :func:`share_of`): it moves by a whole receive at a time, and the
    shares the replicas take should add up to one however their reads fall.
    A read that fails (no ``sqs:GetQueueAttributes``, SQS unreachable) tells ``None`` — the
    replica count alone shares the rate — and is tried again after ``SHARE_RETRY_SECONDS``.
    Runs until cancelled.
    """
    loop = asyncio.get_running_loop()
    warned = False
    samples: list[int] = []
    read_at = -math.inf
    tell(None)  # nothing held yet
    while True:
        holding = held()
        if holding <= 0:
            if samples or read_at > -math.inf:
                tell(None)  # nothing held, nothing to weigh (and nothing to ask SQS)
            samples.clear()
            read_at = -math.inf
            await asyncio.sleep(SAMPLE_SECONDS)
            continue
        if not samples and read_at == -math.inf:
            read_at = loop.time()  # a first receive: read once it is half a second old
        samples.append(holding)
        if loop.time() - read_at < interval:
            await asyncio.sleep(SAMPLE_SECONDS)
            continue
        try:
            reply = await sqs.call(
                client.get_queue_attributes, QueueUrl=queue_url, AttributeNames=[_IN_FLIGHT]
            )
            in_flight = int(reply.get("Attributes", {}).get(_IN_FLIGHT, "0"))
        except (sqs.SqsError, ValueError) as error:
            if not warned:
                log.warning(
                    "could not read what the fleet holds (%s); the replica count alone shares the rate limit",
                    getattr(error, "code", "") or type(error).__name__,
                )
                warned = True
            tell(None)
            samples.clear()
            await asyncio.sleep(SHARE_RETRY_SECONDS)
            continue
        warned = False
        read_at = loop.time()
        tell(share_of(samples, held(), in_flight, away=away()))
        samples.clear()
        await asyncio.sleep(SAMPLE_SECONDS)
