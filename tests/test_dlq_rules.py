"""The redrive's pure rules (``fanout_core.deadletters``, ``fanout_core.pacing``), without a queue:
parsing what the worker writes, selection, FIFO group order, what is sent back, the summary,
the default rate and the pacer on an injected clock."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fanout_core import deadletters, pacing
from workers import envelopes, events, messages, settling, telemetry

NOW_MS = 1_750_000_000_000
BODY = json.dumps(
    {
        "topicName": "v2.detail.events.conversation.c-1.customer.end",
        "version": "2",
        "eventBody": {"conversationId": "c-1", "eventTime": 1_741_964_966_000},
        "metadata": {"CorrelationId": "corr-1"},
    }
)


def identify(body: str, attributes: Any) -> deadletters.EventIdentity | None:
    try:
        event = envelopes.decode(body, message_attributes=attributes)
    except envelopes.PoisonMessage:
        return None
    return deadletters.EventIdentity(event.event_type, event.event_id, event.ordering_key)


def worker_written(
    body: str = BODY,
    *,
    reason_class: str = "permanent",
    reason: str = "HTTP 400 bad field",
    group: str | None = None,
    message_id: str = "dlq-1",
    sent_ago_seconds: float = 60,
    extra: dict[str, dict[str, str]] | None = None,
    fifo: bool = False,
) -> dict[str, Any]:
    """A received dead-letter message exactly as the worker's request builder writes it."""
    source = {
        "MessageId": "src-1",
        "ReceiptHandle": "r",
        "Body": body,
        "Attributes": {"ApproximateReceiveCount": "5", **({"MessageGroupId": group} if group else {})},
        "MessageAttributes": extra or {},
    }
    request = settling.dead_letter_request(
        messages.parse(source),
        None,
        dead_letter_url=events.QueueUrl("https://sqs/1/dlq" + (".fifo" if fifo else "")),
        source_queue_url=events.QueueUrl("https://sqs/1/source"),
        reason_class=telemetry.ReasonClass(reason_class),
        reason=reason,
    )
    system = {
        "SentTimestamp": str(int(NOW_MS - sent_ago_seconds * 1000)),
        "ApproximateReceiveCount": "1",
    }
    if "MessageGroupId" in request:
        system["MessageGroupId"] = request["MessageGroupId"]
        system["MessageDeduplicationId"] = request["MessageDeduplicationId"]
    return {
        "MessageId": message_id,
        "ReceiptHandle": f"rh-{message_id}",
        "Body": request["MessageBody"],
        "Attributes": system,
        "MessageAttributes": request["MessageAttributes"],
    }


def letter(**kwargs: Any) -> deadletters.DeadLetter:
    return deadletters.parse(worker_written(**kwargs), identify)


def test_the_worker_written_format_parses_into_its_reason_and_identity() -> None:
    parsed = letter(extra={"traceparent": {"DataType": "String", "StringValue": "00-ab-cd-01"}})
    assert parsed.reason_class == "permanent"
    assert parsed.reason == "HTTP 400 bad field"
    assert parsed.attempts == 5
    assert parsed.source_queue == "https://sqs/1/source"
    assert parsed.body == BODY
    assert parsed.age_seconds(NOW_MS) == 60
    assert parsed.identity == deadletters.EventIdentity(
        "v2.detail.events.conversation.{id}.customer.end", "corr-1", "c-1"
    )
    assert set(parsed.attributes) == {*deadletters.REASON_ATTRIBUTES, "traceparent"}


def test_a_message_without_reason_attributes_is_unlabelled_and_a_poison_body_has_no_identity() -> None:
    moved_by_policy = deadletters.parse({"MessageId": "m", "Body": "not json", "Attributes": {}}, identify)
    assert moved_by_policy.reason_class == deadletters.UNLABELLED
    assert moved_by_policy.identity is None and moved_by_policy.event_type is None


def test_the_reason_classes_are_the_ones_the_worker_dead_letters_with() -> None:
    worker_classes = {reason_class.value for reason_class in telemetry.ReasonClass}
    assert set(deadletters.DEAD_LETTER_CLASSES) <= worker_classes


@pytest.mark.parametrize(
    ("selection", "expected"),
    [
        (deadletters.Selection(), True),
        (deadletters.Selection(reason_classes=frozenset({"permanent"})), True),
        (deadletters.Selection(reason_classes=frozenset({"poison", "exhausted"})), False),
        (deadletters.Selection(reason_match="BAD FIELD"), True),
        (deadletters.Selection(reason_match="timeout"), False),
        (deadletters.Selection(event_type="v2.detail.events.conversation.*.customer.*"), True),
        (deadletters.Selection(event_type="*.acw"), False),
        (deadletters.Selection(older_than_seconds=30), True),
        (deadletters.Selection(older_than_seconds=120), False),
        (deadletters.Selection(reason_classes=frozenset({"permanent"}), older_than_seconds=120), False),
    ],
)
def test_every_given_filter_must_match(selection: deadletters.Selection, expected: bool) -> None:
    assert deadletters.matches(letter(), selection, NOW_MS) is expected


