"""What becomes of a message after each delivery: the processor's decision table. Pure.

``processing`` delivers an event and asks two questions of what came back. :func:`judge`:
whose failure was it, and what becomes of the event's claim in the idempotency store?
Once the claim is settled (a failed attempt counted there returns the event's count of
failed attempts), :func:`decide`: what becomes of the message, and what does its lane
(``ordering``) do? The processor then carries the decision out against the settler, the
store and the lanes. Nothing here does I/O, keeps state or reads a clock: the same inputs
give the same decision, and the table below is property-tested (``tests/test_deciding.py``).

=============================  ==============  ===================================  ==================
what came back                 the claim       the message                          the lane
=============================  ==============  ===================================  ==================
Delivered                      completed       deleted                              done
not sent: already COMPLETED    —               deleted (a duplicate)                done
not sent: claimed elsewhere,   —               visible again in 5 s (not an         failed: 5 s + grace
or the store failed                            attempt)
Refused, throttled, or the     released (no    kept in hand; delivered again once   (still running)
circuit is open: the sink's    attempt)        the sink takes work (throttled
failure, not the event's                       while it takes work: its Retry-After,
                                               or else a backoff)
Retry (the event's failure),   released, one   visible again after Retry-After or   failed: delay + grace
or the processing raised       attempt         the backoff; FIFO and at most a
                               counted         minute: kept in hand (with its group)
                                               and delivered again after the delay
  ... the last attempt         released        dead-lettered (``exhausted``)        dead
Permanent                      released        dead-lettered (``permanent``)        dead
poison (undecodable)           never claimed   dead-lettered (``poison``)           never in a lane
=============================  ==============  ===================================  ==================

A dead-letter copy that fails keeps the message (visible again after the decision's
``delay``) and its lane waits for it like a retry (:meth:`Rules.failed`): a conversation never moves on
past an event that is neither delivered nor in the dead-letter queue. The grace is how
long a message takes to come back once visible (two long polls); a FIFO lane waits twice
as long (SQS serves nothing else of the group meanwhile, so waiting costs nothing there).
"""

from __future__ import annotations

import dataclasses
import enum

from fanout_core import spec as spec_model
from workers import events, ordering, retrying

ReasonClass = events.ReasonClass

ELSEWHERE_RETRY_SECONDS = 5.0
"""An event claimed elsewhere (or a store that did not answer): look again this much later."""
IN_PLACE_LIMIT_SECONDS = 60.0
"""FIFO: a failed message waits in place (its group kept in hand) for delays up to this."""
MIN_REDELIVERY_GRACE_SECONDS = 5.0


class Claim(enum.Enum):
    """What the event's claim said when its turn came (the sink's admission asked it)."""

    CLAIMED = "claimed"
    """Ours: the event was sent."""
    COMPLETED = "completed"
    """Already delivered: nothing was sent."""
    ELSEWHERE = "elsewhere"
    """Another replica (or message) holds a live claim: nothing was sent."""
    UNANSWERED = "unanswered"
    """The idempotency store failed: nothing was sent."""


class ClaimAction(enum.Enum):
    """What the processor does with the event's claim."""

    NONE = "none"
    """Not ours: leave it."""
    COMPLETE = "complete"
    RELEASE = "release"
    """Give it up without counting an attempt."""
    FAIL = "fail"
    """Give it up and count one failed attempt (the store returns the count)."""


class Whose(enum.Enum):
    """What a delivery came to, for the table: whose failure, if any, it was."""

    DELIVERED = "delivered"
    DUPLICATE = "duplicate"
    ELSEWHERE = "elsewhere"
    SINK = "sink"
    """The sink's failure (refused credential, throttled, circuit open): no attempt."""
    EVENT = "event"
    """The event's failure (a retryable answer): one attempt."""
    CRASHED = "crashed"
    """The processing raised (a bug in a sink or a store): one attempt, through the queue."""
    PERMANENT = "permanent"
    POISON = "poison"


