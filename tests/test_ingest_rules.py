"""The front door's pure rules: signatures, reading bodies, attributes, batching, config."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import urllib.parse
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from fanout_core import keying, offloading, spec
from fanout_ingest import attributes, batching, classifying, config, publishing, signatures
from workers import envelopes

HUB = config.SignatureScheme(header="X-Hub-Signature-256", encoding=config.DigestEncoding.BASE64)
HEX = config.SignatureScheme(header="X-Fanout-Signature", encoding=config.DigestEncoding.HEX)
EVENT = {
    "topicName": "v2.detail.events.conversation.0b6f8c1e-3d2a-4c5b-9e8f-7a6b5c4d3e2f.customer.start",
    "version": "2",
    "eventBody": {"eventTime": 1741964966123, "conversationId": "0b6f8c1e-3d2a-4c5b-9e8f-7a6b5c4d3e2f"},
    "metadata": {"CorrelationId": "8e7d6c5b-4a39-4281-b0c9-d8e7f6a5b4c3"},
}


# --- signatures -----------------------------------------------------------------------


def test_open_messaging_signature_is_base64_of_the_hmac_of_the_raw_body() -> None:
    body = b'{"id": "m1", "text": "hello"}'
    digest = hmac.new(b"s3cret", body, hashlib.sha256).digest()
    header = "sha256=" + base64.b64encode(digest).decode()
    assert signatures.verify(body, CIMultiDict({"x-hub-signature-256": header}), [HUB], [b"s3cret"])
    # The same digest in hex is another scheme's header, not this one's.
    assert not signatures.verify(
        body, CIMultiDict({"X-Hub-Signature-256": "sha256=" + digest.hex()}), [HUB], [b"s3cret"]
    )
    assert signatures.verify(
        body, CIMultiDict({"X-Fanout-Signature": "sha256=" + digest.hex()}), [HEX], [b"s3cret"]
    )


@given(body=st.binary(max_size=512), secret=st.binary(min_size=1, max_size=64))
def test_a_signature_verifies_only_its_own_body_and_secret(body: bytes, secret: bytes) -> None:
    for scheme in (HUB, HEX):
        headers = CIMultiDict({scheme.header: signatures.sign(secret, body, scheme.encoding)})
        assert signatures.verify(body, headers, [HUB, HEX], [b"other", secret])
        assert not signatures.verify(body + b" ", headers, [HUB, HEX], [secret])
        assert not signatures.verify(body, headers, [HUB, HEX], [secret + b"x"])


@pytest.mark.parametrize(
    "value",
    [
        "",
        "sha256=",
        "sha1=abcd",
        "sha256=not-base64!!",
        "sha256=" + "ab" * 31,
        "sha256=" + "zz" * 32,
        "garbage",
    ],
)
def test_malformed_signature_headers_never_verify(value: str) -> None:
    assert not signatures.verify(
        b"{}", CIMultiDict({HUB.header: value, HEX.header: value}), [HUB, HEX], [b"k"]
    )


def test_no_header_or_no_secret_is_never_authentic() -> None:
    good = CIMultiDict({HEX.header: signatures.sign(b"k", b"{}", HEX.encoding)})
    assert not signatures.verify(b"{}", CIMultiDict(), [HUB, HEX], [b"k"])
    assert not signatures.verify(b"{}", good, [HUB, HEX], [])
    assert not signatures.verify(b"{}", good, [HUB], [b"k"])  # a header the source does not check


# --- reading bodies -------------------------------------------------------------------


def test_one_event_keeps_its_text_and_gets_the_workers_keys() -> None:
    text = json.dumps(EVENT, indent=1)
    [event] = classifying.classify(text.encode(), ordering_key="conversationId", max_events=10)
    assert event.text == text  # published as received
    decoded = envelopes.decode(text)
    assert event.event_id == decoded.event_id == "8e7d6c5b-4a39-4281-b0c9-d8e7f6a5b4c3"
    assert event.event_type == decoded.event_type == "v2.detail.events.conversation.{id}.customer.start"
    assert event.ordering_key == decoded.ordering_key == event.conversation_id
    assert event.category is classifying.Category.CONVERSATION


def test_a_batch_is_every_object_of_an_array() -> None:
    eventbridge = {
        "version": "0",
        "id": "x",
        "detail-type": "v2.routing.queues.{id}.conversations",
        "detail": {"topicName": "v2.routing.queues.5a1b.conversations", "eventBody": {"id": "c-1"}},
    }
    body = json.dumps([EVENT, eventbridge, {"anything": 1}]).encode()
    events = classifying.classify(body, ordering_key="conversationId", max_events=3)
    assert [event.category for event in events] == ["conversation", "queue", "other"]
    assert events[1].conversation_id == "c-1"
    assert [json.loads(event.text) for event in events] == json.loads(body)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\xff\xfe", "not UTF-8"),
        (b"not json", "not JSON"),
        (b'{"a": NaN}', "not JSON"),
        (b'"a string"', "neither a JSON object"),
        (b"[]", "empty batch"),
        (b"[{}, 3]", "batch item 1 is not a JSON object"),
        (b"[{}, {}, {}, {}]", "at most 3"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"detail-type": "x", "detail": "not an object"}', "detail is not an object"),
    ],
)
def test_what_is_not_an_event_is_refused_with_a_reason_that_quotes_nothing(body: bytes, reason: str) -> None:
    with pytest.raises(classifying.NotAnEvent) as caught:
        classifying.classify(body, ordering_key="conversationId", max_events=3)
    assert reason in caught.value.reason


@settings(max_examples=200)
@given(
    document=st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=8),
        lambda children: (
            st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
        ),
        max_leaves=12,
    )
)
def test_any_json_object_is_keyed_exactly_as_the_worker_keys_it(document: Any) -> None:
    if not isinstance(document, dict):
        document = {"value": document}
    text = json.dumps(document)
    try:
        [event] = classifying.classify(text.encode(), ordering_key="conversationId", max_events=1)
    except classifying.NotAnEvent:
        with pytest.raises(envelopes.PoisonMessage):
            envelopes.decode(text)
        return
    decoded = envelopes.decode(text)
    assert (event.event_id, event.event_type, event.ordering_key) == (
        decoded.event_id,
        decoded.event_type,
        decoded.ordering_key,
    )


# --- attributes -----------------------------------------------------------------------


def _event(**overrides: Any) -> classifying.InboundEvent:
    text = json.dumps({**EVENT, **overrides})
    return classifying.classify(text.encode(), ordering_key="conversationId", max_events=1)[0]


def test_attributes_carry_what_filters_and_workers_read() -> None:
    made = attributes.message_attributes(
        _event(), source="genesys", traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01"
    )
    assert {name: value["StringValue"] for name, value in made.items()} == {
        "eventType": "v2.detail.events.conversation.{id}.customer.start",
        "eventCategory": "conversation",
        "conversationId": "0b6f8c1e-3d2a-4c5b-9e8f-7a6b5c4d3e2f",
        "eventId": "8e7d6c5b-4a39-4281-b0c9-d8e7f6a5b4c3",
        "source": "genesys",
        "traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01",
    }
    offloaded = attributes.message_attributes(_event(), source="g", traceparent=None, offloaded_size=300_000)
    assert offloaded[offloading.SIZE_ATTRIBUTE] == {"DataType": "Number", "StringValue": "300000"}
    assert "traceparent" not in offloaded
    assert len(offloaded) <= 10


def test_fifo_entries_group_by_conversation_and_deduplicate_by_event_id() -> None:
    event = _event()
    entry = attributes.entry("0", event.text, {}, event, fifo=True)
    assert entry["MessageGroupId"] == "0b6f8c1e-3d2a-4c5b-9e8f-7a6b5c4d3e2f"
    assert entry["MessageDeduplicationId"] == "8e7d6c5b-4a39-4281-b0c9-d8e7f6a5b4c3"
    assert "MessageGroupId" not in attributes.entry("0", event.text, {}, event, fifo=False)
    long_id = _event(metadata={"CorrelationId": "é" * 200})
    made = attributes.entry("1", long_id.text, {}, long_id, fifo=True)
    assert made["MessageDeduplicationId"] == hashlib.sha256(("é" * 200).encode()).hexdigest()


def test_traceparent_continues_the_requests_trace_or_starts_one() -> None:
    bits = random.Random(1).getrandbits
    incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    made = attributes.traceparent_for(incoming, bits)
    assert made.startswith("00-4bf92f3577b34da6a3ce929d0e0e4736-") and made.endswith("-01")
    assert made.split("-")[2] != "00f067aa0ba902b7"
    for bad in (None, "", "garbage", "00-" + "0" * 32 + "-00f067aa0ba902b7-01"):
        fresh = attributes.traceparent_for(bad, bits).split("-")
        assert len(fresh) == 4 and len(fresh[1]) == 32 and fresh[3] == "01" and fresh[1] != "0" * 32


# --- batching -------------------------------------------------------------------------


def test_batches_form_while_calls_are_in_flight_and_leave_when_one_comes_back() -> None:
    def decide(**given: Any) -> batching.Decision:
        return batching.decide(**{"in_flight": 0, "max_in_flight": 8, "linger": 0.1, **given})

    # Nothing in flight: whatever waits leaves at once, however little and however young.
    assert decide(waiting=1, oldest_age=0).send
    assert decide(waiting=4, oldest_age=0).send
    # A call in flight: arrivals wait for it (no timer but the stall guard's)...
    held = decide(waiting=3, oldest_age=0.02, in_flight=1)
    assert not held.send and held.wait_seconds == pytest.approx(0.08)
    # ...except a full call of ten, which leaves at once while slots are free...
    assert decide(waiting=10, oldest_age=0, in_flight=1).send
    assert decide(waiting=25, oldest_age=0, in_flight=7).send
    # ...and what waited the whole stall guard for calls that do not come back.
    assert decide(waiting=3, oldest_age=0.1, in_flight=1).send
    # Every slot taken: nothing leaves, and no timer (a returning call looks again).
    full = decide(waiting=30, oldest_age=1, in_flight=8)
    assert not full.send and full.wait_seconds is None
    assert not decide(waiting=0, oldest_age=0).send


def test_under_load_a_call_is_held_to_fill_within_the_batch_window() -> None:
    def decide(**given: Any) -> batching.Decision:
        defaults = {"in_flight": 0, "max_in_flight": 8, "linger": 0.1, "batch_window": 0.02}
        return batching.decide(**{**defaults, **given})

    # 600 events/s fills ten in ~17 ms: the first event waits for the others, at most 20 ms.
    held = decide(waiting=1, oldest_age=0, arrival_rate=600)
    assert not held.send and held.wait_seconds == pytest.approx(0.02)
    assert decide(waiting=10, oldest_age=0, arrival_rate=600).send  # full: it leaves
    # Six missing at 600/s take 10 ms: too late for an entry that waited 12 ms already.
    assert decide(waiting=4, oldest_age=0.012, arrival_rate=600).send
    assert not decide(waiting=4, oldest_age=0.008, arrival_rate=600).send
    assert decide(waiting=3, oldest_age=0.02, arrival_rate=5000).send  # the window is over
    # Below 500/s (ten per 20 ms) nothing is held, however full the call nearly is.
    assert decide(waiting=1, oldest_age=0, arrival_rate=180).send
    assert decide(waiting=9, oldest_age=0, arrival_rate=499).send
    assert decide(waiting=1, oldest_age=0, arrival_rate=10_000, batch_window=0).send
    # Calls in flight: as before, whatever the rate.
    assert decide(waiting=3, oldest_age=0.02, in_flight=1, arrival_rate=600).wait_seconds == pytest.approx(
        0.08
    )


_RATE_RULES = {
    "waiting": st.integers(min_value=0, max_value=40),
    "oldest_age": st.floats(min_value=0, max_value=2, allow_nan=False),
    "in_flight": st.integers(min_value=0, max_value=8),
    "max_in_flight": st.integers(min_value=1, max_value=8),
    "linger": st.floats(min_value=0, max_value=1, allow_nan=False),
    "arrival_rate": st.floats(min_value=0, max_value=1e6, allow_nan=False),
    "batch_window": st.floats(min_value=0, max_value=1, allow_nan=False),
}


@given(**_RATE_RULES)
def test_the_batch_window_never_holds_longer_or_at_low_rates_and_never_stops_a_full_call(
    waiting: int,
    oldest_age: float,
    in_flight: int,
    max_in_flight: int,
    linger: float,
    arrival_rate: float,
    batch_window: float,
) -> None:
    given_now = {"waiting": waiting, "oldest_age": oldest_age, "in_flight": in_flight}
    given_now |= {"max_in_flight": max_in_flight, "linger": linger}
    decision = batching.decide(**given_now, arrival_rate=arrival_rate, batch_window=batch_window)
    without_window = batching.decide(**given_now)
    if waiting >= batching.MAX_ENTRIES and in_flight < max_in_flight:
        assert decision.send  # a full call always leaves while a slot is free
    if in_flight > 0 or arrival_rate * batch_window < batching.MAX_ENTRIES:
        assert decision == without_window  # calls in flight, or a low rate: the rule as before
    if in_flight == 0 and waiting and not decision.send:
        assert decision.wait_seconds is not None and decision.wait_seconds > 0
        assert oldest_age + decision.wait_seconds <= batch_window  # never held past the window


@given(
    rate=st.floats(min_value=1, max_value=2000, allow_nan=False),
    jitter=st.lists(st.floats(min_value=0, max_value=1), min_size=50, max_size=300),
)
def test_the_arrival_rate_never_reads_much_above_the_rate_events_arrive_at(
    rate: float, jitter: list[float]
) -> None:
    """Arrivals at most ``rate`` per second (each gap at least 1 / rate) never read above
    ``rate`` + one event's weight — so at 1x and 3x (60 and 180 events/s) the default window,
    which needs 500/s, never holds a call."""
    arrivals = batching.ArrivalRate()
    now = 0.0
    for extra in jitter:
        now += (1 + extra) / rate
        arrivals.add(now)
        assert arrivals.per_second(now) <= rate + 1 / batching.RATE_TIME_CONSTANT_SECONDS + 1e-6
        if rate <= 3 * 60:
            assert not batching.fills_within(
                1, 0, arrivals.per_second(now), batching.DEFAULT_BATCH_WINDOW_SECONDS
            )


def test_the_arrival_rate_follows_a_steady_load_and_forgets_it() -> None:
    arrivals = batching.ArrivalRate()
    assert arrivals.per_second(0) == 0
    for index in range(1, 601):  # 600 events/s for a second
        arrivals.add(index / 600)
    assert arrivals.per_second(1.0) == pytest.approx(600, rel=0.02)
    assert arrivals.per_second(1.5) < 5  # half a second without an event
    arrivals.add(2.0, count=3)  # a request of three
    assert arrivals.per_second(2.0) == pytest.approx(30, rel=0.05)


@given(
    st.dictionaries(
        st.text(max_size=20),
        st.one_of(st.text(max_size=200), st.integers(), st.binary(max_size=50)),
        max_size=8,
    )
)
def test_a_form_body_is_encoded_as_urllib_encodes_it(params: dict[str, Any]) -> None:
    assert publishing.form_encode(params) == urllib.parse.urlencode(params)


@given(st.lists(st.integers(min_value=1, max_value=offloading.MESSAGE_LIMIT_BYTES), max_size=30))
def test_a_batch_holds_at_most_ten_entries_and_256_kib(sizes: list[int]) -> None:
    count = batching.take(sizes)
    if not sizes:
        assert count == 0
        return
    assert 1 <= count <= batching.MAX_ENTRIES
    assert count == 1 or sum(sizes[:count]) <= batching.MAX_BATCH_BYTES
    if count < min(len(sizes), batching.MAX_ENTRIES):
        assert sum(sizes[: count + 1]) > batching.MAX_BATCH_BYTES  # it stopped only because it was full


def test_admission_counts_the_events_already_waiting() -> None:
    assert batching.admits(0, 5, 5) and not batching.admits(1, 5, 5)


# --- the pointer format ---------------------------------------------------------------


def test_pointer_written_and_found_raw_or_inside_sns() -> None:
    pointer = offloading.Pointer("bucket", "genesys/abc")
    body = offloading.pointer_body(pointer)
    assert json.loads(body) == [offloading.POINTER_CLASS, {"s3BucketName": "bucket", "s3Key": "genesys/abc"}]
    assert offloading.locate(body) == offloading.Located(pointer)
    sns = json.dumps({"Type": "Notification", "MessageId": "m", "Message": body, "MessageAttributes": {}})
    located = offloading.locate(sns)
    assert located is not None and located.pointer == pointer
    rebuilt = json.loads(offloading.resolved_body(located, json.dumps(EVENT)))
    assert rebuilt["Message"] == json.dumps(EVENT) and rebuilt["MessageId"] == "m"
    legacy = json.dumps([offloading.LEGACY_POINTER_CLASS, {"s3BucketName": "b", "s3Key": "k"}])
    assert offloading.locate(legacy) == offloading.Located(offloading.Pointer("b", "k"))


@pytest.mark.parametrize(
    "body",
    [
        json.dumps(EVENT),
        '["software.amazon.payloadoffloading.PayloadS3Pointer"]',
        '["software.amazon.payloadoffloading.PayloadS3Pointer", {"s3BucketName": "b"}]',
        '["some.other.S3Pointer", {"s3BucketName": "b", "s3Key": "k"}]',
        '{"Type": "Notification", "Message": "[\\"x.S3Pointer\\"]"}',
        "[S3Pointer" + "[" * 10_000,
    ],
)
def test_what_is_not_a_pointer_is_left_alone(body: str) -> None:
    assert offloading.locate(body) is None


# --- config ---------------------------------------------------------------------------


def _manifest(**spec_fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "topic": {"arn": "arn:aws:sns:us-east-1:123456789012:genesys"},
        "sources": [{"name": "genesys", "secrets": [{"env": "SECRET"}]}],
    }
    return {"apiVersion": "fanout.dev/v1alpha1", "kind": "FanoutIngest", "spec": {**base, **spec_fields}}


def test_config_defaults() -> None:
    ingest = config.parse(_manifest())
    [source] = ingest.spec.sources
    assert source.path == "/events"
    assert [scheme.header for scheme in source.signatures] == ["X-Hub-Signature-256", "X-Fanout-Signature"]
    assert not ingest.spec.topic.is_fifo and ingest.spec.topic.arn_region == "us-east-1"
    assert ingest.spec.offload is None
    idempotency = ingest.spec.idempotency
    assert idempotency.enabled and idempotency.store == "memory" and idempotency.ttl_seconds == 300
    assert ingest.spec.lease_seconds == ingest.spec.limits.publish_timeout_seconds + 5


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"topic": {"arn": "arn:aws:sqs:us-east-1:123456789012:q"}}, "spec.topic.arn"),
        ({"sources": []}, "spec.sources"),
        ({"sources": [{"name": "g", "secrets": []}]}, "spec.sources.0.secrets"),
        ({"sources": [{"name": "g", "secrets": [{"env": "A", "file": "/b"}]}]}, "exactly one"),
        (
            {"sources": [{"name": "a", "secrets": [{"env": "A"}]}, {"name": "b", "secrets": [{"env": "B"}]}]},
            "two sources with path '/events'",
        ),
        ({"offload": {"bucket": "b", "thresholdBytes": 300_000}}, "spec.offload.thresholdBytes"),
        ({"limits": {"publishTimeoutSeconds": 0}}, "spec.limits.publishTimeoutSeconds"),
        ({"tpoic": {}}, "spec.tpoic"),
        ({"idempotency": {"store": "dynamodb"}}, "spec.idempotency: Value error, 'table' is required"),
        ({"idempotency": {"store": "redis"}}, "spec.idempotency.store"),
    ],
)
def test_bad_config_names_the_field(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(spec.ConfigError) as caught:
        config.parse(_manifest(**fields))
    assert message in str(caught.value)


def test_keys_are_shared_with_the_worker_not_copied() -> None:
    # One implementation: the worker's decoder and the front door both call fanout_core.keying.
    assert envelopes.events.EventId is keying.EventId