def test_an_undecodable_body_never_matches_an_event_type_glob() -> None:
    poison = letter(body="not json", reason_class="poison")
    assert not deadletters.matches(poison, deadletters.Selection(event_type="*"), NOW_MS)
    assert deadletters.matches(poison, deadletters.Selection(reason_classes=frozenset({"poison"})), NOW_MS)


def test_a_selection_refuses_an_unknown_reason_class() -> None:
    with pytest.raises(ValueError, match="unknown reason class bogus"):
        deadletters.Selection(reason_classes=frozenset({"bogus"}))


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90s", 90), ("15m", 900), ("2h", 7200), ("3d", 259_200), ("1.5h", 5400)],
)
def test_durations(text: str, seconds: float) -> None:
    assert deadletters.parse_duration(text) == seconds


def test_a_bad_duration_says_what_a_good_one_looks_like() -> None:
    with pytest.raises(ValueError, match=r"e\.g\. 90s"):
        deadletters.parse_duration("two hours")


def test_a_fifo_group_stops_at_the_first_message_that_stays() -> None:
    gate = deadletters.GroupGate(deadletters.Selection(reason_classes=frozenset({"permanent"})), fifo=True)
    first = letter(group="g", message_id="1", fifo=True)
    stays = letter(group="g", message_id="2", reason_class="exhausted", fifo=True)
    after = letter(group="g", message_id="3", fifo=True)
    other = letter(group="h", message_id="4", fifo=True)
    assert [gate.decide(item, NOW_MS) for item in (first, stays, after, other)] == [
        deadletters.Verdict.MOVE,
        deadletters.Verdict.SKIP,
        deadletters.Verdict.HELD,
        deadletters.Verdict.MOVE,
    ]
    assert gate.decide(first, NOW_MS) is deadletters.Verdict.SEEN


def test_a_standard_queue_closes_no_group_and_the_limit_holds_the_rest() -> None:
    gate = deadletters.GroupGate(
        deadletters.Selection(limit=2, reason_classes=frozenset({"permanent"})), fifo=False
    )
    verdicts = [
        gate.decide(letter(message_id=str(index), reason_class=reason_class), NOW_MS)
        for index, reason_class in enumerate(("permanent", "poison", "permanent", "permanent"))
    ]
    assert verdicts == [
        deadletters.Verdict.MOVE,
        deadletters.Verdict.SKIP,
        deadletters.Verdict.MOVE,
        deadletters.Verdict.OVER_LIMIT,
    ]


def test_a_refused_copy_is_undone_and_closes_its_fifo_group() -> None:
    gate = deadletters.GroupGate(deadletters.Selection(), fifo=True)
    refused = letter(group="g", message_id="1", fifo=True)
    assert gate.decide(refused, NOW_MS) is deadletters.Verdict.MOVE
    gate.undo(refused)
    assert gate.moved == 0
    assert gate.decide(letter(group="g", message_id="2", fifo=True), NOW_MS) is deadletters.Verdict.HELD


def test_the_copy_keeps_the_body_and_other_attributes_and_folds_the_reason_into_history() -> None:
    parsed = letter(extra={"traceparent": {"DataType": "String", "StringValue": "00-ab-cd-01"}})
    copy = deadletters.copy_of(parsed, source_fifo=False, redriven_at_ms=NOW_MS)
    entry = copy.entry("0")
    assert entry["MessageBody"] == BODY
    assert set(entry["MessageAttributes"]) == {"traceparent", deadletters.HISTORY}
    assert "MessageGroupId" not in entry and "MessageDeduplicationId" not in entry
    history = json.loads(entry["MessageAttributes"][deadletters.HISTORY]["StringValue"])
    assert history == {
        "reasonClass": "permanent",
        "reason": "HTTP 400 bad field",
        "attempts": 5,
        "deadLetteredAt": NOW_MS - 60_000,
        "redrivenAt": NOW_MS,
        "redrives": 1,
    }


def test_a_second_redrive_counts_on_from_the_history() -> None:
    first = deadletters.copy_of(letter(), source_fifo=False, redriven_at_ms=NOW_MS)
    history = first.attributes[deadletters.HISTORY].wire()
    again = letter(extra={deadletters.HISTORY: history})
    second = deadletters.copy_of(again, source_fifo=False, redriven_at_ms=NOW_MS)
    assert json.loads(second.attributes[deadletters.HISTORY].string_value or "")["redrives"] == 2


def test_a_fifo_copy_keeps_the_group_and_dedups_on_the_dead_letters_message_id() -> None:
    parsed = letter(group="conv-9", message_id="dlq-msg-7", fifo=True)
    copy = deadletters.copy_of(parsed, source_fifo=True, redriven_at_ms=NOW_MS)
    assert (copy.group_id, copy.deduplication_id) == ("conv-9", "dlq-msg-7")
    # From a standard dead-letter queue: the decoded ordering key is the group.
    from_standard = deadletters.copy_of(letter(message_id="x"), source_fifo=True, redriven_at_ms=NOW_MS)
    assert from_standard.group_id == "c-1"
    poison = deadletters.copy_of(
        letter(body="nope", reason_class="poison"), source_fifo=True, redriven_at_ms=0
    )
    assert poison.group_id == deadletters.FIFO_FALLBACK_GROUP