_CLAIM_ACTIONS = {
    Whose.DELIVERED: ClaimAction.COMPLETE,
    Whose.DUPLICATE: ClaimAction.NONE,
    Whose.ELSEWHERE: ClaimAction.NONE,
    Whose.SINK: ClaimAction.RELEASE,
    Whose.EVENT: ClaimAction.FAIL,
    Whose.CRASHED: ClaimAction.FAIL,
    Whose.PERMANENT: ClaimAction.FAIL,
    Whose.POISON: ClaimAction.NONE,
}


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    """What one delivery came to; :attr:`claim` says what to do with the event's claim."""

    whose: Whose
    reason_class: ReasonClass | None = None
    reason: str = ""
    retry_after: float | None = None
    """The downstream's own delay (Retry-After), when it gave one."""

    @property
    def claim(self) -> ClaimAction:
        return _CLAIM_ACTIONS[self.whose]


def judge(outcome: events.Outcome, claim: Claim, *, sink_accepting: bool, store_error: str = "") -> Verdict:
    """Read a sink's answer. ``sink_accepting``: whether the sink takes work right after it
    (an open circuit makes a retryable failure the sink's, not the event's); ``store_error``:
    why the store did not answer (:attr:`Claim.UNANSWERED`)."""
    if isinstance(outcome, events.Delivered):
        return Verdict(Whose.DELIVERED)
    if isinstance(outcome, events.NotSent):
        if claim is Claim.COMPLETED:
            return Verdict(Whose.DUPLICATE)
        if claim is Claim.UNANSWERED:
            reason = f"idempotency store: {store_error}"
            return Verdict(Whose.ELSEWHERE, ReasonClass.STORE_UNAVAILABLE, reason)
        return Verdict(Whose.ELSEWHERE, ReasonClass.IN_PROGRESS, "in progress elsewhere")
    if isinstance(outcome, events.Permanent):
        return Verdict(Whose.PERMANENT, ReasonClass.PERMANENT, outcome.reason)
    if isinstance(outcome, events.Refused):
        return Verdict(Whose.SINK, ReasonClass.REFUSED, outcome.reason)
    if outcome.throttled:
        return Verdict(Whose.SINK, ReasonClass.THROTTLED, outcome.reason, outcome.delay_seconds)
    if not sink_accepting:  # this failure (or others) opened the circuit
        return Verdict(Whose.SINK, ReasonClass.CIRCUIT_OPEN, outcome.reason, outcome.delay_seconds)
    return Verdict(Whose.EVENT, ReasonClass.TRANSIENT, outcome.reason, outcome.delay_seconds)


def crashed(error_type: str) -> Verdict:
    """The processing of an event raised ``error_type``: one failed attempt."""
    return Verdict(Whose.CRASHED, ReasonClass.TRANSIENT, f"internal error: {error_type}")


def poison(reason: str) -> Verdict:
    """A body that can never be decoded."""
    return Verdict(Whose.POISON, ReasonClass.POISON, reason)


class Step(enum.Enum):
    """What becomes of the message."""

    DELETE = "delete"
    RETRY_LATER = "retry_later"
    """Back to the queue: visible again after ``delay``."""
    WAIT_IN_PLACE = "wait_in_place"
    """FIFO: kept in hand (its group with it) for ``delay``, then delivered again."""
    WAIT_FOR_SINK = "wait_for_sink"
    """Kept in hand until the sink takes work again (and ``delay`` passed), then delivered again."""
    DEAD_LETTER = "dead_letter"
    """Copied to the dead-letter queue; ``delay`` is the backoff if the copy cannot be made."""


@dataclasses.dataclass(frozen=True, slots=True)
class LaneEnding:
    """How a delivery ended for its lane (``ordering.Lanes.finish``): the finish and, after a
    failure, when the message is due back (``due``) and how long the lane waits (``hold``)."""

    finish: ordering.Finish
    hold: float | None = None
    due: float | None = None


DONE = LaneEnding(ordering.Finish.DONE)
DEAD = LaneEnding(ordering.Finish.DEAD)


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    """What the processor does with the message and tells its lane."""

    step: Step
    lane: LaneEnding | None
    """None while the message stays with its delivery (the ``WAIT_*`` steps)."""
    delay: float = 0.0
    reason_class: ReasonClass | None = None
    reason: str = ""

    @property
    def delivers_again(self) -> bool:
        return self.step in (Step.WAIT_IN_PLACE, Step.WAIT_FOR_SINK)


