"""deciding: the processor's decision table, property-tested without a queue or a sink.

Each property is a row (or a promise) of the table in ``workers/deciding.py``: whose failure
an answer is, what becomes of the claim, of the message and of its lane.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fanout_core import spec as spec_model
from workers import deciding, events, ordering, retrying

Whose = deciding.Whose
Step = deciding.Step
SQS_CAP = retrying.SQS_MAX_VISIBILITY_SECONDS

reasons = st.text(max_size=20)
delays = st.none() | st.floats(min_value=0, max_value=SQS_CAP, allow_nan=False)
outcomes = st.one_of(
    st.builds(events.Delivered),
    st.builds(events.NotSent),
    st.builds(events.Permanent, reason=reasons),
    st.builds(events.Refused, reason=reasons),
    st.builds(events.Retry, reason=reasons, delay_seconds=delays, throttled=st.booleans()),
)
claims = st.sampled_from(deciding.Claim)
retry_specs = st.builds(
    spec_model.RetrySpec,
    base_delay_seconds=st.floats(min_value=0.1, max_value=60),
    max_delay_seconds=st.floats(min_value=60, max_value=SQS_CAP),
    max_attempts=st.integers(min_value=1, max_value=10),
)
rule_sets = st.builds(
    deciding.Rules,
    retry=retry_specs,
    fifo=st.booleans(),
    redelivery_grace=st.floats(min_value=5, max_value=100),
)
jitters = st.floats(min_value=0, max_value=1)
counts = st.integers(min_value=0, max_value=50)


def _decide(verdict: deciding.Verdict, rules: deciding.Rules, **inputs: object) -> deciding.Decision:
    values: dict[str, object] = {"attempts": 1, "receive_count": 1, "waits": 1, "jitter": 0.5}
    values.update(inputs)
    return deciding.decide(verdict, rules=rules, **values)  # type: ignore[arg-type]


@given(outcome=outcomes, claim=claims, accepting=st.booleans())
def test_only_the_events_own_failures_count_attempts(
    outcome: events.Outcome, claim: deciding.Claim, accepting: bool
) -> None:
    verdict = deciding.judge(outcome, claim, sink_accepting=accepting)
    counted = verdict.claim is deciding.ClaimAction.FAIL
    events_own = isinstance(outcome, events.Permanent) or (
        isinstance(outcome, events.Retry) and not outcome.throttled and accepting
    )
    assert counted == events_own
    if isinstance(outcome, events.Refused) or (isinstance(outcome, events.Retry) and outcome.throttled):
        assert verdict.whose is Whose.SINK


@given(
    outcome=outcomes, claim=claims, accepting=st.booleans(), rules=rule_sets, attempts=counts, jitter=jitters
)
def test_every_decision_is_one_coherent_row(
    outcome: events.Outcome,
    claim: deciding.Claim,
    accepting: bool,
    rules: deciding.Rules,
    attempts: int,
    jitter: float,
) -> None:
    verdict = deciding.judge(outcome, claim, sink_accepting=accepting)
    decision = _decide(verdict, rules, attempts=attempts, jitter=jitter, sink_accepting=accepting)
    assert 0 <= decision.delay <= SQS_CAP
    expected_finish = {
        Step.DELETE: ordering.Finish.DONE,
        Step.DEAD_LETTER: ordering.Finish.DEAD,
        Step.RETRY_LATER: ordering.Finish.FAILED,
    }
    if decision.delivers_again:
        assert decision.lane is None, "a message delivered again has not ended in its lane"
    else:
        assert decision.lane is not None and decision.lane.finish is expected_finish[decision.step]
    if decision.step is Step.RETRY_LATER:
        assert decision.lane is not None and decision.lane.due == decision.delay
        assert decision.lane.hold is not None and decision.lane.hold > decision.delay
    if decision.step is Step.WAIT_IN_PLACE:
        assert rules.fifo and decision.delay <= deciding.IN_PLACE_LIMIT_SECONDS
    if decision.step is Step.DEAD_LETTER:
        assert decision.reason_class in (
            events.ReasonClass.POISON,
            events.ReasonClass.PERMANENT,
            events.ReasonClass.EXHAUSTED,
        )


@given(outcome=outcomes, rules=rule_sets, attempts=counts, jitter=jitters, waits=st.integers(1, 20))
def test_a_sink_wide_failure_never_leaves_our_hands(
    outcome: events.Outcome, rules: deciding.Rules, attempts: int, jitter: float, waits: int
) -> None:
    verdict = deciding.judge(outcome, deciding.Claim.CLAIMED, sink_accepting=False)
    if verdict.whose is not Whose.SINK:
        return
    decision = _decide(verdict, rules, attempts=attempts, waits=waits, jitter=jitter, sink_accepting=False)
    assert decision.step is Step.WAIT_FOR_SINK
    assert decision.delay == 0, "the sink itself says when it takes work again"


@given(rules=rule_sets, waits=st.integers(1, 20), jitter=jitters)
def test_throttled_without_retry_after_also_waits_a_backoff(
    rules: deciding.Rules, waits: int, jitter: float
) -> None:
    verdict = deciding.judge(events.Retry("429", throttled=True), deciding.Claim.CLAIMED, sink_accepting=True)
    decision = _decide(verdict, rules, waits=waits, jitter=jitter)
    step = retrying.backoff_ceiling(waits, rules.retry)
    assert decision.step is Step.WAIT_FOR_SINK and decision.reason_class is events.ReasonClass.THROTTLED
    assert step / 2 <= decision.delay <= step


@given(rules=rule_sets, waits=st.integers(1, 20), jitter=jitters, asked=st.floats(0.001, 120.0))
def test_an_isolated_throttle_waits_its_retry_after_in_hand_not_a_backoff(
    rules: deciding.Rules, waits: int, jitter: float, asked: float
) -> None:
    """A 429 with a Retry-After that left the sink accepting (the limiter skipped a beat): the
    event waits what the downstream asked for, in hand — not ``retry.baseDelaySeconds`` and
    up, which held the last events of a backlog for seconds after a one-second Retry-After."""
    throttled = events.Retry("429", delay_seconds=asked, throttled=True)
    verdict = deciding.judge(throttled, deciding.Claim.CLAIMED, sink_accepting=True)
    decision = _decide(verdict, rules, waits=waits, jitter=jitter)
    assert decision.step is Step.WAIT_FOR_SINK and decision.lane is None
    assert decision.delay == asked


@given(rules=rule_sets, attempts=counts, jitter=jitters, retry_after=delays, accepting=st.booleans())
def test_a_retry_is_dead_lettered_exactly_when_its_attempts_are_used_up(
    rules: deciding.Rules, attempts: int, jitter: float, retry_after: float | None, accepting: bool
) -> None:
    verdict = deciding.judge(
        events.Retry("HTTP 500", retry_after), deciding.Claim.CLAIMED, sink_accepting=True
    )
    decision = _decide(verdict, rules, attempts=attempts, jitter=jitter)
    if max(1, attempts) >= rules.retry.max_attempts:
        assert decision.step is Step.DEAD_LETTER
        assert decision.reason_class is events.ReasonClass.EXHAUSTED
        assert decision.reason.startswith(f"gave up after {max(1, attempts)} attempts; last: HTTP 500")
        return
    assert decision.step in (Step.RETRY_LATER, Step.WAIT_IN_PLACE)
    if retry_after is not None:
        assert decision.delay == retry_after, "the downstream's own delay is honoured"
    else:
        step = retrying.backoff_ceiling(max(1, attempts), rules.retry)
        assert step / 2 <= decision.delay <= step
    in_place = rules.fifo and decision.delay <= deciding.IN_PLACE_LIMIT_SECONDS
    assert (decision.step is Step.WAIT_IN_PLACE) == in_place


@given(rules=rule_sets, attempts=counts, jitter=jitters)
def test_a_crash_counts_an_attempt_and_goes_through_the_queue(
    rules: deciding.Rules, attempts: int, jitter: float
) -> None:
    verdict = deciding.crashed("KeyError")
    assert verdict.claim is deciding.ClaimAction.FAIL
    decision = _decide(verdict, rules, attempts=attempts, jitter=jitter)
    assert decision.step in (Step.RETRY_LATER, Step.DEAD_LETTER)
    assert "internal error: KeyError" in decision.reason


@given(rules=rule_sets, attempts=counts, receive_count=counts, jitter=jitters)
def test_permanent_and_poison_are_dead_lettered_whatever_the_counts(
    rules: deciding.Rules, attempts: int, receive_count: int, jitter: float
) -> None:
    permanent = deciding.judge(events.Permanent("HTTP 422"), deciding.Claim.CLAIMED, sink_accepting=True)
    for verdict, reason_class in (
        (permanent, events.ReasonClass.PERMANENT),
        (deciding.poison("body is not JSON"), events.ReasonClass.POISON),
    ):
        decision = _decide(verdict, rules, attempts=attempts, receive_count=receive_count, jitter=jitter)
        assert (decision.step, decision.lane, decision.reason_class) == (
            Step.DEAD_LETTER,
            deciding.DEAD,
            reason_class,
        )
        # the backoff a failed copy waits before the message comes back
        step = retrying.backoff_ceiling(receive_count, rules.retry)
        assert step / 2 <= decision.delay <= step
    assert deciding.poison("x").claim is deciding.ClaimAction.NONE, "a poison body was never claimed"


@pytest.mark.parametrize(
    ("claim", "step", "reason_class", "action"),
    [
        (deciding.Claim.COMPLETED, Step.DELETE, None, deciding.ClaimAction.NONE),
        (
            deciding.Claim.ELSEWHERE,
            Step.RETRY_LATER,
            events.ReasonClass.IN_PROGRESS,
            deciding.ClaimAction.NONE,
        ),
        (
            deciding.Claim.UNANSWERED,
            Step.RETRY_LATER,
            events.ReasonClass.STORE_UNAVAILABLE,
            deciding.ClaimAction.NONE,
        ),
    ],
)
def test_an_event_not_sent(
    claim: deciding.Claim,
    step: deciding.Step,
    reason_class: events.ReasonClass | None,
    action: deciding.ClaimAction,
) -> None:
    rules = deciding.Rules(retry=spec_model.RetrySpec(), fifo=False, redelivery_grace=41)
    verdict = deciding.judge(events.NotSent(), claim, sink_accepting=True, store_error="throttled")
    decision = _decide(verdict, rules, attempts=99)
    assert (decision.step, decision.reason_class, verdict.claim) == (step, reason_class, action)
    if step is Step.RETRY_LATER:
        assert decision.delay == deciding.ELSEWHERE_RETRY_SECONDS
        assert decision.lane == deciding.LaneEnding(ordering.Finish.FAILED, hold=46, due=5)
    if claim is deciding.Claim.UNANSWERED:
        assert decision.reason == "idempotency store: throttled"


def test_delivered_completes_the_claim_and_deletes() -> None:
    rules = deciding.Rules(retry=spec_model.RetrySpec(), fifo=True, redelivery_grace=5)
    verdict = deciding.judge(events.Delivered(), deciding.Claim.CLAIMED, sink_accepting=False)
    assert verdict.claim is deciding.ClaimAction.COMPLETE
    assert _decide(verdict, rules) == deciding.Decision(Step.DELETE, deciding.DONE)


@given(fifo=st.booleans(), grace=st.floats(min_value=5, max_value=100), due=st.floats(0, SQS_CAP))
def test_a_fifo_lane_waits_twice_the_grace(fifo: bool, grace: float, due: float) -> None:
    rules = deciding.Rules(retry=spec_model.RetrySpec(), fifo=fifo, redelivery_grace=grace)
    ending = rules.failed(due)
    assert ending.hold is not None
    assert math.isclose(ending.hold - due, grace * (2 if fifo else 1))


def test_rules_of_a_spec_wait_two_long_polls_and_a_second() -> None:
    spec = spec_model.FanoutConsumerSpec.model_validate(
        {
            "queue": {"url": "https://sqs.us-east-1.amazonaws.com/1/q.fifo", "waitTimeSeconds": 20},
            "sink": {"type": "webhook", "url": "http://127.0.0.1:9/"},
        }
    )
    rules = deciding.Rules.of(spec)
    assert (rules.fifo, rules.redelivery_grace) == (True, 41)