def test_the_summary_counts_largest_first_and_buckets_ages() -> None:
    letters = [
        letter(message_id="1", sent_ago_seconds=30),
        letter(message_id="2", sent_ago_seconds=2 * 3600),
        letter(message_id="3", sent_ago_seconds=2 * 86_400, reason_class="exhausted", reason="HTTP 503"),
        letter(message_id="4", body="not json", reason_class="poison", reason="body is not JSON"),
    ]
    summary = deadletters.summarize(letters, NOW_MS)
    assert summary.total == 4
    assert summary.by_reason_class == {"permanent": 2, "exhausted": 1, "poison": 1}
    assert list(summary.by_reason_class) == ["permanent", "exhausted", "poison"]
    assert summary.by_reason["permanent: HTTP 400 bad field"] == 2
    assert summary.by_event_type == {
        "v2.detail.events.conversation.{id}.customer.end": 3,
        deadletters.UNDECODABLE: 1,
    }
    assert summary.by_age == {"< 1h": 2, "1h-6h": 1, "1d-3d": 1}
    assert summary.oldest_age_seconds == 2 * 86_400 and summary.newest_age_seconds == 30


# --- pacing -------------------------------------------------------------------------------


def test_the_default_rate_is_half_the_sinks_limit_when_live_traffic_is_unknown() -> None:
    choice = pacing.choose_rate(explicit=None, rate_limit=40)
    assert choice.rate == 20 and "half of sink.rateLimit 40/s" in choice.why
    assert choice.backlog_limit == 40 * pacing.GUARD_SECONDS


def test_with_live_traffic_measured_the_rate_is_what_the_limit_leaves_room_for() -> None:
    assert pacing.choose_rate(explicit=None, rate_limit=100, live_rate=30).rate == pytest.approx(60)
    busy = pacing.choose_rate(explicit=None, rate_limit=100, live_rate=95)
    assert busy.rate == pytest.approx(10) and "floor" in busy.why


def test_an_explicit_rate_wins_and_no_limit_means_a_modest_default() -> None:
    assert pacing.choose_rate(explicit=7, rate_limit=100).rate == 7
    unlimited = pacing.choose_rate(explicit=None, rate_limit=None)
    assert unlimited.rate == pacing.UNLIMITED_RATE and "--rate" in unlimited.why
    with pytest.raises(ValueError, match="positive"):
        pacing.choose_rate(explicit=0, rate_limit=None)


@settings(max_examples=200, deadline=None)
@given(
    rate=st.floats(min_value=0.2, max_value=500),
    steps=st.lists(st.floats(min_value=0.0, max_value=2.0), min_size=1, max_size=60),
)
def test_a_greedy_sender_never_beats_the_pace(rate: float, steps: list[float]) -> None:
    """Whatever the timing of its calls, sent <= burst + rate x elapsed."""
    pacer = pacing.Pacer(pacing.RateChoice(rate, "", None), now=0.0)
    now = sent = 0.0
    for step in steps:
        now += step
        allowed = min(pacer.allowance(now), 10)
        pacer.spend(allowed, now)
        sent += allowed
        assert sent <= pacer.burst + rate * now + 1e-6


def test_a_sender_that_waits_as_told_keeps_the_pace() -> None:
    pacer = pacing.Pacer(pacing.RateChoice(5.0, "", None), now=0.0)
    now, sent = 0.0, 0
    while now < 100:
        allowed = pacer.allowance(now)
        if allowed:
            pacer.spend(allowed, now)
            sent += allowed
        else:
            now += pacer.wait(now)
    assert sent == pytest.approx(5 * 100 + pacer.burst, abs=2)


def test_the_backlog_guard_pauses_above_its_limit_and_resumes_below_half() -> None:
    pacer = pacing.Pacer(pacing.RateChoice(10.0, "", 300), now=0.0)
    assert pacer.backlog_due(0.0)
    pacer.observe_backlog(301, 0.0)
    assert pacer.paused and pacer.allowance(1.0) == 0
    assert not pacer.backlog_due(1.0) and pacer.backlog_due(pacing.GUARD_INTERVAL_SECONDS)
    pacer.observe_backlog(200, 5.0)  # below the limit but above half: still paused
    assert pacer.paused
    pacer.observe_backlog(150, 10.0)
    assert not pacer.paused
    # No credit for the time spent paused: one burst, not ten seconds' worth.
    assert pacer.allowance(10.0) <= pacer.burst


def test_without_a_backlog_limit_the_guard_never_reads() -> None:
    pacer = pacing.Pacer(pacing.RateChoice(10.0, "", None), now=0.0)
    assert not pacer.backlog_due(math.inf)