@dataclasses.dataclass(frozen=True, slots=True)
class Rules:
    """The consumer's settings the table reads."""

    retry: spec_model.RetrySpec
    fifo: bool
    redelivery_grace: float
    """How long a message made visible takes to come back to us: two long polls and a second."""

    @classmethod
    def of(cls, spec: spec_model.FanoutConsumerSpec) -> Rules:
        grace = max(MIN_REDELIVERY_GRACE_SECONDS, 2.0 * spec.queue.wait_time_seconds + 1.0)
        return cls(retry=spec.retry, fifo=spec.queue.is_fifo, redelivery_grace=grace)

    def backoff(self, attempts: int, jitter: float) -> float:
        return retrying.backoff_delay(attempts, self.retry, random=lambda: jitter)

    def failed(self, due: float) -> LaneEnding:
        """The failed message is due back in ``due`` seconds; the lane waits about as long as
        it takes to come back (with several replicas it may come back to another one)."""
        grace = 2 * self.redelivery_grace if self.fifo else self.redelivery_grace
        return LaneEnding(ordering.Finish.FAILED, hold=due + grace, due=due)


def decide(
    verdict: Verdict,
    *,
    rules: Rules,
    attempts: int,
    receive_count: int,
    waits: int = 1,
    jitter: float,
    sink_accepting: bool = True,
) -> Decision:
    """The row of the table for ``verdict``.

    ``attempts``: the event's failed attempts as the store counted them, this one included
    (0: unknown, read as 1). ``receive_count``: SQS's count for the message (the backoff of a
    dead-letter copy that fails). ``waits``: how often this delivery waited for the sink,
    this time included. ``jitter`` in [0, 1] draws the backoff within its step.
    """
    whose = verdict.whose
    if whose in (Whose.DELIVERED, Whose.DUPLICATE):
        return Decision(Step.DELETE, DONE)
    if whose is Whose.ELSEWHERE:
        delay = ELSEWHERE_RETRY_SECONDS
        return Decision(Step.RETRY_LATER, rules.failed(delay), delay, verdict.reason_class, verdict.reason)
    if whose is Whose.SINK:
        pause = 0.0
        if verdict.reason_class is ReasonClass.THROTTLED and sink_accepting:
            # No pause of the whole sink: one without a Retry-After (the limiter slowed
            # down), or an isolated short one (the limiter skipped a beat, see
            # ``throttling``). This event waits on its own — the Retry-After it was asked
            # for, or else a backoff — so a downstream that keeps answering 429 is never
            # hammered by one event. (The backoff, ``retry.baseDelaySeconds`` and up, would
            # hold the last events of a backlog for seconds after a one-second Retry-After.)
            asked = verdict.retry_after
            pause = asked if asked is not None and asked > 0 else rules.backoff(waits, jitter)
        return Decision(Step.WAIT_FOR_SINK, None, pause, verdict.reason_class, verdict.reason)
    if whose in (Whose.PERMANENT, Whose.POISON):
        return _dead_letter(verdict.reason_class, verdict.reason, rules, receive_count, jitter)
    attempts = max(1, attempts)
    if retrying.attempts_exhausted(attempts, rules.retry):
        reason = f"gave up after {attempts} attempts; last: {verdict.reason}"
        return _dead_letter(ReasonClass.EXHAUSTED, reason, rules, receive_count, jitter)
    delay = verdict.retry_after if verdict.retry_after is not None else rules.backoff(attempts, jitter)
    if whose is Whose.EVENT and rules.fifo and delay <= IN_PLACE_LIMIT_SECONDS:
        # A FIFO message retried in place keeps its whole group in our hands, in order: no
        # visibility change and nothing handed back, so order does not depend on what the
        # SQS implementation makes of a group whose head waits out a visibility change.
        # Longer delays go through the queue: a group waiting minutes holds no budget.
        return Decision(Step.WAIT_IN_PLACE, None, delay, verdict.reason_class, verdict.reason)
    return Decision(Step.RETRY_LATER, rules.failed(delay), delay, verdict.reason_class, verdict.reason)


def _dead_letter(
    reason_class: ReasonClass | None, reason: str, rules: Rules, receive_count: int, jitter: float
) -> Decision:
    backoff = rules.backoff(receive_count, jitter)
    return Decision(Step.DEAD_LETTER, DEAD, backoff, reason_class or ReasonClass.POISON, reason)
